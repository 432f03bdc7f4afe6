"""The `threads` setting of every experiment script (torch's CPU threads), checked in one place."""

from __future__ import annotations

import torch


def check_threads(threads) -> None:
    """None (the script's own choice) or an integer >= 1; torch's own refusal names neither."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1 (torch CPU threads), got {threads!r}")


def set_threads(threads: int) -> None:
    check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
