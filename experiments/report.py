"""What a run leaves in its directory: samples.jsonl (appended batch by batch, every record stamped
with its settings' fingerprint), run.json (the settings a resumed run must keep), .lock (held while
a run writes the directory), summary.json, the plots; and the side-by-side table it prints."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from dllm_accel import Measurement  # noqa: E402

LOCK = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be (re)used as it is: locked, unwritable, damaged, or from other
    settings."""


class Records:
    """samples.jsonl: one JSON object per decoded sample, appended and synced after every batch, so
    an interrupted run loses at most the batch in flight. `settings` (a fingerprint) is stamped on
    every record appended, so that the settings travel with the samples."""

    def __init__(self, path: Path, settings: str | None = None):
        self.path, self.settings = path, settings

    def read(self) -> list[dict]:
        return [record for _, record in self.numbered()]

    def numbered(self) -> list[tuple[int, dict]]:
        """(line number, record) of each record. A half-written last line is dropped (its sample is
        decoded again); any other damaged line, and a (method, id) recorded twice, is a RunDirError
        naming the lines."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        numbered = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                if number != len(lines):  # not an unterminated last line: a damaged file
                    raise RunDirError(
                        f"{self.path}, line {number}, is not JSON ({error}); only an interrupted "
                        f"last line is repaired"
                    ) from error
                self._drop_last_line(len(line))
                break
            if not (
                isinstance(record, dict)
                and all(isinstance(record.get(key), str) for key in ("method", "id"))
            ):
                raise RunDirError(
                    f"{self.path}, line {number}, is not a sample record (a JSON object with the "
                    f"strings \"method\" and \"id\"): {line[:200]!r}"
                )
            numbered.append((number, record))
        else:
            if lines[-1].strip():  # a whole last record whose newline was never written
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        _check_once(numbered, str(self.path))
        return numbered

    def keys(self) -> set[tuple[str, str]]:
        return {(r["method"], r["id"]) for r in self.read()}

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        stamp = {} if self.settings is None else {"settings": self.settings}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps({**r, **stamp}, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def _drop_last_line(self, length: int) -> None:
        """An interrupted write left a partial last line: cut it, so that its sample is decoded
        again."""
        logging.getLogger("run").warning(
            f"{self.path}: dropped an interrupted last line ({length} bytes); its "
            f"sample is decoded again"
        )
        with open(self.path, "rb+") as f:
            f.truncate(self.path.stat().st_size - length)


def _check_once(numbered: list[tuple[int, dict]], source: str) -> None:
    """A RunDirError naming every (method, id) recorded more than once, with its line numbers."""
    lines = {}
    for number, record in numbered:
        lines.setdefault((record["method"], record["id"]), []).append(number)
    twice = [
        f"method {method!r} id {id_!r} (lines {', '.join(map(str, numbers))})"
        for (method, id_), numbers in lines.items()
        if len(numbers) > 1
    ]
    if twice:
        raise RunDirError(
            f"{source}: samples recorded more than once: {'; '.join(twice[:10])}"
            f"{f' and {len(twice) - 10} more' if len(twice) > 10 else ''}; a sample is decoded "
            f"once: delete the extra lines, or choose a new hydra.run.dir"
        )


# -- the run directory
# --------------------------------------------------------------------------------
def open_run_dir(
    out_dir: Path, identity: dict, records: Records
) -> tuple[IO, set[tuple[str, str]]]:
    """Checks and claims a run directory before any model is loaded: writable, locked for this run,
    every record whole and once, all of it decoded with these settings. -> (the lock, to close when
    the run is over; the (method, id) of the samples already there). Refusals are RunDirErrors."""
    check_writable(out_dir, records.path)
    lock = take_lock(out_dir)
    try:
        return lock, check_same_run(out_dir / "run.json", identity, records)
    except BaseException:
        lock.close()
        raise


def check_writable(out_dir: Path, samples: Path) -> None:
    """Makes the directory; a RunDirError unless a file can be made in it and samples.jsonl appended
    to."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-check-"):
            pass
        if samples.exists():
            open(samples, "ab").close()
    except OSError as error:
        raise RunDirError(
            f"the run directory {out_dir} cannot be written ({error}); make it writable or choose "
            f"another hydra.run.dir"
        ) from error


def take_lock(out_dir: Path) -> IO:
    """The run directory's lock (an flock on .lock, which holds the pid), held while the returned
    file is open and released by the system when the process ends however it ends; a RunDirError
    naming the other run's pid when another run holds it."""
    path = out_dir / LOCK
    try:
        lock = open(path, "a+", encoding="utf-8")
    except OSError as error:
        raise RunDirError(f"{path} cannot be opened ({error}): the run directory's lock") from error
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        other = lock.read().strip() or "unknown, starting"
        lock.close()
        raise RunDirError(
            f"{out_dir} is in use by another run (pid {other}); wait for it to end or choose "
            f"another hydra.run.dir"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def fingerprint(identity: dict) -> str:
    """A short hash of the settings that decide the outputs, stamped on every record."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_same_run(path: Path, identity: dict, records: Records) -> set[tuple[str, str]]:
    """Refuses (RunDirError) a directory holding samples decoded with other settings: run.json
    (path) must hold these settings, and every record their fingerprint, so that deleting run.json
    disables nothing (a record without a fingerprint is accepted only beside a run.json that
    matches). Writes run.json when it is absent; -> the (method, id) of the samples already
    decoded."""
    if path.exists():
        changed = sorted(_differences(_read_settings(path), identity))
        if changed:
            raise RunDirError(
                f"{path.parent} holds samples decoded with other settings ({', '.join(changed)}); "
                f"resume with the same settings or choose a new hydra.run.dir"
            )
    settings = fingerprint(identity)
    # what a record from before the fingerprints is taken for
    vouched = settings if path.exists() else None
    numbered = records.numbered()
    other = [number for number, record in numbered if record.get("settings", vouched) != settings]
    if other:
        missing = "" if path.exists() else f" and no {path.name} names them"
        raise RunDirError(
            f"{records.path} holds samples decoded with other settings than this run's "
            "(fingerprint "
            f"{settings}): lines {_spans(other)}{missing}; resume with their settings or choose a "
            f"new hydra.run.dir"
        )
    if not path.exists():
        _write_atomically(path, json.dumps(identity, indent=2) + "\n")
    return {(record["method"], record["id"]) for _, record in numbered}


def _read_settings(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(
            f"{path} is damaged ({error}); it records the run's settings: restore it, or delete it "
            f"to resume with the settings the samples carry"
        ) from error
    if not isinstance(settings, dict):
        raise RunDirError(
            f"{path} is damaged (not a JSON object); restore it, or delete it to resume with the "
            f"settings the samples carry"
        )
    return settings


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    spans = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _differences(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield f"{prefix[:-1]}: {a!r} -> {b!r}"


def summarize(
    records: list[dict],
    task: str,
    methods: list[str],
    sample_ids: list[str],
    config: dict,
    traces: dict[str, list[int]],
    n_layers: int,
) -> dict:
    """summary.json: the last method's figures at the top level, every method's under "methods"."""
    # none counted twice
    _check_once(list(enumerate(records, 1)), "the records to summarize (numbered from 1)")
    wanted = set(sample_ids)
    per_method = {}
    for name in methods:
        rows = [r for r in records if r["method"] == name and r["id"] in wanted]
        per_method[name] = _figures(rows)
    baseline = per_method.get(methods[0], {}).get("tokens_per_second")
    for figures in per_method.values():
        if len(methods) > 1 and baseline:
            figures["speedup"] = figures["tokens_per_second"] / baseline
    return {
        "task": task,
        **per_method[methods[-1]],
        "methods": per_method,
        "first_full_layer": {"n_layers": n_layers, "per_step": traces},
        "config": config,
    }


# a record's share of its batch's Measurement: these sums divided by the batch's samples
SHARED = ("seconds", "nfe", "layer_units", "full_units", "ar_forwards", "ar_tokens")


def sample_counts(measured: Measurement, generated_tokens: int, row_forwards: int) -> dict:
    """One sample's counts for samples.jsonl: its own generated tokens and row forwards, and its
    share of the batch's other sums, so that summing records gives the batch's Measurement."""
    share = {key: getattr(measured, key) / measured.samples for key in SHARED}
    return {
        "samples": 1,
        "generated_tokens": generated_tokens,
        "row_forwards": row_forwards,
        **share,
    }


def measurement(rows: list[dict]) -> Measurement:
    """The Measurement of these samples.jsonl records (their sums)."""
    keys = ("samples", "generated_tokens", "row_forwards", *SHARED)
    return Measurement(**{key: sum(r[key] for r in rows) for key in keys})


def _figures(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "n": n,
        "accuracy": sum(bool(r["correct"]) for r in rows) / max(1, n),
        **measurement(
            rows
        ).report(),  # the sums and their ratios, as dllm_accel.Measurement names them
        # the task's other yes/no scores as rates: GSM8K's strict_correct, arith's exact_match
        **{key: sum(bool(r[key]) for r in rows) / max(1, n) for key in _other_checks(rows)},
    }


def _other_checks(rows: list[dict]) -> list[str]:
    first = rows[0] if rows else {}
    return sorted(
        key
        for key, value in first.items()
        if isinstance(value, bool) and key not in ("correct", "guided")
    )


def write(summary: dict, out_dir: Path) -> None:
    _write_atomically(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    traces = summary["first_full_layer"]["per_step"]
    if traces:
        n_layers = summary["first_full_layer"]["n_layers"]
        plot_first_full_layer(traces, n_layers, out_dir / "first_full_layer.png")
    if len(summary["methods"]) > 1:
        plot_accuracy_vs_speed(
            summary["methods"], summary["task"], out_dir / "accuracy_vs_speed.png"
        )


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def plot_first_full_layer(traces: dict[str, list[int]], n_layers: int, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for name, layers in traces.items():
        axes.step(range(len(layers)), layers, where="mid", label=name, marker=".")
    axes.set(
        xlabel="decoding step (first sample)",
        ylabel="first full layer",
        ylim=(-0.5, n_layers + 0.5),
        title=f"first layer recomputing every position (0: full forward; {n_layers}: all reused)",
    )
    _save_with_legend_below(figure, axes, path)


def plot_accuracy_vs_speed(methods: dict[str, dict], task: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, figures in methods.items():
        axes.scatter(figures["tokens_per_second"], figures["accuracy"], s=40, label=name)
    fastest = max(f["tokens_per_second"] for f in methods.values())
    axes.set(
        xlabel="tokens / s",
        ylabel="accuracy",
        title=f"{task}: accuracy against speed",
        ylim=(-0.05, 1.05),
        xlim=(0, 1.1 * fastest or 1),
    )
    axes.grid(alpha=0.3)
    _save_with_legend_below(figure, axes, path)


def _save_with_legend_below(figure, axes, path: Path) -> None:
    """Method names are long (derived from every setting): one legend row each, under the axes."""
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def table(summary: dict) -> str:
    lines = [
        f"{summary['task']}: {summary['n']} samples",
        "| method | accuracy | tokens/s | speedup | NFE | row forwards / sample | AR forwards | "
        "recompute fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in summary["methods"].items():
        lines.append(
            f"| {name} | {f['accuracy']:.1%} | {f['tokens_per_second']:.1f} | "
            f"{f.get('speedup', 1.0):.2f}× "
            f"| {f['nfe']:.0f} | {f['row_forwards_per_sample']:.1f} | {f['ar_forwards']:.0f} "
            f"| {f['recompute_fraction']:.3f} |"
        )
    return "\n".join(lines)
