"""GSM8K: answer extraction, prompts, data loading and the errors for bad settings."""

import json
import re
import sys
import types
from pathlib import Path

import pytest

from dllm_accel.tasks import gsm8k
from dllm_accel.tasks.gsm8k import GSM8K

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.fixture
def data_dir():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not available")
    return DATA


@pytest.fixture
def small_data(tmp_path):
    """A made-up GSM8K folder: 6 training and 4 test problems, answer i*10 + 7 with a calculator
    annotation."""
    for split, count in (("train", 6), ("test", 4)):
        lines = [
            json.dumps(
                {
                    "question": f"{split} question {i}?",
                    "answer": f"It is {i}*10+7 = <<{i}*10+7={i * 10 + 7}>>{i * 10 + 7}.\n#### "
                    f"{i * 10 + 7}",
                }
            )
            for i in range(count)
        ]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


# -- extraction ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("She makes 9 * 2 = $18 every day.\n#### 18", "18", id="reference-style"),
        pytest.param("#### 1,234", "1234", id="thousands-commas"),
        pytest.param("#### 1,450,000", "1450000", id="millions-commas"),
        pytest.param("#### $18", "18", id="dollar-after-marker"),
        pytest.param("The total is $1,234.50.", "1234.5", id="dollars-and-cents"),
        pytest.param("so the answer is 18.", "18", id="trailing-period"),
        pytest.param("#### 7.", "7", id="marker-trailing-period"),
        pytest.param("#### -12 apples", "-12", id="negative-with-units"),
        pytest.param("The temperature is -4 degrees", "-4", id="negative-after-word"),
        pytest.param("x = -3", "-3", id="negative-after-equals"),
        pytest.param("8 - 5 = 3 and 10 - 4", "4", id="minus-is-not-a-sign"),
        pytest.param("She had 10-4", "4", id="unspaced-minus-is-not-a-sign"),
        pytest.param("#### 3.50", "3.5", id="trailing-decimal-zero"),
        pytest.param("#### 18.00", "18", id="zero-decimals"),
        pytest.param("It costs .5 dollars", "0.5", id="leading-point"),
        pytest.param("#### -0", "0", id="negative-zero"),
        pytest.param("#### 100", "100", id="round-hundred"),
        pytest.param("He runs 42 miles per week", "42", id="number-then-words"),
        pytest.param("Tom has 3, then 1,000 more.", "1000", id="comma-after-number"),
        pytest.param("#### 4 and later 9", "4", id="marker-beats-later-numbers"),
        pytest.param("#### 5\n\n#### 6", "5", id="first-marker"),
        pytest.param("#### none, but 12 eggs", "12", id="empty-marker-falls-back"),
        pytest.param("no number here", None, id="no-number"),
        pytest.param("", None, id="empty"),
    ],
)
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_strict_answer_needs_the_marker():
    assert gsm8k.strict_answer("The answer is 18") is None
    assert gsm8k.strict_answer("#### 18 dollars") == gsm8k.last_number("18") == "18"
    assert gsm8k.strict_answer("#### the end") is None


@pytest.mark.parametrize(
    "text, target, correct",
    [
        pytest.param("#### 18.0", "18", True, id="decimal-equals-integer"),
        pytest.param("#### 1234", "1,234", True, id="target-with-commas"),
        pytest.param("The answer is $3.50", "3.5", True, id="flexible"),
        pytest.param("#### 18", "-18", False, id="sign-matters"),
        pytest.param("#### 180", "18", False, id="not-a-prefix"),
        pytest.param("nothing", "18", False, id="no-answer"),
    ],
)
def test_is_correct_compares_values(text, target, correct):
    assert gsm8k.is_correct(text, target) is correct


def test_normalise_number_rejects_non_numbers():
    with pytest.raises(ValueError, match="not a number: 'eighteen'"):
        gsm8k.normalise_number("eighteen")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_reference_answer_extracts_to_its_target(data_dir, split):
    records = gsm8k.read_split(data_dir, split)
    assert len(records) == {"train": 7473, "test": 1319}[split]
    for record in records:
        target = gsm8k.reference_number(record)
        assert gsm8k.strict_answer(record["answer"]) == target, record["answer"]
        assert gsm8k.extract_answer(gsm8k.without_annotations(record["answer"])) == target, record[
            "answer"
        ]
        solution = gsm8k.without_annotations(record["answer"])
        assert "<<" not in solution and ">>" not in solution


# -- prompts and samples ---------------------------------------------------------------------------
def test_chat_prompt_is_a_conversation_of_solved_shots(small_data):
    task = GSM8K(data_dir=small_data, shots=3)
    samples = task.samples()
    assert [s.id for s in samples] == ["test-0", "test-1", "test-2", "test-3"]
    assert [s.target for s in samples] == ["7", "17", "27", "37"]
    prompt = samples[0].prompt
    assert [m["role"] for m in prompt] == ["user", "assistant"] * 3 + ["user"]
    assert prompt[-1] == {"role": "user", "content": "test question 0?"}
    for question, solution in zip(prompt[0:-1:2], prompt[1:-1:2], strict=True):
        i = int(question["content"].removeprefix("train question ").rstrip("?"))
        assert solution["content"] == f"It is {i}*10+7 = {i * 10 + 7}.\n#### {i * 10 + 7}", (
            "annotation removed"
        )
    assert all(s.prompt[:-1] == prompt[:-1] for s in samples), "the same shots for every sample"
    assert samples[2].data == {
        "question": "test question 2?",
        "answer": "It is 2*10+7 = <<2*10+7=27>>27.\n#### 27",
    }


def test_plain_prompt_for_base_models(small_data):
    sample = GSM8K(data_dir=small_data, shots=2, chat=False).samples()[1]
    blocks = sample.prompt.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == "Question: test question 1?\nAnswer:"
    for block in blocks[:-1]:
        question, answer = block.split("\n", 1)
        assert question.startswith("Question: train question ") and answer.startswith(
            "Answer: It is "
        )
        assert "<<" not in answer and "\n#### " in answer


def test_shots_are_a_seeded_choice(small_data):
    def shot_questions(**settings):
        return [
            m["content"]
            for m in GSM8K(data_dir=small_data, shots=3, **settings).samples()[0].prompt[:-1:2]
        ]

    assert shot_questions(seed=1) == shot_questions(seed=1)
    assert any(shot_questions(seed=s) != shot_questions(seed=1) for s in range(2, 6))
    zero_shot = GSM8K(data_dir=small_data, shots=0, chat=False).samples()[0]
    assert zero_shot.prompt == "Question: test question 0?\nAnswer:"


def test_zero_shots_need_no_train_file(small_data):
    (small_data / "train.jsonl").unlink()
    assert len(GSM8K(data_dir=small_data, shots=0).samples()) == 4


def test_train_split_leaves_out_its_shots(small_data):
    task = GSM8K(data_dir=small_data, split="train", shots=2)
    asked = {s.data["question"] for s in task.samples()}
    shown = {m["content"] for m in task.samples()[0].prompt[:-1:2]}
    assert len(asked) == 4 and not asked & shown


def test_limit_takes_the_first_samples(small_data):
    every = GSM8K(data_dir=small_data).samples()
    assert GSM8K(data_dir=small_data, limit=2).samples() == every[:2]
    assert GSM8K(data_dir=small_data, limit=100).samples() == every


def test_real_data(data_dir):
    task = GSM8K(data_dir=str(data_dir), limit=3)
    samples = task.samples()
    assert [s.id for s in samples] == ["test-0", "test-1", "test-2"] and samples[0].target == "18"
    assert len(samples[0].prompt) == 11 and samples[0].prompt[-1]["content"].startswith(
        "Janet’s ducks"
    )
    assert task.score(samples[0], samples[0].data["answer"]) == {
        "correct": True,
        "answer": "18",
        "strict_correct": True,
    }


# -- scoring ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "output, record",
    [
        pytest.param(
            "9 * 2 = 18.\n#### 17",
            {"correct": True, "answer": "17", "strict_correct": True},
            id="strict",
        ),
        pytest.param(
            "So she makes $17.",
            {"correct": True, "answer": "17", "strict_correct": False},
            id="flexible",
        ),
        pytest.param(
            "#### 18", {"correct": False, "answer": "18", "strict_correct": False}, id="wrong"
        ),
        pytest.param(
            "It is 17.\n\nQuestion: Bo has 4 pens. How many?\nAnswer: 4",
            {"correct": True, "answer": "17", "strict_correct": False},
            id="cut-at-next-question",
        ),
        pytest.param(
            "I don't know",
            {"correct": False, "answer": None, "strict_correct": False},
            id="no-answer",
        ),
    ],
)
def test_score(small_data, output, record):
    task = GSM8K(data_dir=small_data)
    sample = task.samples()[1]
    assert task.score(sample, output) == record
    assert task.score_many([sample], [output]) == [record]


# -- errors ----------------------------------------------------------------------------------------
def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task.data_dir=.*nowhere is not a directory"):
        GSM8K(data_dir=tmp_path / "nowhere")


def test_missing_file_is_named(small_data):
    (small_data / "train.jsonl").unlink()
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"task.data_dir={small_data} has no train.jsonl")
    ):
        GSM8K(data_dir=str(small_data), shots=5)


def test_offline_without_data_dir_points_to_data_dir(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # the import fails
    with pytest.raises(
        RuntimeError, match=r"`datasets` is not installed; pass task.data_dir=DIR"
    ) as caught:
        GSM8K()
    assert isinstance(caught.value.__cause__, ImportError)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(
        RuntimeError, match=r"loading openai/gsm8k failed \(no network\); pass task.data_dir"
    ) as caught:
        GSM8K(shots=0)
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_hub_rows_are_read(monkeypatch):
    def load_dataset(path, name, split):
        assert (path, name) == ("openai/gsm8k", "main")
        return [{"question": f"{split} q?", "answer": "#### 1,000"}] * 3

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    samples = GSM8K(shots=2).samples()
    assert len(samples) == 3 and samples[0].target == "1000" and len(samples[0].prompt) == 5


@pytest.mark.parametrize(
    "settings, message",
    [
        pytest.param(
            {"limit": 0},
            r"task.limit must be None \(every sample\) or an integer >= 1, got 0",
            id="limit",
        ),
        pytest.param({"shots": -1}, r"task.shots must be an integer >= 0, got -1", id="shots"),
        pytest.param(
            {"shots": 7},
            r"task.shots must be at most 6 \(the training problems\), got 7",
            id="too-many-shots",
        ),
        pytest.param(
            {"split": "dev"},
            r"task.split must be one of \('train', 'test'\), got 'dev'",
            id="split",
        ),
        pytest.param(
            {"chat": "yes"},
            r"task.chat must be true \(instruct models\) or false \(base models\), got 'yes'",
            id="chat",
        ),
        pytest.param({"seed": 1.5}, r"task.seed must be an integer, got 1.5", id="seed"),
        pytest.param(
            {"data_dir": 3}, r"task.data_dir must be None or a directory path, got 3", id="data_dir"
        ),
    ],
)
def test_bad_arguments_are_named(small_data, settings, message):
    with pytest.raises(ValueError, match=message):
        GSM8K(**{"data_dir": small_data, **settings})


GOOD_LINE = json.dumps({"question": "q?", "answer": "It is 7.\n#### 7"}).encode()


@pytest.mark.parametrize(
    "line, message",
    [
        pytest.param(b'{"question": "q?", "answer": ', r"is not JSON", id="not-json"),
        pytest.param('{"question": "caf\u00e9?"}'.encode()[:18], r"is not JSON", id="cut-utf8"),
        pytest.param(
            b'["q?", "#### 7"]', r'needs the strings "question" and "answer"', id="not-an-object"
        ),
        pytest.param(
            b'{"answer": "#### 7"}', r'needs the strings "question" and "answer"', id="no-question"
        ),
        pytest.param(
            b'{"question": "q?"}', r'needs the strings "question" and "answer"', id="no-answer"
        ),
        pytest.param(
            b'{"question": "q?", "answer": 7}',
            r'needs the strings "question" and "answer"',
            id="number-answer",
        ),
        pytest.param(
            b'{"question": "q?", "answer": "It is 7."}', r'no "#### <number>"', id="no-marker"
        ),
        pytest.param(
            b'{"question": "q?", "answer": "#### ten"}',
            r'"####" is not followed by a number',
            id="not-a-number",
        ),
        pytest.param(
            b'{"question": "q?", "answer": "#### "}',
            r'"####" is not followed by a number',
            id="empty-number",
        ),
    ],
)
def test_a_bad_line_is_named_by_file_and_number(small_data, line, message):
    (small_data / "test.jsonl").write_bytes(b"\n".join([GOOD_LINE, b"", line, GOOD_LINE]) + b"\n")
    with pytest.raises(
        ValueError, match=re.escape(f"{small_data / 'test.jsonl'}, line 3") + ".*" + message
    ):
        GSM8K(data_dir=small_data, shots=2)


def test_a_bad_training_line_is_named_too(small_data):
    (small_data / "train.jsonl").write_bytes(GOOD_LINE + b'\n{"question": "q?", "answer": "7"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{small_data / 'train.jsonl'}, line 2")):
        GSM8K(data_dir=small_data, shots=1)


@pytest.mark.parametrize("text", ["", "\n  \n"], ids=["empty", "blank-lines"])
def test_an_empty_test_file_is_an_error_not_accuracy_zero(small_data, text):
    (small_data / "test.jsonl").write_text(text)
    with pytest.raises(
        ValueError, match=re.escape(f"{small_data / 'test.jsonl'} holds no problems")
    ):
        GSM8K(data_dir=small_data, shots=0)


def test_a_bad_hub_row_is_named(monkeypatch):
    def load_dataset(path, name, split):
        return [{"question": "q?", "answer": "#### 1"}, {"question": "q?", "answer": "no marker"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        ValueError, match=r'openai/gsm8k test, row 1: the answer has no "#### <number>"'
    ):
        GSM8K(shots=0)
