"""kernels/partial_attention.py against its torch twin and an fp64 reference.

The kernel runs in Triton's interpreter on the CPU, natively on a GPU with TRITON_INTERPRET=0 (bf16
only there: the interpreter mis-computes it; see tests/conftest.py). Inputs are drawn on the CPU
from seeded generators, then moved to KERNEL_DEVICE, so both runs see the same values. Every buffer
the launcher allocates is NaN-poisoned first, so an element the kernel never writes fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import KERNEL_DEVICE as DEVICE
from conftest import KERNEL_DTYPES, assert_as_close_as_twin

import dllm_accel.ops as ops
from dllm_accel.kernels import partial_attention as kernel
from dllm_accel.ops import reference


@dataclass(frozen=True)
class Case:
    r: int
    T: int
    Hq: int
    Hkv: int
    D: int
    n: int
    # 'left-pad' (the engine's prompts), 'holes' (random False entries) or 'all' (no mask)
    keys: str = "left-pad"

    def __str__(self) -> str:
        return f"r{self.r}-T{self.T}-Hq{self.Hq}-Hkv{self.Hkv}-D{self.D}-n{self.n}-{self.keys}"


CASES = [
    Case(2, 500, 4, 4, 64, 19),
    Case(3, 77, 7, 1, 64, 5, "holes"),  # GQA 7, one key head
    Case(2, 130, 14, 2, 128, 11),  # GQA 7: 77 rows per key head, two row tiles
    Case(1, 64, 2, 2, 128, 16, "all"),
    Case(2, 200, 4, 4, 64, 1, "holes"),
    Case(2, 33, 4, 2, 40, 3),  # a head dim that is not a power of two, padded in the kernel
]


@pytest.fixture
def poisoned(monkeypatch):
    """The launcher's allocations come back full of NaN."""
    monkeypatch.setattr(
        kernel,
        "_empty",
        lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device),
    )


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0):
    """q, k, v (scaled so some rows attend sharply), key_mask and mass_weights for a case, on
    DEVICE."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=generator)).to(dtype)

    q = randn(case.r, case.Hq, case.n, case.D, scale=2.0)
    k, v = randn(case.r, case.Hkv, case.T, case.D), randn(case.r, case.Hkv, case.T, case.D)
    key_mask = torch.ones(case.r, case.T, dtype=torch.bool)
    if case.keys == "left-pad":
        for row in range(case.r):
            key_mask[row, : (row * case.T) // (case.r + 1)] = False
    elif case.keys == "holes":
        key_mask = torch.rand(case.r, case.T, generator=generator) > 0.3
        key_mask[:, -1] = True
    weights = torch.rand(case.r, case.n, generator=generator)
    q, k, v, key_mask, weights = (t.to(DEVICE) for t in (q, k, v, key_mask, weights))
    return q, k, v, None if case.keys == "all" else key_mask, weights


def exact_attention(q, k, v, key_mask, weights):
    """fp64 out and mass, written independently of the twin (repeated K/V heads, plain softmax)."""
    group = q.shape[1] // k.shape[1]
    keys, values = (t.double().repeat_interleave(group, 1) for t in (k, v))
    scores = q.double() @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1)
    mass = None if weights is None else (probs * weights.double()[:, None, :, None]).sum((1, 2))
    return probs @ values, mass


def check_against_twin(got, q, k, v, key_mask, weights, what: str) -> None:
    twin = reference.partial_attention(q, k, v, key_mask, mass_weights=weights)
    exact = exact_attention(q, k, v, key_mask, weights)
    assert got[0].dtype == v.dtype and got[0].shape == q.shape
    assert_as_close_as_twin(got[0], twin[0], exact[0], what=f"{what} out")
    if weights is not None:
        assert got[1].dtype == torch.float32 and got[1].shape == (q.shape[0], k.shape[2])
        assert_as_close_as_twin(got[1], twin[1], exact[1], what=f"{what} mass")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES.values(), ids=KERNEL_DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_twin(case, dtype, poisoned):
    q, k, v, key_mask, weights = make_inputs(case, dtype)
    got = kernel.partial_attention(q, k, v, key_mask, mass_weights=weights)
    check_against_twin(got, q, k, v, key_mask, weights, str(case))


def test_without_mass(poisoned):
    q, k, v, key_mask, _ = make_inputs(CASES[0], torch.float32)
    out, mass = kernel.partial_attention(q, k, v, key_mask)
    assert mass is None
    check_against_twin((out, None), q, k, v, key_mask, None, "no mass")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES.values(), ids=KERNEL_DTYPES.keys())
def test_strided_views(dtype, poisoned):
    """As the engine passes them: q transposed out of [r, n, Hq, D]; k, v one layer of a [L, R, Hkv,
    T_max, D] cache at every other model row and the first T positions; key_mask and weights
    non-contiguous too."""
    case = Case(3, 90, 8, 2, 64, 7)
    q, k, v, key_mask, weights = make_inputs(case, dtype)
    cache = torch.full(
        (2, 2, 2 * case.r, case.Hkv, 128, case.D), float("nan"), dtype=dtype, device=DEVICE
    )
    cache[1, 0, ::2, :, : case.T], cache[1, 1, ::2, :, : case.T] = k, v
    k_view, v_view = cache[1, 0, ::2, :, : case.T], cache[1, 1, ::2, :, : case.T]
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    mask_view = torch.zeros(case.r, 2 * case.T, dtype=torch.bool, device=DEVICE)[:, ::2]
    mask_view.copy_(key_mask)
    weights_view = weights.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (q_view, k_view, v_view, mask_view, weights_view))
    got = kernel.partial_attention(q_view, k_view, v_view, mask_view, mass_weights=weights_view)
    check_against_twin(got, q, k, v, key_mask, weights, "views")


def test_gathered_rows(poisoned):
    """The cache read for a subset of rows (advanced indexing: a copy) of a wider buffer."""
    case = Case(2, 50, 4, 4, 64, 6)
    q, k, v, key_mask, weights = make_inputs(case, torch.float32)
    rows = torch.tensor([3, 0], device=DEVICE)
    keys = torch.randn(4, case.Hkv, 64, case.D).to(DEVICE)
    keys[rows, :, : case.T] = k
    got = kernel.partial_attention(q, keys[rows][:, :, : case.T], v, key_mask, mass_weights=weights)
    check_against_twin(got, q, k, v, key_mask, weights, "gathered")


def test_mixed_query_dtype(poisoned):
    """fp32 queries against an fp16 cache: the scores use fp32, as the twin's upcast does."""
    q, k, v, key_mask, weights = make_inputs(CASES[1], torch.float16)
    got = kernel.partial_attention(q.float(), k, v, key_mask, mass_weights=weights)
    check_against_twin(got, q.float(), k, v, key_mask, weights, "mixed")


def test_rows_without_keys_give_zero(poisoned):
    """A row whose keys are all masked: out = 0 and no mass (the twin gives NaN there); other rows
    unchanged."""
    case = Case(3, 70, 4, 2, 64, 5)
    q, k, v, key_mask, weights = make_inputs(case, torch.float32)
    key_mask[1] = False
    out, mass = kernel.partial_attention(q, k, v, key_mask, mass_weights=weights)
    assert out[1].eq(0).all() and mass[1].eq(0).all()
    keep = [0, 2]
    check_against_twin(
        (out[keep], mass[keep]), q[keep], k[keep], v[keep], key_mask[keep], weights[keep], "kept"
    )


def test_no_keys_at_all(poisoned):
    """T = 0: out is 0 (as the twin's empty product), mass is empty."""
    q, k, v, _, weights = make_inputs(Case(2, 0, 4, 2, 64, 3), torch.float32)
    no_keys = torch.ones(2, 0, dtype=torch.bool, device=DEVICE)
    out, mass = kernel.partial_attention(q, k, v, no_keys, mass_weights=weights)
    assert out.eq(0).all() and mass.shape == (2, 0)
    assert torch.equal(out, reference.partial_attention(q, k, v, None)[0])


# -- through dllm_accel.ops ------------------------------------------------------------------------
def test_dispatch_reaches_kernel(impl, kernel_calls):
    calls = kernel_calls(kernel, "partial_attention")
    q, k, v, key_mask, weights = make_inputs(CASES[1], torch.float32)
    impl("triton")
    got = ops.partial_attention(q, k, v, key_mask, mass_weights=weights)
    assert len(calls) == 1
    check_against_twin(got, q, k, v, key_mask, weights, "dispatch")
    impl("torch")
    ops.partial_attention(q, k, v, key_mask, mass_weights=weights)
    assert len(calls) == 1


def bad_inputs():
    def tensors(
        q_shape, kv_shape, dtype=torch.float32
    ):  # on DEVICE: the head-dim check is the kernel's own
        return tuple(
            torch.randn(shape).to(DEVICE, dtype) for shape in (q_shape, kv_shape, kv_shape)
        )

    return {
        "head-dims": (tensors((1, 4, 3, 64), (1, 4, 9, 32)), "must be"),
        "heads-not-multiple": (
            tensors((1, 6, 3, 64), (1, 4, 9, 64)),
            "multiple of key/value heads",
        ),
        "int-dtype": (
            tensors((1, 4, 3, 64), (1, 4, 9, 64), torch.int32),
            "float32, float16 or bfloat16",
        ),
        "no-queries": (tensors((1, 4, 0, 64), (1, 4, 9, 64)), "no query rows"),
        "no-rows": (tensors((0, 4, 3, 64), (0, 4, 9, 64)), "no query rows"),
        "head-dim-512": (tensors((1, 1, 1, 512), (1, 1, 2, 512)), "head dims 1..256"),
    }


@pytest.mark.parametrize("name", bad_inputs().keys())
def test_bad_input(name, impl):
    (q, k, v), message = bad_inputs()[name]
    impl("triton")
    with pytest.raises(ValueError, match=message):
        ops.partial_attention(q, k, v, None)
