"""Drop-in replacements with the official signatures and return types, as thin wrappers over Sampler.

`llada_generate` is LLaDA's `generate(model, prompt, ...)` from its repository's generate.py;
`dream_generate` is Dream's `model.diffusion_generate(input_ids, ...)`. Both accept a native model or
one loaded with trust_remote_code (converted with from_hf, sharing its weights).

Where they differ from the official code (tokens are the same): a step whose schedule commits nothing
(e.g. LLaDA with more steps than tokens per block, Dream's early steps) runs no forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .models.base import DiffusionLM
from .models.loading import from_hf
from .policies.unmask import DreamAlgorithm, LowConfidence
from .sampler import Sampler

DREAM_DEFAULT_NEW_TOKENS = 20  # diffusion_generate without max_new_tokens: the generation config's max_length


def native(model) -> DiffusionLM:
    return model if isinstance(model, DiffusionLM) else from_hf(model)


def llada_generate(model, prompt, attention_mask=None, steps=128, gen_length=128, block_length=128, temperature=0.,
                   cfg_scale=0., remasking="low_confidence", mask_id=None, logits_eos_inf=False,
                   confidence_eos_eot_inf=False, *, generator=None) -> torch.Tensor:
    """LLaDA's generate: LongTensor [B, P + gen_length]. `mask_id=None` takes the model's."""
    model = native(model)
    if mask_id is not None and mask_id != model.spec.mask_id:
        raise ValueError(f"mask_id={mask_id} differs from the model's mask token {model.spec.mask_id}; "
                         "pass mask_id=None to use the model's")
    if isinstance(block_length, int) and block_length > 0 and isinstance(gen_length, int) and gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be divisible by block_length ({block_length})")
    unmask = LowConfidence(steps, remasking, temperature, cfg_scale, logits_eos_inf=logits_eos_inf,
                           confidence_eos_eot_inf=confidence_eos_eot_inf)
    out = Sampler(model, unmask=unmask).generate(prompt, attention_mask, max_new_tokens=gen_length,
                                                 block_length=block_length, generator=generator)
    return out.sequences


@dataclass
class DreamModelOutput(ModelOutput):
    """What diffusion_generate returns with return_dict_in_generate=True."""

    sequences: torch.LongTensor = None
    history: list[torch.Tensor] | None = None


def dream_generate(model, input_ids, attention_mask=None, max_new_tokens=None, steps=512, temperature=0.,
                   top_p=None, top_k=None, alg="origin", alg_temp=None, eps=1e-3, return_dict_in_generate=False,
                   output_history=False, *, generator=None):
    """Dream's diffusion_generate: LongTensor [B, P + max_new_tokens], or DreamModelOutput(sequences,
    history) with return_dict_in_generate (history: the canvas after each of the `steps` steps, when
    output_history). max_new_tokens=None generates 20 tokens, as Dream's default generation config."""
    model = native(model)
    unmask = DreamAlgorithm(alg, steps, eps=eps, alg_temp=alg_temp, temperature=temperature, top_p=top_p,
                            top_k=top_k)
    history = [] if return_dict_in_generate and output_history else None
    new_tokens = DREAM_DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    out = Sampler(model, unmask=unmask).generate(
        input_ids, attention_mask, max_new_tokens=new_tokens, generator=generator,
        callback=None if history is None else lambda record, x: history.append(x.clone()),
    )
    if return_dict_in_generate:
        return DreamModelOutput(sequences=out.sequences, history=history)
    return out.sequences
