"""Train the bundled testbed models on dllm_accel.tasks.arith, on CPU, deterministic given a seed.

    python experiments/train_tiny.py --model tiny-llada --steps 8000 --minutes 50 \
        --out /tmp/tiny-llada
    python experiments/train_tiny.py --model tiny-llada --init /tmp/tiny-llada --seed 1 --lr 1e-3 \
        --warmup 100 --steps 4000 --minutes 18 --out /tmp/tiny-llada-2  # continue; minutes add up

The bundled models' metrics.json record the exact commands that made them.

Models (one character-level tokenizer shared by all three):
- tiny-llada: the native LLaDA model; LLaDA's SFT objective: the prompt stays clean, the answer and
  the EOS padding after it are masked with probability t ~ U(eps, 1) per example, cross-entropy on
  the masked tokens weighted 1/t, normalised by the answer length;
- tiny-dream: the native Dream model (GQA, q/k/v biases), the same objective with Dream's shift;
- tiny-ar: a transformers Llama causal LM, next-token cross-entropy on the answer. Two settings:
  `short` (`--shots`, `--gen-length`), and with `--long-share` > 0 that share of the steps in the
  `long` one (`--long-shots` solved examples before the question, `--long-gen-length` tokens of
  which EOS fills what the answer leaves), the papers' shape. `--copy-share` adds copy drills (see
  diffusion_loss): without them the diffusion models never learnt to copy the variable names. Every
  `--eval-every` steps the model decodes validation problems of each setting greedily (the official
  baseline: one token per step, semi-autoregressive blocks); the checkpoint with the best mean of
  accuracy and exact match so far (or with `--keep last` the last one) is saved in the Hugging Face
  layout (16-bit weights) with a metrics.json recording how it was trained.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import string
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from threads import set_threads
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import dllm_accel
from dllm_accel import DreamAlgorithm, LowConfidence, Sampler
from dllm_accel.models import build_model, save_model, tiny_config
from dllm_accel.tasks import arith

SPECIAL = {"mask": "<|mask|>", "eos": "<|endoftext|>", "eot": "<|eot|>", "pad": "<|pad|>"}
ROLES = ("<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VOCAB = 128  # rows of the embedding: the tokenizer's ids, rounded up
SHAPES = {  # model -> sizes
    "tiny-llada": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden=384),
    "tiny-dream": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=384),
    "tiny-ar": dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden=384),
    # the deep testbed (long chains): tiny-llada's width, 12 layers (--grow-from tiny-llada)
    "tiny-llada-deep": dict(d_model=128, n_layers=12, n_heads=4, mlp_hidden=384),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus the special and role tokens."""
    characters = [chr(c) for c in range(32, 127)] + ["\n"]
    specials = [*SPECIAL.values(), *ROLES]
    vocab = {token: i for i, token in enumerate(specials + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["pad"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        mask_token=SPECIAL["mask"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        additional_special_tokens=[SPECIAL["eot"], *ROLES],
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def model_config(name: str, tokenizer, rope_theta: float, n_layers: int | None = None) -> dict:
    """The model's config: SHAPES' sizes, `n_layers` layers where given."""
    shape = SHAPES[name] | ({"n_layers": n_layers} if n_layers else {})
    ids = dict(
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eot_token_id=tokenizer.convert_tokens_to_ids(SPECIAL["eot"]),
    )
    if name == "tiny-ar":
        return dict(
            vocab_size=VOCAB,
            hidden_size=shape["d_model"],
            intermediate_size=shape["mlp_hidden"],
            num_hidden_layers=shape["n_layers"],
            num_attention_heads=shape["n_heads"],
            num_key_value_heads=shape["n_heads"],
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            rope_theta=rope_theta,
            bos_token_id=None,
            **{k: v for k, v in ids.items() if k != "mask_token_id"},
        )
    model_type = "llada" if name.startswith("tiny-llada") else "Dream"
    config = tiny_config(model_type, vocab=VOCAB, **shape, **ids, rope_theta=rope_theta)
    config["bos_token_id"] = None
    return config


# -- data ------------------------------------------------------------------------------------------
class Setting(NamedTuple):
    data: Data
    batch: int
    block_length: int  # tiny-llada's blocks in semi-AR training states and validation decoding
    eval_problems: int


class Data:
    """Training examples: chat prompt (with `shots` solved examples) ++ solution ++ <|eot|> ++ EOS
    padding up to `gen_length`; left-padded into a batch."""

    def __init__(
        self, tokenizer, shots: int, gen_length: int, pool: int, seed: int, chain=arith.CHAIN
    ):
        self.tokenizer, self.shots, self.gen_length = tokenizer, shots, gen_length
        self.chain = chain
        self.pool = arith.problems(pool, seed=seed, split="train", chain=chain)
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, problem):
        prompt = self.tokenizer(
            arith.prompt(problem, self.tokenizer, shots=self.shots, chain=self.chain),
            add_special_tokens=False,
        )["input_ids"]
        answer = self.tokenizer(problem.solution + SPECIAL["eot"], add_special_tokens=False)[
            "input_ids"
        ]
        if len(answer) > self.gen_length:
            raise ValueError(
                f"gen_length {self.gen_length} is shorter than an answer ({len(answer)} tokens)"
            )
        return prompt, answer + [self.tokenizer.eos_token_id] * (self.gen_length - len(answer))

    def batch(self, size: int):
        """ids [B, T], attention_mask [B, T], answer_region [B, T] (the generated region, EOS
        padding included)."""
        picks = torch.randint(len(self.pool), (size,), generator=self.generator).tolist()
        rows = [self.encode(self.pool[i]) for i in picks]
        width = max(len(p) for p, _ in rows) + self.gen_length
        ids = torch.full((size, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for row, (prompt, answer) in enumerate(rows):
            ids[row, width - len(prompt) - len(answer) :] = torch.tensor(prompt + answer)
            mask[row, width - len(prompt) - len(answer) :] = 1
        answer_region = torch.zeros_like(mask, dtype=torch.bool)
        answer_region[:, width - self.gen_length :] = True
        return ids, mask, answer_region

    def names(self, ids, answer_region):
        """The variable names of the answers (the only letters a solution has)."""
        letters = torch.zeros(VOCAB, dtype=torch.bool)
        letters[self.tokenizer.convert_tokens_to_ids(list(string.ascii_lowercase))] = True
        return answer_region & letters[ids]


# -- objectives ------------------------------------------------------------------------------------
def diffusion_loss(
    model,
    ids,
    attention_mask,
    answer_region,
    generator,
    eps,
    block_length=0,
    block_share=0.0,
    names=None,
    copy_share=0.0,
    copy_weight=1.0,
):
    """LLaDA's SFT loss: mask the generated region with probability t per example, weight by 1/t.

    With `block_share` > 0 that share of the examples is shaped like a semi-autoregressive decoding
    state instead: a random block k of `block_length` is masked with probability t, the blocks
    before it are clean, those after it fully masked, and only block k's masked tokens are scored
    (the only ones such a decoder commits).

    With `copy_share` > 0 that share of the examples are copy drills: one variable name of the
    answer is masked, everything else clean, and `copy_weight` x its cross-entropy (mean over
    drills) is added. Under the SFT loss alone the names stayed at chance for 12,000 steps (the
    model learnt everything else and wrote fixed letters); the drills give the copying a clean
    signal, and a weight well above 1 keeps it from being clipped away by the SFT loss's 1/t spikes
    (gradients are clipped to norm 1)."""
    spec = model.spec
    t = eps + (1 - eps) * torch.rand(ids.shape[0], generator=generator)
    masked = (torch.rand(ids.shape, generator=generator) < t[:, None]) & answer_region
    scored, region = masked, answer_region
    if block_share > 0:
        masked, scored, region = semi_ar_states(
            masked, answer_region, block_length, block_share, generator
        )
    drills = torch.zeros_like(masked)
    if copy_share > 0:
        drills = copy_drills(names, copy_share, generator)
        drilled = drills.any(1, keepdim=True)
        masked, scored, region = (
            torch.where(drilled, drills, x) for x in (masked, scored, region & ~drilled)
        )
    noisy = ids.masked_fill(masked, spec.mask_id)
    hidden = model.hidden_states(noisy, attention_mask)
    rows, positions = scored.nonzero(as_tuple=True)
    logits = model.head(hidden[rows, positions - spec.logit_shift])
    losses = F.cross_entropy(logits.float(), ids[rows, positions], reduction="none")
    drill = drills[rows, positions]
    loss = (losses[~drill] / t[rows[~drill]]).sum() / region.sum().clamp(min=1)
    return loss + copy_weight * losses[drill].mean() if drill.any() else loss


def copy_drills(names, share, generator):
    """One name position per chosen row (rows without a name are never chosen)."""
    chosen = (torch.rand(names.shape[0], generator=generator) < share) & names.any(1)
    pick = torch.multinomial(names.float() + ~names.any(1, keepdim=True), 1, generator=generator)
    drills = torch.zeros_like(names)
    drills.scatter_(1, pick, True)
    return drills & chosen[:, None]


def semi_ar_states(masked, answer_region, block_length, share, generator):
    """(noised, scored, scoreable) positions with `share` of the rows turned into semi-AR states."""
    batch, width = masked.shape
    answer_length = int(answer_region[0].sum())
    block_of = (torch.arange(width) - (width - answer_length)) // block_length
    block = torch.randint(answer_length // block_length, (batch, 1), generator=generator)
    chosen = torch.rand(batch, 1, generator=generator) < share
    current = answer_region & (block_of == block)
    later = answer_region & (block_of > block)
    noised = torch.where(chosen, masked & current | later, masked)
    scored = torch.where(chosen, masked & current, masked)
    return noised, scored, torch.where(chosen, current, answer_region)


def ar_loss(model, ids, attention_mask, answer_region):
    logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(~answer_region[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


# -- evaluation ------------------------------------------------------------------------------------
def accuracy(model, tokenizer, problems, **settings) -> float:
    """Greedy answer accuracy (see scores)."""
    return scores(model, tokenizer, problems, **settings)["accuracy"]


@torch.no_grad()
def scores(
    model,
    tokenizer,
    problems,
    *,
    shots,
    gen_length,
    block_length,
    decode=None,
    batch_size=64,
    chain=arith.CHAIN,
) -> dict:
    """{"accuracy": the right final number, "exact_match": the whole solution} over greedy decodes;
    `decode` (default: the official baseline of the model's family) maps (model, tokenizer, batch,
    gen_length=, block_length=) to the generated texts."""
    decode = decode or generate
    correct = exact = 0
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        batch = dllm_accel.encode_chat(
            tokenizer, [arith.messages(p, shots, chain=chain) for p in chunk]
        )
        outputs = decode(model, tokenizer, batch, gen_length=gen_length, block_length=block_length)
        correct += sum(arith.is_correct(text, p) for text, p in zip(outputs, chunk, strict=True))
        exact += sum(arith.is_exact(text, p) for text, p in zip(outputs, chunk, strict=True))
    return {"accuracy": correct / len(problems), "exact_match": exact / len(problems)}


def generate(model, tokenizer, batch, *, gen_length, block_length) -> list[str]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if isinstance(model, LlamaForCausalLM):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=gen_length,
            do_sample=False,
            eos_token_id=model.config.eot_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    elif model.spec.model_type == "llada":
        unmask = LowConfidence(steps=gen_length)
        out = (
            Sampler(model, unmask=unmask)
            .generate(ids, mask, max_new_tokens=gen_length, block_length=block_length)
            .sequences
        )
    else:
        unmask = DreamAlgorithm("entropy", steps=gen_length)
        out = Sampler(model, unmask=unmask).generate(ids, mask, max_new_tokens=gen_length).sequences
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


# -- training --------------------------------------------------------------------------------------
def make_model(
    name: str,
    tokenizer,
    seed: int,
    rope_theta: float = 10_000.0,
    init: Path | None = None,
    n_layers: int | None = None,
):
    """A fresh model, or (with `init`) one continuing from a checkpoint this script saved."""
    if init is not None:
        if name == "tiny-ar":
            model = LlamaForCausalLM.from_pretrained(init, dtype=torch.float32)
            model.config.eot_token_id = tokenizer.convert_tokens_to_ids(SPECIAL["eot"])
            return model
        return dllm_accel.load_model(init, dtype=torch.float32)
    config = model_config(name, tokenizer, rope_theta, n_layers)
    if name == "tiny-ar":
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**config))
        model.config.eot_token_id = config["eot_token_id"]
        return model
    return build_model(config, seed=seed)


def grow(model, shallow) -> None:
    """Start a deeper LLaDA from a shallower one of the same width: its layer k becomes layer
    k * depth // shallow depth, the layers between are new with their output projections (attn_out,
    ff_out) at zero, so they add nothing to the residual stream and the deep model computes what
    the shallow one did; embedding, final norm and head are copied."""
    deep, old = model.blocks, shallow.blocks
    placed = {k * len(deep) // len(old): layer for k, layer in enumerate(old)}
    with torch.no_grad():
        for i, layer in enumerate(deep):
            if i in placed:
                layer.load_state_dict(placed[i].state_dict())
            else:
                layer.attn_out.weight.zero_()
                layer.ff_out.weight.zero_()
        model.embedding.weight.copy_(shallow.embedding.weight)
        model.final_norm.weight.copy_(shallow.final_norm.weight)
        model.head_weight.copy_(shallow.head_weight)


def save(model, tokenizer, out: Path, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, LlamaForCausalLM):
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        model.float()
    else:
        save_model(model.to(torch.float16), out)
        model.float()
    tokenizer.save_pretrained(out)
    portable(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def portable(out: Path) -> None:
    """Run in fp32 by default though stored in 16 bits; a tokenizer config every transformers
    version reads."""
    config = json.loads((out / "config.json").read_text())
    config.update(
        {
            key: "float32"
            for key in ("torch_dtype", "dtype")
            if key in config or key == "torch_dtype"
        }
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    settings = json.loads((out / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 saves the extra special tokens as a list under "extra_special_tokens", a key
    # 4.x
    # reads as a dict of named tokens (and fails on a list); both read the list as
    # "additional_special_tokens"
    if isinstance(settings.get("extra_special_tokens"), list):
        settings["additional_special_tokens"] = settings.pop("extra_special_tokens")
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument(
        "--minutes", type=float, default=55.0, help="stop when this much training time is spent"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--gen-length", type=int, default=48)
    parser.add_argument(
        "--block-length", type=int, default=16, help="tiny-llada's blocks in validation decoding"
    )
    parser.add_argument(
        "--long-share", type=float, default=0.0, help="share of the steps on the long setting"
    )
    parser.add_argument("--long-shots", type=int, default=2)
    parser.add_argument("--long-gen-length", type=int, default=256)
    parser.add_argument("--long-block-length", type=int, default=32)
    parser.add_argument("--long-batch", type=int, default=16)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-problems", type=int, default=128)
    parser.add_argument("--eval-problems-long", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-3, help="masking rates t ~ U(eps, 1)")
    parser.add_argument(
        "--block-share",
        type=float,
        default=0.0,
        help="share of diffusion examples shaped like semi-AR states of the setting's blocks",
    )
    parser.add_argument(
        "--copy-share",
        type=float,
        default=0.0,
        help="share of diffusion examples that are copy drills (one variable name masked)",
    )
    parser.add_argument(
        "--copy-weight", type=float, default=1.0, help="weight of the copy drills' loss"
    )
    parser.add_argument(
        "--keep",
        choices=["best", "last"],
        default="best",
        help="save the checkpoint with the best validation score, or the last one evaluated",
    )
    parser.add_argument("--rope-theta", type=float, default=10_000.0)
    parser.add_argument(
        "--chain",
        type=int,
        nargs=2,
        default=list(arith.CHAIN),
        metavar=("FEWEST", "MOST"),
        help="steps per training problem (and per solved example in its prompt)",
    )
    parser.add_argument(
        "--eval-chain", type=int, nargs=2, metavar=("FEWEST", "MOST"), help="(default: --chain)"
    )
    parser.add_argument(
        "--names", choices=arith.NAMINGS, default="random", help="the chains' variable names"
    )
    parser.add_argument(
        "--grow-from",
        help="a fresh deeper LLaDA starts as this shallower one of the same width (see grow)",
    )
    parser.add_argument("--n-layers", type=int, help="layers of a fresh model (default: SHAPES)")
    parser.add_argument(
        "--init",
        type=Path,
        help="continue from a checkpoint this script saved (its metrics "
        "are carried over: steps and minutes add up)",
    )
    args = parser.parse_args()
    set_threads(args.threads)

    tokenizer = build_tokenizer()
    chain = arith.Chain(*args.chain, args.names)
    eval_chain = arith.Chain(*(args.eval_chain or args.chain), args.names)
    settings = {}
    if args.long_share < 1:
        settings["short"] = Setting(
            Data(tokenizer, args.shots, args.gen_length, args.pool, args.seed, chain),
            args.batch,
            args.block_length,
            args.eval_problems,
        )
    if args.long_share > 0:
        settings["long"] = Setting(
            Data(tokenizer, args.long_shots, args.long_gen_length, args.pool, args.seed + 3, chain),
            args.long_batch,
            args.long_block_length,
            args.eval_problems_long,
        )
    validation = arith.problems(
        max(s.eval_problems for s in settings.values()),
        seed=args.seed + 1,
        split="train",
        chain=eval_chain,
    )
    model = make_model(args.model, tokenizer, args.seed, args.rope_theta, args.init, args.n_layers)
    if args.grow_from is not None:
        grow(model, dllm_accel.load_model(args.grow_from, dtype=torch.float32))
    model.train()
    before = json.loads((args.init / "metrics.json").read_text()) if args.init else {}
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / args.warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, args.steps) / args.steps)))
        ),
    )
    noise = torch.Generator().manual_seed(args.seed + 2)
    best, spent, recent = -1.0, 0.0, []
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        long = "long" in settings and torch.rand(1, generator=noise).item() < args.long_share
        setting = settings["long" if long else "short"]
        ids, mask, answer_region = setting.data.batch(setting.batch)
        if args.model == "tiny-ar":
            loss = ar_loss(model, ids, mask, answer_region)
        else:
            loss = diffusion_loss(
                model,
                ids,
                mask,
                answer_region,
                noise,
                args.eps,
                setting.block_length,
                args.block_share,
                setting.data.names(ids, answer_region),
                args.copy_share,
                args.copy_weight,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        spent += time.perf_counter() - start
        recent = (recent + [loss.item()])[-100:]
        if step % args.eval_every == 0 or step == args.steps or spent > args.minutes * 60:
            model.eval()
            validated = {
                name: scores(
                    model,
                    tokenizer,
                    validation[: s.eval_problems],
                    shots=s.data.shots,
                    gen_length=s.data.gen_length,
                    block_length=s.block_length,
                    chain=eval_chain,
                )
                for name, s in settings.items()
            }
            model.train()
            score = sum(v for result in validated.values() for v in result.values()) / (
                2 * len(validated)
            )
            print(
                f"step {step} loss {sum(recent) / len(recent):.4f} validation "
                f"{json.dumps(validated)} "
                f"minutes {spent / 60:.1f}",
                flush=True,
            )
            if score > best or args.keep == "last":
                best = max(best, score)
                save(
                    model,
                    tokenizer,
                    args.out,
                    dict(
                        command=" && ".join(filter(None, [before.get("command"), command])),
                        seed=args.seed,
                        steps=before.get("steps", 0) + step,
                        minutes=round(before.get("minutes", 0) + spent / 60, 1),
                        stage_minutes=round(spent / 60, 1),
                        final_loss=round(sum(recent) / len(recent), 4),
                        validation=validated,
                        shots=args.shots,
                        gen_length=args.gen_length,
                        block_length=args.block_length,
                        block_share=args.block_share,
                        chain=list(chain),
                        eval_chain=list(eval_chain),
                        copy_share=args.copy_share,
                        copy_weight=args.copy_weight,
                        batch=args.batch,
                        lr=args.lr,
                        eps=args.eps,
                        rope_theta=args.rope_theta,
                        **(
                            {
                                "long": dict(
                                    share=args.long_share,
                                    shots=args.long_shots,
                                    gen_length=args.long_gen_length,
                                    block_length=args.long_block_length,
                                    batch=args.long_batch,
                                )
                            }
                            if "long" in settings
                            else {}
                        ),
                        dllm_accel=dllm_accel.__version__,
                    ),
                )
            if spent > args.minutes * 60:
                break


if __name__ == "__main__":
    main()
