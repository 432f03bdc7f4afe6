"""Held-out accuracy and exact match of the bundled testbed models, and how much a stale K/V cache
costs tiny-llada.

    python experiments/eval_testbed.py [--problems 500] [--problems-long 200] \
        [--long-from results] [--write] [--models tiny-llada tiny-dream tiny-ar]

Greedy decoding on the test split of dllm_accel.tasks.arith with each family's official baseline:
tiny-llada with LowConfidence (one token per step, semi-autoregressive blocks), tiny-dream with
Dream's entropy algorithm over the whole generation (steps = gen length), tiny-ar with transformers'
greedy generate. Both settings the models were trained for: `held_out` (the question alone, 48
tokens) and, for the diffusion models, `held_out_long` (solved examples before the question, 256
tokens of which EOS fills the rest; the blocks of the long setting; `--long-from DIR` takes it from
the official row of DIR/bench-<model>-long.json instead, the same greedy decode of the same
problems, which costs a quarter of an hour per model on 2 CPU cores). Sensitivity: tiny-llada
decoded the same way with FrozenCache (after the first step only the current block's masks are
computed: the cache never sees a committed token). `--write` records the figures in each model's
metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import bench
import torch
from threads import set_threads
from train_tiny import accuracy, scores
from transformers import AutoModelForCausalLM

import dllm_accel
from dllm_accel import FrozenCache, FullLength, LowConfidence, Method, measure
from dllm_accel.tasks import arith


def frozen_decode(model, tokenizer, batch, *, gen_length, block_length) -> list[str]:
    """The official schedule with FrozenCache."""
    ids = batch["input_ids"]
    method = Method(
        LowConfidence(steps=gen_length), FrozenCache(), FullLength(), None, block_length
    )
    out, _ = measure(method, model, ids, batch["attention_mask"], max_new_tokens=gen_length)
    return tokenizer.batch_decode(out.sequences[:, ids.shape[1] :], skip_special_tokens=True)


def from_bench(path: Path) -> dict:
    """The long setting's held-out figures from a bench report's official row (its first batch
    size)."""
    report = json.loads(path.read_text())
    official = next(iter(report["runs"].values()))[bench.OFFICIAL]
    return {
        "problems": report["problems"],
        "split": "test",
        "seed": 0,
        "shots": report["shots"],
        "gen_length": report["gen_length"],
        "block_length": (
            report["block_length"] if report["model"].startswith("tiny-llada") else None
        ),
        "chain": report.get("chain", list(arith.CHAIN)),
        "accuracy": official["accuracy"],
        "exact_match": official["exact_match"],
        "source": f"{path.name}: {report['command']}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument(
        "--problems-long", type=int, default=200, help="held-out problems of the long setting"
    )
    parser.add_argument(
        "--long-from",
        type=Path,
        help="a folder of experiments/bench.py reports to take the long "
        "setting's figures from (the official baseline's row)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--block-length",
        type=int,
        help="tiny-llada's semi-autoregressive block (default: the "
        "one in its metrics.json); tiny-dream and tiny-ar decode without blocks",
    )
    parser.add_argument(
        "--write", action="store_true", help="record the figures in each metrics.json"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=dllm_accel.assets.BUNDLED,
        default=dllm_accel.assets.BUNDLED,
        help="the bundled models to evaluate (default: all)",
    )
    args = parser.parse_args()
    if args.problems < 1 or args.problems_long < 1:
        parser.error(
            f"--problems and --problems-long must be >= 1, got {args.problems} and "
            f"{args.problems_long}"
        )
    set_threads(args.threads)
    results = {}
    for name in args.models:
        directory = dllm_accel.assets.path(name)
        metrics = json.loads((directory / "metrics.json").read_text())
        tokenizer = dllm_accel.load_tokenizer(name)
        if name == "tiny-ar":
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
            model.config.eot_token_id = tokenizer.convert_tokens_to_ids("<|eot|>")
        else:
            model = dllm_accel.load_model(name)
        llada = name.startswith("tiny-llada")  # the others decode without blocks
        block_length = (args.block_length or metrics["block_length"]) if llada else None
        chain = arith.check_chain(metrics.get("eval_chain") or arith.CHAIN)
        problems = arith.problems(
            max(args.problems, args.problems_long), seed=0, split="test", chain=chain
        )
        settings = dict(
            shots=metrics["shots"],
            gen_length=metrics["gen_length"],
            block_length=block_length,
            chain=chain,
        )
        start = time.perf_counter()
        short = problems[: args.problems]
        held_out = {
            "problems": len(short),
            "split": "test",
            "seed": 0,
            **settings,
            **scores(model, tokenizer, short, **settings),
        }
        if name == "tiny-llada":
            held_out["frozen_kv_accuracy"] = accuracy(
                model, tokenizer, short, decode=frozen_decode, **settings
            )
        held_out["eval_minutes"] = round((time.perf_counter() - start) / 60, 1)
        results[name] = held_out
        print(name, json.dumps(held_out), flush=True)
        if "long" in metrics and args.long_from:
            metrics["held_out_long"] = from_bench(args.long_from / f"bench-{name}-long.json")
            print(name, "long", json.dumps(metrics["held_out_long"]), flush=True)
        elif "long" in metrics:
            long = metrics["long"]
            settings = dict(
                shots=long["shots"],
                gen_length=long["gen_length"],
                block_length=long["block_length"] if llada else None,
                chain=chain,
            )
            start, chosen = time.perf_counter(), problems[: args.problems_long]
            metrics["held_out_long"] = {
                "problems": len(chosen),
                "split": "test",
                "seed": 0,
                **settings,
                **scores(model, tokenizer, chosen, **settings),
                "eval_minutes": round((time.perf_counter() - start) / 60, 1),
            }
            print(name, "long", json.dumps(metrics["held_out_long"]), flush=True)
        if args.write:
            metrics["held_out"] = held_out
            (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
