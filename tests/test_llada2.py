"""LLaDA2: logits against a naive reference written from the remote code's facts and against
transformers' GLM4-MoE (the same math: partial RoPE, per-head q/k norms, sigmoid group-limited
routing with a scaling factor, shared experts, a dense first layer); block-causal attention; the
expert path against a per-token loop; the released key set; load/save; refused options.

experiments/check_remote.py --tiny llada2 runs the released remote code itself (transformers 4)."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers
from conftest import StandIn, random_ids, tiny_model
from safetensors import safe_open

import dllm_accel
from dllm_accel.models import LLaDA2Model, released_config, save_model
from dllm_accel.models.llada2 import SparseMoE, pair_rotated_dims
from dllm_accel.syncs import HostSyncs

MOE = dict(n_experts=8, top_k=2, expert_hidden=24)


def llada2(seed=0, **fields):
    """A tiny LLaDA2 with random norms, projection biases and router biases."""
    model = tiny_model("llada2", seed=seed, **{**MOE, "n_kv_heads": 2, **fields})
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("expert_bias"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))
    return model


# -- a naive reference, written from the remote code's description --------------------------------
def rms(x, weight, eps):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def swiglu(x, gate, up, down):
    return F.silu(x @ gate.T) * (x @ up.T) @ down.T


def naive_moe(x, p, prefix, c):
    """Per token: sigmoid scores, group-limited choice on score + bias, unbiased weights
    normalised (k > 1) and scaled, each chosen expert run alone; the shared expert added."""
    n_experts, k, groups = c["num_experts"], c["num_experts_per_tok"], c["n_group"]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        scores = torch.sigmoid(x[t] @ p[prefix + "gate.weight"].T)
        biased = scores + p[prefix + "gate.expert_bias"]
        per_group = biased.view(groups, -1)
        best2 = per_group.sort(descending=True).values[:, :2].sum(-1)
        kept = best2.sort(descending=True).indices[: c["topk_group"]]
        allowed = torch.zeros(groups, dtype=torch.bool)
        allowed[kept] = True
        candidates = biased.masked_fill(~allowed.repeat_interleave(n_experts // groups), -1e9)
        chosen = candidates.sort(descending=True).indices[:k]
        weights = scores[chosen] / (scores[chosen].sum() if k > 1 else 1)
        for e, w in zip(chosen.tolist(), weights * c["routed_scaling_factor"], strict=True):
            e = f"{prefix}experts.{e}."
            y = swiglu(x[t], *(p[e + f"{n}_proj.weight"] for n in ("gate", "up", "down")))
            out[t] += w * y
    if c.get("num_shared_experts") is not None:
        s = prefix + "shared_experts."
        out += swiglu(x, *(p[s + f"{n}_proj.weight"] for n in ("gate", "up", "down")))
    return out


def naive_logits(model, ids):
    """One row [T] -> logits [T, V] from the checkpoint's tensors, positions 0..T-1."""
    c, s = model.config, model.spec
    p = model.state_dict()
    eps, hq, hkv, d = c["rms_norm_eps"], s.n_heads, s.n_kv_heads, s.head_dim
    r = int(d * c["partial_rotary_factor"])
    t = ids.shape[0]
    angles = torch.arange(t)[:, None].float() / c["rope_theta"] ** (torch.arange(0, r, 2) / r)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)  # [T, R]

    def rope(x):  # [H, T, D]: rotate-half over the first R dims only
        rot, rest = x[..., :r], x[..., r:]
        half = torch.cat((-rot[..., r // 2 :], rot[..., : r // 2]), -1)
        return torch.cat((rot * cos + half * sin, rest), -1)

    block = torch.arange(t) // s.block_size
    visible = block[None, :] <= block[:, None]  # [query, key]
    h = p["model.word_embeddings.weight"][ids]
    for i in range(s.n_layers):
        pre = f"model.layers.{i}."
        x = rms(h, p[pre + "input_layernorm.weight"], eps)
        fused = x @ p[pre + "attention.query_key_value.weight"].T
        if pre + "attention.query_key_value.bias" in p:
            fused = fused + p[pre + "attention.query_key_value.bias"]
        fused = fused.view(t, hq + 2 * hkv, d).transpose(0, 1)
        q, k, v = fused[:hq], fused[hq : hq + hkv], fused[hq + hkv :]
        q = rope(rms(q, p[pre + "attention.query_layernorm.weight"], eps))
        k = rope(rms(k, p[pre + "attention.key_layernorm.weight"], eps))
        k, v = (z.repeat_interleave(hq // hkv, 0) for z in (k, v))
        scores = (q @ k.transpose(1, 2)) * d**-0.5
        attn = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ v
        out = attn.transpose(0, 1).reshape(t, -1) @ p[pre + "attention.dense.weight"].T
        if pre + "attention.dense.bias" in p:
            out = out + p[pre + "attention.dense.bias"]
        h = h + out
        x = rms(h, p[pre + "post_attention_layernorm.weight"], eps)
        if i < c["first_k_dense_replace"]:
            mlp = swiglu(x, *(p[pre + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down")))
        else:
            mlp = naive_moe(x, p, pre + "mlp.", c)
        h = h + mlp
    return rms(h, p["model.norm.weight"], eps) @ p["lm_head.weight"].T


CONFIGS = {
    "gqa-shared-dense0-bias": dict(use_bias=True, use_qkv_bias=True, block_size=8),
    "mha-noshared-allmoe-top1-rot025": dict(
        n_kv_heads=4,
        num_shared_experts=None,
        first_k_dense_replace=0,
        top_k=1,
        partial_rotary_factor=0.25,
    ),
}


@pytest.mark.parametrize("fields", CONFIGS.values(), ids=CONFIGS.keys())
def test_logits_equal_a_naive_reference(fields):
    """Batch 1 and left-padded rows (positions from each row's first token) against the naive
    reference of each row alone, over 3 blocks of 8 or 2 of the released 32."""
    model = llada2(**fields)
    ids = random_ids(model, 3, 40)
    mask = torch.ones_like(ids)
    mask[1, :5], mask[2, :17] = 0, 0
    with torch.no_grad():
        alone = model(ids[:1]).logits[0]
        batch = model(ids, mask).logits
        for row, start in enumerate((0, 5, 17)):
            want = naive_logits(model, ids[row, start:])
            assert (batch[row, start:] - want).abs().max() <= 1e-4, row
        assert (alone - naive_logits(model, ids[0])).abs().max() <= 1e-4


def test_a_block_sees_no_later_block():
    """Changing a token of block k+1 leaves the logits of blocks <= k exactly as they were, and
    changes those of block k+1; blocks are counted from a padded row's first token."""
    model = llada2(block_size=8)
    ids = random_ids(model, 2, 30)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    changed = ids.clone()
    changed[0, 17] = (ids[0, 17] + 1) % 100  # block 2 of row 0 (positions 16..23)
    changed[1, 6 + 17] = (ids[1, 6 + 17] + 1) % 100  # block 2 of row 1
    with torch.no_grad():
        before, after = model(ids, mask).logits, model(changed, mask).logits
    for row, start in enumerate((0, 6)):
        assert torch.equal(before[row, start : start + 16], after[row, start : start + 16])
        assert (
            before[row, start + 16 : start + 24] - after[row, start + 16 : start + 24]
        ).abs().max() > 1e-3


def rope_fields(c: dict) -> dict:
    """RoPE's config fields: nested in rope_parameters from transformers 5, top-level before."""
    fields = {"rope_theta": c["rope_theta"], "partial_rotary_factor": c["partial_rotary_factor"]}
    if int(transformers.__version__.split(".")[0]) < 5:
        return fields
    return {"rope_parameters": {"rope_type": "default", **fields}}


def glm4_moe(model):
    """transformers' GLM4-MoE holding the same weights: q, k, v cut from the fused rows."""
    c, s = model.config, model.spec
    config = transformers.Glm4MoeConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.d_model,
        intermediate_size=c["intermediate_size"],
        moe_intermediate_size=c["moe_intermediate_size"],
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads,
        n_routed_experts=c["num_experts"],
        num_experts_per_tok=c["num_experts_per_tok"],
        n_shared_experts=c["num_shared_experts"],
        n_group=c["n_group"],
        topk_group=c["topk_group"],
        routed_scaling_factor=c["routed_scaling_factor"],
        first_k_dense_replace=c["first_k_dense_replace"],
        norm_topk_prob=c["num_experts_per_tok"] > 1,
        use_qk_norm=True,
        attention_bias=bool(c["use_qkv_bias"]),
        rms_norm_eps=c["rms_norm_eps"],
        **rope_fields(c),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    reference = transformers.Glm4MoeForCausalLM(config)
    hq, hkv = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    names = {
        "model.word_embeddings": "model.embed_tokens",
        "attention.dense": "self_attn.o_proj",
        "attention.query_layernorm": "self_attn.q_norm",
        "attention.key_layernorm": "self_attn.k_norm",
        "gate.expert_bias": "gate.e_score_correction_bias",
    }
    # transformers 5 stacks the experts (experts.gate_up_proj, experts.down_proj); transformers 4
    # keeps one module per expert under the checkpoint's own keys
    stacked = any(key.endswith("experts.gate_up_proj") for key in reference.state_dict())
    state = {}
    for key, tensor in model.state_dict().items():
        if ".experts." in key and stacked:
            continue
        if "query_key_value" in key:  # rows: the q heads, the k heads, the v heads
            for name, part in zip("qkv", tensor.split([hq, hkv, hkv]), strict=True):
                state[key.replace("attention.query_key_value", f"self_attn.{name}_proj")] = part
            continue
        for ours, theirs in names.items():
            key = key.replace(ours, theirs)
        state[key] = tensor
    for i, layer in enumerate(model.blocks):
        if isinstance(layer.mlp, SparseMoE) and stacked:
            state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = layer.mlp.experts.gate_up
            state[f"model.layers.{i}.mlp.experts.down_proj"] = layer.mlp.experts.down
    reference.load_state_dict(state, strict=True)
    return reference.eval()


def test_logits_equal_glm4_moe_under_the_block_mask():
    """GQA, a dense first layer, a shared expert, router biases, partial RoPE 0.5; the
    block-causal mask and the padding as one additive 4D mask, positions from the first token."""
    model = llada2(block_size=8)
    ids = random_ids(model, 2, 27)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    positions = model.positions(mask, ids.shape[1])
    index = torch.arange(ids.shape[1])
    end = index - positions % 8 + 8  # [B, T]: a query sees the keys before its block's end
    allowed = (index[None, None, :] < end[:, :, None]) & mask.bool()[:, None, :]
    bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo().min)[:, None]
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = glm4_moe(model)(input_ids=ids, attention_mask=bias, position_ids=positions).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-4


@pytest.mark.parametrize("top_k", [1, 3])
def test_expert_path_equals_a_per_token_loop(top_k):
    """Sigmoid scores, group-limited choice on the biased scores (4 groups, 2 kept), unbiased
    weights normalised and scaled, the shared expert; an expert in a group nobody keeps stays
    unused, and the chosen experts lie in the kept groups."""
    model = llada2(top_k=top_k, n_layers=2)
    moe = model.blocks[1].mlp
    with torch.no_grad():
        moe.gate.expert_bias[6:] = -5.0  # group 3 (experts 6, 7) is never kept
        x = torch.randn(2, 9, model.spec.d_model)
        got = moe(x)
        want = naive_moe(x.view(18, -1), model.state_dict(), "model.layers.1.mlp.", model.config)
        experts, weights = moe.gate(x.view(18, -1))
    torch.testing.assert_close(got.view(18, -1), want, rtol=1e-5, atol=1e-5)
    assert experts.max() < 6
    assert all(len(set((row // 2).tolist())) <= 2 for row in experts)  # at most 2 groups each
    if top_k > 1:  # normalised, then scaled by routed_scaling_factor
        torch.testing.assert_close(weights.sum(-1), torch.full((18,), 2.5))


def test_partial_rotary_by_pairing_equals_rotating_the_first_dims():
    """apply_rotary on the paired dims with the model's D-wide tables equals rotate-half over the
    first R dims with the others passed through, then the same pairing."""
    model = llada2(partial_rotary_factor=0.25)
    d, r = model.spec.head_dim, model.rotary_dim
    x = torch.randn(1, 2, 7, d)
    rope = model.rotary(torch.arange(3, 10)[None])
    angles = torch.arange(3, 10)[:, None].float() / model.rope_theta ** (torch.arange(0, r, 2) / r)
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    rot = x[..., :r]
    half = torch.cat((-rot[..., r // 2 :], rot[..., : r // 2]), -1)
    want = torch.cat((rot * cos + half * sin, x[..., r:]), -1)
    got = dllm_accel.models.base.apply_rotary(pair_rotated_dims(x, r), rope)
    torch.testing.assert_close(got, pair_rotated_dims(want, r))


def test_the_forward_stops_the_host_nowhere():
    """The router, the grouped experts, the positions and the block mask stay on the device: no
    host sync in the layers of a padded forward (ARCHITECTURE.md §8)."""
    model = llada2(n_layers=3, block_size=8)
    ids = random_ids(model, 2, 21)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad(), HostSyncs(sites=True) as syncs:
        model.hidden_states(ids, mask)
    assert syncs.count == 0, syncs.by_site


def test_save_and_load_keep_the_checkpoint_keys(tmp_path):
    model = llada2(use_bias=True)
    save_model(model, tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.expert_bias")
    assert torch.equal(bias, model.blocks[1].mlp.gate.expert_bias)
    for key in (
        "model.word_embeddings.weight",
        "model.layers.0.attention.query_key_value.weight",
        "model.layers.0.attention.query_layernorm.weight",
        "model.layers.0.attention.dense.bias",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.experts.7.down_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert key in keys, key
    assert not any("gate_up" in k or k.endswith("experts.down") for k in keys)
    loaded = dllm_accel.load_model(tmp_path)
    assert isinstance(loaded, LLaDA2Model)
    ids = random_ids(model, 1, 12)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_from_hf_shares_all_but_the_experts():
    source = llada2()
    hf = StandIn(source.state_dict(), source.config)
    native = dllm_accel.from_hf(hf)
    shared = dict(hf.named_parameters())["model.word_embeddings.weight"]
    assert native.model.word_embeddings.weight.data_ptr() == shared.data_ptr()
    ids = random_ids(source, 2, 20)
    with torch.no_grad():
        assert torch.equal(native(ids).logits, source(ids).logits)


def test_the_released_config_builds_with_its_key_set_and_ids():
    """LLaDA2.0-mini on the meta device: about 16B parameters, 256 experts per MoE layer, the
    first layer dense; the released special ids and block."""
    with torch.device("meta"):
        model = LLaDA2Model(released_config("llada2"))
    state = model.state_dict()
    assert state["model.layers.0.attention.query_key_value.weight"].shape == (3072, 2048)
    assert state["model.layers.0.mlp.gate_proj.weight"].shape == (5120, 2048)
    assert state["model.layers.19.mlp.experts.255.down_proj.weight"].shape == (2048, 512)
    assert state["model.layers.1.mlp.shared_experts.gate_proj.weight"].shape == (512, 2048)
    assert "model.layers.0.mlp.gate.weight" not in state and "lm_head.weight" in state
    assert 16.0e9 < sum(t.numel() for t in state.values()) < 16.5e9
    spec = model.spec
    assert (spec.mask_id, spec.eos_id, spec.pad_id) == (156895, 156892, 156892)
    assert (spec.block_size, spec.max_positions, model.rotary_dim) == (32, 32768, 64)


@pytest.mark.parametrize(
    "fields, named",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
        (dict(use_sliding_window=True), "use_sliding_window"),
        (dict(n_group=3), "n_group"),
        (dict(topk_group=5), "topk_group"),
        (dict(top_k=9), "num_experts_per_tok"),
        (dict(top_k=0), "num_experts_per_tok"),
        (dict(partial_rotary_factor=0.1), "partial_rotary_factor"),
        (dict(block_size=0), "block_size"),
    ],
)
def test_unsupported_options_are_refused_by_name(fields, named):
    with pytest.raises(ValueError, match=named):
        llada2(**fields)


def test_norm_head_is_accepted_as_the_remote_code_ignores_it():
    assert llada2(norm_head=True).spec.block_size == 32


def test_architectures_and_model_type_pick_the_class():
    config = json.loads(json.dumps(released_config("llada2")))
    assert dllm_accel.models.model_class(config) is LLaDA2Model
    assert dllm_accel.models.model_class({"model_type": "llada2_moe"}) is LLaDA2Model
