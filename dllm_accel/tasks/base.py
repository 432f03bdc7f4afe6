"""What every evaluation task gives the experiment runner: samples with prompts, and a scorer.

    task = GSM8K(data_dir="data/gsm8k", shots=5, limit=100)
    for sample in task.samples():           # the first `limit` samples, in a fixed order
        text = decode(sample.prompt)         # a conversation (chat template) or plain text
        record = task.score(sample, text)    # {"correct": bool, ...task fields such as "answer"}

`score_many` scores a batch at once (HumanEval runs the programs in parallel); by default it calls
`score` on each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dllm_accel.checks import check_int

# plain text (base models), or a conversation of {"role", "content"} messages
Prompt = str | list[dict]


@dataclass(frozen=True)
class Sample:
    id: str  # unique and stable within the task: a resumed run skips the ids it already has
    prompt: Prompt
    target: (
        str  # what a correct output gives (GSM8K: the number; HumanEval: the canonical solution)
    )
    data: Any = None  # the task's own record of the sample


class Task:
    """A task validates its settings when built; `samples()` and `score()` are pure afterwards."""

    name: str = ""

    def __init__(self, *, limit: int | None = None, shots: int = 0):
        check_int(limit, "task.limit", 1, optional="every sample")
        check_int(shots, "task.shots", 0)
        self.limit, self.shots = limit, shots

    def samples(self) -> list[Sample]:
        raise NotImplementedError

    def score(self, sample: Sample, output: str) -> dict:
        """-> {"correct": bool, ...}: the fields a samples.jsonl line adds for this sample."""
        raise NotImplementedError

    def score_many(self, samples: list[Sample], outputs: list[str]) -> list[dict]:
        return [self.score(s, o) for s, o in zip(samples, outputs, strict=True)]

    def _first(self, items: list) -> list:
        return items if self.limit is None else items[: self.limit]
