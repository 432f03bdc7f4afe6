"""Hydra entry point: `python experiments/run.py [model=...] [unmask=...] [stop=...] [max_new_tokens=...]`."""

from __future__ import annotations

import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dllm_accel import Sampler


def run(cfg: DictConfig) -> dict:
    """Decode the configured prompts with the configured model and policies; report the accounting."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    sampler = Sampler(model, unmask=instantiate(cfg.unmask), stop=instantiate(cfg.stop))
    input_ids, attention_mask = random_prompts(model, list(cfg.prompt_lengths), cfg.seed)
    start = time.perf_counter()
    out = sampler.generate(input_ids, attention_mask, max_new_tokens=cfg.max_new_tokens,
                           block_length=cfg.block_length, generator=torch.Generator(model.device).manual_seed(cfg.seed))
    seconds = time.perf_counter() - start
    return {
        "model": f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{model.dtype})",
        "policies": f"{sampler.unmask}, {sampler.stop}",
        "sequences": tuple(out.sequences.shape),
        "generated tokens": out.generated_tokens.tolist(),
        "nfe": out.nfe,
        "steps": out.steps,
        "tokens per forward": round(out.tokens_per_forward, 3),
        "tokens/s": round(float(out.generated_tokens.sum()) / seconds, 1),
        "masks left": int((out.sequences == model.spec.mask_id).sum()),
    }


def random_prompts(model, lengths: list[int], seed: int):
    """Left-padded prompts of ordinary tokens (no special id) and their attention mask."""
    spec = model.spec
    special = {spec.mask_id, spec.eos_id, spec.pad_id, spec.eot_id, spec.bos_id}
    ordinary = torch.tensor([i for i in range(spec.vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), spec.pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, width - length:] = ordinary[torch.randint(len(ordinary), (length,), generator=generator)]
        attention_mask[row, width - length:] = 1
    return input_ids.to(model.device), attention_mask.to(model.device)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    for key, value in run(cfg).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
