"""Drift sensitivity: how ElasticCache's accuracy and work move with its similarity bar γ.

    python experiments/drift_sweep.py --model tiny-llada --setting long --problems 200 \
        --batch-size 8 --out results/drift-tiny-llada-long

γ 0 never refreshes after the first forward (only the committed tokens' own rows and the window are
recomputed); γ 1.01 refreshes at every step. If γ 0 scores as well as γ 0.9, the setting cannot
judge the drift test; `--thresholds` (lower τ commits more tokens per step, so the cache goes stale
faster) and `--windows` look for one where it can. Each row decodes the same held-out problems with
ElasticCache(γ) + Threshold(τ) + StopAtEOS; "NoCache" is the same unmask and stop without a cache.
Writes `<out>.json` and `<out>.md`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench import SETTINGS, decode, environment, setting
from threads import set_threads

import dllm_accel
from dllm_accel import ElasticCache, Method, NoCache, StopAtEOS, Threshold
from dllm_accel.tasks import arith

GAMMAS = [0.0, 0.5, 0.8, 0.9, 0.95, 1.01]


def sweep(
    model, tokenizer, problems, shape, batch_size, thresholds, windows, gammas, drift
) -> list[dict]:
    rows = []
    for tau in thresholds:
        for window in windows:
            plain = Method(Threshold(tau), NoCache(), StopAtEOS())
            caches = [("NoCache", plain)] + [
                (
                    gamma,
                    Method(
                        Threshold(tau),
                        ElasticCache(gamma=gamma, window=window, drift=drift),
                        StopAtEOS(),
                    ),
                )
                for gamma in gammas
            ]
            for gamma, method in caches:
                result = decode(
                    model,
                    tokenizer,
                    problems,
                    batch_size,
                    method,
                    shape.shots,
                    shape.gen_length,
                    shape.chain,
                )
                rows.append(dict(tau=tau, window=window, gamma=gamma, **result))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']}, {report['setting']} setting, {report['problems']} held-out problems, "
        "batch "
        f"{report['batch_size']}, drift axis '{report['drift']}': ElasticCache(γ) + Threshold(τ) + "
        "StopAtEOS",
        "",
        "| τ | window | γ | accuracy (95% CI) | exact match | refresh rate | recompute | tokens/s "
        "|",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        low, high = r["accuracy_ci95"]
        rate = f"{r['refresh_rate']:.3f}" if "refresh_rate" in r else "—"
        lines.append(
            f"| {r['tau']} | {r['window']} | {r['gamma']} | "
            f"{r['accuracy']:.1%} ({low:.1%}–{high:.1%}) | "
            f"{r['exact_match']:.1%} | {rate} | {r['recompute_fraction']:.3f} | "
            f"{r['tokens_per_second']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny-llada", "tiny-dream"], default="tiny-llada")
    parser.add_argument("--setting", choices=SETTINGS, default="long")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gammas", type=float, nargs="+", default=GAMMAS)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9])
    parser.add_argument("--windows", type=int, nargs="+", default=[16])
    parser.add_argument("--drift", choices=["heads", "keys"], default="heads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    set_threads(args.threads)
    model, tokenizer = dllm_accel.load_model(args.model), dllm_accel.load_tokenizer(args.model)
    shape = setting(args.model, args.setting)
    problems = arith.problems(args.problems, seed=0, split="test", chain=shape.chain)
    rows = sweep(
        model,
        tokenizer,
        problems,
        shape,
        args.batch_size,
        args.thresholds,
        args.windows,
        args.gammas,
        args.drift,
    )
    report = dict(
        model=args.model,
        setting=args.setting,
        problems=len(problems),
        batch_size=args.batch_size,
        drift=args.drift,
        **vars(shape),
        command=shlex.join(["python", "experiments/drift_sweep.py", *sys.argv[1:]]),
        **environment(args.threads, model.device),
        rows=rows,
    )
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report) + "\n")


if __name__ == "__main__":
    main()
