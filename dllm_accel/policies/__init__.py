"""Small policy objects, one job each, composed by the Sampler."""

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
    "DreamAlgorithm", "EntropyThreshold", "Factor", "FullLength", "LowConfidence", "StepContext", "StopAtEOS",
    "StopPolicy", "Threshold", "UnmaskPolicy",
]
