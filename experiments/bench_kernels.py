"""Kernel against torch twin (and the research code's eager attention), at LLaDA-8B and Dream-7B
shapes.

    python experiments/bench_kernels.py                 # every op, bf16, batch 1 and 8
    python experiments/bench_kernels.py --end-to-end  # also ElasticCache, kernel vs twin path
    python experiments/bench_kernels.py --compile-report [--quick] [--json F] [--from-json F]
                                        # AOT compiles for sm_80/sm_90 (no GPU needed), a table

Times with triton.testing.do_bench (median ms) and prints achieved TFLOP/s and GB/s computed from
the shapes against the device's peak, then one JSON line with every figure. Without a GPU it says so
in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

# every op is called through dllm_accel.ops; the implementation is switched with DLLM_ACCEL_IMPL
# bf16 dense, HBM B/s
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}
SHAPES = {
    "llada-8b": dict(n_heads=32, n_kv_heads=32, head_dim=128, vocab=126464),
    "dream-7b": dict(n_heads=28, n_kv_heads=4, head_dim=128, vocab=152064),
}


def peak(device_name: str) -> tuple[float, float] | None:
    return next((value for key, value in PEAKS.items() if key in device_name), None)


def use(impl: str) -> None:
    from dllm_accel import ops

    os.environ["DLLM_ACCEL_IMPL"] = impl
    ops.implementation.cache_clear()


def eager_attention_with_weights(q, k, v, key_mask):
    """What the research code runs: K/V repeated per query head, fp32 weights materialised and
    returned."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1)
    return (weights.to(v.dtype) @ v), weights


def attention_cases(batch: int, shape: dict, n: int, length: int, device) -> dict:
    g = torch.Generator(device).manual_seed(0)
    q = torch.randn(
        batch,
        shape["n_heads"],
        n,
        shape["head_dim"],
        device=device,
        generator=g,
        dtype=torch.bfloat16,
    )
    k, v = (
        torch.randn(
            batch,
            shape["n_kv_heads"],
            length,
            shape["head_dim"],
            device=device,
            generator=g,
            dtype=torch.bfloat16,
        )
        for _ in range(2)
    )
    key_mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    weights = torch.ones(batch, n, device=device)
    written = torch.arange(n, device=device).expand(batch, -1).contiguous()
    return dict(
        q=q,
        k=k,
        v=v,
        key_mask=key_mask,
        weights=weights,
        written=written,
        keys_before=k[:, :, :n].clone(),
        tracked=q[:, :, :1].contiguous(),
    )


def attention_figures(case: dict) -> tuple[float, float]:
    """(FLOPs, bytes) of one partial attention: QK^T and PV, reading q, K, V once and writing
    out."""
    q, k = case["q"], case["k"]
    r, n_heads, n, head_dim = q.shape
    flops = 4 * r * n_heads * n * k.shape[2] * head_dim
    bytes_moved = (2 * q.numel() + 2 * k.numel()) * q.element_size()
    return flops, bytes_moved


def bench_attention(batch, model, n, length, device, do_bench) -> list[dict]:
    from dllm_accel import ops

    case = attention_cases(batch, SHAPES[model], n, length, device)
    q, k, v, key_mask = case["q"], case["k"], case["v"], case["key_mask"]
    flops, bytes_moved = attention_figures(case)
    calls = {
        "partial_attention": lambda: ops.partial_attention(q, k, v, key_mask),
        "partial_attention+mass": lambda: ops.partial_attention(
            q, k, v, key_mask, mass_weights=case["weights"]
        ),
        "attention_drift": lambda: ops.attention_drift(
            case["tracked"],
            case["tracked"],
            k,
            key_mask,
            case["written"],
            case["keys_before"],
            axis="heads",
        ),
    }
    rows = []
    for op, call in calls.items():
        times = {}
        for impl in ("triton", "torch"):
            use(impl)
            times[impl] = do_bench(call)
        if op == "partial_attention+mass":
            times["eager"] = do_bench(lambda: eager_attention_with_weights(q, k, v, key_mask))
        # two tracked rows' attention
        op_flops = flops if op != "attention_drift" else flops * 2 / n
        rows.append(
            dict(
                op=op,
                model=model,
                batch=batch,
                n=n,
                T=length,
                ms=times,
                tflops=op_flops / times["triton"] / 1e9,
                gbps=bytes_moved / times["triton"] / 1e6,
            )
        )
    return rows


def bench_small_ops(batch, model, n, device, do_bench) -> list[dict]:
    from dllm_accel import ops
    from dllm_accel.models import rotary_tables

    shape, g = SHAPES[model], torch.Generator(device).manual_seed(1)
    length, head_dim = 2048, shape["head_dim"]
    q = torch.randn(
        batch, shape["n_heads"], n, head_dim, device=device, dtype=torch.bfloat16, generator=g
    )
    k, v = (
        torch.randn(
            batch,
            shape["n_kv_heads"],
            n,
            head_dim,
            device=device,
            dtype=torch.bfloat16,
            generator=g,
        )
        for _ in range(2)
    )
    keys, values = (
        torch.zeros(
            batch, shape["n_kv_heads"], length, head_dim, device=device, dtype=torch.bfloat16
        )
        for _ in range(2)
    )
    index = torch.arange(n, device=device).expand(batch, -1).contiguous()
    rope = rotary_tables(index, head_dim, 10000.0, torch.float32)
    rows = torch.arange(batch, device=device)
    logits = torch.randn(
        n * batch, shape["vocab"], device=device, dtype=torch.bfloat16, generator=g
    )
    calls = {
        "rope_write": (
            lambda: ops.rope_write(q, k, v, rope, keys, values, rows, index),
            (q.numel() * 2 + k.numel() * 3 + v.numel() * 2) * 2,
        ),
        "score_tokens": (lambda: ops.score_tokens(logits, exclude=0), logits.numel() * 2),
    }
    out = []
    for op, (call, bytes_moved) in calls.items():
        times = {}
        for impl in ("triton", "torch"):
            use(impl)
            times[impl] = do_bench(call)
        out.append(
            dict(
                op=op,
                model=model,
                batch=batch,
                n=n,
                ms=times,
                gbps=bytes_moved / times["triton"] / 1e6,
            )
        )
    return out


def end_to_end(device, prompt: int = 512, gen: int = 256) -> dict:
    """ElasticCache + Threshold(0.9) generation of an 8B-shaped random-weight LLaDA, bf16, on both
    paths."""
    from dllm_accel import ElasticCache, Method, StopAtEOS, Threshold, measure
    from dllm_accel.models import released_config

    # LLaDA-8B-Instruct's config.json, random weights
    model = _random_model(released_config("llada"), device)
    ids = torch.randint(
        0, 126000, (1, prompt), device=device, generator=torch.Generator(device).manual_seed(0)
    )
    method = Method(Threshold(0.9), ElasticCache(), StopAtEOS(), None, 32)
    figures = {}
    for impl in ("triton", "torch"):
        use(impl)
        measure(method, model, ids, max_new_tokens=32)  # warm-up (compiles the kernels)
        out, measured = measure(method, model, ids, max_new_tokens=gen)
        figures[impl] = measured.report()
        figures[impl]["tokens"] = out.sequences[0, prompt:].tolist()
    same = figures["triton"].pop("tokens") == figures["torch"].pop("tokens")
    return dict(
        paths=figures,
        same_tokens=same,
        speedup=figures["triton"]["tokens_per_second"] / figures["torch"]["tokens_per_second"],
    )


def _random_model(config: dict, device):
    """An 8B-shaped model initialised on the GPU (build_model draws on the CPU, too slow at this
    size)."""
    from dllm_accel.models import model_class

    with torch.device("meta"):
        model = model_class("llada")(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    generator = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def compile_report(args) -> None:
    """The table of dllm_accel.kernels.aot's records: compiled now (into --json) or read back."""
    from dllm_accel.kernels import aot

    if args.from_json:
        with open(args.from_json) as file:
            records = json.load(file)["records"]
    else:
        reason = aot.unavailable()
        if reason:
            print(f"bench_kernels: no ahead-of-time compile here ({reason})")
            return
        records = aot.compile_report(args.json, quick=args.quick)
    print(
        f"{'kernel':21} {'target':6} {'dtype':5} {'config':58} {'warps':>5} {'regs':>4} "
        f"{'spills':>6} {'smem':>6} {'limit':>6} {'8B 16-bit':>9}"
    )
    for r in sorted(
        records, key=lambda r: (r["kernel"], r["target"], r["dtype"], str(r["config"]))
    ):
        config = " ".join(
            f"{key.removeprefix('BLOCK_')}={value}"
            for key, value in r["config"].items()
            if not key.endswith(("_DTYPE", "_PRECISION", "EPS")) and isinstance(value, bool | int)
        )
        print(
            f"{r['kernel']:21} {r['target']:6} {r['dtype']:5} {config[:58]:58} {r['num_warps']:>5} "
            f"{r['regs']:>4} {r['spill_bytes']:>6} {r['shared']:>6} {r['shared_limit']:>6} "
            f"{'yes' if r['large_16bit'] else '':>9}"
        )
    for target in aot.TARGETS:
        mine = [r for r in records if r["target"] == target]
        if mine:
            print(
                f"{target}: {len(mine)} compiles, max {max(r['regs'] for r in mine)} registers, "
                f"{sum(1 for r in mine if r['spill_bytes'])} spilling "
                f"(max {max(r['spill_bytes'] for r in mine)} bytes/thread), max shared "
                f"{max(r['shared'] for r in mine)} of {mine[0]['shared_limit']} bytes"
            )
    native = [r for r in records if r.get("driver_regs") is not None]
    if native:  # the CUDA driver's reading of this GPU's own target, against cuobjdump's
        differ = [r for r in native if r["driver_regs"] != r["regs"]]
        print(
            f"native: {len(native)} kernels loaded; driver registers differ from cuobjdump's in "
            f"{len(differ)}; driver spills (n_spills) nonzero in "
            f"{sum(1 for r in native if r['driver_spills'])}"
        )
    problems = aot.problems(records, any_spill=True)
    print("\n".join(problems) or "no compile over its shared memory or spilling")
    if problems:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (or compiles)")
    parser.add_argument(
        "--compile-report", action="store_true", help="compile every kernel for sm_80/sm_90"
    )
    parser.add_argument(
        "--json", default="outputs/aot_compile.json", help="where --compile-report writes"
    )
    parser.add_argument("--from-json", help="--compile-report: read these records, compile none")
    args = parser.parse_args()
    if args.compile_report:
        compile_report(args)
        return
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device here; nothing timed")
        return
    from triton.testing import do_bench

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peaks = peak(name)
    print(
        f"{name}; peak: "
        + (
            "unknown"
            if peaks is None
            else f"{peaks[0] / 1e12:.0f} TFLOP/s bf16, {peaks[1] / 1e12:.1f} TB/s"
        )
    )
    lengths = (512, 2048) if args.quick else (512, 1024, 2048)
    results = []
    for model in SHAPES:
        for batch in (1, 8):
            for n in (16, 48):
                for length in lengths:
                    results += bench_attention(batch, model, n, length, device, do_bench)
            results += bench_small_ops(batch, model, 48, device, do_bench)
    print(
        f"{'op':24} {'model':9} {'B':>2} {'n':>3} {'T':>5} {'kernel ms':>10} {'twin ms':>9} "
        f"{'eager ms':>9} "
        f"{'× twin':>7} {'TFLOP/s':>8} {'GB/s':>8}"
    )
    for r in results:
        ms = r["ms"]
        print(
            f"{r['op']:24} {r['model']:9} {r['batch']:>2} {r['n']:>3} {r.get('T', ''):>5} "
            f"{ms['triton']:>10.4f} "
            f"{ms['torch']:>9.4f} {ms.get('eager', float('nan')):>9.4f} "
            f"{ms['torch'] / ms['triton']:>7.2f} "
            f"{r.get('tflops', float('nan')):>8.1f} {r['gbps']:>8.0f}"
        )
    summary = dict(
        device=name, peak_flops=peaks and peaks[0], peak_bytes_per_s=peaks and peaks[1], ops=results
    )
    if args.end_to_end:
        summary["end_to_end"] = end_to_end(device)
        for impl, figures in summary["end_to_end"]["paths"].items():
            print(
                f"end to end, {impl} path: {figures['tokens_per_second']:.1f} tokens/s "
                f"({figures['nfe']} forwards, "
                f"recompute {figures['recompute_fraction']:.3f})"
            )
        print(
            f"end to end: same tokens {summary['end_to_end']['same_tokens']}, kernel path "
            f"{summary['end_to_end']['speedup']:.2f}× the twin path"
        )
    print(json.dumps(summary), file=sys.stdout)


if __name__ == "__main__":
    main()
