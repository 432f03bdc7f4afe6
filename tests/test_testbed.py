"""The bundled testbed: tokenizer, models loadable by name, and each solving held-out problems."""

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import dllm_accel
from dllm_accel import (
    DreamAlgorithm,
    DualCache,
    ElasticCache,
    LowConfidence,
    NoCache,
    PrefixCache,
    Sampler,
    StopAtEOS,
    Threshold,
)
from dllm_accel.tasks import arith

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import bench  # noqa: E402
import train_tiny  # noqa: E402

HELD_OUT = arith.problems(24, seed=123, split="test")


@pytest.fixture(scope="module")
def tokenizer():
    return dllm_accel.load_tokenizer("tiny-llada")


def test_tokenizer_round_trips_every_character_the_task_produces(tokenizer):
    texts = [
        t for p in arith.problems(300, seed=0, split="train") for t in (p.question, p.solution)
    ]
    characters = sorted(set("".join(texts)) | set("0123456789#=+-*. "))
    for text in [*texts, "".join(characters)]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert (
        type(AutoTokenizer.from_pretrained(dllm_accel.assets.path("tiny-ar"))).__name__
        == type(tokenizer).__name__
    )


def test_special_tokens_and_chat_template_agree_with_every_model(tokenizer):
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    for name in ("tiny-llada", "tiny-dream"):
        assert dllm_accel.load_tokenizer(name).get_vocab() == tokenizer.get_vocab()
        spec = dllm_accel.load_model(name).spec
        assert (spec.mask_id, spec.eos_id, spec.eot_id) == (
            tokenizer.mask_token_id,
            tokenizer.eos_token_id,
            eot,
        )
    text = arith.prompt(HELD_OUT[0], tokenizer)
    assert text == f"<|user|>{HELD_OUT[0].question}<|eot|><|assistant|>"


def test_bundled_models_record_how_they_were_trained():
    for name in dllm_accel.assets.BUNDLED:
        metrics = json.loads((dllm_accel.assets.path(name) / "metrics.json").read_text())
        assert {
            "command",
            "seed",
            "steps",
            "minutes",
            "final_loss",
            "gen_length",
            "block_length",
        } <= set(metrics)
        # the short-setting training (<= 60 min) and, for the diffusion models, the long-setting
        # fine-tune on top of it (<= 60 min)
        assert metrics["minutes"] <= (120 if "long" in metrics else 60)
        assert "long" not in metrics or {"held_out", "held_out_long"} <= set(metrics)
    with pytest.raises(
        ValueError, match=r"no bundled model named 'tiny-gpt'; bundled: \('tiny-llada'"
    ):
        dllm_accel.assets.path("tiny-gpt")


def _solved(texts) -> float:
    return sum(map(arith.is_correct, texts, HELD_OUT)) / len(HELD_OUT)


def _batch(tokenizer):
    return dllm_accel.encode_chat(tokenizer, [arith.messages(p) for p in HELD_OUT])


@pytest.mark.parametrize(
    "name, unmask, block_length",
    [("tiny-llada", LowConfidence(48), 24), ("tiny-dream", DreamAlgorithm("entropy", 48), None)],
)
def test_diffusion_models_solve_held_out_problems_with_their_baseline(
    name, unmask, block_length, tokenizer
):
    model = dllm_accel.load_model(name)
    assert model.dtype == torch.float32, "stored in 16 bits, run in fp32 by default"
    batch = _batch(tokenizer)
    out = Sampler(model, unmask=unmask).generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=48, block_length=block_length
    )
    texts = tokenizer.batch_decode(
        out.sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert _solved(texts) >= 0.6


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_diffusion_models_answer_in_the_long_setting(name, tokenizer):
    """Solved examples before the question and 256 tokens: the answer, end-of-turn, then EOS to the
    end."""
    model, problems = dllm_accel.load_model(name), HELD_OUT[:8]
    long = bench.setting(name, "long")
    batch = dllm_accel.encode_chat(tokenizer, [arith.messages(p, long.shots) for p in problems])
    assert batch["input_ids"].shape[1] >= 150
    official = dllm_accel.Method.official(model, long.gen_length, long.block_length)
    out = official.sampler(model).generate(
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=long.gen_length,
        block_length=official.block_length,
    )
    generated = out.sequences[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert sum(map(arith.is_correct, texts, problems)) >= 6
    assert (generated[:, -64:] == model.spec.eos_id).float().mean() >= 0.9, (
        "EOS fills the end of the canvas"
    )


def test_the_deep_testbed_decodes_long_chains_as_nocache_when_refresh_is_forced(tokenizer):
    """tiny-llada-deep in its long setting (a held-out long chain after two solved ones; the first
    64 of its tokens, to keep the suite short): every cache that can be made to refresh everything
    (ElasticCache above γ 1 from the drifting layer, the block caches at one step per block)
    decodes what NoCache decodes."""
    model = dllm_accel.load_model("tiny-llada-deep")
    long = bench.setting("tiny-llada-deep", "long")
    assert model.n_layers >= 12 and long.chain == arith.LONG_CHAIN and long.shots >= 2
    problem = arith.problems(1, seed=5, split="test", chain=long.chain)[0]
    conversation = arith.messages(problem, long.shots, chain=long.chain)
    batch = dllm_accel.encode_chat(tokenizer, [conversation])
    assert batch["input_ids"].shape[1] >= 400
    new_tokens = 64

    def decode(unmask, cache, block_length=None):
        sampler = Sampler(model, unmask=unmask, cache=cache, stop=StopAtEOS())
        return sampler.generate(
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=new_tokens,
            block_length=block_length,
        ).sequences

    plain = decode(Threshold(0.9), NoCache())
    # the window spans the generation: it does not narrow the candidates
    forced = ElasticCache(gamma=1.01, window=new_tokens, refresh_from="drifting")
    assert torch.equal(decode(Threshold(0.9), forced), plain)
    one_step_per_block = LowConfidence(steps=new_tokens // 16)
    plain = decode(one_step_per_block, NoCache(), 16)
    for cache in (PrefixCache(), DualCache()):
        assert torch.equal(decode(one_step_per_block, cache, 16), plain), cache


def test_ar_model_solves_held_out_problems_greedily(tokenizer):
    model = AutoModelForCausalLM.from_pretrained(dllm_accel.assets.path("tiny-ar")).eval()
    batch = _batch(tokenizer)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=48,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|eot|>"),
        )
    assert (
        _solved(
            tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        )
        >= 0.75
    )


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_every_benchmarked_method_decodes_the_testbed(name, tokenizer):
    model = dllm_accel.load_model(name)
    table = bench.methods(model, 48, 24, gammas=[0.9], ar_model=dllm_accel.load_ar_model("tiny-ar"))
    guided = {
        bench.elastic_name(0.9, "heads", "ARGuide"),
        bench.elastic_name(0.9, "heads", "ARGuide(exact)"),
    }
    assert {
        bench.OFFICIAL,
        bench.FAST_DLLM,
        bench.DUAL,
        bench.elastic_name(0.9, "keys"),
        *guided,
    } <= set(table)
    for label, method in table.items():
        result = bench.decode(model, tokenizer, HELD_OUT[:8], 4, method, shots=0, gen_length=48)
        assert result["accuracy"] >= 0.6, label
        # above 1 only by ElasticCache's query rows past a drifting layer (engine.py, two passes)
        assert (
            0 < result["recompute_fraction"] <= 1.1
            and result["tokens_per_second"] > 0
            and result["nfe"] >= 1
        )
        low, high = result["accuracy_ci95"]
        assert low <= result["accuracy"] <= high


def test_bench_names_a_bad_thread_count(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before --threads was checked")

    monkeypatch.setattr(dllm_accel, "load_model", refuse)
    monkeypatch.setattr(sys, "argv", ["bench.py", "--threads", "0"])
    with pytest.raises(
        ValueError, match=r"threads must be None or an integer >= 1 \(torch CPU threads\), got 0"
    ):
        bench.main()


def test_bench_writes_its_report(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench.py",
            "--model",
            "tiny-llada",
            "--setting",
            "short",
            "--problems",
            "3",
            "--batch-sizes",
            "1",
            "2",
            "--gammas",
            "0.9",
            "--drifts",
            "heads",
            "--boundaries",
            "next",
            "drifting",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    bench.main()
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["runs"]) == {"1", "2"} and report["gen_length"] == 48
    assert {"machine", "torch", "transformers", "command", "threads"} <= set(report)
    for results in report["runs"].values():
        assert (
            results[bench.OFFICIAL]["speedup"] == 1.0 and results[bench.DUAL]["vs_dualcache"] == 1.0
        )
        guided = results[bench.elastic_name(0.9, "heads", "ARGuide")]
        assert (
            guided["ar_forwards"] > 0
            and guided["vs_unguided"] > 0
            and guided["nfe_vs_unguided"] > 0
        )
        assert guided["unguided"] == bench.elastic_name(0.9, "heads") and guided["guided"]
        assert results[bench.elastic_name(0.9, "heads")]["barred"] and not guided["barred"]
        assert all(
            r["peak_memory_mib"] is None or r["peak_memory_mib"] >= 0 for r in results.values()
        )
        official = results[bench.OFFICIAL]["first_refreshed_layers"]
        assert len(official) == 5 and official[0] > 0 and official[1:] == [0] * 4  # 4 layers, none
        drifting = results[bench.elastic_name(0.9, "heads", boundary="drifting")]
        assert sum(drifting["first_refreshed_layers"]) > 0 and 0 <= drifting["refresh_rate"] <= 1
    table, depth = out.with_suffix(".md").read_text().split("Where refreshes start")
    assert table.count("| " + bench.elastic_name(0.9, "heads")) == 2
    assert table.count(f"| {bench.elastic_name(0.9, 'heads', boundary='drifting')} |") == 2
    assert "| batch | method | 0 | 1 | 2 | 3 | none |" in depth
    assert f"| 1 | {bench.OFFICIAL} | 100% | · | · | · | · |" in depth
    for suffix in (".png", "-depth.png"):
        assert out.with_name(out.name + suffix).stat().st_size > 0


def test_bench_compares_llada2s_official_loop_with_the_prefix_cache(tmp_path, monkeypatch):
    out = tmp_path / "llada2"
    argv = ["bench.py", "--model", "random-llada2", "--lengths", "8:40", "40:40", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--batch-sizes", "1", "--out", str(out)])
    bench.main()
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["runs"]) == ["1, prompt 8, 40 generated", "1, prompt 40, 40 generated"]
    units = []
    for results in report["runs"].values():
        official, prefix = (
            results[bench.LLADA2_OFFICIAL],
            results["BlockPrefixCache + ScheduledThreshold"],
        )
        assert official["speedup"] == 1.0 and official["recompute_fraction"] == 1.0
        assert official["nfe"] == prefix["nfe"] and prefix["accuracy"] is None
        units.append(prefix["layer_units"] / official["layer_units"])
    assert units[1] < units[0] < 1, "the cache saves more after a longer prompt"
    assert "n/a" in out.with_suffix(".md").read_text() and out.with_suffix(".png").exists()


def test_wilson_interval():
    assert bench.wilson(0, 0) == [0.0, 1.0]
    low, high = bench.wilson(195, 200)
    assert 0.94 < low < 0.975 < high < 0.995  # the interval of 97.5% over 200 problems
    assert bench.wilson(200, 200)[1] == 1.0 and bench.wilson(0, 200)[0] == 0.0


def test_semi_ar_training_states():
    """--block-share: chosen rows look like a blocked decoder's state (earlier blocks clean, later
    ones masked, the current one partly) and only the current block's masks are scored."""
    generator = torch.Generator().manual_seed(0)
    answer = torch.zeros(64, 10, dtype=torch.bool)
    answer[:, 4:] = True  # a 6-token answer in blocks of 2 after a 4-token prompt
    masked = (torch.rand(64, 10, generator=generator) < 0.5) & answer
    noised, scored, region = train_tiny.semi_ar_states(masked, answer, 2, 0.5, generator)
    chosen = region.sum(1) == 2  # the scoreable region of a chosen row is its current block
    assert 10 < int(chosen.sum()) < 54
    for row in range(64):
        if region[row].sum() == 6:  # not chosen: LLaDA's masking, every masked answer token scored
            assert torch.equal(noised[row], masked[row]) and torch.equal(scored[row], masked[row])
            continue
        block = int(region[row].nonzero()[0]) // 2 * 2
        assert not noised[row, :block].any() and noised[row, block + 2 :].all()
        assert torch.equal(scored[row], masked[row] & region[row])
        assert torch.equal(noised[row, block : block + 2], masked[row, block : block + 2])


def test_a_grown_deep_model_starts_as_the_shallow_one():
    """tiny-llada-deep starts from tiny-llada: its layers at 0, 3, 6, 9, new ones in between that
    add nothing yet (their output projections at zero)."""
    tokenizer = train_tiny.build_tokenizer()
    shallow = dllm_accel.load_model("tiny-llada", dtype=torch.float32)
    deep = train_tiny.make_model("tiny-llada-deep", tokenizer, seed=0)
    train_tiny.grow(deep, shallow)
    assert deep.n_layers == 12 and torch.equal(
        deep.blocks[3].q_proj.weight, shallow.blocks[1].q_proj.weight
    )
    ids = torch.randint(0, 100, (2, 30))
    assert torch.allclose(deep(ids).logits, shallow(ids).logits, atol=1e-5)
    long = train_tiny.Data(tokenizer, 2, 256, pool=16, seed=0, chain=arith.LONG_CHAIN)
    prompt, answer = long.encode(long.pool[0])
    assert len(prompt) >= 380 and len(answer) == 256


def test_copy_drills_mask_one_variable_name_per_chosen_row():
    tokenizer = train_tiny.build_tokenizer()
    data = train_tiny.Data(tokenizer, shots=0, gen_length=48, pool=64, seed=0)
    ids, _, answer = data.batch(64)
    names = data.names(ids, answer)
    letters = {tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"}
    assert all(int(t) in letters for t in ids[names]) and bool(names.any(1).all())
    solved = tokenizer.batch_decode(
        ids.masked_fill(~answer, tokenizer.pad_token_id), skip_special_tokens=True
    )
    # one per step
    assert names.sum(1).tolist() == [text.split("####")[0].count("=") // 2 for text in solved]
    names[0] = False  # a row without a name is never drilled
    drills = train_tiny.copy_drills(names, 0.5, torch.Generator().manual_seed(0))
    assert not (drills & ~names).any() and not drills[0].any()
    per_row = drills.sum(1)
    assert set(per_row.tolist()) == {0, 1} and 10 < int(per_row.sum()) < 54


def test_drift_sweep_reports_every_gamma(tmp_path, monkeypatch):
    import drift_sweep

    out = tmp_path / "drift"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "drift_sweep.py",
            "--setting",
            "short",
            "--problems",
            "2",
            "--batch-size",
            "2",
            "--gammas",
            "0",
            "1.01",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    drift_sweep.main()
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["gamma"] for r in rows] == ["NoCache", 0.0, 1.01]
    assert rows[1]["refresh_rate"] == 0.0 and rows[2]["refresh_rate"] == 1.0  # never / every step
    assert "| 0.9 | 16 | 1.01 |" in out.with_suffix(".md").read_text()


def test_engine_overhead_times_every_plan(tmp_path, monkeypatch, capsys):
    import engine_overhead

    out = tmp_path / "overhead"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "engine_overhead.py",
            "--d-model",
            "64",
            "--layers",
            "2",
            "--heads",
            "4",
            "--mlp",
            "96",
            "--prompt",
            "16",
            "--gen",
            "16",
            "--query",
            "6",
            "--tracked",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    engine_overhead.main()
    table = out.with_suffix(".md").read_text()
    for step in (
        "full forward",
        "query rows",
        "query rows + drift monitor",
        "query rows, refresh from L/2",
    ):
        assert f"| {step} |" in table
    assert "| full forward | " in capsys.readouterr().out
    # the FLOP model: a query-rows step over every layer costs its rows' share of the projections
    # plus
    # their attention against every key
    full = engine_overhead.step_flops(32, 0, 32, 2, 64, 64, 96)
    assert engine_overhead.step_flops(32, 2, 32, 2, 64, 64, 96) == full
    assert engine_overhead.step_flops(8, 2, 32, 2, 64, 64, 96) == pytest.approx(full / 4)
