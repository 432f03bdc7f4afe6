"""Small policy objects, one job each, composed by the Sampler."""

from .guide import ACCEPTANCE, ARGuide, load_ar_model
from .refresh import (
    AttentionDrift,
    DualCache,
    ElasticCache,
    FrozenCache,
    NoCache,
    PrefixCache,
    RefreshPolicy,
)
from .stop import FullLength, StopAtEOS, StopPolicy
from .unmask import (
    DreamAlgorithm,
    EntropyThreshold,
    Factor,
    LowConfidence,
    StepContext,
    Threshold,
    UnmaskPolicy,
)

__all__ = [
    "ACCEPTANCE",
    "ARGuide",
    "AttentionDrift",
    "DreamAlgorithm",
    "DualCache",
    "ElasticCache",
    "EntropyThreshold",
    "Factor",
    "FrozenCache",
    "FullLength",
    "LowConfidence",
    "NoCache",
    "PrefixCache",
    "RefreshPolicy",
    "StepContext",
    "StopAtEOS",
    "StopPolicy",
    "Threshold",
    "UnmaskPolicy",
    "load_ar_model",
]
