"""Mixture-of-experts layers whose cost follows the (token, expert) pairs actually routed.

A decoding step of a cached policy sends only its query rows through a layer's MLP, so a few
tokens choose k experts each. The experts' weights are stored stacked ([E, ...], one tensor per
projection) and every routed pair goes through two grouped matmuls (`torch.nn.functional.
grouped_mm`): no loop over experts, no all-experts matmul, no host sync. Pairs are sorted by
expert, multiplied by their expert's weights, scaled by their routing weight and summed back per
token in expert order, the order the released per-expert loop adds them in.

Checkpoints keep one key per expert and projection (`mlp.experts.N.gate_proj.weight`, ...); the
state-dict hooks below translate between those keys and the stacked tensors, so loading,
saving and `state_dict()` speak the checkpoint's layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class ExpertBank(nn.Module):
    """`n_experts` SwiGLU experts d_model -> hidden -> d_model, stacked: gate and up projections
    in `gate_up` [E, 2 * hidden, d_model] (gate rows first), down projections in `down`
    [E, d_model, hidden]."""

    def __init__(self, n_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.n_experts, self.hidden = n_experts, hidden
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))
        self.down = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.register_state_dict_post_hook(_per_expert_keys)
        self.register_load_state_dict_pre_hook(_stacked_keys)

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor):
        """x [N, d]; experts, weights [N, k]: each token's chosen experts and their routing
        weights. Returns sum_j weights[t, j] * expert_j(x[t]), [N, d] in x's dtype; the products
        and their sum are taken in the weights' dtype (x's, or fp32 as LLaDA2 adds them)."""
        pairs = experts.flatten()
        order = pairs.argsort(stable=True)  # pairs grouped by expert, in token order
        tokens = order // experts.shape[1]
        # counted by scatter, not bincount, which stops the host to size its output on CUDA
        per_expert = torch.zeros(self.n_experts, dtype=torch.int32, device=x.device)
        per_expert.scatter_add_(0, pairs, torch.ones_like(pairs, dtype=torch.int32))
        ends = per_expert.cumsum(0, dtype=torch.int32)
        gate, up = grouped_linear(x[tokens], self.gate_up, ends).chunk(2, dim=-1)
        out = grouped_linear(F.silu(gate) * up, self.down, ends)
        out = out.to(weights.dtype) * weights.flatten()[order, None]
        total = torch.zeros_like(x, dtype=weights.dtype).index_add_(0, tokens, out)
        return total.to(x.dtype)


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor):
    """rows [P, in], grouped by expert (group e = rows ends[e-1]:ends[e]) -> each group times its
    expert's weight[e].T, [P, out]. torch's grouped GEMM where it runs (CPU; CUDA in bf16 on
    sm_80+; rows of whole 16-byte multiples); elsewhere a loop over the experts that received rows
    (one host sync)."""
    if _grouped_mm_runs(rows, weight):
        return F.grouped_mm(rows, weight.transpose(-2, -1), offs=ends)
    out = rows.new_empty(rows.shape[0], weight.shape[1])
    starts = [0, *ends.tolist()]
    for e, (start, end) in enumerate(zip(starts, starts[1:], strict=False)):
        if end > start:
            out[start:end] = rows[start:end] @ weight[e].T
    return out


def _grouped_mm_runs(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    if any(n * rows.element_size() % 16 for n in weight.shape[1:]):
        return False
    if rows.device.type == "cpu":
        return True
    return (
        rows.device.type == "cuda"
        and rows.dtype == torch.bfloat16
        and torch.cuda.get_device_capability(rows.device)[0] >= 8
    )


def _per_expert_keys(module: ExpertBank, state: dict, prefix: str, _metadata) -> None:
    gate_up, down = state.pop(prefix + "gate_up"), state.pop(prefix + "down")
    h = module.hidden
    for e in range(module.n_experts):
        state[f"{prefix}{e}.gate_proj.weight"] = gate_up[e, :h]
        state[f"{prefix}{e}.up_proj.weight"] = gate_up[e, h:]
        state[f"{prefix}{e}.down_proj.weight"] = down[e]


def _stacked_keys(module: ExpertBank, state: dict, prefix: str, *_args) -> None:
    """Per-expert checkpoint tensors -> the stacked ones (a copy); left alone when an expert's
    tensor is missing, so the strict load names it."""
    names = [f"{prefix}{e}.{p}.weight" for e in range(module.n_experts) for p in PROJECTIONS]
    if not all(name in state for name in names):
        return
    parts = {name: state.pop(name) for name in names}
    state[prefix + "gate_up"] = torch.stack(
        [
            torch.cat(
                [parts[f"{prefix}{e}.gate_proj.weight"], parts[f"{prefix}{e}.up_proj.weight"]]
            )
            for e in range(module.n_experts)
        ]
    )
    state[prefix + "down"] = torch.stack(
        [parts[f"{prefix}{e}.down_proj.weight"] for e in range(module.n_experts)]
    )
