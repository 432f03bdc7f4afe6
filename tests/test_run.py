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

MODEL_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_main_job_runs_on_every_model_config(model, tmp_path):
    overrides = [f"model={model}"]
    if model == "local_checkpoint":
        dllm_accel.save_model(tiny_model("Dream", n_kv_heads=2), tmp_path, max_shard_bytes=20_000)
        overrides.append(f"model.path={tmp_path}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    report = run.run(cfg)
    assert report["logits"] == (2, 24, 128)
    assert report["max |padded - alone| logit"] < 1e-4
