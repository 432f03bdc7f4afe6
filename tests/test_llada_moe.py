"""LLaDA-MoE: logits against transformers' Qwen3-MoE (the same math: per-head q/k norms, a softmax
top-k router without renormalisation, SwiGLU experts), the expert path against a per-expert loop,
routing of only the rows computed, the released key set, loading memory and bad checkpoints.

experiments/check_remote.py runs the released remote code itself (it needs transformers 4)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import StandIn, random_ids, tiny_model
from safetensors.torch import save_file

import dllm_accel
import dllm_accel.assets
from dllm_accel import DualCache, ElasticCache, Method, Sampler, StopAtEOS, Threshold
from dllm_accel.models import LLaDAMoEModel, released_config, save_model
from dllm_accel.models.moe import ExpertBank

MOE = dict(n_experts=6, top_k=2, expert_hidden=24)


def moe_model(seed=0, **fields):
    return tiny_model("llada_moe", n_kv_heads=2, seed=seed, **MOE, **fields)


def qwen3_moe(model):
    """transformers' Qwen3-MoE holding the same weights, eager attention."""
    c, s = model.config, model.spec
    config = transformers.Qwen3MoeConfig(
        vocab_size=s.vocab_size,
        hidden_size=s.d_model,
        intermediate_size=c["dense_intermediate_size"],
        moe_intermediate_size=c["expert_intermediate_size"],
        num_hidden_layers=s.n_layers,
        num_attention_heads=s.n_heads,
        num_key_value_heads=s.n_kv_heads,
        head_dim=s.head_dim,
        num_experts=c["num_experts"],
        num_experts_per_tok=c["num_experts_per_tok"],
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[i for i, moe in enumerate(c["moe_layer_freq"]) if not moe],
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c["rope_theta"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    reference = transformers.Qwen3MoeForCausalLM(config)
    state = model.state_dict()
    if any(k.endswith("experts.gate_up_proj") for k in reference.state_dict()):
        # transformers 5 keeps the experts stacked, as the native model does
        state = {k: v for k, v in state.items() if ".experts." not in k}
        for i, layer in enumerate(model.blocks):
            if isinstance(getattr(layer.mlp, "experts", None), ExpertBank):
                state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = layer.mlp.experts.gate_up
                state[f"model.layers.{i}.mlp.experts.down_proj"] = layer.mlp.experts.down
    reference.load_state_dict(state, strict=True)
    return reference.eval()


def reference_logits(model, ids, mask):
    b, t = ids.shape
    keys = mask.bool()
    bias = torch.zeros(b, 1, t, t).masked_fill(~keys[:, None, None, :], torch.finfo().min)
    positions = torch.arange(t).expand(b, t)  # LLaDA-MoE: absolute positions, padding included
    return qwen3_moe(model)(input_ids=ids, attention_mask=bias, position_ids=positions).logits


@pytest.mark.parametrize("dense_layers", [[], [0]], ids=["all-moe", "first-dense"])
def test_logits_equal_qwen3_moe(dense_layers):
    model = moe_model(moe_layer_freq=[int(i not in dense_layers) for i in range(2)])
    ids = random_ids(model, 3, 13)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :9] = 0
    with torch.no_grad():
        ours = model(ids, mask).logits
        theirs = reference_logits(model, ids, mask)
        alone = model(ids[:1]).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() <= 1e-4
    assert (alone - theirs[:1]).abs().max() <= 1e-4
    for row in (1, 2):  # a left-padded row decodes as the same tokens alone
        start = int((~real[row]).sum())
        single = model(ids[row : row + 1, start:]).logits[0]
        torch.testing.assert_close(ours[row, start:], single, rtol=1e-5, atol=1e-5)


def naive_experts(bank, x, experts, weights):
    """The released block's loop: each expert over the tokens that chose it, added in expert
    order."""
    out = torch.zeros_like(x)
    h = bank.hidden
    for e in range(bank.n_experts):
        token, slot = torch.where(experts == e)
        gate, up = x[token] @ bank.gate_up[e, :h].T, x[token] @ bank.gate_up[e, h:].T
        y = (torch.nn.functional.silu(gate) * up) @ bank.down[e].T
        out.index_add_(0, token, y * weights[token, slot, None])
    return out


@pytest.mark.parametrize("hidden", [16, 12], ids=["grouped-mm", "loop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_path_equals_a_per_expert_loop(dtype, hidden):
    """Random routings with an expert nobody chose and one that every token chose; through torch's
    grouped GEMM, and through the loop over routed experts where the GEMM's alignment fails."""
    torch.manual_seed(0)
    bank = ExpertBank(n_experts=5, d_model=16, hidden=hidden)
    torch.nn.init.normal_(bank.gate_up)
    torch.nn.init.normal_(bank.down)
    bank = bank.to(dtype)
    x = torch.randn(9, 16, dtype=dtype)
    experts = torch.stack([torch.full((9,), 3), torch.randint(0, 3, (9,))], dim=1)  # 4: nobody
    weights = torch.rand(9, 2).to(dtype)
    with torch.no_grad():
        got = bank(x, experts, weights)
        want = naive_experts(bank, x, experts, weights)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    with torch.no_grad():  # the rows are independent: a subset gives the same rows
        torch.testing.assert_close(bank(x[2:5], experts[2:5], weights[2:5]), got[2:5])


def test_router_bias_and_shared_expert_follow_the_released_block():
    """expert_bias is added to the softmax probabilities, which then weight the experts
    unnormalised; the shared expert sees the same normed input."""
    model = moe_model(moe_router_enable_expert_bias=True, shared_expert_intermediate_size=20)
    layer = model.blocks[0]
    with torch.no_grad():
        layer.mlp.expert_bias.copy_(torch.tensor([0.0, 0.3, 0.0, -0.2, 0.5, 0.0]))
        x = torch.randn(2, 5, model.spec.d_model)
        probs = torch.softmax(layer.mlp.gate(x.view(10, -1)).float(), -1) + layer.mlp.expert_bias
        weights, experts = probs.topk(2)
        moe = naive_experts(layer.mlp.experts, x.view(10, -1), experts, weights).view_as(x)
        torch.testing.assert_close(layer.mlp(x), moe)
        attn = torch.randn(2, model.spec.n_heads, 5, model.spec.head_dim)
        h = x + layer.self_attn.o_proj(attn.transpose(1, 2).reshape(2, 5, -1))
        normed = layer.post_attention_layernorm(h)
        want = h + layer.mlp(normed) + layer.shared_expert(normed)
        torch.testing.assert_close(layer.finish(x, attn), want)


def test_only_the_rows_computed_pass_through_the_router():
    """A cached step sends its query rows (a block of the batch) through each router, not the
    canvas."""
    model = moe_model()
    routed = []
    for block in model.blocks:
        block.mlp.gate.register_forward_hook(lambda m, args, out: routed.append(args[0].shape[0]))
    ids = random_ids(model, 2, 7)
    Sampler(model, unmask=Threshold(0.9), cache=DualCache()).generate(
        ids, max_new_tokens=16, block_length=8
    )
    canvas = 2 * (7 + 16)
    assert routed[0] == canvas  # the first step of a block: a full forward
    assert set(routed[2:]) <= {canvas, 2 * 8}, routed
    assert routed.count(2 * 8) >= 2 * model.spec.n_layers


def test_elastic_cache_rows_decode_as_alone():
    model = moe_model(seed=3)
    ids = random_ids(model, 2, 9)
    ids[1, :3], mask = model.spec.pad_id, torch.ones_like(ids)
    mask[1, :3] = 0
    sampler = Sampler(model, unmask=Threshold(0.6), cache=ElasticCache(window=4))
    batch = sampler.generate(ids, mask, max_new_tokens=16, block_length=8)
    alone = sampler.generate(ids[1:, 3:], max_new_tokens=16, block_length=8)
    assert torch.equal(batch.sequences[1, -16:], alone.sequences[0, -16:])


def test_from_hf_shares_all_but_the_experts():
    source = moe_model(moe_router_enable_expert_bias=True)
    hf = StandIn(source.state_dict(), source.config)
    native = dllm_accel.from_hf(hf)
    hf_params = dict(hf.named_parameters())
    assert (
        native.model.embed_tokens.weight.data_ptr()
        == hf_params["model.embed_tokens.weight"].data_ptr()
    )
    ids = random_ids(source, 2, 8)
    with torch.no_grad():
        assert torch.equal(native(ids).logits, source(ids).logits)


def test_the_released_key_set_and_sizes_build():
    """LLaDA-MoE-7B-A1B's config on the meta device: 64 experts of every layer under their own
    keys, about 7B parameters of which about 1B (embedding and head aside) are active per
    token."""
    with torch.device("meta"):
        model = LLaDAMoEModel(released_config("llada_moe"))
    state = model.state_dict()
    assert "model.layers.15.mlp.experts.63.down_proj.weight" in state
    assert state["model.layers.0.mlp.experts.0.gate_proj.weight"].shape == (1024, 2048)
    assert state["model.layers.0.self_attn.q_norm.weight"].shape == (128,)
    total = sum(t.numel() for t in state.values())
    per_expert = 3 * 1024 * 2048
    embeddings = 2 * 157184 * 2048
    active = total - 16 * (64 - 8) * per_expert - embeddings
    assert 7.0e9 < total < 7.5e9 and 1.0e9 < active < 1.6e9, (total, active)
    spec = model.spec
    assert (spec.mask_id, spec.eos_id, spec.vocab_size) == (156895, 156892, 157184)


LOAD_PEAK = """
import sys, threading, time
import torch
import dllm_accel
from dllm_accel.models.loading import model_class, read_config


def anonymous_memory():
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


config = read_config(sys.argv[1])
with torch.device("meta"):
    model_class(config)(config)  # lazy imports and first-use allocations happen before the baseline
peak, loading = [0], True


def watch():
    while loading:
        peak[0] = max(peak[0], anonymous_memory())
        time.sleep(0.0002)


before = anonymous_memory()
watcher = threading.Thread(target=watch)
watcher.start()
model = dllm_accel.load_model(sys.argv[1])
loading = False
watcher.join()
print(max(peak[0], anonymous_memory()) - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_loading_a_sharded_bf16_checkpoint_peaks_at_about_one_model(tmp_path):
    model = tiny_model(
        "llada_moe", d_model=256, n_layers=4, n_heads=4, n_experts=32, top_k=4, expert_hidden=512
    ).to(torch.bfloat16)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_model(model, tmp_path, max_shard_bytes=size // 5)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    peak = subprocess.run(
        [sys.executable, "-c", LOAD_PEAK, str(tmp_path)], capture_output=True, text=True, check=True
    )
    # memory-mapped shard pages are the page cache's, not the process's: anonymous memory counts
    assert 0.9 * size < int(peak.stdout) < 1.25 * size, (int(peak.stdout), size)
    loaded = dllm_accel.load_model(tmp_path)
    ids = random_ids(model, 1, 6)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_config_without_router_settings_is_named(tmp_path):
    model = moe_model()
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["num_experts_per_tok"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing the required field 'num_experts_per_tok'"):
        dllm_accel.load_model(tmp_path)


def test_a_checkpoint_lacking_an_expert_is_named(tmp_path):
    model = moe_model()
    state = {k: v.clone() for k, v in model.state_dict().items() if ".experts.4." not in k}
    save_model(model, tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing key\(s\), e.g. \['model.layers.0.mlp.experts.4"):
        dllm_accel.load_model(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("moe_layer_freq", 1),
        ("partial_rotary_factor", 0.5),
        ("moe_router_score_function", "sigmoid"),
        ("num_experts_per_tok", 9),
    ],
)
def test_unsupported_options_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        moe_model(**{field: value})


def tiny_moe_checkpoint(directory):
    """A random LLaDA-MoE checkpoint with tiny-llada's tokenizer files and special ids."""
    ids = dict(mask_token_id=0, eos_token_id=1, eot_token_id=2, pad_token_id=3, bos_token_id=None)
    save_model(moe_model(seed=5, **ids), directory)
    for file in dllm_accel.assets.checkpoint_directory("tiny-llada").iterdir():
        if "token" in file.name or file.suffix == ".jinja":
            shutil.copy(file, directory)
    return directory


def test_patch_and_the_official_sampler_drive_llada_moe():
    """patch() on a remote-code LLaDA-MoE and llada_generate decode as Method.official does."""
    native = moe_model(seed=7)
    ids = random_ids(native, 2, 6)
    remote = dllm_accel.patch(StandIn(native.state_dict(), native.config))
    got = dllm_accel.llada_generate(remote, ids, steps=8, gen_length=8, block_length=4)
    official = Method.official(native, max_new_tokens=8, block_length=4).sampler(native)
    assert torch.equal(got, official.generate(ids, max_new_tokens=8, block_length=4).sequences)


def test_lm_eval_decodes_a_llada_moe_checkpoint(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from dllm_accel.lm_eval import DllmAccelLM

    directory = tiny_moe_checkpoint(tmp_path)
    lm = DllmAccelLM.create_from_arg_string(
        f"pretrained={directory},max_new_tokens=16,block_length=8,device=cpu,unmask=threshold,"
        "cache=elastic_cache",
        {"batch_size": "2"},
    )
    assert isinstance(lm.model, LLaDAMoEModel)
    prompts = ["k=3. b=k+2. What is b?", "a=1. What is a?"]
    contexts = [lm.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    requests = [
        Instance("generate_until", {}, (c, {"until": []}), i) for i, c in enumerate(contexts)
    ]
    texts = lm.generate_until(requests)
    tokenizer = dllm_accel.load_tokenizer(directory)
    batch = dllm_accel.encode_chat(tokenizer, [[{"role": "user", "content": p}] for p in prompts])
    sampler = Sampler(lm.model, unmask=Threshold(0.9), cache=ElasticCache(), stop=StopAtEOS())
    out = sampler.generate(**batch, max_new_tokens=16, block_length=8)
    width = batch["input_ids"].shape[1]
    assert texts == [
        tokenizer.decode(row[width : width + int(n)], skip_special_tokens=True)
        for row, n in zip(out.sequences, out.generated_tokens, strict=True)
    ]
