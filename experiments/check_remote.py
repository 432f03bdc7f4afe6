"""A native model against the checkpoint's own remote modelling code: logits side by side.

    python experiments/check_remote.py DIR [--length 48 --batch 3 --seed 0 --dtype float32]
    python experiments/check_remote.py --tiny llada_moe --remote-code FILES... [--out DIR]
    python experiments/check_remote.py --tiny llada2 --remote-code FILES... [--fields JSON]
    python experiments/check_remote.py --tiny llada2 --remote-code FILES... --generate --sharpen 8

DIR is a Hugging Face checkpoint directory whose config.json maps `auto_map` to modelling files in
the directory (what `trust_remote_code=True` runs). `--tiny KIND` first writes a tiny random
checkpoint of a bundled config (`tiny_config(KIND)`, random norms and router biases too) with the
given remote-code files copied beside it, so the public code of a released model can be checked
without its weights. Run it under the transformers version the remote code was written for.

Printed: the max abs difference of the logits at batch 1 (the remote code's own setting: several
remote implementations ignore the attention mask), and of each left-padded row of a ragged batch
(native) against the same row alone (native), over the row's real positions. A block-causal model
(spec.block_size, LLaDA2) is given the mask its remote generate builds: the lower-triangular block
matrix expanded to [1, 1, T, T], its log (0 or -inf) as an additive mask, with position ids 0..T-1,
(`--attn eager` passes the 0/1 matrix instead, which transformers 4's eager path inverts into the
same additive mask).

`--generate` (block-causal models) also runs the remote `generate` at temperature 0 against
`llada2_generate` with NoCache (the official loop) and with BlockPrefixCache, for prompts ending
mid-block and on a block boundary, eos_early_stop off and on, and two step/threshold settings; it
prints each case's answers and whether they are equal. `--sharpen S` scales the LM head of the tiny
checkpoint, so that confidences pass the threshold and EOS is predicted as in a trained model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from dllm_accel.models import build_model, load_model, save_model, tiny_config


def main(argv=None) -> dict:
    args = parse(argv)
    torch.manual_seed(args.seed)
    directory = Path(args.directory) if args.directory else write_tiny(args)
    native = load_model(directory, dtype=args.dtype)
    auto_map = json.loads((directory / "config.json").read_text()).get("auto_map", {})
    # the LM class: LLaDA2's AutoModel is its backbone without the head
    auto = getattr(
        transformers, "AutoModelForCausalLM" if "AutoModelForCausalLM" in auto_map else "AutoModel"
    )
    remote = auto.from_pretrained(
        directory,
        trust_remote_code=True,
        dtype=getattr(torch, args.dtype),
        **({} if args.attn is None else {"attn_implementation": args.attn}),
    ).eval()
    vocab = native.spec.vocab_size
    ids = torch.randint(0, min(vocab, native.spec.mask_id), (args.batch, args.length))
    ids[:, -args.length // 3 :] = native.spec.mask_id  # a decoding canvas: the tail masked
    with torch.no_grad():
        ours = native(ids[:1]).logits
        theirs = remote(input_ids=ids[:1], **block_inputs(native, args)).logits
        report = {
            "remote": type(remote).__name__,
            "transformers": transformers.__version__,
            "dtype": args.dtype,
            "attn": getattr(remote.config, "_attn_implementation", args.attn),
            "block_size": native.spec.block_size,
            "batch1_max_abs_diff": (ours - theirs).abs().max().item(),
            "padded_rows_max_abs_diff": padded_rows_diff(native, ids),
        }
        if args.generate:
            report["generate"] = compare_generate(native, remote, args)
    print(json.dumps(report, indent=2))
    return report


def _mask_in_model_dtype(remote) -> None:
    """The remote generate builds its additive mask (0 / -inf, exact in any dtype) in bfloat16,
    which SDPA refuses beside fp32 queries: an fp32 model gets it in fp32."""
    forward, dtype = remote.forward, remote.dtype

    def cast(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(dtype)
        return forward(*args, attention_mask=attention_mask, **kwargs)

    remote.forward = cast


GENERATE_CASES = [  # (prompt length, steps, threshold): the prompt ends mid-block or on a boundary
    (5, 32, 0.95),
    (32, 8, 0.8),
    (45, 32, 0.5),
]


def compare_generate(native, remote, args) -> dict:
    """The remote generate against llada2_generate at temperature 0, case by case."""
    from dllm_accel import BlockPrefixCache, NoCache, llada2_generate

    spec, block = native.spec, native.spec.block_size
    _mask_in_model_dtype(remote)
    cases, equal = [], 0
    for prompt_length, steps, threshold in GENERATE_CASES:
        for early in (False, True):
            ids = torch.randint(0, min(spec.eos_id, spec.mask_id), (1, prompt_length))
            settings = dict(
                gen_length=args.gen_length,
                block_length=block,
                steps=steps,
                threshold=threshold,
                eos_early_stop=early,
            )
            ids_spec = dict(eos_id=spec.eos_id, mask_id=spec.mask_id)
            theirs = remote.generate(ids, temperature=0.0, **settings, **ids_spec)
            ours = {
                type(cache).__name__: llada2_generate(native, ids, cache=cache, **settings)
                for cache in (NoCache(), BlockPrefixCache())
            }
            same = all(torch.equal(answer, theirs) for answer in ours.values())
            equal += same
            cases.append(
                dict(prompt=prompt_length, steps=steps, threshold=threshold, eos_early_stop=early)
                | dict(equal=same, remote=theirs[0].tolist())
                | {name: answer[0].tolist() for name, answer in ours.items()}
            )
    return {"cases": cases, "equal": f"{equal}/{len(cases)}"}


def block_inputs(model, args) -> dict:
    """The remote generate's attention inputs for a block-causal model; none otherwise."""
    block = model.spec.block_size
    if block is None:
        return {}
    n = -(-args.length // block)
    allowed = torch.tril(torch.ones(n, n)).repeat_interleave(block, 0).repeat_interleave(block, 1)
    allowed = allowed[None, None, : args.length, : args.length]
    mask = allowed if args.attn == "eager" else allowed.log()
    positions = torch.arange(args.length)[None]
    return {"attention_mask": mask.to(getattr(torch, args.dtype)), "position_ids": positions}


def padded_rows_diff(model, ids) -> float:
    """Row r keeps its last n - r tokens behind r pads; the largest difference of a padded row's
    logits from the same tokens alone."""
    mask = torch.ones_like(ids)
    padded = ids.clone()
    for r in range(ids.shape[0]):
        padded[r, :r], mask[r, :r] = model.spec.pad_id, 0
    logits = model(padded, mask).logits
    return max(
        (logits[r, r:] - model(ids[r : r + 1, r:]).logits[0]).abs().max().item()
        for r in range(ids.shape[0])
    )


def write_tiny(args) -> Path:
    """A tiny random checkpoint of a bundled config, with the remote-code files beside it."""
    directory = Path(args.out or tempfile.mkdtemp(prefix=f"tiny-{args.tiny}-"))
    config = tiny_config(args.tiny, **json.loads(args.fields))
    model = build_model(config, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    with (
        torch.no_grad()
    ):  # random norms, router and projection biases too, so a misplaced one shows
        for name, tensor in model.state_dict().items():
            if name.endswith("norm.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("expert_bias") and not args.zero_router_bias:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(".bias"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
        model.head_weight.mul_(args.sharpen)
    save_model(model, directory)
    for file in args.remote_code:
        shutil.copy(file, directory)
    return directory


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?")
    parser.add_argument("--tiny", help="write a tiny checkpoint of this bundled config first")
    parser.add_argument("--remote-code", nargs="*", default=[], help="files copied beside it")
    parser.add_argument("--fields", default="{}", help="JSON of config fields to override")
    parser.add_argument("--out", help="where the tiny checkpoint goes (default: a temp dir)")
    parser.add_argument(
        "--zero-router-bias", action="store_true", help="leave expert_bias at 0 (default: random)"
    )
    parser.add_argument("--generate", action="store_true", help="also compare generate")
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--sharpen", type=float, default=1.0, help="scale the tiny LM head")
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--attn", choices=["sdpa", "eager"], help="attention of the remote code (default: its own)"
    )
    args = parser.parse_args(argv)
    if (args.directory is None) == (args.tiny is None):
        parser.error("give either a checkpoint DIR or --tiny KIND")
    return args


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
