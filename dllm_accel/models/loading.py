"""Hugging Face checkpoint directories <-> native models. No remote code, no network.

A checkpoint directory holds config.json (its `architectures` pick the native class) and either one
`model.safetensors` or shards listed by `model.safetensors.index.json`. Every key, shard and shape
is checked against the native model before a single tensor is read, so a bad checkpoint fails whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..assets import checkpoint_directory
from .base import DiffusionLM
from .dream import DreamModel
from .illada import ILLaDAModel
from .llada import LLaDAModel
from .llada2 import LLaDA2Model
from .llada_moe import LLaDAMoEModel

# config.json's `architectures` -> the native class. LLaDA-MoE shares model_type "llada" with the
# dense LLaDA, so the architecture decides; model_type only where a config names no architecture.
ARCHITECTURES: dict[str, type[DiffusionLM]] = {
    "LLaDAModelLM": LLaDAModel,
    "LLaDAMoEModelLM": LLaDAMoEModel,
    "DreamModel": DreamModel,
    "ILLaDAForCausalLM": ILLaDAModel,
    "LLaDA2MoeModelLM": LLaDA2Model,
}
MODEL_TYPES: dict[str, type[DiffusionLM]] = {
    "llada": LLaDAModel,
    "Dream": DreamModel,
    "llada2_moe": LLaDA2Model,
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def model_class(config) -> type[DiffusionLM]:
    """The native class of a config.json (dict): by its `architectures`, else by its model_type. A
    string names an architecture (or a model_type) directly."""
    if isinstance(config, str):
        config = {"architectures": [config]} if config in ARCHITECTURES else {"model_type": config}
    architectures = config.get("architectures") or []
    if architectures:
        known = [ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES]
        if not known:
            raise ValueError(
                f"config.json: architectures={architectures} names no supported architecture; "
                f"supported: {sorted(ARCHITECTURES)}"
            )
        return known[0]
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"config.json names no architectures and an unsupported model_type {model_type!r}; "
            f"supported architectures: {sorted(ARCHITECTURES)}"
        )
    return MODEL_TYPES[model_type]


def read_config(path) -> dict:
    directory = checkpoint_directory(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: a checkpoint directory needs its config.json"
        )
    return json.loads(config_file.read_text())


def load_model(path, dtype=None, device=None) -> DiffusionLM:
    """Native model from a Hugging Face checkpoint directory, or a bundled model by name
    ("tiny-llada").

    dtype: a torch.dtype or its name ("bfloat16", ...); None (or "auto") takes config.json's
    torch_dtype,
        else the stored dtype, as transformers' "auto" does.
    device: where the tensors are loaded (default CPU).
    """
    device = check_device(device)
    directory = checkpoint_directory(path)
    config = read_config(directory)
    # "auto"
    target = _resolve_dtype(dtype) or _resolve_dtype(
        config.get("torch_dtype") or config.get("dtype")
    )
    cls = model_class(config)
    with torch.device("meta"):
        model = cls(config, tokens=tokenizer_tokens(directory))
    files = _weight_files(directory, skip=model.head_key if model.weight_tying else None)
    found = {}
    for file, keys in files.items():
        with safe_open(file, framework="pt") as f:
            missing = sorted(set(keys) - set(f.keys()))
            if missing:
                raise ValueError(f"{file.name} lacks {missing[:5]} which {INDEX_FILE} places in it")
            found.update({key: tuple(f.get_slice(key).get_shape()) for key in keys})
    check_keys(model, found, source=str(directory))

    # allocate the model once in its dtype, then copy each tensor into place as it is read: the
    # peak stays about one model (stacked experts are filled expert by expert)
    target = target or _stored_dtype(files)
    model = model.to(target).to_empty(device=device)
    destinations = model.state_dict()
    device = "cpu" if device.type == "cpu" else str(device)  # safetensors refuses "cpu:0"
    with torch.no_grad():
        for file, keys in files.items():
            with safe_open(file, framework="pt", device=device) as f:
                for key in keys:
                    destinations[key].copy_(f.get_tensor(key))
    return model.eval()


def from_hf(hf_model: nn.Module) -> DiffusionLM:
    """Native model sharing the parameter tensors of a model loaded with trust_remote_code
    (one of ARCHITECTURES); nothing is copied but LLaDA-MoE's experts, which the native model keeps
    stacked."""
    config = getattr(hf_model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(
            f"from_hf expects a transformers model (one of {sorted(ARCHITECTURES)}) with a "
            f".config, got {type(hf_model).__name__}"
        )
    config = config.to_dict()
    with torch.device("meta"):
        model = model_class(config)(config)
    params = hf_model.state_dict(keep_vars=True)  # parameters and persistent buffers, not copies
    if model.weight_tying:
        params.pop(model.head_key, None)
    check_keys(
        model, {k: tuple(p.shape) for k, p in params.items()}, source=type(hf_model).__name__
    )
    requires_grad = any(p.requires_grad for p in params.values())
    model.load_state_dict(params, strict=True, assign=True)
    return model.requires_grad_(requires_grad).eval()


def build_model(config: dict, *, dtype=torch.float32, device=None, seed: int = 0) -> DiffusionLM:
    """A freshly initialised native model (normal(0, init std) weights, zero biases, unit norms)."""
    device = check_device(device)
    with torch.device("meta"):
        model = model_class(config)(config)
    model = model.to_empty(device=device).to(_resolve_dtype(dtype) or torch.float32)
    std = config.get("initializer_range") or config.get("init_std") or 0.02
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        for buffer in model.buffers():  # e.g. LLaDA-MoE's expert_bias
            buffer.zero_()
    return model.eval()


def save_model(model: DiffusionLM, path, *, max_shard_bytes: int | None = None) -> Path:
    """Write config.json and safetensors (sharded with an index when larger than max_shard_bytes).

    The files are written to a temporary directory first and replace the old ones only once all
    of them are complete.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: _own_storage(v.detach().to("cpu")) for k, v in model.state_dict().items()}
    config = dict(model.config, torch_dtype=str(model.dtype).removeprefix("torch."))
    shards = _split_shards(state, max_shard_bytes)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".saving-"))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if len(shards) == 1:
            save_file(state, staging / SINGLE_FILE, metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, keys in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file({k: state[k] for k in keys}, staging / name, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(keys, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        for old in [*directory.glob("model*.safetensors"), directory / INDEX_FILE]:
            old.unlink(missing_ok=True)
        for new in staging.iterdir():
            os.replace(new, directory / new.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _stored_dtype(files: dict[Path, list[str]]) -> torch.dtype:
    """The dtype of the checkpoint's first tensor (no dtype asked for and none in config.json)."""
    file, keys = next(iter(files.items()))
    with safe_open(file, framework="pt") as f:
        return f.get_tensor(keys[0]).dtype


def check_keys(model: nn.Module, found: dict[str, tuple], source: str) -> None:
    """Raise unless `found` (name -> shape) holds exactly the model's parameters with their
    shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    wrong = [
        f"{k}: expected {expected[k]}, found {found[k]}"
        for k in sorted(expected.keys() & found.keys())
        if expected[k] != found[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:5]))
    if problems:
        raise ValueError(
            f"weights of {source} do not fit {type(model).__name__}: " + " | ".join(problems)
        )


def tokenizer_tokens(directory: Path) -> dict[str, int] | None:
    """The special tokens the checkpoint's tokenizer files declare, text -> id (tokenizer.json's
    added tokens, tokenizer_config.json's added_tokens_decoder, added_tokens.json), with the
    declared mask token's id under "mask_token"; None when the directory has no tokenizer files."""
    readers = {
        "tokenizer.json": lambda d: {t["content"]: t["id"] for t in d.get("added_tokens", [])},
        "tokenizer_config.json": lambda d: {
            t["content"]: int(i) for i, t in d.get("added_tokens_decoder", {}).items()
        },
        "added_tokens.json": lambda d: d,
    }
    found = [name for name in [*readers, "special_tokens_map.json"] if (directory / name).is_file()]
    if not found:
        return None
    files = {name: json.loads((directory / name).read_text()) for name in found}
    ids: dict[str, int] = {}
    for name, read in readers.items():
        if name in files:
            ids = read(files[name]) | ids
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        mask = files.get(name, {}).get("mask_token")
        mask = mask.get("content") if isinstance(mask, dict) else mask
        if mask in ids:
            ids.setdefault("mask_token", ids[mask])
    return ids


def _weight_files(directory: Path, skip: str | None) -> dict[Path, list[str]]:
    """Shard file -> the keys to read from it (all but `skip`: a tied head's redundant copy);
    every shard checked to exist."""
    index_file = directory / INDEX_FILE
    single = directory / SINGLE_FILE
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_file} has no weight_map")
        absent = sorted({name for name in weight_map.values() if not (directory / name).is_file()})
        if absent:
            raise FileNotFoundError(
                f"shard(s) {absent} listed in {index_file} are missing from {directory}"
            )
    elif single.is_file():
        with safe_open(single, framework="pt") as f:
            weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
    else:
        raise FileNotFoundError(f"{directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
    files: dict[Path, list[str]] = {}
    for key, name in weight_map.items():
        if key != skip:
            files.setdefault(directory / name, []).append(key)
    return files


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor that does not share its storage (safetensors refuses views, such as an
    expert's slice of the stacked experts)."""
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor.contiguous() if whole else tensor.clone()


def _split_shards(state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def check_device(device) -> torch.device:
    """None (CPU), a torch.device or its name -> torch.device, refused before anything is loaded
    when this machine lacks it."""
    try:
        resolved = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be None, a torch.device or its name (e.g. 'cpu', 'cuda', 'cuda:1'), "
            f"got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}: CUDA is not available on this machine "
                f"(torch.cuda.is_available() is False); use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0"
            )
    return resolved


def _resolve_dtype(dtype) -> torch.dtype | None:
    """None (or "auto") means: no dtype asked for."""
    if dtype is None or dtype == "auto":
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if isinstance(resolved, torch.dtype) and resolved.is_floating_point:
        return resolved
    raise ValueError(
        "dtype must be None, 'auto', a floating torch.dtype or its name (e.g. 'bfloat16'), got "
        f"{dtype!r}"
    )
