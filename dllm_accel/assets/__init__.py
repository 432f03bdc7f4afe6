"""Package data: the released config.json files, and the tiny models trained for the testbed."""

from __future__ import annotations

from pathlib import Path

BUNDLED = ("tiny-llada", "tiny-dream", "tiny-ar", "tiny-llada-deep")


def path(name: str) -> Path:
    """The directory of a bundled model (Hugging Face layout: config.json, safetensors,
    tokenizer)."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled model named {name!r}; bundled: {BUNDLED}")
    directory = Path(__file__).resolve().parent / name
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled model {name!r} is missing from {directory}; reinstall dllm_accel"
        )
    return directory


def checkpoint_directory(path_or_name) -> Path:
    """A checkpoint directory on disk, or a bundled model's name (when no such directory exists)."""
    directory = Path(path_or_name)
    if not directory.exists() and str(path_or_name) in BUNDLED:
        return path(str(path_or_name))
    return directory
