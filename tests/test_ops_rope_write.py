"""rope_write's Triton kernel against its torch twin (dllm_accel.ops.reference.rope_write).

The caches start NaN-poisoned: the positions the op writes must equal the twin's, every other one
must still be NaN. Fresh rows are gathered from one source tensor per model row and position, so
repeated (row, position) pairs carry identical values, as the op requires.

The kernel runs in Triton's interpreter on the CPU, natively on a GPU with TRITON_INTERPRET=0 (bf16
only there: the interpreter mis-computes it; see tests/conftest.py). Inputs are drawn on the CPU
from seeded generators, then moved to KERNEL_DEVICE; strided and expanded views are taken there, so
they keep their strides."""

from dataclasses import dataclass

import pytest
import torch
from conftest import KERNEL_DEVICE as DEVICE
from conftest import KERNEL_DTYPES, assert_as_close_as_twin

from dllm_accel import ops
from dllm_accel.kernels import rope_write as kernel_module
from dllm_accel.models.base import Rope, rotary_tables
from dllm_accel.ops import reference

THETA = 10000.0


@dataclass(frozen=True)
class Case:
    r: int  # computed rows
    n: int  # fresh positions per row
    n_heads: int
    n_kv_heads: int
    head_dim: int
    length: int  # T, the canvas
    cache_rows: int  # R
    d_model: int
    # "per-row" [r, 1, n, D], "shared" [1, 1, n, D], "expanded" [1] expanded to r (row stride 0)
    tables: str
    repeats: bool  # a repeated model row and a repeated position within a row

    @property
    def id(self) -> str:
        return (
            f"r{self.r}-n{self.n}-Hq{self.n_heads}-Hkv{self.n_kv_heads}-D{self.head_dim}-T{self.length}"
            f"-R{self.cache_rows}-d{self.d_model}-{self.tables}{'-repeats' if self.repeats else ''}"
        )


CASES = [
    Case(3, 19, 4, 2, 64, 50, 5, 48, "per-row", True),
    Case(1, 1, 1, 1, 128, 7, 1, 5, "shared", False),
    Case(2, 17, 28, 4, 128, 97, 4, 100, "expanded", True),  # Dream's head layout
    Case(4, 5, 32, 32, 128, 33, 7, 4096, "shared", True),  # LLaDA's head layout and model dim
]
# natively only (tests/conftest.py)
DTYPES = {  # x's dtype, the tables' dtype (the dtype RoPE is applied in)
    "fp32": (torch.float32, torch.float32),
    "fp16-tables-fp32": (torch.float16, torch.float32),  # as LLaDA
    "fp16": (torch.float16, torch.float16),  # as Dream
} | (
    {"bf16-tables-fp32": (torch.bfloat16, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16)}
    if "bf16" in KERNEL_DTYPES
    else {}
)


def make_rows(case: Case, dtype, table_dtype, seed: int = 0) -> dict:
    """Fresh rows for `case` on DEVICE: q (last-dim stride 2), k, v ([r, n, H, D] transposed, as
    project_qkv makes them) and hidden (strided) gathered from per-(row, position) sources; RoPE
    tables at the rows' true positions (canvas position + a per-row shift)."""
    g = torch.Generator().manual_seed(seed)
    c = case
    if c.repeats:
        rows = torch.randint(0, c.cache_rows, (c.r,), generator=g)
        rows[-1] = rows[0]
    else:
        rows = torch.randperm(c.cache_rows, generator=g)[: c.r]
    if c.tables == "per-row":
        index = torch.stack([torch.randperm(c.length, generator=g)[: c.n] for _ in range(c.r)])
        positions = index + 2 * rows[:, None]
    else:  # every row shares its positions, so one table row serves them all
        index = torch.randperm(c.length, generator=g)[: c.n].expand(c.r, -1).clone()
        positions = index[:1]
    if c.repeats:
        index[:, -1] = index[:, 0]
        positions[:, -1] = positions[:, 0]
    cos, sin = (
        table.to(DEVICE) for table in rotary_tables(positions, c.head_dim, THETA, table_dtype)
    )
    rows, index = rows.to(DEVICE), index.to(DEVICE)
    if c.tables == "expanded":
        cos, sin = cos.expand(c.r, -1, -1, -1), sin.expand(c.r, -1, -1, -1)

    def gathered(*shape):  # [r, n, *shape]: one value per (model row, position)
        source = torch.randn(c.cache_rows, c.length, *shape, generator=g).to(DEVICE, dtype)
        return source[rows[:, None], index]

    q = (
        torch.randn(c.r, c.n, c.n_heads, c.head_dim, 2, generator=g)
        .to(DEVICE, dtype)[..., 0]
        .transpose(1, 2)
    )
    hidden = torch.empty(c.r, c.n, 2 * c.d_model, dtype=dtype, device=DEVICE)[..., ::2]
    hidden.copy_(gathered(c.d_model))
    return dict(
        q=q,
        k=gathered(c.n_kv_heads, c.head_dim).transpose(1, 2),
        v=gathered(c.n_kv_heads, c.head_dim).transpose(1, 2),
        rope=Rope(cos, sin),
        rows=rows,
        index=index,
        hidden=hidden,
    )


def poisoned_caches(case: Case, dtype, with_inputs: bool) -> dict:
    shape = (case.cache_rows, case.n_kv_heads, case.length, case.head_dim)
    inputs = (case.cache_rows, case.length, case.d_model)
    poisoned = lambda size: torch.full(size, float("nan"), dtype=dtype, device=DEVICE)  # noqa: E731
    return dict(
        keys=poisoned(shape),
        values=poisoned(shape),
        inputs=poisoned(inputs) if with_inputs else None,
    )


def exact_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """apply_rotary in fp64 on x cast to the tables' dtype (as the twin casts it)."""
    xr = x.to(rope.cos.dtype).double()
    first, second = xr.chunk(2, dim=-1)
    return xr * rope.cos.double() + torch.cat((-second, first), dim=-1) * rope.sin.double()


def written_mask(case: Case, rows, index) -> torch.Tensor:
    """[R, T] True where the op writes."""
    written = torch.zeros(case.cache_rows, case.length, dtype=torch.bool, device=DEVICE)
    written[rows[:, None], index] = True
    return written


def call(op, fresh: dict, caches: dict):
    inputs = caches["inputs"]
    return op(
        fresh["q"],
        fresh["k"],
        fresh["v"],
        fresh["rope"],
        caches["keys"],
        caches["values"],
        fresh["rows"],
        fresh["index"],
        inputs=inputs,
        hidden=None if inputs is None else fresh["hidden"],
    )


@pytest.mark.parametrize("with_inputs", [True, False], ids=["inputs", "no-inputs"])
@pytest.mark.parametrize("dtypes", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rope_write_matches_twin(case, dtypes, with_inputs):
    dtype, table_dtype = dtypes
    fresh = make_rows(case, dtype, table_dtype)
    caches, twin_caches = (
        poisoned_caches(case, dtype, with_inputs),
        poisoned_caches(case, dtype, with_inputs),
    )

    q_rotated = call(kernel_module.rope_write, fresh, caches)
    twin_q = call(reference.rope_write, fresh, twin_caches)

    assert q_rotated.shape == twin_q.shape and q_rotated.dtype == dtype
    assert_as_close_as_twin(q_rotated, twin_q, exact_rotary(fresh["q"], fresh["rope"]), what="q")

    written = written_mask(case, fresh["rows"], fresh["index"])
    exact_keys = torch.zeros(caches["keys"].shape, dtype=torch.float64, device=DEVICE)
    heads = torch.arange(case.n_kv_heads, device=DEVICE)[None, :, None]
    where = (fresh["rows"][:, None, None], heads, fresh["index"][:, None, :])
    exact_keys[where] = exact_rotary(fresh["k"], fresh["rope"])
    # [R, T, Hkv, D], indexable by `written`
    per_position = lambda cache: cache.transpose(1, 2)  # noqa: E731
    keys, twin_keys = per_position(caches["keys"]), per_position(twin_caches["keys"])
    assert keys[~written].isnan().all(), "keys outside the written positions changed"
    assert_as_close_as_twin(
        keys[written], twin_keys[written], per_position(exact_keys)[written], what="keys"
    )

    values, twin_values = per_position(caches["values"]), per_position(twin_caches["values"])
    assert values[~written].isnan().all(), "values outside the written positions changed"
    assert torch.equal(values[written], twin_values[written])
    if with_inputs:
        assert caches["inputs"][~written].isnan().all(), (
            "inputs outside the written positions changed"
        )
        assert torch.equal(caches["inputs"][written], twin_caches["inputs"][written])


# -- through dllm_accel.ops ------------------------------------------------------------------------
@pytest.fixture
def triton_impl(impl, kernel_calls):
    """DLLM_ACCEL_IMPL=triton, and a record of the kernel launcher's calls."""
    impl("triton")
    return kernel_calls(kernel_module, "rope_write")


def test_public_op_runs_the_kernel(triton_impl):
    case = CASES[0]
    fresh = make_rows(case, torch.float32, torch.float32)
    caches, twin_caches = (
        poisoned_caches(case, torch.float32, True),
        poisoned_caches(case, torch.float32, True),
    )
    q_rotated = call(ops.rope_write, fresh, caches)
    assert len(triton_impl) == 1
    twin_q = call(reference.rope_write, fresh, twin_caches)
    torch.testing.assert_close(q_rotated, twin_q)
    for name in ("keys", "values", "inputs"):
        torch.testing.assert_close(caches[name], twin_caches[name], equal_nan=True)


def _index_out_of_range(fresh, caches):
    fresh["index"][1, 3] = caches["keys"].shape[2]


def _negative_row(fresh, caches):
    fresh["rows"][0] = -1


def _strided_keys(fresh, caches):
    caches["keys"] = caches["keys"].transpose(2, 3).contiguous().transpose(2, 3)


def _short_v(fresh, caches):
    fresh["v"] = fresh["v"][:, :, :-1]


def _wrong_table_length(fresh, caches):
    fresh["rope"] = Rope(fresh["rope"].cos[:, :, :-1], fresh["rope"].sin[:, :, :-1])


def _hidden_without_inputs(fresh, caches):
    caches["inputs"] = None
    fresh["hidden_alone"] = True


def _cache_dtype(fresh, caches):
    caches["keys"] = caches["keys"].half()


def _int32_index(fresh, caches):
    fresh["index"] = fresh["index"].int()


BAD_INPUTS = {
    "index-out-of-range": (_index_out_of_range, "positions outside"),
    "negative-row": (_negative_row, "positions outside"),
    "non-contiguous-keys": (_strided_keys, "contiguous"),
    "short-v": (_short_v, "v must be"),
    "table-length": (_wrong_table_length, "rope.cos must be"),
    "hidden-without-inputs": (_hidden_without_inputs, "go together"),
    "cache-dtype": (_cache_dtype, "share a dtype"),
    "int32-index": (_int32_index, "long tensor"),
}


@pytest.mark.parametrize("breaker, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_before_launch(triton_impl, debug_checks, breaker, message):
    case = CASES[0]
    fresh = make_rows(case, torch.float32, torch.float32)
    caches = poisoned_caches(case, torch.float32, True)
    breaker(fresh, caches)
    hidden = fresh["hidden"] if caches["inputs"] is not None or fresh.get("hidden_alone") else None
    with pytest.raises(ValueError, match=message):
        ops.rope_write(
            fresh["q"],
            fresh["k"],
            fresh["v"],
            fresh["rope"],
            caches["keys"],
            caches["values"],
            fresh["rows"],
            fresh["index"],
            inputs=caches["inputs"],
            hidden=hidden,
        )
    assert not triton_impl, "the kernel launched on bad input"
    assert caches["values"].isnan().all(), "the cache was written on bad input"
