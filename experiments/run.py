"""Hydra entry point: `python experiments/run.py [model=...] [unmask=...] [cache=...] [stop=...] [problems=...]`."""

from __future__ import annotations

import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import dllm_accel
from dllm_accel import Sampler
from dllm_accel.tasks import arith


def run(cfg: DictConfig) -> dict:
    """Answer held-out arithmetic problems with the configured model and policies; report the accounting."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model)
    tokenizer = dllm_accel.load_tokenizer(cfg.model.path)
    sampler = Sampler(model, unmask=instantiate(cfg.unmask), cache=instantiate(cfg.cache), stop=instantiate(cfg.stop))
    problems = arith.problems(cfg.problems, seed=cfg.seed, split="test")
    batch = dllm_accel.encode_chat(tokenizer, [arith.messages(p, cfg.shots) for p in problems], device=model.device)
    start = time.perf_counter()
    out = sampler.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=cfg.max_new_tokens,
                           block_length=cfg.block_length, generator=torch.Generator(model.device).manual_seed(cfg.seed))
    seconds = time.perf_counter() - start
    answers = tokenizer.batch_decode(out.sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return {
        "model": f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{model.dtype})",
        "policies": f"{sampler.unmask}, {sampler.cache}, {sampler.stop}",
        "accuracy": sum(map(arith.is_correct, answers, problems)) / len(problems),
        "first problem": f"{problems[0].question} -> {answers[0]!r}",
        "generated tokens": int(out.generated_tokens.sum()),
        "nfe": out.nfe,
        "steps": out.steps,
        "tokens per forward": round(out.tokens_per_forward, 3),
        "recompute fraction": round(out.recompute_fraction, 3),
        "tokens/s": round(float(out.generated_tokens.sum()) / seconds, 1),
    }


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    for key, value in run(cfg).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
