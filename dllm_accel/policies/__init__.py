"""Small policy objects, one job each, composed by the Sampler."""

from .guide import ACCEPTANCE, ARGuide, load_ar_model
from .refresh import (
    AttentionDrift,
    BlockPrefixCache,
    DualCache,
    ElasticCache,
    FrozenCache,
    NoCache,
    PrefixCache,
    RefreshPolicy,
)
from .stop import FullLength, StopAfterBlock, StopAtEOS, StopPolicy
from .unmask import (
    DreamAlgorithm,
    EntropyThreshold,
    Factor,
    LowConfidence,
    ScheduledThreshold,
    StepContext,
    Threshold,
    UnmaskPolicy,
)

__all__ = [
    "ACCEPTANCE",
    "ARGuide",
    "AttentionDrift",
    "BlockPrefixCache",
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
    "ScheduledThreshold",
    "StepContext",
    "StopAfterBlock",
    "StopAtEOS",
    "StopPolicy",
    "Threshold",
    "UnmaskPolicy",
    "load_ar_model",
]
