"""A decoding method as one value, and one way to time and count a generation.

`Method` holds everything that decides the tokens besides the model and the prompt: the unmask
policy, the refresh (cache) policy, the stop policy, the optional AR guide and the block length. Its
`name` is derived from those fields (never parsed back). `POLICIES` is the one table of names ->
policy classes: the Hydra groups (conf/<group>/<name>.yaml), lm_eval's model_args and `Method.build`
all use it.

`measure(method, model, input_ids, ...)` decodes once and returns the GenerationOutput with a
`Measurement`: sums (tokens, seconds, forwards, ...) that add up across calls, with the ratios as
properties. Every front end (run.py, bench.py, lm_eval, the drop-ins' callers) reports these
figures.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checks import check_int
from .models.base import DiffusionLM
from .policies import (
    ARGuide,
    BlockPrefixCache,
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
    ScheduledThreshold,
    StopAfterBlock,
    StopAtEOS,
    Threshold,
)
from .policies.refresh import RefreshPolicy
from .policies.stop import StopPolicy
from .policies.unmask import UnmaskPolicy
from .sampler import GenerationOutput, Sampler

# group -> {name: policy class}; the names are the file names of conf/<group>/ (guide "none": no
# guide)
POLICIES = {
    "unmask": {
        "low_confidence": LowConfidence,
        "threshold": Threshold,
        "factor": Factor,
        "entropy_threshold": EntropyThreshold,
        "dream": DreamAlgorithm,
        "scheduled_threshold": ScheduledThreshold,
    },
    "cache": {
        "no_cache": NoCache,
        "prefix_cache": PrefixCache,
        "dual_cache": DualCache,
        "elastic_cache": ElasticCache,
        "frozen_cache": FrozenCache,
        "block_prefix_cache": BlockPrefixCache,
    },
    "stop": {
        "full_length": FullLength,
        "stop_at_eos": StopAtEOS,
        "stop_after_block": StopAfterBlock,
    },
    "guide": {"none": None, "ar": ARGuide},
}
# what Method.build gives the arguments these policies require (the values of their conf/unmask/
# files)
REQUIRED_DEFAULTS = {
    "threshold": {"tau": 0.9},
    "factor": {"f": 1.0},
    "entropy_threshold": {"h": 0.5},
}


@dataclass(frozen=True)
class Method:
    """What decides the tokens, besides the model and the prompt. `block_length` None: one block
    spanning the whole generation. The unguided twin of a method is `dataclasses.replace(m,
    guide=None)`."""

    unmask: UnmaskPolicy
    cache: RefreshPolicy = dataclasses.field(default_factory=NoCache)
    stop: StopPolicy = dataclasses.field(default_factory=FullLength)
    guide: ARGuide | None = None
    block_length: int | None = None

    def __post_init__(self):  # the Sampler's own messages
        if not isinstance(self.unmask, UnmaskPolicy):
            raise TypeError(
                f"unmask must be an unmask policy (LowConfidence, Threshold, Factor, "
                f"EntropyThreshold, DreamAlgorithm), got {self.unmask!r}"
            )
        if not isinstance(self.cache, RefreshPolicy):
            raise TypeError(
                f"cache must be a refresh policy (NoCache, PrefixCache, DualCache, ElasticCache, "
                f"FrozenCache), got {self.cache!r}"
            )
        if not isinstance(self.stop, StopPolicy):
            raise TypeError(f"stop must be FullLength() or StopAtEOS(), got {self.stop!r}")
        if self.guide is not None and not isinstance(self.guide, ARGuide):
            raise TypeError(f"guide must be None or an ARGuide, got {self.guide!r}")
        check_int(self.block_length, "block_length", 1, optional=True)

    @property
    def name(self) -> str:
        """e.g. "ElasticCache(gamma=0.8) + Threshold(tau=0.9) + StopAtEOS + ARGuide(tiny-ar), blocks
        of 32": each policy with the arguments that differ from their defaults."""
        parts = [compact(self.cache), compact(self.unmask), compact(self.stop)]
        if self.guide is not None:
            parts.append(compact(self.guide))
        blocks = "" if self.block_length is None else f", blocks of {self.block_length}"
        return " + ".join(parts) + blocks

    @property
    def guided(self) -> bool:
        return self.guide is not None

    def sampler(self, model: DiffusionLM, trace: bool = False) -> Sampler:
        return Sampler(
            model,
            unmask=self.unmask,
            cache=self.cache,
            stop=self.stop,
            guide=self.guide,
            trace=trace,
        )

    @classmethod
    def official(cls, model: DiffusionLM, max_new_tokens: int, block_length: int | None) -> Method:
        """The model family's official sampler, one token per step, NoCache and FullLength as they
        do: LLaDA's generate in blocks of `block_length`; Dream's diffusion_generate with its
        entropy algorithm over the whole generation (Dream decodes without blocks: block_length is
        ignored)."""
        if not isinstance(model, DiffusionLM):
            raise TypeError(f"model must be a dllm_accel DiffusionLM, got {type(model).__name__}")
        if model.spec.model_type == "llada":
            return cls(
                LowConfidence(steps=max_new_tokens), NoCache(), FullLength(), None, block_length
            )
        if model.spec.block_size is not None:  # LLaDA2's generate with its defaults
            return cls(ScheduledThreshold(), NoCache(), StopAfterBlock(), None, block_length)
        return cls(
            DreamAlgorithm("entropy", steps=max_new_tokens), NoCache(), FullLength(), None, None
        )

    @classmethod
    def build(
        cls,
        unmask: str,
        cache: str = "no_cache",
        stop: str = "full_length",
        guide: str = "none",
        block_length: int | None = None,
        **options,
    ) -> Method:
        """A Method from POLICIES names; each option goes to the one chosen policy that takes it,
        e.g. `Method.build("threshold", "elastic_cache", "stop_at_eos", tau=0.9, gamma=0.8,
        block_length=32)`. Threshold, Factor and EntropyThreshold default to tau=0.9, f=1.0, h=0.5
        (REQUIRED_DEFAULTS). The guide "ar" needs `ar_model` (a loaded causal LM, e.g.
        dllm_accel.load_ar_model("tiny-ar"))."""
        names = {"unmask": unmask, "cache": cache, "stop": stop, "guide": guide}
        chosen = {group: _lookup(group, name) for group, name in names.items()}
        routed = {group: {} for group in chosen}
        routed["unmask"] = dict(REQUIRED_DEFAULTS.get(unmask, {}))
        for option, value in options.items():
            takers = [
                group
                for group, policy in chosen.items()
                if policy is not None and option in _parameters(policy)
            ]
            if len(takers) != 1:
                accepted = sorted(
                    {
                        p
                        for policy in chosen.values()
                        if policy is not None
                        for p in _parameters(policy)
                    }
                )
                why = "taken by none" if not takers else f"ambiguous between {takers}"
                raise ValueError(
                    f"option {option}={value!r} is {why} of the chosen policies "
                    f"({', '.join(f'{g}={n}' for g, n in names.items())}"
                    f"); they take {accepted}"
                )
            routed[takers[0]][option] = value
        built = {
            group: None if policy is None else policy(**routed[group])
            for group, policy in chosen.items()
        }
        return cls(built["unmask"], built["cache"], built["stop"], built["guide"], block_length)


def compact(policy) -> str:
    """A policy's class name with the arguments that differ from their defaults (its ARGuide's model
    by the last part of its name or path), e.g. "ElasticCache(gamma=0.8)", "StopAtEOS"."""
    parameters = _parameters(type(policy))
    shown = []
    for name, parameter in parameters.items():
        if name == "ar_model":
            shown.append(_model_name(policy.ar_model))
            continue
        value = getattr(policy, name)
        unset = parameter.default is None and value in ({}, None)  # e.g. ARGuide's token_map
        if parameter.default is parameter.empty or (value != parameter.default and not unset):
            shown.append(f"{name}={value!r}")
    return type(policy).__name__ + (f"({', '.join(shown)})" if shown else "")


def _model_name(model) -> str:
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return Path(str(path)).name


def _parameters(policy: type) -> dict:
    return {
        name: p
        for name, p in inspect.signature(policy).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _lookup(group: str, name):
    table = POLICIES[group]
    if name is None and group == "guide":
        return None
    if name not in table:
        raise ValueError(f"{group}={name!r} is not one of {sorted(table)}")
    return table[name]


# -- measurement -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Sums over one or more generations (add them with + or sum()); the ratios are properties.

    generated_tokens  per row up to and including its first EOS / end-of-turn (prompt, padding and
                      leftover MASK excluded), summed over rows
    seconds           wall time inside Sampler.generate only, synchronised on CUDA
    nfe               forward passes of the diffusion model (a batch's forward counts once; a
                      classifier-free-guidance step counts 2): GenerationOutput.nfe
    row_forwards      per row, the forward passes that computed it (rows with nothing to commit
    skip),
                      summed over rows
    layer_units       token x layer units the engine computed; full_units: those of NoCache over the
                      same forwards (every row, every position, every layer)
    ar_forwards       forward passes of the ARGuide's model; ar_tokens: positions it read, over rows
    peak_memory_bytes torch.cuda.max_memory_allocated during the generations on CUDA; None on CPU
    samples           rows decoded
    """

    samples: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    nfe: int = 0
    row_forwards: int = 0
    layer_units: int = 0
    full_units: int = 0
    ar_forwards: int = 0
    ar_tokens: int = 0
    peak_memory_bytes: int | None = None

    def __add__(self, other: Measurement) -> Measurement:
        if not isinstance(other, Measurement):
            return NotImplemented
        sums = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "peak_memory_bytes"
        }
        peaks = [p for p in (self.peak_memory_bytes, other.peak_memory_bytes) if p is not None]
        return Measurement(**sums, peak_memory_bytes=max(peaks) if peaks else None)

    def __radd__(self, other) -> Measurement:  # sum() starts from 0
        if other == 0:
            return self
        return NotImplemented

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per row forward."""
        return self.generated_tokens / max(1, self.row_forwards)

    @property
    def recompute_fraction(self) -> float:
        """layer_units / full_units: 1 for NoCache."""
        return self.layer_units / max(1, self.full_units)

    @property
    def nfe_per_sample(self) -> float:
        return self.nfe / max(1, self.samples)

    @property
    def row_forwards_per_sample(self) -> float:
        return self.row_forwards / max(1, self.samples)

    def report(self) -> dict:
        """The sums and the ratios under their names (what summary.json, bench JSON and lm_eval
        record)."""
        return {
            **dataclasses.asdict(self),
            "tokens_per_second": self.tokens_per_second,
            "tokens_per_forward": self.tokens_per_forward,
            "recompute_fraction": self.recompute_fraction,
            "nfe_per_sample": self.nfe_per_sample,
            "row_forwards_per_sample": self.row_forwards_per_sample,
        }

    @classmethod
    def of(
        cls, out: GenerationOutput, seconds: float = 0.0, peak_memory_bytes: int | None = None
    ) -> Measurement:
        """The counts of one GenerationOutput."""
        return cls(
            samples=int(out.sequences.shape[0]),
            generated_tokens=int(out.generated_tokens.sum()),
            seconds=float(seconds),
            nfe=int(out.nfe),
            row_forwards=int(out.row_forwards.sum()),
            layer_units=int(out.layer_units),
            full_units=int(out.full_units),
            ar_forwards=int(out.ar_forwards),
            ar_tokens=int(out.ar_tokens),
            peak_memory_bytes=peak_memory_bytes,
        )


def measure(
    method: Method,
    model: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    generator=None,
    callback=None,
    trace: bool = False,
) -> tuple[GenerationOutput, Measurement]:
    """Decode left-padded prompts [B, P] with `method` (Sampler.generate with the method's block
    length) -> (GenerationOutput, Measurement). Only `generate` is timed, synchronised on CUDA
    before and after; on CUDA the peak memory is max_memory_allocated over the call (its peak
    statistics are reset)."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be a dllm_accel.Method, got {type(method).__name__}")
    sampler = method.sampler(model, trace=trace)
    device = model.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = sampler.generate(
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        block_length=method.block_length,
        generator=generator,
        callback=callback,
    )
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return out, Measurement.of(out, seconds, peak)
