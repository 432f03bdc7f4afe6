"""The main job: decode a task's samples with a model and a decoding method (and, with
baseline=true, the model family's official sampler beside it); write samples.jsonl, summary.json and
plots into Hydra's run directory and print the methods side by side.

    python experiments/run.py            # bundled tiny LLaDA: official vs accelerated
    python experiments/run.py experiment=gsm8k_llada_elastic model.path=/models/LLaDA-8B-Instruct
    python experiments/run.py task=gsm8k task.data_dir=DIR task.limit=50 hydra.run.dir=runs/gsm8k
    accelerate launch --multi_gpu --num_processes 8 experiments/run.py ...   # data-parallel

Rerunning into a directory that holds samples.jsonl resumes: samples already there are skipped. The
directory is checked (writable, every record whole and once, the same settings) and locked before
any model is loaded (report.open_run_dir). Under accelerate, batches are dealt out to the processes
and the main process reads and writes the directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import hydra
import report
import schemas
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from threads import check_threads
from tqdm import tqdm

import dllm_accel
from dllm_accel import Method, measure
from dllm_accel.assets import BUNDLED
from dllm_accel.checks import check_int
from dllm_accel.method import compact

log = logging.getLogger("run")
OFFICIAL = "official"
# settings that change no sample's output: a resumed run may change them
FREE_SETTINGS = ("batch_size", "threads", "warmup", "refresh_plot")


@dataclass(frozen=True)
class Labelled:
    """A Method and its label in the outputs (its name, "official", or the config's `name`)."""

    label: str
    method: Method

    @property
    def guided(self) -> bool:
        return self.method.guide is not None


@dataclass
class Job:
    """Everything a run needs that can be checked before the model is loaded."""

    cfg: DictConfig
    task: object
    method: Labelled

    @classmethod
    def check(cls, cfg: DictConfig) -> Job:
        _check_model_path(cfg)
        _check_positive(cfg, "max_new_tokens")
        _check_positive(cfg, "batch_size")
        check_threads(cfg.threads)
        if cfg.block_length is not None:
            _check_positive(cfg, "block_length")
            if cfg.max_new_tokens % cfg.block_length:
                raise ValueError(
                    f"max_new_tokens ({cfg.max_new_tokens}) must be divisible by block_length "
                    f"({cfg.block_length}); or block_length=null for one block"
                )
        task = instantiate(cfg.task)
        method = Method(
            instantiate(cfg.unmask),
            instantiate(cfg.cache),
            instantiate(cfg.stop),
            None,
            cfg.block_length,
        )
        if cfg.name == OFFICIAL:
            raise ValueError(
                f"name={OFFICIAL!r} is the baseline's; choose another name for the method"
            )
        return cls(cfg, task, Labelled(cfg.name or method.name, method))

    def methods(self, model) -> list[Labelled]:
        """The official sampler (baseline=true), the method, and with a guide the method guided by
        it."""
        methods = [self.method]
        if self.cfg.get("guide"):
            guide_cfg = self.cfg.guide.copy()
            if (
                guide_cfg.ar_model.get("device") is None
            ):  # beside the diffusion model unless said otherwise
                guide_cfg.ar_model.device = str(model.device)
            guided = replace(self.method.method, guide=instantiate(guide_cfg))
            label = f"{self.cfg.name} + {compact(guided.guide)}" if self.cfg.name else guided.name
            methods.append(Labelled(label, guided))
        if not self.cfg.baseline:
            return methods
        official = Method.official(model, self.cfg.max_new_tokens, self.cfg.block_length)
        return [Labelled(OFFICIAL, official), *methods]


def _check_model_path(cfg: DictConfig) -> None:
    path = cfg.model.path
    if path is None:
        choice = (
            HydraConfig.get().runtime.choices.get("model", "") if HydraConfig.initialized() else ""
        )
        raise ValueError(
            f"model.path is not set: pass model.path=DIR (a checkpoint directory) or set the "
            f"environment variable {choice.upper()}_PATH"
        )
    if not Path(path).is_dir() and path not in BUNDLED:
        raise FileNotFoundError(
            f"model.path={path!r}: no such checkpoint directory (nor a bundled model: "
            f"{', '.join(BUNDLED[:2])})"
        )


def _check_positive(cfg: DictConfig, key: str) -> None:
    check_int(cfg[key], key, 1)


# -- decoding
# ---------------------------------------------------------------------------------------
class Decoder:
    """One method over a model and tokenizer: a batch of samples -> samples.jsonl records."""

    def __init__(self, job: Job, method: Labelled, model, tokenizer):
        self.job, self.method, self.model, self.tokenizer = job, method, model, tokenizer

    def encode(self, samples) -> tuple[list[str], dict]:
        """-> (the prompt texts the model sees, the left-padded batch)."""
        if isinstance(
            samples[0].prompt, str
        ):  # plain text for a base model: the tokenizer adds BOS if it has one
            texts = [s.prompt for s in samples]
            return texts, dllm_accel.encode_texts(self.tokenizer, texts, device=self.model.device)
        texts = [
            self.tokenizer.apply_chat_template(s.prompt, add_generation_prompt=True, tokenize=False)
            for s in samples
        ]
        return texts, dllm_accel.encode_texts(
            self.tokenizer, texts, add_special_tokens=False, device=self.model.device
        )

    def generate(self, batch, samples, trace: bool = False):
        """-> (GenerationOutput, Measurement). Each sample's random draws from its own generator,
        seeded by (cfg.seed, sample id): its output depends neither on its batch nor on resuming or
        the number of processes."""
        generators = dllm_accel.sample_generators(
            self.job.cfg.seed, [s.id for s in samples], self.model.device
        )
        return measure(
            self.method.method,
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=self.job.cfg.max_new_tokens,
            generator=generators,
            trace=trace,
        )

    def __call__(self, samples) -> list[dict]:
        prompts, batch = self.encode(samples)
        out, measured = self.generate(batch, samples)
        prompt_length = batch["input_ids"].shape[1]
        outputs = [
            self.tokenizer.decode(
                row[prompt_length : prompt_length + int(n)], skip_special_tokens=True
            )
            for row, n in zip(out.sequences, out.generated_tokens, strict=True)
        ]
        scores = self.job.task.score_many(samples, outputs)
        return [
            {
                "id": sample.id,
                "method": self.method.label,
                "guided": self.method.guided,
                "prompt": prompt,
                "output": output,
                "target": sample.target,
                **score,
                **report.sample_counts(measured, int(tokens), int(row_forwards)),
            }
            for sample, prompt, output, score, tokens, row_forwards in zip(
                samples,
                prompts,
                outputs,
                scores,
                out.generated_tokens,
                out.row_forwards,
                strict=True,
            )
        ]

    def first_full_layer_trace(self, sample) -> list[int]:
        """The first layer that recomputed every position, at each step of one sample (0: a full
        forward; n_layers: every layer reused the cache)."""
        out, _ = self.generate(self.encode([sample])[1], [sample], trace=True)
        return [int(r.first_full_layer[0]) for r in out.trace if r.forwarded]


# -- the run
# ----------------------------------------------------------------------------------------
def run(cfg: DictConfig, out_dir: Path, state: PartialState | None = None) -> dict:
    """Decode, write samples.jsonl / summary.json / plots into out_dir; returns the summary."""
    state = state or PartialState(cpu=not torch.cuda.is_available())
    job = Job.check(cfg)
    samples = job.task.samples()
    if not samples:
        raise ValueError(f"task {job.task.name!r} has no samples to decode")
    _set_threads(cfg, state)
    records = report.Records(out_dir / "samples.jsonl", settings=report.fingerprint(_identity(cfg)))
    lock, done = _claim(out_dir, cfg, records, state)
    try:
        return _decode_and_report(job, samples, records, done, out_dir, state)
    finally:
        if lock is not None:
            lock.close()


def _claim(out_dir: Path, cfg: DictConfig, records: report.Records, state: PartialState) -> tuple:
    """The main process checks and locks the run directory before any model is loaded
    (report.open_run_dir) -> (its lock or None, the (method, id) already decoded); a refusal reaches
    every process, so all stop."""
    lock, done, refusal = None, set(), None
    if state.is_main_process:
        try:
            lock, done = report.open_run_dir(out_dir, _identity(cfg), records)
        except report.RunDirError as error:
            if state.num_processes == 1:
                raise
            refusal = str(error)
    if state.num_processes > 1:
        refusal, done = broadcast_object_list([refusal, done])
    if refusal:
        raise report.RunDirError(refusal)
    return lock, done


def _decode_and_report(
    job: Job, samples: list, records: report.Records, done: set, out_dir: Path, state: PartialState
) -> dict:
    cfg = job.cfg
    model = instantiate(cfg.model, device=cfg.model.get("device") or state.device)
    tokenizer = dllm_accel.load_tokenizer(cfg.model.path)
    decoders = [Decoder(job, method, model, tokenizer) for method in job.methods(model)]
    if done and state.is_main_process:
        wanted = {(d.method.label, s.id) for d in decoders for s in samples}
        log.info(
            f"resuming: {len(done & wanted)} samples already in {records.path} are skipped; "
            f"{len(wanted - done)} to go"
        )
    for decoder in decoders:
        pending = [s for s in samples if (decoder.method.label, s.id) not in done]
        _decode_all(decoder, pending, records, state)
    summary = None
    if state.is_main_process:
        traces = (
            {d.method.label: d.first_full_layer_trace(samples[0]) for d in decoders}
            if cfg.refresh_plot
            else {}
        )
        summary = report.summarize(
            records.read(),
            job.task.name,
            [d.method.label for d in decoders],
            [s.id for s in samples],
            OmegaConf.to_container(cfg, resolve=True),
            traces,
            model.n_layers,
        )
        report.write(summary, out_dir)
        print(report.table(summary))
        print(f"\nwritten to {out_dir}")
    state.wait_for_everyone()
    return summary


def _decode_all(decoder: Decoder, pending: list, records, state: PartialState) -> None:
    """Batches dealt out round-robin; after every round the main process appends every result."""
    size = decoder.job.cfg.batch_size
    batches = [pending[i : i + size] for i in range(0, len(pending), size)]
    if decoder.job.cfg.warmup and batches:
        decoder.generate(decoder.encode(batches[0][:1])[1], batches[0][:1])
    progress = tqdm(
        total=len(pending),
        desc=decoder.method.label,
        unit="sample",
        disable=not state.is_main_process,
    )
    for round_start in range(0, len(batches), state.num_processes):
        index = round_start + state.process_index
        mine = decoder(batches[index]) if index < len(batches) else []
        results = gather_object(mine) if state.num_processes > 1 else mine
        if state.is_main_process:
            records.append(results)
            progress.update(len(results))
    progress.close()


def _set_threads(cfg: DictConfig, state: PartialState) -> None:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    elif (
        state.device.type == "cpu"
    ):  # processes sharing the CPU would otherwise each take every core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))


def _identity(cfg: DictConfig) -> dict:
    """The settings that decide every sample's output: a resumed run must keep them."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in FREE_SETTINGS:
        settings.pop(key, None)
    settings["task"].pop("limit", None)  # a resumed run may go further
    return settings


def _output_dir(state: PartialState) -> Path:
    """Hydra's run directory of the main process (each process resolved its own ${now:...})."""
    mine = Path(HydraConfig.get().runtime.output_dir)
    if state.num_processes == 1:
        return mine
    chosen = Path(broadcast_object_list([str(mine)])[0])
    if (
        chosen != mine
    ):  # another second's directory: only this process's Hydra config and log are in it
        logging.shutdown()
        shutil.rmtree(mine, ignore_errors=True)
    return chosen


schemas.register()


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        run(cfg, _output_dir(state), state)
    finally:
        state.destroy_process_group()


if __name__ == "__main__":
    main()
