"""Side-by-side decoding benchmark on the bundled testbed: accuracy, speed, forwards, recompute,
memory.

    python experiments/bench.py --model tiny-llada --setting long --problems 200 --batch-sizes 1 8 \
        --out results/bench-tiny-llada-long
    python experiments/bench.py --model random-llada2 --lengths 64:256 256:512 \
        --out results/bench-random-llada2

`random-llada2`: a block-causal model in LLaDA2's layout with random weights (speed only: no
accuracy), random prompts of the given lengths (prompt:generated), LLaDA2's official loop against
the exact prefix cache, blocks of 32, every token decoded (FullLength).

Every method decodes the same held-out problems greedily, in one process, one after another, after
an untimed warm-up batch each. Settings (from the model's metrics.json): `short`, the question alone
and 48 generated tokens; `long`, the papers' shape, solved examples before the question and 256
tokens of which the answer fills a part and EOS the rest.

`tiny-llada-deep` (12 layers) decodes the long chains it was trained on (its metrics.json's
`eval_chain`); `--boundaries next drifting` adds ElasticCache's two refresh boundaries.

Accounting: see ACCOUNTING. Writes `<out>.json`, `<out>.md`, `<out>.png` (accuracy against
tokens/s) and `<out>-depth.png` (where in depth ElasticCache's refreshes start, per γ).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import math
import platform
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import transformers
from threads import set_threads

import dllm_accel
from dllm_accel import (
    ARGuide,
    BlockPrefixCache,
    DualCache,
    ElasticCache,
    FullLength,
    Measurement,
    Method,
    NoCache,
    PrefixCache,
    ScheduledThreshold,
    StopAtEOS,
    Threshold,
    measure,
)
from dllm_accel.checks import check_choice
from dllm_accel.models.tiny import tiny_config
from dllm_accel.syncs import HostSyncs
from dllm_accel.tasks import arith

ACCOUNTING = (
    "tokens/s counts each row's generated tokens up to and including its first EOS / end-of-turn, "
    "over the time "
    "spent inside `generate` (tokenization, scoring and an untimed warm-up batch per method "
    "excluded), so a "
    "method that stops at EOS and one that decodes the full length are credited with the same "
    "tokens. Accuracy "
    "is the right final number (95% Wilson interval), exact match the whole solution. NFE is "
    "forward passes per "
    "batch; tokens per forward divides the generated tokens by the row forwards. The recompute "
    "fraction is "
    "token × layer units computed over NoCache's on the same steps. Peak memory is measured on the "
    "warm-up "
    "batch: CUDA's peak allocation, on CPU the growth of the peak resident set (glibc is told to "
    "unmap large "
    "blocks on free, so it follows the live tensors). Speedups are tokens/s ratios against the "
    "official "
    "baseline (NoCache, one token per step over the full length), Fast-dLLM as released (DualCache "
    "+ "
    "Threshold(0.9), full length) and DualCache + Threshold(0.9) + StopAtEOS, at the same batch "
    "size; a method "
    "guided by an AR model (ARGuide) counts that model's time too, and is also compared with "
    "itself unguided "
    "(tokens/s and NFE ratios). NFE counts the diffusion model's forwards, AR forwards the "
    "guide's. Host syncs per step: the ops that make the host wait for the device "
    "(dllm_accel.syncs) over the decode steps of the first batch, counted in an extra untimed pass."
)
OFFICIAL = "official: NoCache + one token per step"
FAST_DLLM = "Fast-dLLM as released: DualCache + Threshold(0.9), full length"
DUAL = "DualCache + Threshold(0.9) + StopAtEOS"
GUIDED = "ARGuide"  # in the labels of the methods guided by the AR model
SETTINGS = ("short", "long")


@dataclass(frozen=True)
class Setting:
    shots: int
    gen_length: int
    block_length: int  # of the block-based methods (LLaDA's official sampler included)
    chain: arith.Chain = arith.CHAIN


def setting(model_name: str, name: str) -> Setting:
    """The testbed's `short` or `long` setting, as the model was trained for it (the chain lengths
    of its validation problems)."""
    check_choice(name, "setting", SETTINGS)
    metrics = json.loads((dllm_accel.assets.path(model_name) / "metrics.json").read_text())
    chain = arith.check_chain(metrics.get("eval_chain") or arith.CHAIN)
    if name == "long":
        if "long" not in metrics:
            raise ValueError(
                f"{model_name} was not trained for the long setting (no 'long' in its metrics.json)"
            )
        metrics = metrics["long"]
    return Setting(metrics["shots"], metrics["gen_length"], metrics["block_length"], chain)


def elastic_name(gamma: float, drift: str, guide: str = "", boundary: str = "next") -> str:
    """guide: "" (none), "ARGuide" or e.g. "ARGuide(exact)"; boundary: ElasticCache's
    refresh_from."""
    guided = f"{guide} + " if guide else ""
    start = "" if boundary == "next" else f", from {boundary}"
    return f"ElasticCache(γ {gamma}, {drift}{start}) + Threshold(0.9) + {guided}StopAtEOS"


def methods(
    model,
    gen_length: int,
    block_length: int,
    gammas=(0.8, 0.9, 0.95),
    drifts=("heads", "keys"),
    ar_model=None,
    boundaries=("next",),
) -> dict:
    """label -> dllm_accel.Method: the official baseline, Fast-dLLM as released, the caches with
    StopAtEOS (ElasticCache at every γ, drift axis and refresh boundary), and with an `ar_model`
    ElasticCache(γ 0.9, heads) guided by it (ARGuide's defaults, 'exact' acceptance, and
    correct=True)."""
    table = {
        OFFICIAL: Method.official(model, gen_length, block_length),
        FAST_DLLM: Method(Threshold(0.9), DualCache(), FullLength(), None, block_length),
        "PrefixCache + Threshold(0.9) + StopAtEOS": Method(
            Threshold(0.9), PrefixCache(), StopAtEOS(), None, block_length
        ),
        DUAL: Method(Threshold(0.9), DualCache(), StopAtEOS(), None, block_length),
    }
    for gamma in gammas:
        for drift in drifts:
            for boundary in boundaries:
                cache = ElasticCache(gamma=gamma, drift=drift, refresh_from=boundary)
                table[elastic_name(gamma, drift, boundary=boundary)] = Method(
                    Threshold(0.9), cache, StopAtEOS()
                )
    if ar_model is not None:
        for label, options in (
            (GUIDED, {}),
            (f"{GUIDED}(exact)", {"acceptance": "exact"}),
            (f"{GUIDED}(correct)", {"correct": True}),
        ):
            table[elastic_name(0.9, "heads", label)] = Method(
                Threshold(0.9), ElasticCache(gamma=0.9), StopAtEOS(), ARGuide(ar_model, **options)
            )
    return table


def decode(
    model,
    tokenizer,
    problems,
    batch_size: int,
    method: Method,
    shots: int,
    gen_length: int,
    chain=arith.CHAIN,
) -> dict:
    """Decode `problems` (of `chain` steps) in batches with `method`; the measured figures (see the
    module docstring): accuracy, the dllm_accel.Measurement's sums and ratios, NFE and AR forwards
    per batch, the warm-up batch's peak memory, the host syncs per decode step (dllm_accel.syncs,
    counted on the first batch in a pass of its own after the timed ones), and where depth the
    refreshes start: `first_refreshed_layers`, over the row forwards after each row's first, how
    many recomputed every position from layer 0, 1, ... (the last count: none, every layer
    reused its cache), and `refresh_rate`, the share that recomputed a layer."""
    batches = [
        dllm_accel.encode_chat(
            tokenizer, [arith.messages(p, shots, chain=chain) for p in problems[i : i + batch_size]]
        )
        for i in range(0, len(problems), batch_size)
    ]

    def run(batch):
        return measure(
            method,
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=gen_length,
            trace=True,  # a few tiny ops per step, alike for every method
        )

    with peak_memory(model.device) as memory:
        run(batches[0])  # warm-up, untimed
    correct = exact = 0
    measured = Measurement()
    first_refreshed = [0] * (model.n_layers + 1)
    for batch, start in zip(batches, range(0, len(problems), batch_size), strict=True):
        out, counts = run(batch)
        measured += counts
        texts = tokenizer.batch_decode(
            out.sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        chunk = problems[start : start + batch_size]
        correct += sum(map(arith.is_correct, texts, chunk))
        exact += sum(map(arith.is_exact, texts, chunk))
        for record in out.trace[1:]:
            if record.forwarded:
                for layer in record.first_full_layer.tolist():
                    if layer >= 0:  # -1: the row was not computed
                        first_refreshed[layer] += 1
    with HostSyncs() as syncs:  # untimed: the counter slows every op
        out, _ = run(batches[0])
    n = len(problems)
    refreshed = sum(first_refreshed[:-1])
    return dict(
        accuracy=correct / n,
        accuracy_ci95=wilson(correct, n),
        exact_match=exact / n,
        **measured.report(),
        nfe_per_batch=measured.nfe / len(batches),
        syncs_per_step=syncs.per_step(out),
        ar_forwards_per_batch=measured.ar_forwards / len(batches),
        peak_memory_mib=memory["mib"],
        method=method.name,
        guided=method.guide is not None,
        barred=barred(method),
        first_refreshed_layers=first_refreshed,
        refresh_rate=refreshed / max(1, refreshed + first_refreshed[-1]),
    )


RANDOM_LLADA2 = "random-llada2"
RANDOM_PROMPTS = "random prompts"
LLADA2_OFFICIAL = "official: NoCache + ScheduledThreshold (LLaDA2's generate)"


def block_causal_methods() -> dict:
    """LLaDA2's official loop and the prefix cache, blocks of 32, full length."""
    unmask = ScheduledThreshold()
    return {
        LLADA2_OFFICIAL: Method(unmask, NoCache(), FullLength(), None, 32),
        "BlockPrefixCache + ScheduledThreshold": Method(
            unmask, BlockPrefixCache(), FullLength(), None, 32
        ),
    }


def random_llada2(device) -> dllm_accel.DiffusionLM:
    """A tiny random model in LLaDA2's layout (4 layers, 8 experts of which 2 per token)."""
    config = tiny_config("llada2", n_layers=4, vocab=512)
    return dllm_accel.build_model(config, device=device)


def decode_random(model, batch_size: int, prompt_length: int, gen_length: int, method) -> dict:
    """decode()'s figures for random prompts (no accuracy): 4 timed batches after a warm-up."""
    generator = torch.Generator().manual_seed(prompt_length)
    spec = model.spec
    batches = [
        torch.randint(0, spec.vocab_size - 4, (batch_size, prompt_length), generator=generator)
        for _ in range(5)
    ]
    with peak_memory(model.device) as memory:
        measure(method, model, batches[0], max_new_tokens=gen_length)
    measured = Measurement()
    for ids in batches[1:]:
        measured += measure(method, model, ids, max_new_tokens=gen_length)[1]
    with HostSyncs() as syncs:
        out, _ = measure(method, model, batches[0], max_new_tokens=gen_length)
    return dict(
        accuracy=None,
        exact_match=None,
        **measured.report(),
        nfe_per_batch=measured.nfe / 4,
        layer_units_per_batch=measured.layer_units / 4,
        syncs_per_step=syncs.per_step(out),
        peak_memory_mib=memory["mib"],
        method=method.name,
        guided=False,
        barred=False,
    )


def barred(method: Method) -> bool:
    """The long-testbed issue's bars apply to ElasticCache(γ 0.9) + Threshold(0.9) + StopAtEOS,
    unguided."""
    return (
        method.guide is None
        and isinstance(method.cache, ElasticCache)
        and method.cache.gamma == 0.9
        and method.unmask == Threshold(0.9)
        and isinstance(method.stop, StopAtEOS)
    )


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a success rate."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return [max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)]


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "mib" holds, after the block, the block's peak memory growth."""
    result = {"mib": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: no resettable peak
        yield result
        return
    _return_large_blocks()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set to the current one
    before = _status_kib(status, "VmRSS")
    yield result
    result["mib"] = (_status_kib(status, "VmHWM") - before) / 1024


def _status_kib(status: Path, key: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


@functools.cache
def _return_large_blocks() -> None:
    """glibc: serve blocks above 64 KiB by mmap and unmap them on free, so the resident set follows
    the live tensors (otherwise freed memory stays resident and hides a later method's peak)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD


# -- reports ---------------------------------------------------------------------------------------
def with_ratios(results: dict, table: dict) -> dict:
    """Adds each method's tokens/s ratios against the official baseline, Fast-dLLM and DualCache,
    and to a guided method its unguided twin's label (`unguided`: the row of
    dataclasses.replace(method, guide=None)) with its tokens/s and NFE ratios against it."""
    for reference, key in (
        (OFFICIAL, "speedup"),
        (LLADA2_OFFICIAL, "speedup"),
        (FAST_DLLM, "vs_fast_dllm"),
        (DUAL, "vs_dualcache"),
    ):
        if reference in results:
            for r in results.values():
                r[key] = r["tokens_per_second"] / results[reference]["tokens_per_second"]
    by_name = {table[label].name: label for label in results}
    for label, r in results.items():
        method = table[label]
        twin = by_name.get(replace(method, guide=None).name) if method.guide is not None else None
        r["unguided"] = twin
        if twin is not None:
            r["vs_unguided"] = r["tokens_per_second"] / results[twin]["tokens_per_second"]
            r["nfe_vs_unguided"] = r["nfe"] / results[twin]["nfe"]
    return results


def markdown(report: dict, misses: dict | None = None) -> str:
    """The report's tables; `misses` {(batch size, method, column): bar} marks figures that miss a
    bar."""
    misses = misses or {}
    if report["setting"] == RANDOM_PROMPTS:
        what = (
            f"{report['problems']} random prompts per length (random weights: no accuracy), "
            f"{report['gen_length']} generated tokens"
        )
    else:
        chain = report.get("chain", arith.CHAIN)
        what = (
            f"{report['problems']} held-out problems of {chain[0]}-{chain[1]} steps, "
            f"{report['shots']} shots, {report['gen_length']} generated tokens"
        )
    lines = [
        f"{report['model']}, {report['setting']} setting: {what}, blocks of "
        f"{report['block_length']} (block-based methods), {report['threads']} threads on "
        f"{report['machine']}",
        "",
    ]
    for batch_size, results in report["runs"].items():
        lines += [
            f"Batch {batch_size}:",
            "",
            "| method | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
            "|" + " --- |" * (len(COLUMNS) + 1),
        ]
        for name, r in results.items():
            cells = []
            for key, _, show in COLUMNS:
                bar = misses.get((batch_size, name, key))
                cells.append(show(r) + (f" **✗ bar {bar}**" if bar else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + depth_table(report))


def depth_table(report: dict) -> list[str]:
    """Markdown lines: per batch size and method, the shares of the row forwards after each row's
    first by the first layer they refreshed (`first_refreshed_layers`); none when not measured."""
    rows = [
        (batch_size, name, r["first_refreshed_layers"])
        for batch_size, results in report["runs"].items()
        for name, r in results.items()
        if "first_refreshed_layers" in r
    ]
    if not rows:
        return []
    n_layers = len(rows[0][2]) - 1
    lines = [
        "Where refreshes start: the share of row forwards (after each row's first) whose first "
        "layer recomputing every position is 0, 1, ...; `none`: every layer reused its cache.",
        "",
        "| batch | method | " + " | ".join(map(str, range(n_layers))) + " | none |",
        "|" + " --- |" * (n_layers + 3),
    ]
    for batch_size, name, counts in rows:
        total = max(1, sum(counts))
        shares = " | ".join(f"{count / total:.0%}" if count else "·" for count in counts)
        lines.append(f"| {batch_size} | {name} | {shares} |")
    return lines + [""]


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.2f}" if key in r else "—"  # "—": the reference method was not in the run


COLUMNS = [  # (key, header, format)
    (
        "accuracy",
        "accuracy (95% CI)",
        lambda r: (
            "n/a"
            if r["accuracy"] is None
            else f"{r['accuracy']:.1%} ({r['accuracy_ci95'][0]:.1%}–{r['accuracy_ci95'][1]:.1%})"
        ),
    ),
    (
        "exact_match",
        "exact match",
        lambda r: "n/a" if r["exact_match"] is None else f"{r['exact_match']:.1%}",
    ),
    ("tokens_per_second", "tokens/s", lambda r: f"{r['tokens_per_second']:.0f}"),
    ("speedup", "× official", lambda r: _ratio(r, "speedup")),
    ("vs_fast_dllm", "× Fast-dLLM", lambda r: _ratio(r, "vs_fast_dllm")),
    ("vs_dualcache", "× DualCache", lambda r: _ratio(r, "vs_dualcache")),
    ("nfe_per_batch", "NFE / batch", lambda r: f"{r['nfe_per_batch']:.1f}"),
    (
        "ar_forwards_per_batch",
        "AR forwards / batch",
        lambda r: f"{r.get('ar_forwards_per_batch', 0):.1f}",
    ),
    (
        "vs_unguided",
        "guided: × tokens/s, × NFE",
        lambda r: (
            f"{r['vs_unguided']:.2f}, {r['nfe_vs_unguided']:.2f}" if "vs_unguided" in r else "—"
        ),
    ),
    ("tokens_per_forward", "tokens / forward", lambda r: f"{r['tokens_per_forward']:.2f}"),
    ("recompute_fraction", "recompute", lambda r: f"{r['recompute_fraction']:.3f}"),
    (
        "layer_units_per_batch",
        "layer units / batch",
        lambda r: f"{r['layer_units_per_batch']:.0f}" if "layer_units_per_batch" in r else "—",
    ),
    (
        "syncs_per_step",
        "host syncs / step",
        lambda r: f"{r['syncs_per_step']:.1f}" if "syncs_per_step" in r else "—",
    ),
    (
        "peak_memory_mib",
        "peak memory (MiB)",
        lambda r: "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.1f}",
    ),
]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    markers = "osd^v"
    speed_only = all(
        r["accuracy"] is None for results in report["runs"].values() for r in results.values()
    )
    for (batch_size, results), marker in zip(report["runs"].items(), markers, strict=False):
        for i, (name, r) in enumerate(results.items()):
            axis.scatter(
                r["tokens_per_second"],
                r["layer_units_per_batch"] if speed_only else 100 * r["accuracy"],
                marker=marker,
                color=f"C{i % 10}",
                label=name if marker == markers[0] else None,
            )
        axis.plot([], [], marker, color="gray", label=f"batch {batch_size}")
    axis.set_xscale("log")
    axis.set_xlabel("tokens/s (log)")
    if speed_only:
        axis.set_yscale("log")
    axis.set_ylabel("layer units / batch (log)" if speed_only else "accuracy (%)")
    axis.set_title(f"{report['model']}, {report['setting']} setting, {report['problems']} problems")
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_depth(report: dict, path: Path) -> None:
    """The first refreshed layer's distribution (depth_table), one panel per ElasticCache drift axis
    and boundary at the first batch size, a line per γ, DualCache's for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch_size, results = next(iter(report["runs"].items()))
    panels: dict[str, dict] = {}
    for name, r in results.items():
        if name.startswith("ElasticCache(") and GUIDED not in name:
            gamma, rest = name[len("ElasticCache(γ ") :].split(")")[0].split(", ", 1)
            panels.setdefault(rest, {})[gamma] = r["first_refreshed_layers"]
    if not panels:
        return
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, lines) in zip(axes.flat, panels.items(), strict=False):
        references = {DUAL: results[DUAL]["first_refreshed_layers"]} if DUAL in results else {}
        for i, (label, counts) in enumerate({**lines, **references}.items()):
            shares = [100 * c / max(1, sum(counts)) for c in counts]
            style = "--" if label == DUAL else "-o"
            name = "DualCache + τ0.9" if label == DUAL else f"γ {label}"
            axis.plot(range(len(shares)), shares, style, color=f"C{i}", label=name, markersize=3)
        n_layers = len(next(iter(lines.values()))) - 1
        axis.set_xticks(range(n_layers + 1), [*map(str, range(n_layers)), "none"], fontsize=7)
        axis.set_xlabel("first refreshed layer")
        axis.set_ylabel("% of row forwards after the first")
        axis.set_title(f"drift: {title}", fontsize=9)
        axis.legend(fontsize=7)
    figure.suptitle(f"{report['model']}, {report['setting']} setting, batch {batch_size}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def environment(threads: int, device: torch.device) -> dict:
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"{platform.processor() or platform.machine()} CPU")
    )
    return dict(
        machine=machine,
        threads=threads,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        dllm_accel=dllm_accel.__version__,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=["tiny-llada", "tiny-dream", "tiny-llada-deep", RANDOM_LLADA2],
        default="tiny-llada",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        default=["64:256", "256:512"],
        metavar="PROMPT:GENERATED",
        help=f"{RANDOM_LLADA2} only: prompt and generation lengths",
    )
    parser.add_argument("--setting", choices=SETTINGS, default="long")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--drifts", nargs="+", choices=["heads", "keys"], default=["heads", "keys"])
    parser.add_argument(
        "--boundaries",
        nargs="+",
        choices=["next", "drifting"],
        default=["next"],
        help="ElasticCache's refresh_from values",
    )
    parser.add_argument(
        "--ar",
        default="tiny-ar",
        help="the ARGuide's model: a bundled name or a directory; 'none' leaves the guided row out",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        metavar="TEXT",
        help="only the methods whose name contains one of these texts (default: all)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write <out>.json, <out>.md and <out>.png")
    args = parser.parse_args()
    if args.problems < 1 or min(args.batch_sizes) < 1:
        parser.error("--problems and --batch-sizes must be >= 1")
    set_threads(args.threads)
    if args.model == RANDOM_LLADA2:
        return bench_random_llada2(args)
    model = dllm_accel.load_model(args.model, device=args.device)
    tokenizer = dllm_accel.load_tokenizer(args.model)
    shape = setting(args.model, args.setting)
    problems = arith.problems(args.problems, seed=0, split="test", chain=shape.chain)
    table = methods(
        model,
        shape.gen_length,
        shape.block_length,
        args.gammas,
        args.drifts,
        None if args.ar == "none" else dllm_accel.load_ar_model(args.ar, device=model.device),
        args.boundaries,
    )
    if args.methods:
        table = {name: m for name, m in table.items() if any(text in name for text in args.methods)}
        if not table:
            parser.error(f"no method's name contains any of {args.methods}")
    report = dict(
        model=args.model,
        setting=args.setting,
        problems=len(problems),
        **vars(shape),
        command=shlex.join(["python", "experiments/bench.py", *sys.argv[1:]]),
        **environment(args.threads, model.device),
        runs={},
    )
    print(markdown({**report, "runs": {}}), flush=True)
    for batch_size in args.batch_sizes:
        results = {}
        for name, method in table.items():
            results[name] = decode(
                model,
                tokenizer,
                problems,
                batch_size,
                method,
                shape.shots,
                shape.gen_length,
                shape.chain,
            )
            print(f"batch {batch_size} | {name} | " + json.dumps(results[name]), flush=True)
        report["runs"][str(batch_size)] = with_ratios(results, table)
        if args.out:  # after each batch size, so a long run killed later keeps what it measured
            write(report, args.out)
    print(markdown(report))


def bench_random_llada2(args) -> None:
    model = random_llada2(args.device)
    table = block_causal_methods()
    report = dict(
        model=RANDOM_LLADA2,
        setting=RANDOM_PROMPTS,
        problems=4,
        shots=0,
        gen_length="/".join(length.split(":")[1] for length in args.lengths),
        block_length=32,
        command=shlex.join(["python", "experiments/bench.py", *sys.argv[1:]]),
        **environment(args.threads, model.device),
        runs={},
    )
    for batch_size in args.batch_sizes:
        for lengths in args.lengths:
            prompt_length, gen_length = (int(n) for n in lengths.split(":"))
            results = {
                name: decode_random(model, batch_size, prompt_length, gen_length, method)
                for name, method in table.items()
            }
            key = f"{batch_size}, prompt {prompt_length}, {gen_length} generated"
            report["runs"][key] = with_ratios(results, table)
            print(f"batch {key} | " + json.dumps(results), flush=True)
    if args.out:
        write(report, args.out)
    print(markdown(report))


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report) + "\n")
    plot(report, out.with_suffix(".png"))
    plot_depth(report, out.with_name(out.name + "-depth.png"))


if __name__ == "__main__":
    main()
