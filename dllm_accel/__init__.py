"""dllm_accel: training-free decoding acceleration for masked diffusion language models."""

from .dropin import dream_generate, llada_generate, patch, unpatch
from .method import POLICIES, Measurement, Method, measure
from .models import (
    DiffusionLM,
    ModelSpec,
    build_model,
    encode_chat,
    encode_texts,
    from_hf,
    load_model,
    load_tokenizer,
    save_model,
)
from .policies import (
    ARGuide,
    DreamAlgorithm,
    DualCache,
    ElasticCache,
    EntropyThreshold,
    Factor,
    FrozenCache,
    FullLength,
    LowConfidence,
    NoCache,
    PrefixCache,
    StopAtEOS,
    Threshold,
    load_ar_model,
)
from .sampler import GenerationOutput, Sampler, StepRecord
from .seeding import sample_generators

__version__ = "0.1.0"

__all__ = [
    "ARGuide",
    "DiffusionLM",
    "DreamAlgorithm",
    "DualCache",
    "ElasticCache",
    "EntropyThreshold",
    "Factor",
    "FrozenCache",
    "FullLength",
    "GenerationOutput",
    "LowConfidence",
    "ModelSpec",
    "NoCache",
    "PrefixCache",
    "Sampler",
    "StepRecord",
    "StopAtEOS",
    "Threshold",
    "build_model",
    "dream_generate",
    "encode_chat",
    "encode_texts",
    "from_hf",
    "llada_generate",
    "load_ar_model",
    "load_model",
    "load_tokenizer",
    "patch",
    "Measurement",
    "Method",
    "POLICIES",
    "measure",
    "sample_generators",
    "save_model",
    "unpatch",
]
