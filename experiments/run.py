"""Hydra entry point: `python experiments/run.py [model=...] [seed=...]`."""

from __future__ import annotations

import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def run(cfg: DictConfig) -> dict:
    """Load the configured model and run one left-padded batch through it."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    spec = model.spec
    lengths = list(cfg.prompt_lengths)
    width = max(lengths)
    ordinary = [i for i in range(spec.vocab_size) if i not in (spec.mask_id, spec.eos_id, spec.pad_id)]
    input_ids = torch.full((len(lengths), width), spec.pad_id, dtype=torch.long, device=model.device)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        picks = torch.randint(len(ordinary), (length,))
        input_ids[row, width - length:] = torch.tensor(ordinary, device=model.device)[picks]
        attention_mask[row, width - length:] = 1

    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(input_ids, attention_mask).logits
        seconds = time.perf_counter() - start
        padded_vs_alone = max(
            (logits[row, width - n:] - model(input_ids[row:row + 1, width - n:]).logits[0]).abs().max().item()
            for row, n in enumerate(lengths)
        )
    return {
        "model": f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{model.dtype})",
        "spec": spec,
        "logits": tuple(logits.shape),
        "forward_ms": round(seconds * 1e3, 2),
        "max |padded - alone| logit": padded_vs_alone,
    }


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    for key, value in run(cfg).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
