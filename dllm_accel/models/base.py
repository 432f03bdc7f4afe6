"""The backbone protocol every decoding component drives, and the math both models share.

A backbone exposes the pieces of one bidirectional transformer forward (ARCHITECTURE.md §3):

    h      = model.embed(ids)                    # [B, n] -> [B, n, d]
    rope   = model.rotary(positions)             # RoPE tables for those rows' true positions
    q,k,v  = model.layer(i).qkv(h, rope)   # post-norm, post-RoPE; q [B,Hq,n,D], k,v [B,Hkv,n,D]
    a      = attend(q, k, v, key_mask)           # [B, Hq, n, D]
    h      = model.layer(i).finish(h, a)         # output projection, residual, MLP, residual
    logits = model.head(h)                       # final norm + LM head, for the rows given

`model(input_ids, attention_mask)` is composed from exactly these pieces (`DiffusionLM.forward`),
so the cache engine and the plain forward share one implementation of the math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int


@dataclass(frozen=True)
class ModelSpec:
    """Model-specific facts the samplers need; the only place token ids and the logit shift live."""

    model_type: str
    mask_id: int
    eos_id: int
    pad_id: int
    eot_id: int | None  # end-of-turn token of the chat template (None if the checkpoint has none)
    bos_id: int | None
    logit_shift: int  # 0: logits[i] score token i (LLaDA); 1: logits[i] score token i+1 (Dream)
    vocab_size: int  # rows of the embedding and of the LM head
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    # positions the model was trained for (config.json's max_sequence_length /
    # max_position_embeddings);
    # None when the config gives none. A canvas of prompt + new tokens must fit in it.
    max_positions: int | None = None
    # more tokens that end an answer, e.g. DiffuCoder's <|dlm_pad|>, which fills the tail of the
    # fixed-length answers it was trained on
    end_ids: tuple[int, ...] = ()
    # attention structure: None, bidirectional over the whole canvas; b, block-causal (LLaDA2): a
    # position attends to every position of its own block of b and of the blocks before it, blocks
    # counted from the row's first token. A generation may choose another block (block_length)
    block_size: int | None = None

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: EOS first, the chat template's end-of-turn where there is
        one, and the family's other end tokens."""
        ids = (self.eos_id, self.eot_id, *self.end_ids)
        return tuple(dict.fromkeys(i for i in ids if i is not None))


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V]


class Rope(NamedTuple):
    """cos/sin tables [B or 1, 1, n, D]. Their dtype is the dtype RoPE is applied in."""

    cos: torch.Tensor
    sin: torch.Tensor


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> Rope:
    """Rotate-half RoPE tables for `positions` [B, n] (or [n]), computed in fp32, returned in
    `dtype`."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent)  # [D/2]
    angles = positions.reshape(-1, positions.shape[-1]).float()[..., None] * inv_freq  # [B, n, D/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, n, D]
    return Rope(angles.cos().to(dtype), angles.sin().to(dtype))


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """x [B, H, n, D] rotated in the tables' dtype, returned in x's dtype."""
    xr = x.to(rope.cos.dtype)
    first, second = xr.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (xr * rope.cos + rotated * rope.sin).to(x.dtype)


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back, then scale (the order both released models use)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


@dataclass(frozen=True)
class HeadShape:
    n_heads: int
    n_kv_heads: int
    head_dim: int


def project_qkv(x_normed, attention, shape: HeadShape, rope: Rope | None, clip=None):
    """[B, n, d] -> q [B, Hq, n, D], k, v [B, Hkv, n, D] through `attention`'s q_proj, k_proj,
    v_proj (and its per-head q_norm / k_norm where it has them; then q, k, v clipped to +-clip where
    given), RoPE applied to q and k (rope None: not yet, the caller rotates them, e.g. while writing
    the cache)."""
    b, n, _ = x_normed.shape
    q = attention.q_proj(x_normed).view(b, n, shape.n_heads, shape.head_dim)
    k = attention.k_proj(x_normed).view(b, n, shape.n_kv_heads, shape.head_dim)
    v = attention.v_proj(x_normed).view(b, n, shape.n_kv_heads, shape.head_dim)
    if hasattr(attention, "q_norm"):
        q, k = attention.q_norm(q), attention.k_norm(k)
    if clip is not None:
        q, k, v = (t.clamp(-clip, clip) for t in (q, k, v))
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if rope is None:
        return q, k, v
    return apply_rotary(q, rope), apply_rotary(k, rope), v


def finish_layer(h, attn, out_proj, mlp_norm, mlp):
    """Attention output [B, Hq, n, D] -> output projection, residual, MLP, residual."""
    b, _, n, _ = attn.shape
    h = h + out_proj(attn.transpose(1, 2).reshape(b, n, -1))
    return h + mlp(mlp_norm(h))


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)) under the Llama / Qwen2 key names."""

    def __init__(self, d_model: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """q_proj, k_proj, v_proj, o_proj under the Llama / Qwen2 key names (the computation is the
    layer's)."""

    def __init__(self, d_model: int, shape: HeadShape, qkv_bias: bool, out_bias: bool):
        super().__init__()
        self.q_proj = nn.Linear(d_model, shape.n_heads * shape.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, shape.n_kv_heads * shape.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(shape.n_heads * shape.head_dim, d_model, bias=out_bias)


class DecoderLayer(nn.Module):
    """The Llama / Qwen2 layer (`self_attn`, `mlp`, `input_layernorm`, `post_attention_layernorm`)
    that Dream, iLLaDA and LLaDA-MoE share; a model may add per-head q/k norms to `self_attn`, a
    clip of q, k and v, and a `shared_expert` beside the MLP."""

    def __init__(self, shape: HeadShape, attention: Attention, mlp: nn.Module, norm, clip=None):
        super().__init__()
        self.shape = shape
        self.clip_qkv = clip
        self.self_attn = attention
        self.mlp = mlp
        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()

    def qkv(self, h, rope):
        x = self.input_layernorm(h)
        return project_qkv(x, self.self_attn, self.shape, rope, self.clip_qkv)

    def finish(self, h, attn):
        return finish_layer(
            h, attn, self.self_attn.o_proj, self.post_attention_layernorm, self._mlp
        )

    def _mlp(self, x):
        out = self.mlp(x)
        return out + self.shared_expert(x) if hasattr(self, "shared_expert") else out


def attend(q, k, v, key_mask: torch.Tensor | None = None, key_end=None) -> torch.Tensor:
    """Attention of q [B, Hq, n, D] over k, v [B, Hkv, T, D] -> [B, Hq, n, D].

    key_mask [B, T] (True = attend) hides padding keys; None attends to every key. key_end [B, n]
    (block-causal models): query i sees only the keys before index key_end[:, i].
    Query head h reads key/value head h // (Hq / Hkv), as both released models group them.
    """
    mask = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    if key_end is not None:
        before = torch.arange(k.shape[2], device=k.device) < key_end[:, None, :, None]
        mask = before if mask is None else mask & before
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1]
    )


def block_key_end(positions: torch.Tensor, block: int) -> torch.Tensor:
    """Position ids [B, T] of a canvas (0 at each row's first token) -> [B, T]: the canvas index
    that ends each position's block of `block`, the keys it may see under block-causal
    attention (every earlier index; left padding is hidden by the key mask)."""
    index = torch.arange(positions.shape[-1], device=positions.device)
    return index - positions % block + block


class DiffusionLM(nn.Module):
    """Shared surface and full forward; subclasses provide the modules and the positions rule."""

    spec: ModelSpec
    rope_theta: float
    weight_tying: bool
    head_key: str  # the LM head's checkpoint key, absent from the model when tied to the embedding

    # -- provided by each model ---------------------------------------------------------------
    embedding: nn.Embedding
    blocks: nn.ModuleList
    final_norm: RMSNorm
    head_weight: torch.Tensor

    def positions(self, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor:
        """Position ids [B or 1, length] of a (left-padded) batch; the model's own rule."""
        raise NotImplementedError

    def rope_dtype(self) -> torch.dtype:
        """The dtype RoPE is applied in."""
        raise NotImplementedError

    # -- the protocol -------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def layer(self, i: int) -> nn.Module:
        return self.blocks[i]

    def rotary(self, positions: torch.Tensor) -> Rope:
        return rotary_tables(positions, self.spec.head_dim, self.rope_theta, self.rope_dtype())

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.final_norm(h), self.head_weight)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> ModelOutput:
        """Logits [B, T, V] of a full bidirectional pass. Rows where attention_mask is 0 (left
        padding) are hidden as keys; their own logits are unspecified."""
        self.check_inputs(input_ids, attention_mask)
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: attention without a mask
        return ModelOutput(logits=self.head(self.hidden_states(input_ids, attention_mask)))

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last layer's output [B, T, d], before the final norm; the inputs are trusted (no checks,
        no host sync), so callers that loop validate once up front."""
        key_mask = None if attention_mask is None else attention_mask.bool()
        positions = self.positions(attention_mask, input_ids.shape[1]).to(input_ids.device)
        rope = self.rotary(positions)
        key_end = None
        if self.spec.block_size is not None:
            key_end = block_key_end(positions, self.spec.block_size).expand(len(input_ids), -1)
        h = self.embed(input_ids)
        for block in self.blocks:
            q, k, v = block.qkv(h, rope)
            h = block.finish(h, attend(q, k, v, key_mask, key_end))
        return h

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if (
            not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 2
            or input_ids.is_floating_point()
        ):
            got = (
                tuple(input_ids.shape)
                if isinstance(input_ids, torch.Tensor)
                else type(input_ids).__name__
            )
            raise ValueError(
                f"input_ids must be an integer tensor of shape [batch, length], got {got}"
            )
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)})")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.spec.vocab_size:
            raise ValueError(
                f"input_ids contains ids outside the vocabulary [0, {self.spec.vocab_size}): "
                f"found min {low}, max {high}"
            )
        if attention_mask is None:
            return
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = (
                tuple(attention_mask.shape)
                if isinstance(attention_mask, torch.Tensor)
                else type(attention_mask)
            )
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{got}"
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        if not bool(attention_mask.any(dim=1).all()):
            raise ValueError(
                "attention_mask has a row with no token (all 0); every row needs at least one"
            )


class LlamaLayoutLM(DiffusionLM):
    """A model under the Llama / Qwen2 key names (`model.embed_tokens`, `model.layers`,
    `model.norm`, `lm_head` unless tied), with RoPE in the model dtype: Dream, iLLaDA, LLaDA-MoE.
    Positions are absolute (0..T-1, padding included) unless the model says otherwise."""

    head_key = "lm_head.weight"
    logit_shift = 0
    tied_by_default = False  # the remote config's tie_word_embeddings default
    embedding_name = "embed_tokens"  # the embedding's key under `model.` (LLaDA2: word_embeddings)
    special: SpecialTokens

    def _assemble(
        self, config: dict, tokens, layers: list, final_norm: nn.Module, shape=None
    ) -> None:
        """Embedding, layers, final norm and head for config.json's sizes, and the spec (`shape`:
        the heads, by default head_shape(config))."""
        vocab, d_model = config_value(config, "vocab_size"), config_value(config, "hidden_size")
        self.config = dict(config)
        self.rope_theta = rope_theta(config)
        self.weight_tying = bool(config.get("tie_word_embeddings", self.tied_by_default))
        self.model = nn.Module()
        setattr(self.model, self.embedding_name, nn.Embedding(vocab, d_model))
        self.model.layers = nn.ModuleList(layers)
        self.model.norm = final_norm
        if not self.weight_tying:
            self.lm_head = nn.Linear(d_model, vocab, bias=False)
        self.spec = build_spec(
            config,
            self.model_type,
            vocab=vocab,
            shape=shape or head_shape(config),
            n_layers=len(layers),
            d_model=d_model,
            logit_shift=self.logit_shift,
            special=self.special,
            tokens=tokens,
            positions_field="max_position_embeddings",
        )

    @property
    def embedding(self):
        return getattr(self.model, self.embedding_name)

    @property
    def blocks(self):
        return self.model.layers

    @property
    def final_norm(self):
        return self.model.norm

    @property
    def head_weight(self):
        return self.embedding.weight if self.weight_tying else self.lm_head.weight

    def positions(self, attention_mask, length):
        return torch.arange(length, device=self.device)[None]

    def rope_dtype(self):
        return self.dtype


def head_shape(config: dict) -> HeadShape:
    """Heads of a config under the Llama / Qwen2 field names. The remote code of every such model
    here takes head_dim = hidden_size // num_attention_heads, so a `head_dim` field that says
    otherwise is refused."""
    n_heads = config_value(config, "num_attention_heads")
    width = config_value(config, "hidden_size") // n_heads
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != width:
        raise ValueError(
            f"config.json: head_dim={head_dim} is not supported; it must equal hidden_size // "
            f"num_attention_heads = {width}"
        )
    return HeadShape(n_heads, config_value(config, "num_key_value_heads", n_heads), width)


# -- reading config.json ---------------------------------------------------------------------
_REQUIRED = object()


def config_value(config: dict, name: str, default=_REQUIRED):
    """config[name], or `default` when absent or null; a clear error when required and absent."""
    value = config.get(name)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ValueError(f"config.json is missing the required field {name!r}")
    return default


def rope_theta(config: dict, default: float = 10000.0) -> float:
    """RoPE base (default: both remote configs' own); transformers 5 may nest it in
    `rope_parameters`."""
    parameters = config.get("rope_parameters") or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(
            f"config.json: rope_parameters.rope_type={parameters['rope_type']!r} is not supported; "
            "supported values: ('default',)"
        )
    return float(config.get("rope_theta") or parameters.get("rope_theta") or default)


def require_supported(config: dict, name: str, supported: tuple, default=None) -> None:
    """Refuse an architecture option this implementation does not compute."""
    value = config.get(name, default)
    if value not in supported:
        raise ValueError(
            f"config.json: {name}={value!r} is not supported; supported values: {supported}"
        )


@dataclass(frozen=True)
class SpecialTokens:
    """How a family's tokenizer spells its special tokens, and the released model's ids.

    The released ids (from its config or model card) apply only to a checkpoint with the released
    vocabulary whose own files name no such token; any other checkpoint must name its own.
    """

    mask_texts: tuple[str, ...]
    eot_text: str | None = None  # the chat template's end of turn
    end_texts: tuple[str, ...] = ()  # more tokens that end an answer (DiffuCoder's <|dlm_pad|>)
    released_vocab: int | None = None
    released_mask: int | None = None
    released_eot: int | None = None


def token_id(config: dict, name: str, vocab_size: int, fallback: int | None = None) -> int | None:
    """A special token id from config.json, else `fallback` (the tokenizer files'); checked
    against the vocabulary."""
    value, source = config.get(name), "config.json"
    if value is None:
        value, source = fallback, "the tokenizer files"
    if value is not None and not 0 <= value < vocab_size:
        raise ValueError(f"{source}: {name}={value} lies outside the vocabulary [0, {vocab_size})")
    return value


def build_spec(
    config: dict,
    model_type: str,
    *,
    vocab: int,
    shape: HeadShape,
    n_layers: int,
    d_model: int,
    logit_shift: int,
    special: SpecialTokens,
    tokens: dict[str, int] | None,
    positions_field: str,
) -> ModelSpec:
    """`tokens`: the tokenizer files' special tokens (text -> id; the declared mask token under
    "mask_token"), None without tokenizer files. `positions_field`: the config field that gives
    the model's maximum positions."""
    tokens = tokens or {}
    released = vocab == special.released_vocab
    named = [tokens[text] for text in special.mask_texts if text in tokens]
    found_mask = tokens.get("mask_token", named[0] if named else None)
    mask = token_id(config, "mask_token_id", vocab, found_mask)
    mask = mask if mask is not None or not released else special.released_mask
    if mask is None:
        raise ValueError(
            "cannot find the mask token id: config.json has no mask_token_id and the tokenizer "
            f"files declare no mask token (looked for a mask_token and for {special.mask_texts}); "
            "add mask_token_id to config.json"
        )
    eos = token_id(config, "eos_token_id", vocab)
    if eos is None:
        raise ValueError(f"config.json must give eos_token_id inside the vocabulary [0, {vocab})")
    pad = token_id(config, "pad_token_id", vocab)
    eot = tokens.get(special.eot_text) if special.eot_text else None
    eot = token_id(config, "eot_token_id", vocab, eot)
    eot = eot if eot is not None or not released else special.released_eot
    ends = tuple(token_id({}, t, vocab, tokens[t]) for t in special.end_texts if t in tokens)
    return ModelSpec(
        model_type=model_type,
        mask_id=mask,
        eos_id=eos,
        pad_id=eos if pad is None else pad,
        eot_id=eot,
        end_ids=ends,
        bos_id=token_id(config, "bos_token_id", vocab),
        logit_shift=logit_shift,
        vocab_size=vocab,
        n_layers=n_layers,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        head_dim=shape.head_dim,
        d_model=d_model,
        max_positions=_max_positions(config, positions_field),
    )


def _max_positions(config: dict, name: str) -> int | None:
    value = config.get(name)
    return check_int(value, f"config.json: {name}", 1, optional=True)
