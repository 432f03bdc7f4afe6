"""Which implementation an op runs, and the ops' argument checks that do not depend on a kernel."""

import subprocess
import sys

import pytest
import torch

from dllm_accel import ops


@pytest.fixture
def interpret(monkeypatch):
    def choose(value: str):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        ops.implementation.cache_clear()

    return choose


def test_cpu_tensors_use_the_twin_unless_triton_is_asked_for(impl, interpret):
    interpret("1")
    impl(None)
    assert ops.implementation("partial_attention", "cpu") == "torch"
    impl("torch")
    assert ops.implementation("partial_attention", "cuda") == "torch"
    impl("triton")
    # the interpreter, as in the kernel tests
    assert ops.implementation("partial_attention", "cpu") == "triton"


def test_a_request_that_cannot_be_met_says_why(impl, interpret):
    impl("triton")
    interpret("0")
    with pytest.raises(
        RuntimeError,
        match=r"DLLM_ACCEL_IMPL=triton, but score_tokens cannot run its kernel: "
        r"the tensors are on cpu",
    ):
        ops.implementation("score_tokens", "cpu")
    impl("cuda")
    with pytest.raises(
        ValueError,
        match=r"DLLM_ACCEL_IMPL must be one of \('torch', 'triton'\) or unset, got 'cuda'",
    ):
        ops.implementation("score_tokens", "cpu")


def test_importing_the_package_never_imports_triton():
    code = (
        "import sys, dllm_accel, dllm_accel.ops; "
        "assert 'triton' not in sys.modules, 'triton was imported'"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    )


def test_the_twins_reproduce_the_model_attention_and_probabilities():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(shape, generator=generator)
        for shape in ((2, 4, 5, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    )
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, :3] = False
    out, mass = ops.partial_attention(q, k, v, key_mask, mass_weights=torch.ones(2, 5))
    plain, none = ops.partial_attention(q, k, v, key_mask)
    assert none is None and torch.allclose(out, plain, atol=1e-5)
    assert torch.allclose(mass.sum(1), torch.full((2,), 4.0 * 5)) and (mass[1, :3] == 0).all()
    keys_before = k[:, :, [2, 4]]
    same = ops.attention_drift(
        q[:, :, :2],
        q[:, :, :2],
        k,
        key_mask,
        torch.tensor([[2, 4], [2, 4]]),
        keys_before,
        axis="keys",
    )
    assert torch.allclose(same, torch.ones(2, 2))


@pytest.mark.parametrize("implementation", ["torch", "triton"])
@pytest.mark.parametrize("axis", ["keys", "heads"])
def test_the_combined_ops_equal_the_ops_they_combine(impl, interpret, implementation, axis):
    """monitored_attention = partial_attention with mass + attention_drift of its first m rows, and
    attention_mass = partial_attention's mass, on either path (the twin shares one probability
    tensor)."""
    interpret("1")
    impl(implementation)
    generator = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(shape, generator=generator)
        for shape in ((2, 4, 6, 16), (2, 2, 11, 16), (2, 2, 11, 16))
    )
    q_before, keys_before = (
        torch.randn(2, 4, 2, 16, generator=generator),
        torch.randn(2, 2, 6, 16, generator=generator),
    )
    key_mask = torch.ones(2, 11, dtype=torch.bool)
    key_mask[1, :3] = False
    # padding repeats carry equal keys
    written = torch.tensor([[7, 1, 8, 9, 10, 10], [4, 5, 6, 7, 8, 8]])
    keys_before[:, :, 5] = keys_before[:, :, 4]
    weights = torch.rand(2, 6, generator=generator)
    out, mass, similarity = ops.monitored_attention(
        q,
        k,
        v,
        key_mask,
        mass_weights=weights,
        q_before=q_before,
        written=written,
        keys_before=keys_before,
        axis=axis,
    )
    expected_out, expected_mass = ops.partial_attention(q, k, v, key_mask, mass_weights=weights)
    expected = ops.attention_drift(
        q_before, q[:, :, :2], k, key_mask, written, keys_before, axis=axis
    )
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(mass, expected_mass)
    torch.testing.assert_close(similarity, expected)
    assert similarity.lt(0.999).all(), (
        "the rows moved: a test that compares ones to ones could not fail"
    )
    torch.testing.assert_close(ops.attention_mass(q, k, key_mask, weights), expected_mass)
    with pytest.raises(ValueError, match=r"q_before must be \[r, Hq, m, D\] with 0 < m <= 6"):
        ops.monitored_attention(
            q,
            k,
            v,
            key_mask,
            mass_weights=weights,
            q_before=q[:, :, :0],
            written=written,
            keys_before=keys_before,
            axis=axis,
        )


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda q, k: ops.partial_attention(q, k[:, :, :, :8], k[:, :, :, :8]),
            r"k \(2, 2, 9, 8\) must be",
        ),
        (
            lambda q, k: ops.partial_attention(q[:, :3], k, k),
            r"query heads \(3\) must be a multiple of key/value heads",
        ),
        (
            lambda q, k: ops.partial_attention(q.long(), k, k),
            r"q must be float32, float16 or bfloat16",
        ),
        (lambda q, k: ops.partial_attention(q[:, :, :0], k, k), r"q has no query rows"),
        (lambda q, k: ops.partial_attention(q, k, k, torch.ones(2, 9)), r"key_mask must be bool"),
        (
            lambda q, k: ops.partial_attention(q, k, k, mass_weights=torch.ones(2, 4)),
            r"mass_weights must be \(2, 5\)",
        ),
        (
            lambda q, k: ops.attention_drift(
                q, q, k, None, torch.zeros(2, 1, dtype=torch.long), k[:, :, :1], axis="rows"
            ),
            r"axis must be one of \('keys', 'heads'\), got 'rows'",
        ),
        (lambda q, k: ops.score_tokens(torch.zeros(0, 5)), r"logits must be \[M >= 1, V >= 3\]"),
        (
            lambda q, k: ops.score_tokens(torch.zeros(2, 5), exclude=5),
            r"exclude must be a token id in \[0, 5\)",
        ),
    ],
    ids=[
        "head-dim",
        "gqa",
        "dtype",
        "empty",
        "mask-dtype",
        "weights",
        "axis",
        "empty-logits",
        "exclude",
    ],
)
def test_bad_input_is_named_before_anything_runs(call, message):
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 9, 16)
    with pytest.raises(ValueError, match=message):
        call(q, k)
