"""kernels/attention_drift.py against its torch twin and a float64 version of the same math.

The kernel runs in Triton's interpreter on the CPU, natively on a GPU with TRITON_INTERPRET=0 (bf16
only there: the interpreter mis-computes it; see tests/conftest.py).
"""

import math
from dataclasses import dataclass

import pytest
import torch
from conftest import KERNEL_DEVICE as DEVICE
from conftest import KERNEL_DTYPES, assert_as_close_as_twin

import dllm_accel.ops as ops
from dllm_accel.kernels import attention_drift as kernel
from dllm_accel.ops import reference

AXES = ["keys", "heads"]


@dataclass(frozen=True)
class Shape:
    r: int
    T: int
    Hq: int
    Hkv: int
    D: int
    m: int
    n: int

    def __str__(self):
        return f"r{self.r}-T{self.T}-Hq{self.Hq}-Hkv{self.Hkv}-D{self.D}-m{self.m}-n{self.n}"


SHAPES = [
    Shape(
        r=2, T=300, Hq=4, Hkv=2, D=64, m=3, n=19
    ),  # several key tiles, the first ones all padding
    Shape(r=1, T=77, Hq=7, Hkv=1, D=128, m=2, n=5),  # GQA 7, a single partial tile
    Shape(r=2, T=150, Hq=14, Hkv=2, D=64, m=1, n=9),  # GQA 7 over two key/value heads
    Shape(r=3, T=45, Hq=2, Hkv=2, D=128, m=4, n=3),
]


# -- inputs ----------------------------------------------------------------------------------------
# ----------------
def make_inputs(
    shape: Shape, dtype, *, padded: bool, seed: int = 0, drift: float = 0.3, sharpness: float = 2.0
):
    """Inputs as ElasticCache passes them: k a strided view of a longer cache, queries a transposed
    view, written positions with repeats (and identical keys_before), left padding plus a few
    holes."""
    g = torch.Generator().manual_seed(seed)
    s = shape
    q_before = sharpness * torch.randn(s.r, s.m, s.Hq, s.D, generator=g)
    q_now = q_before + drift * sharpness * torch.randn(s.r, s.m, s.Hq, s.D, generator=g)
    cache = torch.randn(s.r, s.Hkv, s.T + 11, s.D, generator=g)
    written = torch.randint(0, s.T, (s.r, s.n), generator=g)
    written[:, -1] = written[:, 0]  # a repeated position
    keys_before = torch.randn(s.r, s.Hkv, s.n, s.D, generator=g)
    keys_before[:, :, -1] = keys_before[:, :, 0]  # repeats carry identical keys
    key_mask = None
    if padded:
        key_mask = torch.rand(s.r, s.T, generator=g) > 0.1
        for row in range(s.r):
            key_mask[row, : (row * 137) % (s.T // 2 + 1)] = False
    as_dtype = lambda x: x.to(device=DEVICE, dtype=dtype)  # noqa: E731
    return dict(
        q_before=as_dtype(q_before).transpose(1, 2),
        q_now=as_dtype(q_now).transpose(1, 2),
        k=as_dtype(cache)[:, :, : s.T],
        key_mask=None if key_mask is None else key_mask.to(DEVICE),
        written=written.to(DEVICE),
        keys_before=as_dtype(keys_before),
    )


def exact_drift(q_before, q_now, k, key_mask, written, keys_before, *, axis):
    """The twin's math in float64, written independently: restore the written keys, softmax both,
    cosines."""
    r, n_heads, _, head_dim = q_now.shape
    k_before = k.double().clone()
    for row in range(r):
        k_before[row, :, written[row]] = keys_before[row].double()
    before = _exact_probs(q_before, k_before, key_mask, n_heads)
    now = _exact_probs(q_now, k.double(), key_mask, n_heads)
    if axis == "keys":
        return _exact_cosine(before, now, dim=-1).mean(1)
    per_key = _exact_cosine(before, now, dim=1)  # [r, m, T]
    weights = torch.ones_like(per_key[:, 0]) if key_mask is None else key_mask.double()
    return (per_key * weights[:, None]).sum(-1) / weights.sum(-1)[:, None]


def _exact_probs(q, keys, key_mask, n_heads):
    keys = keys.repeat_interleave(n_heads // keys.shape[1], dim=1)
    scores = torch.einsum("rhmd,rhtd->rhmt", q.double(), keys) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    return scores.softmax(-1)


def _exact_cosine(a, b, dim):
    norms = a.norm(dim=dim).clamp_min(reference.COSINE_EPS) * b.norm(dim=dim).clamp_min(
        reference.COSINE_EPS
    )
    return (a * b).sum(dim) / norms


# both err by ~1e-7 here (fp32 accumulation); conftest's default 1e-5 would hide a small bug
FLOOR = 1e-6


def run_all(inputs, axis):
    """-> (kernel, twin, exact) similarities."""
    args = [
        inputs[name] for name in ("q_before", "q_now", "k", "key_mask", "written", "keys_before")
    ]
    return (
        kernel.attention_drift(*args, axis=axis),
        reference.attention_drift(*args, axis=axis),
        exact_drift(*args, axis=axis),
    )


# -- the kernel against the twin
# -----------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True], ids=["all-keys", "padded"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES.values(), ids=KERNEL_DTYPES.keys())
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_twin(shape, axis, dtype, padded):
    inputs = make_inputs(shape, dtype, padded=padded)
    got, twin, exact = run_all(inputs, axis)
    assert got.shape == (shape.r, shape.m) and got.dtype == torch.float32
    assert_as_close_as_twin(got, twin, exact, floor=FLOOR, what=f"{shape} {axis} {dtype}")


@pytest.mark.parametrize("axis", AXES)
def test_nothing_moved_is_one(axis):
    """Same queries, and the writes put back the keys that were there: the attention did not
    move."""
    inputs = make_inputs(SHAPES[0], torch.float32, padded=True, drift=0.0)
    written = inputs["written"]
    index = written[:, None, :, None].expand(-1, SHAPES[0].Hkv, -1, SHAPES[0].D)
    inputs["keys_before"] = inputs["k"].gather(2, index)
    got, twin, exact = run_all(inputs, axis)
    assert_as_close_as_twin(got, twin, exact, floor=FLOOR, what=axis)
    torch.testing.assert_close(got, torch.ones_like(got), atol=1e-5, rtol=0)


@pytest.mark.parametrize("axis", AXES)
def test_attention_that_moved_a_lot(axis):
    """Sharp queries replaced by unrelated ones: the similarity falls well below 1."""
    inputs = make_inputs(SHAPES[1], torch.float32, padded=True, drift=3.0, sharpness=6.0)
    got, twin, exact = run_all(inputs, axis)
    assert_as_close_as_twin(got, twin, exact, floor=FLOOR, what=axis)
    assert (got < 0.5).all(), got


@pytest.mark.parametrize("axis", AXES)
def test_only_the_written_keys_moved(axis):
    """Same queries, new keys at the written positions: all the drift comes through keys_before."""
    inputs = make_inputs(SHAPES[2], torch.float32, padded=False, drift=0.0, sharpness=4.0)
    inputs["keys_before"] = 3 * inputs["keys_before"]
    got, twin, exact = run_all(inputs, axis)
    assert_as_close_as_twin(got, twin, exact, floor=FLOOR, what=axis)
    assert (got < 0.999).all(), got


# -- through dllm_accel.ops
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", AXES)
def test_public_op_runs_the_kernel(impl, monkeypatch, axis):
    impl("triton")
    calls = []
    launch = kernel.attention_drift
    monkeypatch.setattr(
        kernel, "attention_drift", lambda *a, **kw: calls.append(kw["axis"]) or launch(*a, **kw)
    )
    inputs = make_inputs(SHAPES[3], torch.float16, padded=True)
    got = ops.attention_drift(**inputs, axis=axis)
    assert calls == [axis]
    # a device type: "cuda", not device("cuda")
    assert ops.implementation("attention_drift", DEVICE.type) == "triton"
    _, twin, exact = run_all(inputs, axis)
    assert_as_close_as_twin(got, twin, exact, floor=FLOOR, what=axis)


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_bad_inputs_are_refused(impl, debug_checks, name):
    impl(name)
    s = SHAPES[3]
    good = make_inputs(s, torch.float32, padded=True)
    cases = [
        (dict(axis="rows"), "axis must be one of"),
        (dict(keys_before=good["keys_before"][:, :, :-1]), "keys_before must be"),
        (dict(keys_before=good["keys_before"].half()), "keys_before must have the cache's dtype"),
        (dict(written=good["written"].int()), "written must be a long tensor"),
        (dict(q_before=good["q_before"][:, :, :-1]), "q_before .* must match q_now"),
        (dict(q_before=good["q_before"].half()), "q_before .* must match q_now"),
    ]
    for changes, message in cases:
        arguments = good | {"axis": "keys"} | changes
        with pytest.raises(ValueError, match=message):
            ops.attention_drift(**arguments)
    if name == "triton":  # out-of-range positions are checked before a kernel reads through them
        with pytest.raises(ValueError, match="outside"):
            ops.attention_drift(**(good | {"written": good["written"] + s.T}), axis="heads")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's 0/0 inside the interpreter
@pytest.mark.parametrize("axis", AXES)
def test_a_row_with_no_attended_key_is_nan_as_in_the_twin(axis):
    inputs = make_inputs(SHAPES[3], torch.float32, padded=True)
    inputs["key_mask"][1] = False
    got, twin, _ = run_all(inputs, axis)
    assert got[1].isnan().all() and twin[1].isnan().all()
    torch.testing.assert_close(got[[0, 2]], twin[[0, 2]], atol=1e-6, rtol=0)
