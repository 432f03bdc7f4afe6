"""lm-evaluation-harness model "dllm_accel": generation tasks decoded with Sampler.

lm_eval (0.4.13) finds models only in its own registry: its built-in table plus classes registered
with @register_model by modules already imported. It loads no plugins (no entry-point group), so the
plain `lm_eval` command cannot see this model; run the harness through this module, which registers
it and then hands the same arguments to lm_eval's own CLI:

    python -m dllm_accel.lm_eval --model dllm_accel \\
        --model_args pretrained=/models/LLaDA-8B-Instruct,cache=elastic_cache,unmask=threshold \\
        --tasks gsm8k --apply_chat_template --batch_size 8 --device cuda
    dllm-accel-lm-eval ...                       # the same, as a console script

In Python, `import dllm_accel.lm_eval` before `lm_eval.simple_evaluate(model="dllm_accel", ...)`.

model_args
    pretrained       a checkpoint directory or a bundled model ("tiny-llada"); required
    dtype, device    as load_model (lm_eval's CLI passes device cuda:0 unless told: without CUDA,
                     cpu)
    batch_size       prompts decoded together, left-padded (an integer; "auto" is not supported)
    unmask, cache, stop, guide
                     names of dllm_accel.POLICIES, the option names of the Hydra groups
                     conf/unmask/, conf/cache/, conf/stop/, conf/guide/: unmask low_confidence
                     (default), threshold, factor, entropy_threshold, dream; cache no_cache
                     (default), prefix_cache, dual_cache, elastic_cache, frozen_cache; stop
                     stop_at_eos (default), full_length; guide none (default) or ar (with
                     ar_model=PATH: the AR model's checkpoint or a bundled name such as tiny-ar,
                     loaded on the model's device in ar_dtype)
    any other key    an argument of the chosen policies, given to the one that takes it: e.g. tau,
                     temperature, cfg_scale, steps (default: the generation length: one token per
                     step), alg, eps, top_p, top_k, alg_temp; gamma, window, track,
                     cache_distant_masks, drift, refresh_from; fill; acceptance, k, ratio,
                     verify_chunk, correct
    max_new_tokens   generation length when a request gives no max_gen_toks (default 256)
    block_length     default 32; 0 or None: the whole generation is one block
    seed             each request draws from its own generator, seeded by (seed, request id)
                     (default 0)

Generation length: a request's max_gen_toks (else max_new_tokens), rounded up to a multiple of
block_length; the text is then cut to max_gen_toks tokens, at the first EOS / end-of-turn and at the
first of the request's `until` strings. The figures recorded in lm_eval's results["config"] are a
dllm_accel.Measurement's (see measure), whose generated tokens are those returned: at most
max_gen_toks per request, up to and including the first EOS / end-of-turn. Sampling is set by the
unmask policy (`temperature`), not by the task's generation kwargs. Only generation tasks run: a
masked diffusion LM has no exact log-likelihood.

Sampling (temperature > 0) is reproducible request by request: a request's id is its task name,
document id and index in the document (lm_eval's Instance fields; its context text where they are
missing), with the repeat number when one request comes several times, so its output depends neither
on batch_size nor on the other requests or their order.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import math

try:
    import lm_eval.models  # noqa: F401  (see _register)
except ModuleNotFoundError as error:
    if (error.name or "").partition(".")[0] != "lm_eval":
        raise
    raise ModuleNotFoundError(
        "dllm_accel.lm_eval needs lm-evaluation-harness: pip install lm_eval"
    ) from error

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import MODEL_REGISTRY, register_model
from lm_eval.utils import simple_parse_args_string
from tqdm import tqdm

from .checks import check_int
from .method import Measurement, Method, measure
from .models import load_model, load_tokenizer
from .policies import ARGuide, load_ar_model
from .seeding import sample_generators

MODEL_NAME = "dllm_accel"
logger = logging.getLogger(__name__)
# unmask policies whose `steps` defaults to it
STEPS_DEFAULT_TO_LENGTH = ("low_confidence", "dream")
GREEDY_KWARGS = {"do_sample": False, "temperature": 0}  # task kwargs that change nothing


class DllmAccelLM(LM):
    """A dllm_accel model and policies behind lm_eval's LM interface (generate_until only)."""

    def __init__(
        self,
        pretrained,
        dtype=None,
        device=None,
        batch_size=1,
        max_batch_size=None,
        unmask="low_confidence",
        cache="no_cache",
        stop="stop_at_eos",
        guide="none",
        ar_model=None,
        ar_dtype=None,
        max_new_tokens=256,
        block_length=32,
        seed=0,
        trust_remote_code=None,
        **policy_args,
    ):
        # max_batch_size (for batch_size=auto) and trust_remote_code (no remote code ever runs) are
        # accepted
        # because lm_eval's CLI may pass them; they change nothing here.
        super().__init__()
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        self.block_length = (
            None if block_length in (None, 0) else _positive_int("block_length", block_length)
        )
        self.names = {"unmask": unmask, "cache": cache, "stop": stop, "guide": guide}
        if (guide == "ar") != (ar_model is not None):
            raise ValueError(
                f"model_args ar_model (the AR model's path) goes with guide=ar and only with it; "
                f"got guide={guide!r}, ar_model={ar_model!r}"
            )
        self.policy_args = dict(policy_args)
        # bad values fail now, not after loading
        self.method(self.generation_length(self.max_new_tokens))
        seed = _integer("seed", seed)
        self.pretrained = str(pretrained)
        self._device = torch.device(_available_device(device))
        self.model = load_model(pretrained, dtype=dtype, device=self._device)
        self.tokenizer = load_tokenizer(pretrained)
        if ar_model is not None:
            self.policy_args["ar_model"] = load_ar_model(
                str(ar_model), dtype=ar_dtype, device=self._device
            )
            # the guide's checks
            self.method(self.generation_length(self.max_new_tokens)).sampler(self.model)
        self.seed = seed
        self.measured = Measurement()
        self._warned_kwargs = False

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict, additional_config: dict | None = None
    ) -> DllmAccelLM:
        # lm_eval's CLI always adds device (cuda:0 unless --device) and batch_size: model_args of
        # the same
        # name win instead of colliding
        extra = {
            k: v
            for k, v in (additional_config or {}).items()
            if v is not None and k not in arg_dict
        }
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> DllmAccelLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- policies ----------------------------------------------------------------------------------
    def generation_length(self, max_tokens: int) -> int:
        """max_tokens rounded up to a whole number of blocks."""
        if self.block_length is None:
            return max_tokens
        return math.ceil(max_tokens / self.block_length) * self.block_length

    def method(self, generation_length: int) -> Method:
        """The Method of model_args for one generation length (`steps` defaults to it). Before the
        model is loaded (the guide's AR model is not yet) the guide is left out."""
        options = dict(self.policy_args)
        if self.names["unmask"] in STEPS_DEFAULT_TO_LENGTH and options.get("steps") is None:
            options["steps"] = generation_length
        names = dict(self.names)
        if names["guide"] == "ar" and "ar_model" not in options:  # checked again once it is loaded
            guide_options = inspect.signature(ARGuide).parameters
            options = {key: value for key, value in options.items() if key not in guide_options}
            names["guide"] = "none"
        return Method.build(**names, block_length=self.block_length, **options)

    # -- lm_eval's interface -----------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs = [
            self._job(*request.args) | {"id": key}
            for request, key in zip(requests, _request_ids(requests), strict=True)
        ]
        # one generation length per batch; similar prompt lengths together for less padding
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i]["length"], -len(jobs[i]["ids"])))
        texts: list[str | None] = [None] * len(jobs)
        with tqdm(total=len(jobs), desc="dllm_accel generate_until", disable=disable_tqdm) as bar:
            for length, group in itertools.groupby(order, key=lambda i: jobs[i]["length"]):
                group = list(group)
                for batch in (
                    group[k : k + self.batch_size] for k in range(0, len(group), self.batch_size)
                ):
                    for i, text in zip(
                        batch, self._decode([jobs[i] for i in batch], length), strict=True
                    ):
                        texts[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(batch))
        return texts

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_GENERATION_ONLY)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(_GENERATION_ONLY)

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        # without a generation prompt lm_eval has put a prefix of the answer (gen_prefix) last:
        # continue it
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def get_model_info(self) -> dict:
        """Recorded in lm_eval's results["config"]: the decoding settings and what decoding cost
        (the sums and ratios of a dllm_accel.Measurement, under its names)."""
        method = self.method(self.generation_length(self.max_new_tokens))
        return {
            "method": method.name,
            "unmask": repr(method.unmask),
            "cache": repr(method.cache),
            "stop": repr(method.stop),
            "guide": repr(method.guide),
            "max_new_tokens": self.max_new_tokens,
            "block_length": self.block_length,
            "model_dtype": str(self.model.dtype),
            "model_device": str(self._device),  # lm_eval's own "device" is the one asked for
            **self.measured.report(),
        }

    # -- helpers -----------------------------------------------------------------------------------
    def _job(self, context: str, gen_kwargs: dict) -> dict:
        settings = dict(gen_kwargs)
        until = settings.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = settings.pop("max_gen_toks", None)
        max_tokens = (
            self.max_new_tokens if max_tokens is None else _positive_int("max_gen_toks", max_tokens)
        )
        self._warn_ignored(settings)
        return {
            "ids": self._encode(context),
            "max_tokens": max_tokens,
            "until": until,
            "length": self.generation_length(max_tokens),
        }

    def _encode(self, context: str) -> list[int]:
        # a chat template that starts with BOS has placed it; plain text gets the tokenizer's own
        bos = self.tokenizer.bos_token
        with_special = not (bos and context.startswith(bos))
        return self.tokenizer(context, add_special_tokens=with_special)["input_ids"]

    def _decode(self, jobs: list[dict], length: int) -> list[str]:
        width = max(len(job["ids"]) for job in jobs)
        input_ids = torch.full((len(jobs), width), self.model.spec.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job["ids"]) :] = torch.tensor(job["ids"])
            attention_mask[row, width - len(job["ids"]) :] = 1
        out, measured = measure(
            self.method(length),
            self.model,
            input_ids.to(self._device),
            attention_mask.to(self._device),
            max_new_tokens=length,
            generator=sample_generators(self.seed, [job["id"] for job in jobs], self._device),
        )
        # up to the first EOS / end-of-turn, and at most the request's max_gen_toks: the tokens
        # returned
        kept = [
            min(int(n), job["max_tokens"])
            for n, job in zip(out.generated_tokens, jobs, strict=True)
        ]
        self.measured += dataclasses.replace(measured, generated_tokens=sum(kept))
        texts = []
        for row, job in enumerate(jobs):
            text = self.tokenizer.decode(
                out.sequences[row, width : width + kept[row]], skip_special_tokens=True
            )
            texts.append(cut_at_first(text, job["until"]))
        return texts

    def _warn_ignored(self, settings: dict) -> None:
        ignored = {
            k: v for k, v in settings.items() if not (k in GREEDY_KWARGS and v == GREEDY_KWARGS[k])
        }
        if ignored and not self._warned_kwargs:
            logger.warning(
                "dllm_accel decodes with the unmask policy of model_args (%s); ignoring the "
                "generation "
                "kwargs %s",
                self.names["unmask"],
                ignored,
            )
            self._warned_kwargs = True


_GENERATION_ONLY = (
    "dllm_accel supports generation tasks only (output_type: generate_until): a masked diffusion "
    "LM has no exact log-likelihood, so loglikelihood / multiple-choice / perplexity tasks cannot "
    "run"
)


def _request_ids(requests) -> list[str]:
    """A stable id per request: task/document/index (the context text where lm_eval gives none),
    then #k for its k-th occurrence in `requests` (lm_eval repeats a request by listing it
    again)."""
    seen: dict[str, int] = {}
    ids = []
    for request in requests:
        doc_id = getattr(request, "doc_id", None)
        key = (
            f"{request.task_name}/{doc_id}/{request.idx}"
            if doc_id is not None
            else f"context:{request.args[0]}"
        )
        seen[key] = seen.get(key, -1) + 1
        ids.append(f"{key}#{seen[key]}")
    return ids


def cut_at_first(text: str, stop_strings: list[str]) -> str:
    """text up to the earliest occurrence of any (non-empty) stop string."""
    positions = [text.find(s) for s in stop_strings if s]
    return text[: min((p for p in positions if p >= 0), default=len(text))]


def _integer(name: str, value) -> int:
    """An int, or a string of one (lm_eval's CLI passes batch_size as text)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return check_int(value, name)


def _positive_int(name: str, value) -> int:
    return check_int(_integer(name, value), name, 1)


def _available_device(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "device %s requested (lm_eval's CLI default) but CUDA is not available; using cpu",
            device,
        )
        return "cpu"
    return str(device)


def _register() -> None:
    # lm_eval adds its own models to the registry only when it is empty at the first lookup, so they
    # were
    # added above (import lm_eval.models) before ours; otherwise registering ours would hide them.
    # Registering once also keeps `python -m dllm_accel.lm_eval` (this file run as __main__) to one
    # class.
    if MODEL_NAME not in MODEL_REGISTRY:
        register_model(MODEL_NAME)(DllmAccelLM)


_register()


def main() -> None:
    """lm_eval's CLI, same arguments, with `--model dllm_accel` available (console script
    dllm-accel-lm-eval)."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
