"""Triton kernels, installed as `dllm_accel.kernels` and imported lazily by dllm_accel.ops.

partial_attention, attention_drift, rope_write, score_tokens: each module holds its @triton.jit
kernels and one launcher with the signature of its op; the torch twins in dllm_accel/ops/reference.py
are the specification (tests/test_ops_<op>.py compares them).
"""
