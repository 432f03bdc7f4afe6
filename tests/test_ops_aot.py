"""Every kernel compiles ahead of time for sm_80 and sm_90 at the configurations its launcher
chooses (dllm_accel.kernels.aot), within the target's shared memory and without spills.

The compiles run in a child process without Triton's interpreter; they need Triton's NVIDIA backend
and its bundled ptxas and cuobjdump, not a GPU. The test compiles aot.cases(quick=True): LLaDA-8B's
and Dream-7B's shapes in fp16 and bf16 and the bundled tiny model's in all three dtypes; `python
experiments/bench_kernels.py --compile-report` compiles every shape in every dtype.
"""

import json

import pytest
import torch

from dllm_accel.kernels import aot

REASON = aot.unavailable()
KERNELS = {
    "_attention_fwd",
    "_attention_mass",
    "_head_kernel",
    "_key_tile_kernel",
    "_rope_write_kernel",
    "_score_tokens_kernel",
}


def test_the_enumeration_reaches_every_tile_the_launchers_choose():
    """No compile: the launchers' own choices, over the shapes the library supports."""
    found = aot.launches(aot.cases(quick=True))
    assert {launch.kernel for launch in found} == KERNELS
    tiles = {
        (launch.dtype, launch.kwargs["BLOCK_M"])
        for launch in found
        if launch.kernel == "_attention_fwd" and launch.large
    }
    assert tiles == {(dtype, m) for dtype in ("fp16", "bf16") for m in (16, 32, 64)}
    fp32 = {
        launch.kwargs["BLOCK_M"]
        for launch in found
        if launch.kernel == "_attention_fwd" and launch.dtype == "fp32"
    }
    assert fp32 == {16, 32}  # _config caps fp32 row tiles at 32 (16 above head dim 64)
    shapes = {shape.name: shape for shape in aot.model_shapes()}
    assert shapes["Dream"].n_heads // shapes["Dream"].n_kv_heads == 7
    assert all(
        shape.large for name, shape in shapes.items() if not name.startswith(("tiny", "head"))
    )


@pytest.mark.skipif(REASON is not None, reason=f"no ahead-of-time compile here: {REASON}")
def test_every_kernel_compiles_within_shared_memory_and_without_spills(tmp_path):
    path = tmp_path / "aot.json"
    records = aot.compile_report(path, quick=True)
    assert json.loads(path.read_text())["records"] == records
    assert {(r["kernel"], r["target"]) for r in records} == {
        (kernel, target) for kernel in KERNELS for target in aot.TARGETS
    }
    assert any(r["large_16bit"] for r in records)
    # after _config's tile choice no compile spills, 8B shapes or not
    assert aot.problems(records, any_spill=True) == []


def test_problems_names_shared_memory_and_spills():
    record = dict(
        kernel="k",
        target="sm_80",
        dtype="bf16",
        config={},
        shared=200000,
        shared_limit=166912,
        spill_bytes=8,
        large_16bit=False,
    )
    assert len(aot.problems([record], any_spill=False)) == 1  # shared memory only
    assert len(aot.problems([record | {"large_16bit": True}], any_spill=False)) == 2
    assert len(aot.problems([record | {"shared": 0}], any_spill=True)) == 1
    assert torch.float32 in aot.DTYPES.values()
