"""Triton kernels, installed as `dllm_accel.kernels` and imported lazily by dllm_accel.ops.

Each kernel has a torch twin in dllm_accel/ops/reference.py; none has landed yet.
"""
