"""Everything model-specific: native backbones, their specs, loading and tokenizers."""

from .base import DiffusionLM, ModelOutput, ModelSpec, attend
from .dream import DreamModel
from .llada import LLaDAModel
from .loading import build_model, from_hf, load_model, save_model
from .tiny import tiny_config
from .tokenizer import encode_chat, encode_texts, load_tokenizer

__all__ = [
    "DiffusionLM",
    "DreamModel",
    "LLaDAModel",
    "ModelOutput",
    "ModelSpec",
    "attend",
    "build_model",
    "encode_chat",
    "encode_texts",
    "from_hf",
    "load_model",
    "load_tokenizer",
    "save_model",
    "tiny_config",
]
