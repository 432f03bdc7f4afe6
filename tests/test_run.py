"""Every Hydra config composes, instantiates and runs the main job."""

import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import dllm_accel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import run  # noqa: E402


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def compose_main(tmp_path, overrides: list[str]):
    if "model=local_checkpoint" in overrides:
        shutil.copytree(dllm_accel.assets.path("tiny-dream"), tmp_path / "checkpoint")
        overrides = [*overrides, f"model.path={tmp_path / 'checkpoint'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=[*overrides, "problems=8"])


@pytest.mark.parametrize("unmask", choices("unmask"))
@pytest.mark.parametrize("model", choices("model"))
def test_main_job_runs_every_model_with_every_unmask_policy(model, unmask, tmp_path):
    report = run.run(compose_main(tmp_path, [f"model={model}", f"unmask={unmask}"]))
    assert 0 <= report["accuracy"] <= 1 and "####" in report["first problem"]
    assert 1 <= report["steps"] <= 48 and report["nfe"] == report["steps"]
    assert 8 <= report["generated tokens"] <= 8 * 48


def test_the_default_main_job_solves_problems(tmp_path):
    report = run.run(compose_main(tmp_path, []))
    assert report["policies"].startswith("LowConfidence(steps=48")
    assert "NoCache()" in report["policies"] and report["recompute fraction"] == 1.0
    assert report["accuracy"] >= 0.5


@pytest.mark.parametrize("cache", choices("cache"))
@pytest.mark.parametrize("model", choices("model"))
def test_main_job_runs_every_model_with_every_cache_policy(model, cache, tmp_path):
    cfg = compose_main(tmp_path, [f"model={model}", f"cache={cache}", "unmask=threshold"])
    report = run.run(cfg)
    assert cfg.cache._target_.split(".")[-1] + "(" in report["policies"]
    assert report["accuracy"] >= 0.5
    assert 0 < report["recompute fraction"] <= 1


@pytest.mark.parametrize("stop", choices("stop"))
def test_main_job_runs_every_stop_policy(stop, tmp_path):
    cfg = compose_main(tmp_path, [f"stop={stop}", "block_length=null", "unmask=dream", "model=tiny_dream"])
    report = run.run(cfg)
    assert report["policies"].endswith(cfg.stop._target_.split(".")[-1] + "()")
    assert report["generated tokens"] <= 8 * 48
