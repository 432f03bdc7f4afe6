"""dllm_accel: training-free decoding acceleration for masked diffusion language models."""

from .models import (
    DiffusionLM,
    ModelSpec,
    build_model,
    encode_chat,
    from_hf,
    load_model,
    load_tokenizer,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "DiffusionLM", "ModelSpec", "build_model", "encode_chat", "from_hf", "load_model", "load_tokenizer",
    "save_model",
]
