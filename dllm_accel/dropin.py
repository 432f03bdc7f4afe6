"""Drop-in replacements with the official signatures and return types, as thin wrappers over
Sampler.

`llada_generate` is LLaDA's `generate(model, prompt, ...)` from its repository's generate.py;
`dream_generate` is Dream's `model.diffusion_generate(input_ids, ...)`; `llada2_generate` is
LLaDA2's `model.generate(inputs, ...)` (its remote code's block-diffusion loop). They accept a
native model or one loaded with trust_remote_code (converted with from_hf, sharing its weights),
and take two extra keyword arguments: `cache=` (a refresh policy: NoCache, PrefixCache, DualCache,
ElasticCache; BlockPrefixCache for LLaDA2) and `unmask=` (an unmask policy replacing the one the
official arguments describe).

`patch(hf_model, cache=..., unmask=...)` makes a model loaded with trust_remote_code decode through
Sampler with the user's code unchanged: Dream's `model.diffusion_generate(...)` is replaced (its
settings still resolved by the model's own methods, so the transformers-4.x legacy defaults of the
model config apply as they would unpatched), and `llada_generate(model, ...)` (the drop-in for
LLaDA's repository function) takes the patched settings as its defaults. `unpatch(hf_model)`
restores the model.

Where they differ from the official code (tokens are the same): a step whose schedule commits
nothing (e.g. LLaDA with more steps than tokens per block, Dream's early steps) runs no forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import transformers
from transformers.utils import ModelOutput

from .checks import check_bool, check_int
from .method import Method
from .models.base import DiffusionLM
from .models.loading import from_hf
from .policies.refresh import BlockPrefixCache, NoCache
from .policies.stop import FullLength, StopAfterBlock
from .policies.unmask import DreamAlgorithm, LowConfidence, ScheduledThreshold
from .sampler import Sampler

DREAM_DEFAULT_NEW_TOKENS = (
    20  # diffusion_generate without max_new_tokens: the generation config's max_length
)


PATCH_ATTRIBUTE = "_dllm_accel_patch"


@dataclass
class Patch:
    """What patch() attached to a remote-code model."""

    model: DiffusionLM  # the native model sharing the remote model's weights
    cache: object
    unmask: object
    replaced: dict = field(default_factory=dict)  # attribute -> the original (absent: None)


def native(model) -> DiffusionLM:
    if isinstance(model, DiffusionLM):
        return model
    patched = getattr(model, PATCH_ATTRIBUTE, None)
    return patched.model if patched is not None else from_hf(model)


def _patched_settings(model, cache, unmask):
    """The call's cache/unmask, else those patch() attached to the model."""
    patched = getattr(model, PATCH_ATTRIBUTE, None)
    if patched is None:
        return cache, unmask
    return (patched.cache if cache is None else cache), (
        patched.unmask if unmask is None else unmask
    )


def _check_token(name: str, value: int | None, own: int, what: str) -> None:
    """An official argument naming a special token must be the model's (None: the model's)."""
    if value is not None and value != own:
        raise ValueError(
            f"{name}={value} differs from the model's {what} {own}; pass {name}=None to use the "
            "model's"
        )


def llada_generate(
    model,
    prompt,
    attention_mask=None,
    steps=128,
    gen_length=128,
    block_length=128,
    temperature=0.0,
    cfg_scale=0.0,
    remasking="low_confidence",
    mask_id=None,
    logits_eos_inf=False,
    confidence_eos_eot_inf=False,
    *,
    generator=None,
    cache=None,
    unmask=None,
) -> torch.Tensor:
    """LLaDA's generate: LongTensor [B, P + gen_length]. `mask_id=None` takes the model's. `unmask`
    replaces the policy of steps/remasking/temperature/cfg_scale/...; `cache` picks the refresh
    policy."""
    cache, unmask = _patched_settings(model, cache, unmask)
    model = native(model)
    _check_token("mask_id", mask_id, model.spec.mask_id, "mask token")
    if (
        isinstance(block_length, int)
        and block_length > 0
        and isinstance(gen_length, int)
        and gen_length % block_length
    ):
        raise ValueError(
            f"gen_length ({gen_length}) must be divisible by block_length ({block_length})"
        )
    if unmask is None:
        unmask = LowConfidence(
            steps,
            remasking,
            temperature,
            cfg_scale,
            logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf,
        )
    method = Method(unmask, NoCache() if cache is None else cache, FullLength(), None, block_length)
    out = method.sampler(model).generate(
        prompt,
        attention_mask,
        max_new_tokens=gen_length,
        block_length=method.block_length,
        generator=generator,
    )
    return out.sequences


def llada2_generate(
    model,
    inputs,
    temperature=0.0,
    block_length=32,
    steps=32,
    gen_length=2048,
    top_p=None,
    top_k=None,
    eos_early_stop=False,
    minimal_topk=1,
    threshold=0.95,
    eos_id=None,
    mask_id=None,
    *,
    attention_mask=None,
    generator=None,
    cache=None,
    unmask=None,
) -> torch.Tensor:
    """LLaDA2's generate: the answer, LongTensor [B, L], each row up to and including its first EOS
    (or gen_length tokens), rows shorter than the longest padded with EOS. `eos_id` / `mask_id`
    None take the model's. Unlike the official code (batch 1), a batch of left-padded prompts
    (`attention_mask`) decodes each row as it would alone; the prefix cache (BlockPrefixCache, the
    same tokens) is the default, `cache=NoCache()` runs the official loop. At temperature 0 the
    tokens are the official argmax (the first public copies of the code sample there instead); at
    temperature > 0 the draws are the rows' own (`generator`), not the official random stream."""
    cache, unmask = _patched_settings(model, cache, unmask)
    model = native(model)
    spec = model.spec
    _check_token("eos_id", eos_id, spec.eos_id, "EOS token")
    _check_token("mask_id", mask_id, spec.mask_id, "mask token")
    check_int(minimal_topk, "minimal_topk", 1)
    check_int(gen_length, "gen_length", 1)
    if unmask is None:
        unmask = ScheduledThreshold(
            min(steps, max(1, gen_length // minimal_topk)), threshold, temperature, top_p, top_k
        )
    stop = StopAfterBlock(check_bool(eos_early_stop, "eos_early_stop"))
    method = Method(
        unmask, BlockPrefixCache() if cache is None else cache, stop, None, block_length
    )
    out = method.sampler(model).generate(
        inputs,
        attention_mask,
        max_new_tokens=gen_length,
        block_length=block_length,
        generator=generator,
    )
    answers = out.sequences[:, inputs.shape[1] :]
    length = int(out.generated_tokens.max())
    ended = torch.arange(answers.shape[1], device=answers.device) >= out.generated_tokens[:, None]
    return answers.masked_fill(ended, spec.eos_id)[:, :length]


@dataclass
class DreamModelOutput(ModelOutput):
    """What diffusion_generate returns with return_dict_in_generate=True."""

    sequences: torch.LongTensor = None
    history: list[torch.Tensor] | None = None


def dream_generate(
    model,
    input_ids,
    attention_mask=None,
    max_new_tokens=None,
    steps=512,
    temperature=0.0,
    top_p=None,
    top_k=None,
    alg="origin",
    alg_temp=None,
    eps=1e-3,
    return_dict_in_generate=False,
    output_history=False,
    *,
    generator=None,
    cache=None,
    unmask=None,
):
    """Dream's diffusion_generate: LongTensor [B, P + max_new_tokens], or
    DreamModelOutput(sequences, history) with return_dict_in_generate (history: the canvas after
    each step, when output_history). max_new_tokens=None generates 20 tokens, as Dream's default
    generation config. `unmask` replaces the policy of alg/steps/eps/...; `cache` picks the refresh
    policy."""
    check_bool(return_dict_in_generate, "return_dict_in_generate")
    check_bool(output_history, "output_history")
    cache, unmask = _patched_settings(model, cache, unmask)
    model = native(model)
    if unmask is None:
        unmask = DreamAlgorithm(
            alg,
            steps,
            eps=eps,
            alg_temp=alg_temp,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
        )
    history = [] if return_dict_in_generate and output_history else None
    new_tokens = DREAM_DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    method = Method(unmask, NoCache() if cache is None else cache, FullLength())
    out = method.sampler(model).generate(
        input_ids,
        attention_mask,
        max_new_tokens=new_tokens,
        generator=generator,
        callback=None if history is None else lambda record, x: history.append(x.clone()),
    )
    if return_dict_in_generate:
        return DreamModelOutput(sequences=out.sequences, history=history)
    return out.sequences


def patch(hf_model, *, cache=None, unmask=None):
    """Route a trust_remote_code model's decoding through Sampler (see the module docstring);
    returns the model. Patching a patched model replaces its settings."""
    if isinstance(hf_model, DiffusionLM):
        raise TypeError(
            "patch() is for models loaded with transformers' trust_remote_code; a native model "
            "is decoded with Sampler (or llada_generate / dream_generate) directly"
        )
    if getattr(hf_model, PATCH_ATTRIBUTE, None) is not None:
        unpatch(hf_model)
    state = Patch(from_hf(hf_model), cache, unmask)
    # validates both
    Sampler(state.model, unmask=LowConfidence(1) if unmask is None else unmask, cache=cache)
    if state.model.spec.model_type == "Dream":
        _check_dream_resolution(hf_model)
        state.replaced["diffusion_generate"] = hf_model.__dict__.get("diffusion_generate")

        def diffusion_generate(inputs=None, generation_config=None, **kwargs):
            return dream_generate(
                hf_model,
                **_dream_call(hf_model, kwargs.pop("input_ids", inputs), generation_config, kwargs),
            )

        hf_model.diffusion_generate = diffusion_generate
    setattr(hf_model, PATCH_ATTRIBUTE, state)
    return hf_model


def unpatch(hf_model):
    """Undo patch(); returns the model."""
    state = getattr(hf_model, PATCH_ATTRIBUTE, None)
    if state is None:
        raise ValueError("unpatch(): this model was not patched by dllm_accel.patch")
    for name, original in state.replaced.items():
        if original is None:
            delattr(hf_model, name)
        else:
            setattr(hf_model, name, original)
    delattr(hf_model, PATCH_ATTRIBUTE)
    return hf_model


# what the remote DreamGenerationMixin resolves a call's settings with; patch() asks these very
# methods, so
# that the model's own precedence (keyword arguments > generation_config > the model config, with
# the
# legacy generation defaults transformers 4.x keeps there) holds for any revision of the remote code
DREAM_RESOLUTION = ("_prepare_generation_config", "_prepare_generated_length")
DREAM_SAMPLING_FIELDS = (
    "steps",
    "temperature",
    "top_p",
    "top_k",
    "alg",
    "alg_temp",
    "eps",
    "return_dict_in_generate",
    "output_history",
)
UNSUPPORTED_DREAM_ARGUMENTS = ("generation_tokens_hook_func", "generation_logits_hook_func")


def _check_dream_resolution(hf_model) -> None:
    missing = [name for name in DREAM_RESOLUTION if not callable(getattr(hf_model, name, None))]
    if missing:
        raise TypeError(
            f"patch() does not recognise the remote code of {type(hf_model).__name__} "
            "(transformers "
            f"{transformers.__version__}): it lacks {missing}, with which Dream's "
            "diffusion_generate "
            f"resolves its settings, so a patched call could decode differently"
        )


def _dream_call(hf_model, inputs, generation_config, kwargs) -> dict:
    """dream_generate's arguments for a diffusion_generate call, resolved by the model's own
    methods."""
    if inputs is None:
        raise ValueError("diffusion_generate needs the prompt: inputs (or input_ids) [B, P]")
    attention_mask = kwargs.pop("attention_mask", None)
    hooks = [name for name in UNSUPPORTED_DREAM_ARGUMENTS if name in kwargs]
    if hooks:
        raise ValueError(
            f"a patched diffusion_generate does not take {hooks}; unpatch() the model to use them"
        )
    generator = kwargs.pop("generator", None)
    config = hf_model._prepare_generation_config(generation_config, **kwargs)
    has_default_max_length = kwargs.get("max_length") is None and config.max_length is not None
    config = hf_model._prepare_generated_length(
        generation_config=config,
        has_default_max_length=has_default_max_length,
        input_ids_length=inputs.shape[-1],
    )
    copies = getattr(config, "num_return_sequences", 1) or 1
    if copies > 1:  # as the remote code expands its inputs
        inputs = inputs.repeat_interleave(copies, 0)
        attention_mask = (
            None if attention_mask is None else attention_mask.repeat_interleave(copies, 0)
        )
    settings = {name: getattr(config, name) for name in DREAM_SAMPLING_FIELDS}
    return dict(
        input_ids=inputs,
        attention_mask=attention_mask,
        max_new_tokens=config.max_length - inputs.shape[-1],
        generator=generator,
        **settings,
    )
