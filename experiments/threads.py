"""The `threads` setting of every experiment script (torch's CPU threads), checked in one place."""

from __future__ import annotations

import torch

from dllm_accel.checks import check_int


def check_threads(threads) -> None:
    """None (the script's own choice) or an integer >= 1; torch's own refusal names neither."""
    check_int(threads, "threads", 1, optional=True, note="torch CPU threads")


def set_threads(threads: int) -> None:
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
