"""Everything model-specific: native backbones, their specs, loading and tokenizers."""

from .base import DiffusionLM, ModelOutput, ModelSpec, attend, rotary_tables
from .dream import DreamModel
from .illada import ILLaDAModel
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .llada_moe import LLaDAMoEModel
from .loading import build_model, from_hf, load_model, model_class, save_model
from .tiny import released_config, tiny_config
from .tokenizer import encode_chat, encode_texts, load_tokenizer

__all__ = [
    "DiffusionLM",
    "DreamModel",
    "ILLaDAModel",
    "LLaDA2Model",
    "LLaDAModel",
    "LLaDAMoEModel",
    "ModelOutput",
    "ModelSpec",
    "attend",
    "build_model",
    "encode_chat",
    "encode_texts",
    "from_hf",
    "load_model",
    "load_tokenizer",
    "model_class",
    "released_config",
    "rotary_tables",
    "save_model",
    "tiny_config",
]
