"""Every Hydra config composes, instantiates and runs the main job."""

import sys
from pathlib import Path

import pytest
from conftest import tiny_model
from hydra import compose, initialize_config_dir

import dllm_accel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import run  # noqa: E402


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def compose_main(tmp_path, overrides: list[str]):
    if "model=local_checkpoint" in overrides:
        dllm_accel.save_model(tiny_model("Dream", n_kv_heads=2), tmp_path, max_shard_bytes=20_000)
        overrides = [*overrides, f"model.path={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("unmask", choices("unmask"))
@pytest.mark.parametrize("model", choices("model"))
def test_main_job_runs_every_model_with_every_unmask_policy(model, unmask, tmp_path):
    report = run.run(compose_main(tmp_path, [f"model={model}", f"unmask={unmask}"]))
    assert report["sequences"] == (2, 24 + 32)
    assert 1 <= report["steps"] <= 32 and report["nfe"] == report["steps"]
    assert all(1 <= n <= 32 for n in report["generated tokens"])
    if unmask not in ("low_confidence", "dream"):  # these may commit MASK, as the official samplers do
        assert report["masks left"] == 0


@pytest.mark.parametrize("stop", choices("stop"))
def test_main_job_runs_every_stop_policy(stop, tmp_path):
    cfg = compose_main(tmp_path, [f"stop={stop}", "block_length=null", "unmask=dream"])
    report = run.run(cfg)
    assert report["policies"].endswith(cfg.stop._target_.split(".")[-1] + "()")
    assert all(1 <= n <= 32 for n in report["generated tokens"])
