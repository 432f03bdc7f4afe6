"""A GSM8K-shaped synthetic task: a chain of variable definitions to trace, a short chain of
thought.

    question: "k=3. b=k+2. x=b-4. What is x?"
    solution: "b=3+2=5. x=5-4=1. #### 1"

Each step of the chain of thought copies its operands from earlier text (its definition in the
question, the previous result from the solution) and does one single-digit operation whose result
stays in 0..9. 2-4 steps by default; `chain` (a Chain) sets the range, up to 25 steps, and the
naming: random letters, or consecutive ones from a random letter. The long-chain variant,
`LONG_CHAIN`, has 9-20 dependent steps, solutions of 87-186 characters (one token each for the
testbed's tokenizer) and ordered names (see docs/testbed.md). +, - and ×, several phrasings.
Deterministic from a seed; the split of a problem is a hash of its question, so the train and test
splits cannot share a problem. (A word-problem version, "Ann has 2 more pens than Tom ...", was
measured first: a tiny masked diffusion model stayed at chance after 1,000 steps while the same-size
AR model reached 98%.)
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dllm_accel.checks import check_choice, check_int
from dllm_accel.tasks import gsm8k
from dllm_accel.tasks.base import Sample, Task

NAMES = tuple(string.ascii_lowercase)
START = ("{a}={v}.", "Let {a}={v}.")
QUESTION = ("What is {b}?", "Find {b}.", "What does {b} equal?")
SPLITS = ("train", "test")
TEST_SHARE = 10  # one problem in TEST_SHARE belongs to the test split
NAMINGS = ("random", "ordered")


class Chain(NamedTuple):
    """Steps per problem, fewest to most, and the variables' names: "random" letters, or "ordered",
    consecutive letters from a random one (each step's name the letter after the one before)."""

    fewest: int
    most: int
    names: str = "random"


CHAIN = Chain(2, 4)  # the bundled models' task
LONG_CHAIN = Chain(9, 20, "ordered")  # the deep testbed's: 87-186-character solutions


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str  # chain of thought ending in "#### <answer>"
    answer: str


def problems(n: int, seed: int, split: str = "test", chain=CHAIN) -> list[Problem]:
    """`n` distinct problems of `split` ('train' or 'test') and `chain` (see check_chain), the same
    for the same seed and chain."""
    check_choice(split, "split", SPLITS)
    check_int(n, "n", 0)
    chain = check_chain(chain)
    rng = random.Random(f"{seed}-{split}")
    found: dict[str, Problem] = {}
    while len(found) < n:
        problem = _draw(rng, chain)
        if split_of(problem.question) == split:
            found.setdefault(problem.question, problem)
    return list(found.values())


def split_of(question: str) -> str:
    digest = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)
    return "test" if digest % TEST_SHARE == 0 else "train"


def check_chain(chain) -> Chain:
    """(fewest, most[, names]): 1 <= fewest <= most <= 25 steps (each step names a new variable),
    names one of NAMINGS (default "random")."""
    ok = (
        isinstance(chain, Sequence)
        and not isinstance(chain, str)
        and len(chain) in (2, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in chain[:2])
        and 1 <= chain[0] <= chain[1] <= len(NAMES) - 1
        and (len(chain) == 2 or chain[2] in NAMINGS)
    )
    if not ok:
        raise ValueError(
            f"chain must be (fewest, most[, names]) with 1 <= fewest <= most <= {len(NAMES) - 1} "
            f"steps and names one of {NAMINGS}, got {chain!r}"
        )
    return Chain(*chain)


def _draw(rng: random.Random, chain: Chain) -> Problem:
    n_steps = rng.randint(chain.fewest, chain.most)
    if chain.names == "ordered":
        first = rng.randrange(len(NAMES) - n_steps)
        names = NAMES[first : first + n_steps + 1]
    else:
        names = rng.sample(NAMES, n_steps + 1)
    value = rng.randint(0, 9)
    sentences = [rng.choice(START).format(a=names[0], v=value)]
    steps = []
    for a, b in zip(names, names[1:], strict=False):
        op, k = _operation(rng, value)
        result = {"+": value + k, "-": value - k, "*": value * k}[op]
        sentences.append(f"{b}={a}{op}{k}.")
        steps.append(f"{b}={value}{op}{k}={result}.")
        value = result
    sentences.append(rng.choice(QUESTION).format(b=names[-1]))
    return Problem(" ".join(sentences), " ".join(steps) + f" #### {value}", str(value))


def _operation(rng: random.Random, value: int) -> tuple[str, int]:
    """An operation and operand (1..9) that keep the result in 0..9."""
    choices = [("+", k) for k in range(1, 10 - value)] + [("-", k) for k in range(1, value + 1)]
    choices += [("*", k) for k in (2, 3) if 1 <= value * k <= 9]
    return rng.choice(choices)


# -- prompts and scoring ---------------------------------------------------------------------------
def messages(problem: Problem, shots: int = 0, seed: int = 0, chain=CHAIN) -> list[dict]:
    """The conversation: `shots` solved training problems of `chain` steps as earlier turns, then
    the question (a batch of these is what dllm_accel.encode_chat takes)."""
    turns = []
    for example in problems(shots, seed=seed + 10_000, split="train", chain=chain):
        turns += [
            {"role": "user", "content": example.question},
            {"role": "assistant", "content": example.solution},
        ]
    return [*turns, {"role": "user", "content": problem.question}]


def prompt(problem: Problem, tokenizer, shots: int = 0, seed: int = 0, chain=CHAIN) -> str:
    """The chat-formatted prompt text of `messages(problem, shots, seed, chain)`."""
    return tokenizer.apply_chat_template(
        messages(problem, shots, seed, chain), add_generation_prompt=True, tokenize=False
    )


def extract_answer(text: str) -> str | None:
    """GSM8K's rule: the number after '####'; without one, the last number in the text."""
    return gsm8k.extract_answer(text)


def is_correct(text: str, problem: Problem) -> bool:
    return gsm8k.is_correct(text, problem.answer)


# -- the task --------------------------------------------------------------------------------------
def is_exact(text: str, problem: Problem) -> bool:
    """Every token right: the whole answer is the problem's solution (variable names included)."""
    return text.strip() == problem.solution


class Arith(Task):
    """The first `size` problems of a split (the held-out test split by default), `limit` of
    them; `chain` = [fewest, most(, names)] (see Chain) for each problem and solved example (None:
    CHAIN)."""

    name = "arith"

    def __init__(
        self,
        *,
        limit: int | None = None,
        shots: int = 0,
        seed: int = 0,
        split: str = "test",
        size: int = 500,
        chain: Sequence | None = None,
    ):
        super().__init__(limit=limit, shots=shots)
        check_choice(split, "task.split", SPLITS)
        check_int(seed, "task.seed")
        check_int(size, "task.size", 1)
        self.seed, self.split, self.size = seed, split, size
        self.chain = CHAIN if chain is None else check_chain(chain)

    def samples(self) -> list[Sample]:
        # problems(n) is a prefix of problems(size), so limiting keeps every id's problem.
        n = self.size if self.limit is None else min(self.limit, self.size)
        return [
            Sample(
                f"{self.split}-{self.seed}-{i}" + self._chain_tag,
                messages(problem, self.shots, self.seed, self.chain),
                problem.answer,
                problem,
            )
            for i, problem in enumerate(problems(n, self.seed, self.split, self.chain))
        ]

    @property
    def _chain_tag(self) -> str:
        if self.chain == CHAIN:
            return ""
        ordered = "-ordered" if self.chain.names == "ordered" else ""
        return f"-chain{self.chain.fewest}-{self.chain.most}{ordered}"

    def score(self, sample: Sample, output: str) -> dict:
        return {
            "correct": is_correct(output, sample.data),
            "answer": extract_answer(output),
            "exact_match": is_exact(output, sample.data),
        }
