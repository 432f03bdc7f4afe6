"""score_tokens' Triton kernel against its torch twin (dllm_accel.ops.reference.score_tokens).

Test logits have four distinct leading values per row, so the ranking has no ties except in the test
that documents the tie rule.

The kernel runs in Triton's interpreter on the CPU, natively on a GPU with TRITON_INTERPRET=0
(tests/conftest.py). Logits are drawn on the CPU from seeded generators, then moved to
KERNEL_DEVICE."""

import pytest
import torch
from conftest import KERNEL_DEVICE as DEVICE
from conftest import KERNEL_DTYPES, assert_as_close_as_twin

from dllm_accel import ops
from dllm_accel.kernels import score_tokens as kernel_module
from dllm_accel.ops import reference

# (M, V): LLaDA's and Dream's V last
SHAPES = [(7, 1000), (3, 128), (4, 3), (5, 4099), (2, 126464), (1, 152064)]
# bf16 everywhere, unlike conftest's KERNEL_DTYPES: the kernel only loads it (and computes in fp32),
# which the
# interpreter gets right
DTYPES = KERNEL_DTYPES | {"bf16": torch.bfloat16}
# no exclusion; a token outside the top; the row-0 favourite itself
EXCLUDES = ["none", "other", "argmax"]


def untied_logits(rows: int, vocab: int, dtype, seed: int = 0) -> torch.Tensor:
    """Logits on DEVICE of scale 3 (row 0 ten times sharper) whose top four per row are distinct
    integers above the rest, exact in fp16 and bf16."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, vocab, generator=g)
    logits[0] *= 10
    top = logits.topk(min(4, vocab), dim=-1)
    ladder = torch.tensor([4.0, 3.0, 2.0, 1.0])[: top.indices.shape[1]]
    logits.scatter_(1, top.indices, top.values[:, :1].floor() + ladder)
    return logits.to(DEVICE, dtype)


def exclusion(logits: torch.Tensor, kind: str) -> int | None:
    if kind == "none":
        return None
    favourite = int(logits[0].argmax())
    if kind == "argmax":
        return favourite
    return int(logits[0].argmin())


def exact_scores(logits: torch.Tensor, exclude: int | None):
    """(top-2 ids, probability, margin, entropy) in fp64."""
    x = logits.double()
    ranked = x.clone()
    if exclude is not None:
        ranked[:, exclude] = float("-inf")
    best = ranked.topk(2, dim=-1).indices
    log_probs = x.log_softmax(-1)
    top = log_probs.gather(1, best).exp()
    entropy = -torch.special.xlogy(log_probs.exp(), log_probs.exp()).sum(-1)
    return best, top[:, 0], top[:, 0] - top[:, 1], entropy


def assert_scores_close(kernel, twin, exact) -> None:
    for name, got, want, truth in zip(
        ("probability", "margin", "entropy"), kernel[1:], twin[1:], exact[1:], strict=True
    ):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        assert_as_close_as_twin(got, want, truth, what=name)


@pytest.mark.parametrize("exclude_kind", EXCLUDES)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=[f"M{m}-V{v}" for m, v in SHAPES])
def test_score_tokens_matches_twin(shape, dtype, exclude_kind):
    logits = untied_logits(*shape, dtype)
    exclude = exclusion(logits, exclude_kind)
    kernel = kernel_module.score_tokens(logits, exclude=exclude)
    twin = reference.score_tokens(logits, exclude=exclude)
    exact = exact_scores(logits, exclude)

    assert kernel[0].dtype == torch.long
    assert torch.equal(kernel[0], twin[0])
    assert torch.equal(kernel[0], exact[0][:, 0])
    if exclude is not None:
        assert (kernel[0] != exclude).all()
    assert_scores_close(kernel, twin, exact)


STRIDED = {
    "row-of-3d": lambda x: (
        x.unsqueeze(1).expand(-1, 3, -1).contiguous()[:, 1]
    ),  # logits[:, i] of [M, T, V]
    "every-other-token": lambda x: torch.stack((x, x), -1).flatten(1)[:, ::2],  # column stride 2
    "transposed": lambda x: x.t().contiguous().t(),  # column-major
}


@pytest.mark.parametrize("layout", STRIDED.values(), ids=STRIDED.keys())
def test_strided_logits(layout):
    logits = untied_logits(6, 5003, torch.float16, seed=1)
    view = layout(logits)
    assert torch.equal(view, logits) and not view.is_contiguous()
    kernel = kernel_module.score_tokens(view, exclude=7)
    twin = reference.score_tokens(logits, exclude=7)
    assert torch.equal(kernel[0], twin[0])
    assert_scores_close(kernel, twin, exact_scores(logits, 7))


def test_ties_go_to_the_lowest_id():
    """Equal maxima: the kernel takes the lowest id (torch.argmax's rule), wherever the tile
    boundary falls (V 5000 spans two tiles); the twin's torch.topk leaves the order of ties
    unspecified (on CPU it returns the tied ids in no fixed order), so only the scores are compared
    with it."""
    # distinct values, all below 6
    logits = torch.linspace(-4, 4, 5000).roll(1234).repeat(3, 1).to(DEVICE)
    logits[:, [4097, 5, 900]] = 6.0  # row 0: three-way tie for first
    logits[1, 5] = 7.0  # row 1: 5 first, 900 and 4097 tie for second
    # row 2: 900 and 4097 tie for first
    logits[2, [5, 900, 4097]] = torch.tensor([5.0, 7.0, 7.0], device=DEVICE)
    token, probability, margin, _ = kernel_module.score_tokens(logits)
    assert token.tolist() == [5, 5, 900] == logits.argmax(-1).tolist()
    assert margin[0] == 0 and margin[2] == 0
    twin = reference.score_tokens(logits)
    torch.testing.assert_close(probability, twin[1])
    torch.testing.assert_close(margin, twin[2])
    assert kernel_module.score_tokens(logits, exclude=5)[0].tolist() == [900, 900, 900]


def test_minus_infinity_logits():
    """Tokens masked to -inf count as probability 0 (0 log 0 = 0 in the entropy); the twin's entropy
    is NaN there (0 * -inf), so the kernel is compared with the fp64 truth only."""
    logits = untied_logits(3, 1000, torch.float32)
    logits[:, 600:] = float("-inf")
    logits[1, :] = float("-inf")
    logits[1, [10, 20, 30]] = torch.tensor([1.0, 2.0, 3.0], device=DEVICE)
    token, probability, margin, entropy = kernel_module.score_tokens(logits)
    best, exact_probability, exact_margin, exact_entropy = exact_scores(logits, None)
    assert torch.equal(token, best[:, 0])
    for got, truth in (
        (probability, exact_probability),
        (margin, exact_margin),
        (entropy, exact_entropy),
    ):
        torch.testing.assert_close(got.double(), truth, rtol=0, atol=1e-5)


# -- through dllm_accel.ops ------------------------------------------------------------------------
@pytest.fixture
def triton_impl(impl, kernel_calls):
    """DLLM_ACCEL_IMPL=triton, and a record of the kernel launcher's calls."""
    impl("triton")
    return kernel_calls(kernel_module, "score_tokens")


def test_public_op_runs_the_kernel(triton_impl):
    logits = untied_logits(5, 777, torch.float32)
    scores = ops.score_tokens(logits, exclude=3)
    assert len(triton_impl) == 1
    twin = reference.score_tokens(logits, exclude=3)
    assert torch.equal(scores[0], twin[0])
    assert_scores_close(scores, twin, exact_scores(logits, 3))


BAD_INPUTS = {  # (logits shape, dtype, exclude, message)
    "exclude-too-large": ((2, 10), torch.float32, 10, "exclude must be"),
    "exclude-negative": ((2, 10), torch.float32, -1, "exclude must be"),
    "one-dimensional": ((10,), torch.float32, None, r"logits must be \[M"),
    "two-tokens": ((2, 2), torch.float32, None, r"logits must be \[M"),
    "no-rows": ((0, 10), torch.float32, None, r"logits must be \[M"),
    "float64": ((2, 10), torch.float64, None, "float32, float16 or bfloat16"),
    "integer": ((2, 10), torch.long, None, "float32, float16 or bfloat16"),
}


@pytest.mark.parametrize(
    "shape, dtype, exclude, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys()
)
def test_bad_input_raises_before_launch(triton_impl, shape, dtype, exclude, message):
    with pytest.raises(ValueError, match=message):
        ops.score_tokens(torch.zeros(shape, dtype=dtype, device=DEVICE), exclude=exclude)
    assert not triton_impl, "the kernel launched on bad input"
