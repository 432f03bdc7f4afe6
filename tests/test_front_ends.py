"""One method on the same problems through run.py, bench.py and lm_eval: the same counts from all
three.

ElasticCache + Threshold(0.9) + StopAtEOS in blocks of 24 on the bundled tiny LLaDA, four held-out
arith problems decoded one at a time (the recompute fraction of a batch depends on its padding), 48
tokens.
"""

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import dllm_accel
from dllm_accel import Measurement, Method, StopAtEOS, Threshold
from dllm_accel.policies import ElasticCache
from dllm_accel.tasks import arith

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import bench  # noqa: E402
import run  # noqa: E402

GEN, BLOCK, N = 48, 24, 4
METHOD = Method(Threshold(0.9), ElasticCache(), StopAtEOS(), None, BLOCK)
COUNTS = ("samples", "generated_tokens", "nfe", "row_forwards", "layer_units", "full_units")


def through_run(tmp_path) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[
                f"max_new_tokens={GEN}",
                f"block_length={BLOCK}",
                f"task.limit={N}",
                "batch_size=1",
                "baseline=false",
                "guide=none",
                "refresh_plot=false",
                "warmup=false",
            ],
        )
    summary = run.run(cfg, tmp_path / "run")
    assert list(summary["methods"]) == [METHOD.name]  # the Hydra groups built this very Method
    return summary["methods"][METHOD.name]


def through_bench() -> dict:
    model, tokenizer = dllm_accel.load_model("tiny-llada"), dllm_accel.load_tokenizer("tiny-llada")
    return bench.decode(
        model, tokenizer, arith.problems(N, seed=0), 1, METHOD, shots=0, gen_length=GEN
    )


def through_lm_eval() -> dict:
    lm_eval = pytest.importorskip("dllm_accel.lm_eval")
    from lm_eval.api.instance import Instance

    lm = lm_eval.DllmAccelLM.create_from_arg_string(
        f"pretrained=tiny-llada,device=cpu,max_new_tokens={GEN},block_length={BLOCK},batch_size=1,"
        "unmask=threshold,tau=0.9,cache=elastic_cache,stop=stop_at_eos"
    )
    assert lm.method(GEN).name == METHOD.name
    contexts = [lm.apply_chat_template(arith.messages(p)) for p in arith.problems(N, seed=0)]
    lm.generate_until(
        [
            Instance("generate_until", {}, (c, {"until": [], "max_gen_toks": GEN}), i)
            for i, c in enumerate(contexts)
        ]
    )
    return lm.get_model_info()


def test_run_bench_and_lm_eval_count_the_same(tmp_path):
    figures = {
        "run.py": through_run(tmp_path),
        "bench.py": through_bench(),
        "lm_eval": through_lm_eval(),
    }
    counts = {front: tuple(f[key] for key in COUNTS) for front, f in figures.items()}
    print(COUNTS, counts)
    assert counts["run.py"] == counts["bench.py"] == counts["lm_eval"]
    samples, tokens, nfe, row_forwards, units, full_units = counts["bench.py"]
    assert samples == N and tokens > N and nfe == row_forwards > 0 and 0 < units < full_units
    fractions = {front: f["recompute_fraction"] for front, f in figures.items()}
    assert len(set(fractions.values())) == 1 and fractions["bench.py"] == units / full_units


def test_measurements_add_and_their_ratios_follow_from_the_sums():
    a = Measurement(
        samples=2,
        generated_tokens=30,
        seconds=1.5,
        nfe=10,
        row_forwards=16,
        layer_units=40,
        full_units=100,
        ar_forwards=1,
        ar_tokens=5,
    )
    b = Measurement(
        samples=1,
        generated_tokens=10,
        seconds=0.5,
        nfe=4,
        row_forwards=4,
        layer_units=10,
        full_units=100,
        peak_memory_bytes=7,
    )
    total = sum([a, b])
    assert total == a + b
    assert (total.samples, total.generated_tokens, total.nfe, total.peak_memory_bytes) == (
        3,
        40,
        14,
        7,
    )
    assert total.tokens_per_second == 20.0 and total.tokens_per_forward == 2.0
    assert total.recompute_fraction == 0.25 and total.nfe_per_sample == 14 / 3
    assert Measurement().tokens_per_second == 0.0 and Measurement().recompute_fraction == 0.0


def test_measure_times_one_generate_and_counts_what_it_returns():
    model = dllm_accel.load_model("tiny-llada")
    tokenizer = dllm_accel.load_tokenizer("tiny-llada")
    batch = dllm_accel.encode_chat(
        tokenizer, [arith.messages(p) for p in arith.problems(2, seed=0)]
    )
    out, measured = dllm_accel.measure(
        METHOD, model, batch["input_ids"], batch["attention_mask"], max_new_tokens=GEN
    )
    assert measured == Measurement.of(out, measured.seconds) and measured.seconds > 0
    assert (
        measured.generated_tokens == int(out.generated_tokens.sum())
        and measured.peak_memory_bytes is None
    )
    assert measured.recompute_fraction == out.recompute_fraction < 1
