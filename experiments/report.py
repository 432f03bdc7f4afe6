"""What a run leaves in its directory: samples.jsonl (appended batch by batch), run.json (the settings
a resumed run must keep), summary.json, the plots; and the side-by-side table it prints."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


class Records:
    """samples.jsonl: one JSON object per decoded sample, appended and synced after every batch, so an
    interrupted run loses at most the batch in flight."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number != len(lines):  # not an unterminated last line: a damaged file
                    raise ValueError(f"{self.path}, line {number}, is not JSON ({error}); only an interrupted "
                                     f"last line is repaired") from error
                self._drop_last_line(len(line))
                return records
        if lines[-1].strip():  # a whole last record whose newline was never written
            with open(self.path, "ab") as f:
                f.write(b"\n")
        return records

    def keys(self) -> set[tuple[str, str]]:
        return {(r["method"], r["id"]) for r in self.read()}

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def _drop_last_line(self, length: int) -> None:
        """An interrupted write left a partial last line: cut it, so that its sample is decoded again."""
        logging.getLogger("run").warning(f"{self.path}: dropped an interrupted last line ({length} bytes); its "
                                         f"sample is decoded again")
        with open(self.path, "rb+") as f:
            f.truncate(self.path.stat().st_size - length)


def check_same_run(path: Path, identity: dict) -> str | None:
    """Why a directory whose samples came from other settings cannot be resumed (None: it can; the
    settings are then recorded)."""
    if path.exists():
        changed = sorted(_differences(json.loads(path.read_text()), identity))
        if changed:
            return (f"{path.parent} holds samples decoded with other settings ({', '.join(changed)}); "
                    f"resume with the same settings or choose a new hydra.run.dir")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(identity, indent=2) + "\n")
    return None


def _differences(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield f"{prefix[:-1]}: {a!r} -> {b!r}"


def summarize(records: list[dict], task: str, methods: list[str], sample_ids: list[str], config: dict,
              traces: dict[str, list[int]], n_layers: int) -> dict:
    """summary.json: the last method's figures at the top level, every method's under "methods"."""
    wanted = set(sample_ids)
    per_method = {}
    for name in methods:
        rows = [r for r in records if r["method"] == name and r["id"] in wanted]
        per_method[name] = _figures(rows)
    baseline = per_method.get(methods[0], {}).get("tokens_per_second")
    for figures in per_method.values():
        if len(methods) > 1 and baseline:
            figures["speedup"] = figures["tokens_per_second"] / baseline
    return {"task": task, **per_method[methods[-1]], "methods": per_method,
            "refresh_layers": {"n_layers": n_layers, "per_step": traces}, "config": config}


def _figures(rows: list[dict]) -> dict:
    n = len(rows)
    tokens, seconds, nfe = (sum(r[key] for r in rows) for key in ("generated_tokens", "seconds", "nfe"))
    return {
        "n": n,
        "accuracy": sum(bool(r["correct"]) for r in rows) / max(1, n),
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "nfe_mean": nfe / max(1, n),
        "ar_forwards_mean": sum(r.get("ar_forwards", 0) for r in rows) / max(1, n),  # an ARGuide's model
        # each sample carries its batch's fraction; weighted by the forwards that computed the sample
        "recompute_fraction": sum(r["recompute_fraction"] * r["nfe"] for r in rows) / max(1, nfe),
        "generated_tokens_mean": tokens / max(1, n),
        "seconds": seconds,
        # the task's other yes/no scores as rates: GSM8K's strict_correct, arith's exact_match
        **{key: sum(bool(r[key]) for r in rows) / max(1, n) for key in _other_checks(rows)},
    }


def _other_checks(rows: list[dict]) -> list[str]:
    first = rows[0] if rows else {}
    return sorted(key for key, value in first.items() if isinstance(value, bool) and key != "correct")


def write(summary: dict, out_dir: Path) -> None:
    _write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    traces = summary["refresh_layers"]["per_step"]
    if traces:
        plot_refresh_layers(traces, summary["refresh_layers"]["n_layers"], out_dir / "refresh_layers.png")
    if len(summary["methods"]) > 1:
        plot_accuracy_vs_speed(summary["methods"], summary["task"], out_dir / "accuracy_vs_speed.png")


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def plot_refresh_layers(traces: dict[str, list[int]], n_layers: int, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for name, layers in traces.items():
        axes.step(range(len(layers)), layers, where="mid", label=name, marker=".")
    axes.set(xlabel="decoding step (first sample)", ylabel="first recomputed layer",
             ylim=(-0.5, n_layers + 0.5), title=f"refresh depth per step (0: full forward; {n_layers}: all reused)")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_accuracy_vs_speed(methods: dict[str, dict], task: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, figures in methods.items():
        axes.scatter(figures["tokens_per_second"], figures["accuracy"], s=40)
        axes.annotate(name, (figures["tokens_per_second"], figures["accuracy"]), fontsize="small",
                      xytext=(4, 4), textcoords="offset points")
    fastest = max(f["tokens_per_second"] for f in methods.values())
    axes.set(xlabel="tokens / s", ylabel="accuracy", title=f"{task}: accuracy against speed", ylim=(-0.05, 1.05),
             xlim=(0, 1.4 * fastest or 1))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(summary: dict) -> str:
    lines = [f"{summary['task']}: {summary['n']} samples",
             "| method | accuracy | tokens/s | speedup | NFE | AR forwards | recompute fraction |",
             "|---|---|---|---|---|---|---|"]
    for name, f in summary["methods"].items():
        lines.append(f"| {name} | {f['accuracy']:.1%} | {f['tokens_per_second']:.1f} | {f.get('speedup', 1.0):.2f}× "
                     f"| {f['nfe_mean']:.1f} | {f['ar_forwards_mean']:.1f} | {f['recompute_fraction']:.3f} |")
    return "\n".join(lines)
