"""The ops the engine and the policies call: a Triton kernel where it can run, else its torch twin.

    out, mass = partial_attention(q, k, v, key_mask, mass_weights=w)  # query rows vs cached K/V
    similarity = attention_drift(q_before, q_now, k, key_mask, written, keys_before, axis="heads")
    # both: ElasticCache's layer
    out, mass, similarity = monitored_attention(q, k, v, key_mask, mass_weights=w, q_before=...,
                                                written=..., keys_before=..., axis="heads")
    mass = attention_mass(q, k, key_mask, w)                              # the mass alone
    q = rope_write(q, k, v, rope, keys, values, rows, index, inputs=..., hidden=...)
    token, probability, margin, entropy = score_tokens(logits, exclude=mask_id)

Which implementation runs is decided once per op and device type: DLLM_ACCEL_IMPL=torch or triton
forces one (a triton request that cannot be met raises, saying why; on CPU tensors it needs
TRITON_INTERPRET=1, the tests' interpreter); unset, CUDA tensors go to the kernel when triton
imports and anything else to the twin (a CUDA fallback warns once). The kernels (kernels/<op>.py,
importable only as dllm_accel.kernels.<op>: each module holds its @triton.jit kernels and one
launcher with the signature of its op; the twins in reference.py are the specification) are imported
only when first used, so `import dllm_accel` never needs triton. Arguments are checked here, before
anything launches, from their shapes, dtypes and devices only: a check that must read the device's
values (the index ranges a kernel reads through) stops the host, so it runs only under
DLLM_ACCEL_DEBUG=1 (read once per process; see debug()).
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache

import torch

from . import reference

IMPLS = ("torch", "triton")
DRIFT_AXES = ("keys", "heads")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@cache
def implementation(op: str, device_type: str) -> str:
    """'torch' or 'triton' for `op` on tensors of `device_type`."""
    requested = os.environ.get("DLLM_ACCEL_IMPL")
    if requested not in (None, "", *IMPLS):
        raise ValueError(f"DLLM_ACCEL_IMPL must be one of {IMPLS} or unset, got {requested!r}")
    if requested == "torch":
        return "torch"
    reason = _why_no_kernel(device_type)
    if requested == "triton":
        if reason:
            raise RuntimeError(f"DLLM_ACCEL_IMPL=triton, but {op} cannot run its kernel: {reason}")
        return "triton"
    if device_type != "cuda":  # the interpreter runs kernels on the CPU only when asked to
        return "torch"
    if reason:
        warnings.warn(f"{op}: using the torch twin ({reason})", RuntimeWarning, stacklevel=3)
    return "torch" if reason else "triton"


@cache
def debug() -> bool:
    """DLLM_ACCEL_DEBUG=1: also check what needs the device's values (index ranges, one host sync
    per op call); unset or 0: never stop the host to check. Read once (debug.cache_clear()
    rereads)."""
    value = os.environ.get("DLLM_ACCEL_DEBUG", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"DLLM_ACCEL_DEBUG must be 0, 1 or unset, got {value!r}")
    return value == "1"


def _why_no_kernel(device_type: str) -> str | None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device_type != "cuda" and not interpreted:
        return (
            f"the tensors are on {device_type}, and Triton kernels need CUDA "
            "(or TRITON_INTERPRET=1)"
        )
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return f"triton does not import ({error})"
    return None


def _kernel(name: str):
    return importlib.import_module(f"dllm_accel.kernels.{name}")


def _uses_kernel(op: str, tensor: torch.Tensor) -> bool:
    return implementation(op, tensor.device.type) == "triton"


# -- the ops ---------------------------------------------------------------------------------------
def partial_attention(q, k, v, key_mask=None, *, mass_weights=None, key_end=None):
    """Attention of q [r, Hq, n, D] over k, v [r, Hkv, T, D] (key_mask [r, T], True = attend), scale
    1/sqrt(D), softmax in fp32 -> (out [r, Hq, n, D] in v's dtype, mass [r, T] fp32 or None).
    mass = sum over heads and queries of mass_weights [r, n] times the attention probabilities: the
    attention the weighted queries pay each key. key_end [r, n] (block-causal models): query i sees
    only the keys before index key_end[:, i]; that is the model's own attention (SDPA with a mask),
    which the kernel (written for ElasticCache's mass) does not compute, so it runs the twin."""
    _check_attention(q, k, v, key_mask)
    if mass_weights is not None:
        _check_shape("mass_weights", mass_weights, (q.shape[0], q.shape[2]), q.device)
    if key_end is not None:
        _check_shape("key_end", key_end, (q.shape[0], q.shape[2]), q.device)
        if mass_weights is not None:
            raise ValueError("partial_attention: key_end and mass_weights cannot be combined")
        return reference.partial_attention(q, k, v, key_mask, key_end=key_end)
    if _uses_kernel("partial_attention", q):
        return _kernel("partial_attention").partial_attention(
            q, k, v, key_mask, mass_weights=mass_weights
        )
    return reference.partial_attention(q, k, v, key_mask, mass_weights=mass_weights)


def attention_drift(q_before, q_now, k, key_mask, written, keys_before, *, axis: str):
    """The tracked rows' attention before this step's cache writes against now -> similarity [r, m]
    fp32 (see reference.attention_drift), without materialising either probability tensor on the
    kernel path."""
    kernel = _check_drift(
        q_before, q_now, k, key_mask, written, keys_before, axis, op="attention_drift"
    )
    if kernel:
        return _kernel("attention_drift").attention_drift(
            q_before, q_now, k, key_mask, written, keys_before, axis=axis
        )
    return reference.attention_drift(q_before, q_now, k, key_mask, written, keys_before, axis=axis)


def attention_mass(q, k, key_mask, mass_weights):
    """partial_attention's mass [r, T] alone: the attention the weighted query rows pay each key."""
    _check_attention(q, k, k, key_mask)
    _check_shape("mass_weights", mass_weights, (q.shape[0], q.shape[2]), q.device)
    if _uses_kernel("partial_attention", q):
        return _kernel("partial_attention").partial_attention(
            q, k, k, key_mask, mass_weights=mass_weights
        )[1]
    return reference.attention_mass(q, k, key_mask, mass_weights)


def monitored_attention(
    q, k, v, key_mask, *, mass_weights, q_before, written, keys_before, axis: str
):
    """partial_attention with mass_weights, and attention_drift of its first m = q_before.shape[2]
    query rows, in one call -> (out, mass, similarity [r, m]). The twin computes the probabilities
    once for both; the kernel path runs the two kernels."""
    _check_attention(q, k, v, key_mask)
    _check_shape("mass_weights", mass_weights, (q.shape[0], q.shape[2]), q.device)
    m = q_before.shape[2] if q_before.dim() == 4 else 0
    if not 0 < m <= q.shape[2]:
        raise ValueError(
            f"q_before must be [r, Hq, m, D] with 0 < m <= {q.shape[2]} tracked rows, "
            f"got {tuple(q_before.shape)}"
        )
    if _check_drift(
        q_before, q[:, :, :m], k, key_mask, written, keys_before, axis, op="monitored_attention"
    ):
        out, mass = _kernel("partial_attention").partial_attention(
            q, k, v, key_mask, mass_weights=mass_weights
        )
        return (
            out,
            mass,
            _kernel("attention_drift").attention_drift(
                q_before, q[:, :, :m], k, key_mask, written, keys_before, axis=axis
            ),
        )
    return reference.monitored_attention(
        q,
        k,
        v,
        key_mask,
        mass_weights=mass_weights,
        q_before=q_before,
        written=written,
        keys_before=keys_before,
        axis=axis,
    )


def rope_write(q, k, v, rope, keys, values, rows, index, *, inputs=None, hidden=None):
    """Rotate fresh q/k rows at their true positions and write k, v (and ElasticCache's layer
    inputs) into one layer's cache in place -> rotated q (see reference.rope_write)."""
    r, n_heads, n, head_dim = q.shape
    _check_shape("k", k, (r, k.shape[1], n, head_dim), q.device)
    _check_shape("v", v, k.shape, q.device)
    _check_heads(n_heads, k.shape[1])
    length = keys.shape[2]
    _check_shape("keys", keys, (keys.shape[0], k.shape[1], length, head_dim), q.device)
    _check_shape("values", values, keys.shape, q.device)
    if keys.dtype != k.dtype or values.dtype != v.dtype:
        raise ValueError(
            f"the cache ({keys.dtype}) and the fresh rows ({k.dtype}) must share a dtype"
        )
    kernel = _uses_kernel("rope_write", q)
    _check_index("rows", rows[:, None], r, keys.shape[0], q.device, bounds=kernel)
    _check_index("index", index, r, length, q.device, bounds=kernel)
    if index.shape[1] != n:
        raise ValueError(
            f"index must have one position per query row ({n}), got {tuple(index.shape)}"
        )
    for name, table in zip(("rope.cos", "rope.sin"), rope, strict=True):
        if (
            table.dim() != 4
            or table.shape[1] != 1
            or table.shape[-2:] != (n, head_dim)
            or table.shape[0] not in (1, r)
        ):
            raise ValueError(
                f"{name} must be [1 or {r}, 1, {n}, {head_dim}], got {tuple(table.shape)}"
            )
        if table.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {table.dtype}")
    if (inputs is None) != (hidden is None):
        raise ValueError(
            "inputs and hidden go together: pass both (ElasticCache's layer inputs) or neither"
        )
    if inputs is not None:
        _check_shape("hidden", hidden, (r, n, inputs.shape[-1]), q.device)
    if kernel:
        for name, buffer in (("keys", keys), ("values", values), ("inputs", inputs)):
            if buffer is not None and not buffer.is_contiguous():
                raise ValueError(f"{name} must be contiguous for the rope_write kernel")
        return _kernel("rope_write").rope_write(
            q, k, v, rope, keys, values, rows, index, inputs=inputs, hidden=hidden
        )
    return reference.rope_write(
        q, k, v, rope, keys, values, rows, index, inputs=inputs, hidden=hidden
    )


def score_tokens(logits, *, exclude: int | None = None):
    """logits [M, V] -> (token [M], probability [M], margin [M], entropy [M]) in one pass over the
    vocabulary in fp32 (see reference.score_tokens)."""
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 3:
        raise ValueError(f"logits must be [M >= 1, V >= 3], got {tuple(logits.shape)}")
    if logits.dtype not in KERNEL_DTYPES:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if exclude is not None and not 0 <= exclude < logits.shape[1]:
        raise ValueError(f"exclude must be a token id in [0, {logits.shape[1]}), got {exclude}")
    if _uses_kernel("score_tokens", logits):
        return _kernel("score_tokens").score_tokens(logits, exclude=exclude)
    return reference.score_tokens(logits, exclude=exclude)


# -- checks ----------------------------------------------------------------------------------------
def _check_attention(q, k, v, key_mask) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(
                f"{name} must be [r, heads, rows, head_dim], got {tuple(tensor.shape)}"
            )
        if tensor.dtype not in KERNEL_DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}")
        if tensor.device != q.device:
            raise ValueError(
                f"{name} is on {tensor.device}, q on {q.device}: all must share a device"
            )
    r, n_heads, n, head_dim = q.shape
    if n == 0 or r == 0:
        raise ValueError(f"q has no query rows: {tuple(q.shape)}")
    if k.shape[0] != r or k.shape[3] != head_dim:
        raise ValueError(
            f"k {tuple(k.shape)} must be [{r}, Hkv, T, {head_dim}] for q {tuple(q.shape)}"
        )
    _check_heads(n_heads, k.shape[1])
    _check_same("v", v, "k", k)
    if key_mask is not None:
        _check_shape("key_mask", key_mask, (r, k.shape[2]), q.device)
        if key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be bool (True = attend), got {key_mask.dtype}")


def _check_drift(q_before, q_now, k, key_mask, written, keys_before, axis, *, op: str) -> bool:
    """attention_drift's arguments; -> whether the kernel runs."""
    if axis not in DRIFT_AXES:
        raise ValueError(f"axis must be one of {DRIFT_AXES}, got {axis!r}")
    _check_attention(q_now, k, k, key_mask)
    _check_same("q_before", q_before, "q_now", q_now)
    kernel = _uses_kernel(op, q_now)
    _check_index("written", written, q_now.shape[0], k.shape[2], q_now.device, bounds=kernel)
    _check_shape(
        "keys_before", keys_before, (k.shape[0], k.shape[1], written.shape[1], k.shape[3]), k.device
    )
    if keys_before.dtype != k.dtype:
        raise ValueError(
            f"keys_before must have the cache's dtype {k.dtype}, got {keys_before.dtype}"
        )
    return kernel


def _check_heads(n_heads: int, n_kv_heads: int) -> None:
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise ValueError(
            f"query heads ({n_heads}) must be a multiple of key/value heads ({n_kv_heads})"
        )


def _check_same(name, tensor, other_name, other) -> None:
    if tensor.shape != other.shape or tensor.dtype != other.dtype or tensor.device != other.device:
        raise ValueError(
            f"{name} {tuple(tensor.shape)} {tensor.dtype} must match {other_name} "
            f"{tuple(other.shape)} {other.dtype} on {other.device}"
        )


def _check_shape(name, tensor, shape, device) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must be {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, expected {device}")


def _check_index(name, index, rows, limit, device, *, bounds: bool) -> None:
    """Shape, dtype and device always; the range only before a kernel and under DLLM_ACCEL_DEBUG=1
    (a host sync per call; torch's own indexing raises on its own)."""
    if index.dim() != 2 or index.shape[0] != rows or index.dtype != torch.long:
        raise ValueError(
            f"{name} must be a long tensor [{rows}, ...], got {tuple(index.shape)} {index.dtype}"
        )
    if index.device != device:
        raise ValueError(f"{name} is on {index.device}, expected {device}")
    # one host sync
    if bounds and debug() and index.numel() and bool(((index < 0) | (index >= limit)).any()):
        raise ValueError(f"{name} holds positions outside [0, {limit})")
