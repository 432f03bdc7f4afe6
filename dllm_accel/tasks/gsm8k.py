"""GSM8K: grade-school math word problems, scored on the final number.

    task = GSM8K(data_dir="data/gsm8k", shots=5)   # the official train.jsonl and test.jsonl
    task = GSM8K()                                  # openai/gsm8k through `datasets`, online

Prompts follow the standard few-shot format: `shots` solved training problems (a fixed seeded
choice, the same for every question), each a question and its reference solution ending in "####
<number>", then the question. No instruction is added; the shots show the answer format. The
`<<48/2=24>>` calculator annotations are removed from the solutions.

Extraction follows the usual scorers: strict is the number after "####"; flexible falls back to the
last number of the text. Numbers are compared as values: "1,234", "$1234" and "1234.00" all read
"1234".
"""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal
from pathlib import Path

from dllm_accel.checks import check_bool, check_choice, check_int
from dllm_accel.tasks.base import Prompt, Sample, Task

SPLITS = ("train", "test")
HUB_DATASET = ("openai/gsm8k", "main")
STOP = "Question:"  # the standard stop sequence: a base model goes on to invent the next question

_NUMBER = re.compile(
    r"(?:(?<![\w)\]])(?<![\d)\]] )-)?"  # a sign, but not the minus of "5-1" or "5 - 1"
    r"\$?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"  # 1,234.5 or 1234.5
    r"|(?<![\w.])\.\d+)"  # .5
)
_MARKED = re.compile(r"####\s*(" + _NUMBER.pattern + ")")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


# -- extraction ------------------------------------------------------------------------------------
def normalise_number(text: str) -> str:
    """The canonical form of a number: no commas or "$", no trailing decimal zeros, "-0" is "0"."""
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    value = Decimal(text.strip().replace(",", "").replace("$", ""))
    return "0" if value == 0 else format(value.normalize(), "f")


def strict_answer(text: str) -> str | None:
    """The number after the first "####", normalised; None when there is none."""
    marked = _MARKED.search(text)
    return normalise_number(marked.group(1)) if marked else None


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def extract_answer(text: str) -> str | None:
    """The strict answer when the text has one, else the last number in the text."""
    answer = strict_answer(text)
    return answer if answer is not None else last_number(text)


def is_correct(text: str, target: str) -> bool:
    return extract_answer(text) == normalise_number(target)


# -- data ------------------------------------------------------------------------------------------
def reference_number(record: dict) -> str:
    return normalise_number(record["answer"].rsplit("####", 1)[1])


def without_annotations(solution: str) -> str:
    return _CALCULATOR.sub("", solution)


def read_split(data_dir: Path, split: str) -> list[dict]:
    """The problems of `split`.jsonl, each checked (a bad line is named by file and number); an
    empty file is an error, so that a run never reports accuracy over no problems."""
    path = data_dir / f"{split}.jsonl"
    records = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(
                    f"{where}, is not JSON ({error}); a GSM8K line is one JSON object"
                ) from error
            records.append(checked_record(record, where))
    if not records:
        raise ValueError(
            f"{path} holds no problems; it should hold one JSON object per line, as the official "
            f"GSM8K {split}.jsonl"
        )
    return records


def checked_record(record, where: str) -> dict:
    """A GSM8K record: {"question": str, "answer": str ending in "#### <number>"}; else an error
    naming `where`."""
    if not isinstance(record, dict) or not all(
        isinstance(record.get(key), str) for key in ("question", "answer")
    ):
        raise ValueError(
            f"{where}: a GSM8K record needs the strings \"question\" and \"answer\", got "
            f"{record!r:.200}"
        )
    if "####" not in record["answer"]:
        raise ValueError(
            f"{where}: the answer has no \"#### <number>\" at its end: {record['answer']!r:.200}"
        )
    try:
        reference_number(record)
    except ValueError as error:
        raise ValueError(
            f"{where}: the answer's \"####\" is not followed by a number ({error})"
        ) from error
    return record


def download_split(split: str) -> list[dict]:
    advice = (
        "pass task.data_dir=DIR holding train.jsonl and test.jsonl (the official files), "
        "or install `datasets` and go online"
    )
    try:
        import datasets
    except ImportError as error:
        raise RuntimeError(
            f"GSM8K data not found: `datasets` is not installed; {advice}"
        ) from error
    try:
        rows = datasets.load_dataset(*HUB_DATASET, split=split)
    except (
        Exception
    ) as error:  # offline, the hub or the cache fail in many ways; all mean the same here
        raise RuntimeError(
            f"GSM8K data not found: loading {HUB_DATASET[0]} failed ({error}); {advice}"
        ) from error
    return [
        checked_record(
            {"question": row["question"], "answer": row["answer"]},
            f"{HUB_DATASET[0]} {split}, row {i}",
        )
        for i, row in enumerate(rows)
    ]


def check_data_dir(data_dir, needed: list[str]) -> Path:
    if not isinstance(data_dir, str | Path):
        raise ValueError(f"task.data_dir must be None or a directory path, got {data_dir!r}")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"task.data_dir={data_dir} is not a directory; it should hold the GSM8K files "
            "train.jsonl and test.jsonl"
        )
    for split in needed:
        if not (path / f"{split}.jsonl").is_file():
            raise FileNotFoundError(
                f"task.data_dir={data_dir} has no {split}.jsonl; it should hold the official "
                "GSM8K files train.jsonl and test.jsonl"
            )
    return path


# -- the task --------------------------------------------------------------------------------------
class GSM8K(Task):
    name = "gsm8k"

    def __init__(
        self,
        *,
        limit: int | None = None,
        shots: int = 5,
        data_dir: str | Path | None = None,
        split: str = "test",
        chat: bool = True,
        seed: int = 1234,
    ):
        super().__init__(limit=limit, shots=shots)
        check_choice(split, "task.split", SPLITS)
        check_bool(chat, "task.chat", "true (instruct models) or false (base models)")
        check_int(seed, "task.seed")
        self.split, self.chat, self.seed = split, chat, seed
        needed = sorted({split, "train"} if shots else {split})
        # Loading here, not in samples(), makes missing data fail before the runner loads a model.
        if data_dir is None:
            self.data = {name: download_split(name) for name in needed}
        else:
            path = check_data_dir(data_dir, needed)
            self.data = {name: read_split(path, name) for name in needed}
        n_train = len(self.data.get("train", []))
        if shots > n_train:
            raise ValueError(
                f"task.shots must be at most {n_train} (the training problems), got {shots}"
            )
        self.shot_indices = sorted(random.Random(seed).sample(range(n_train), shots))

    def shot_records(self) -> list[dict]:
        return [self.data["train"][i] for i in self.shot_indices]

    def prompt(self, question: str) -> Prompt:
        shots = [
            (shot["question"], without_annotations(shot["answer"])) for shot in self.shot_records()
        ]
        if self.chat:
            turns = []
            for shot_question, solution in shots:
                turns += [
                    {"role": "user", "content": shot_question},
                    {"role": "assistant", "content": solution},
                ]
            return [*turns, {"role": "user", "content": question}]
        examples = "".join(
            f"Question: {shot_question}\nAnswer: {solution}\n\n"
            for shot_question, solution in shots
        )
        return f"{examples}Question: {question}\nAnswer:"

    def samples(self) -> list[Sample]:
        # On the train split a shot would otherwise be asked with its own answer in the prompt.
        skipped = set(self.shot_indices) if self.split == "train" else set()
        chosen = self._first(
            [(i, record) for i, record in enumerate(self.data[self.split]) if i not in skipped]
        )
        return [
            Sample(
                f"{self.split}-{i}",
                self.prompt(record["question"]),
                reference_number(record),
                record,
            )
            for i, record in chosen
        ]

    def score(self, sample: Sample, output: str) -> dict:
        """Scores the output up to a made-up next question ("Question:"), as the standard stop
        sequence would: "correct" is flexible (strict answer, else the last number),
        "strict_correct" needs "#### N"."""
        answered = output.split(STOP, 1)[0]
        answer = extract_answer(answered)
        return {
            "correct": answer == sample.target,
            "answer": answer,
            "strict_correct": strict_answer(answered) == sample.target,
        }
