"""Host syncs per decode step (ARCHITECTURE.md §8): a constant that does not grow with the layers,
counted on CPU by dllm_accel.syncs.HostSyncs; the debug switch behind the ops' range checks; int64
offsets in the kernels."""

import re
from pathlib import Path

import pytest
import torch
from conftest import KERNEL_DEVICE, prompts
from test_guide import ar_model

from dllm_accel import (
    ARGuide,
    DualCache,
    ElasticCache,
    NoCache,
    PrefixCache,
    Sampler,
    Threshold,
    ops,
)
from dllm_accel.models import build_model, tiny_config
from dllm_accel.policies import refresh
from dllm_accel.syncs import HostSyncs

KERNELS = Path(__file__).resolve().parents[1] / "kernels"
BOUND, GUIDED_BOUND = 8, 12
POLICIES = {
    "none": NoCache,
    "prefix": PrefixCache,
    "dual": DualCache,
    "elastic-no-monitor": lambda: ElasticCache(gamma=0.0),  # gamma 0: no drift test runs
}


def syncs_per_step(n_layers, cache, guide=None, kind="llada") -> float:
    model = build_model(tiny_config(kind, n_layers=n_layers), seed=0)
    ids, mask = prompts(model, [5, 9])  # ragged: the first row is left-padded
    sampler = Sampler(model, unmask=Threshold(0.9), cache=cache, guide=guide)
    with HostSyncs() as syncs:
        out = sampler.generate(ids, mask, max_new_tokens=32, block_length=8)
    return syncs.per_step(out)


def assert_constant(make, bound, guided=False):
    """Unguided, the random models commit one token per step at either depth, so the counts must be
    equal; guided, the AR model accepts different drafts from models of different depths, so the
    counts may differ a little, but one sync per layer would add at least 6 per step."""
    counts = [
        syncs_per_step(n, make(), ARGuide(ar_model(), verify_chunk=8) if guided else None)
        for n in (2, 8)
    ]
    print(f"syncs per step at 2 and 8 layers: {counts}")
    if guided:
        assert abs(counts[1] - counts[0]) < 1, f"syncs per step grow with the layers: {counts}"
    else:
        assert counts[0] == counts[1], f"syncs per step grow with the layers: {counts}"
    assert max(counts) <= bound, f"{counts} syncs per step, more than {bound}"


@pytest.mark.parametrize("policy", POLICIES)
def test_syncs_per_step_do_not_grow_with_the_layers(policy):
    assert_constant(POLICIES[policy], BOUND)


def test_the_moe_expert_path_adds_no_sync():
    """LLaDA-MoE's router and grouped experts stay on the device: DualCache's count as for LLaDA."""
    moe = [syncs_per_step(n, DualCache(), kind="llada_moe") for n in (2, 8)]
    assert moe[0] == moe[1] == syncs_per_step(2, DualCache()), moe


def drift_at_middle_layer(self, layer, similarity, valid, rows):
    """Every row drifts at the middle layer, every step."""
    return torch.full(rows.shape, layer == self.canvas.n_layers // 2, device=rows.device)


@pytest.mark.parametrize("refresh_from", ["next", "drifting"])
@pytest.mark.parametrize("drift", ["none", "every-step", "middle-layer"])
def test_elastic_cache_syncs_per_step(drift, refresh_from, monkeypatch):
    """The drift decisions stay on the device until one read per step (engine.py, two passes)."""
    gamma = {"none": 1e-6, "every-step": 2.0, "middle-layer": 0.9}[drift]
    if drift == "middle-layer":
        monkeypatch.setattr(refresh._Elastic, "drifted", drift_at_middle_layer)
    assert_constant(lambda: ElasticCache(gamma=gamma, refresh_from=refresh_from), BOUND)


@pytest.mark.parametrize("policy", ["none", "prefix", "dual", "elastic"])
def test_guided_syncs_per_step(policy):
    make = (lambda: ElasticCache(gamma=0.9)) if policy == "elastic" else POLICIES[policy]
    assert_constant(make, GUIDED_BOUND, guided=True)


# -- the counter ---------------------------------------------------------------------------------
def test_the_counter_counts_each_kind_of_sync_once_per_call():
    t, tolist = torch.arange(6), torch.Tensor.tolist
    with HostSyncs() as syncs:
        t.tolist()  # no op is dispatched: counted by the wrapper, once for the whole tensor
        bool(t.any()), int(t[0]), t.sum().item()
        t.nonzero(), torch.unique(t), t.repeat_interleave(t), torch.bincount(t)
        t.repeat_interleave(t, output_size=15)  # no sync: the size is given
        t[t > 2]
        t[t > 2] = 0
        t[torch.tensor([0, 1])]  # no sync: a long index
    assert syncs.count == 10
    assert syncs.by_op["tolist"] == 1 and syncs.by_op["index"] == 1
    assert torch.Tensor.tolist is tolist, "tolist must be restored on leaving"


def test_per_step_needs_a_generation_output():
    with pytest.raises(ValueError, match="steps >= 1"):
        HostSyncs().per_step(object())
    with pytest.raises(ValueError, match="sites must be True or False"):
        HostSyncs(sites="yes")


# -- the debug switch ----------------------------------------------------------------------------
def test_range_checks_sync_only_under_the_debug_switch(monkeypatch):
    index = torch.tensor([[0, 5]])
    try:
        monkeypatch.delenv("DLLM_ACCEL_DEBUG", raising=False)
        ops.debug.cache_clear()
        with HostSyncs() as syncs:
            ops._check_index("index", index, 1, 4, index.device, bounds=True)  # 5 passes unseen
        assert syncs.count == 0
        monkeypatch.setenv("DLLM_ACCEL_DEBUG", "1")
        ops.debug.cache_clear()
        with HostSyncs() as syncs, pytest.raises(ValueError, match="index holds positions"):
            ops._check_index("index", index, 1, 4, index.device, bounds=True)
        assert syncs.count == 1
        monkeypatch.setenv("DLLM_ACCEL_DEBUG", "yes")
        ops.debug.cache_clear()
        with pytest.raises(ValueError, match="DLLM_ACCEL_DEBUG must be"):
            ops.debug()
    finally:
        ops.debug.cache_clear()


# -- int64 offsets -------------------------------------------------------------------------------
def test_every_program_id_is_widened_to_int64():
    """A program or loop index times a stride is int32 unless widened: at long contexts (batch x
    heads x length x head_dim) it passes 2^31 and wraps. Every kernel widens its program ids."""
    for path in sorted(KERNELS.glob("*.py")):
        source = path.read_text()
        for match in re.finditer(r"tl\.program_id\(\d\)(\S*)", source):
            assert match.group(1).startswith(".to(tl.int64)"), f"{path.name}: {match.group(0)}"


def test_a_widened_index_times_a_large_stride_does_not_wrap():
    """What the kernels rely on, in Triton's interpreter as on a GPU: an int32 index times a stride
    wraps past 2^31, the widened one (tl.cast / .to(tl.int64)) does not."""
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")

    @triton.jit
    def products(out, n, stride):
        narrow = tl.zeros((), tl.int64)
        wide = tl.zeros((), tl.int64)
        for h in range(n):
            narrow += h * stride
            wide += tl.cast(h, tl.int64) * stride
        tl.store(out, narrow)
        tl.store(out + 1, wide)
        tl.store(out + 2, (tl.program_id(0).to(tl.int64) + 3) * stride)

    out = torch.zeros(3, dtype=torch.int64, device=KERNEL_DEVICE)
    products[(1,)](out, 3, 2**30)
    assert out[1:].tolist() == [3 * 2**30] * 2
    assert out[0] != 3 * 2**30, "the interpreter no longer wraps int32: this test checks nothing"
