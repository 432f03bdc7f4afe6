"""The synthetic arithmetic task: determinism, disjoint splits, correct solutions, GSM8K extraction."""

import re

import pytest

from dllm_accel.tasks import arith


def test_problems_are_deterministic_and_seeded():
    assert arith.problems(40, seed=3) == arith.problems(40, seed=3)
    assert arith.problems(40, seed=3) != arith.problems(40, seed=4)
    assert arith.problems(40, seed=3, split="train") != arith.problems(40, seed=3, split="test")


def test_splits_cannot_overlap():
    train = {p.question for p in arith.problems(4000, seed=0, split="train")}
    test = arith.problems(600, seed=0, split="test")
    assert len({p.question for p in test}) == 600, "a split's problems are distinct"
    assert not train & {p.question for p in test}
    assert all(arith.split_of(p.question) == "test" for p in test)
    assert all(arith.split_of(q) == "train" for q in train)


def test_solutions_trace_the_chain_correctly():
    seen_ops, seen_lengths, seen_phrasings = set(), set(), set()
    for problem in arith.problems(500, seed=1, split="train"):
        steps = re.findall(r"([a-z])=(\d)([-+*])(\d)=(\d)\.", problem.solution)
        assert 2 <= len(steps) <= 4
        previous, value = re.match(r"(?:Let )?([a-z])=(\d)\.", problem.question).groups()
        value = int(value)
        for name, left, op, right, result in steps:
            assert int(left) == value, "each step starts from the previous result"
            assert f"{name}={previous}{op}{right}." in problem.question, "and follows its definition"
            assert int(result) == {"+": int(left) + int(right), "-": int(left) - int(right),
                                   "*": int(left) * int(right)}[op]
            previous, value = name, int(result)
            seen_ops.add(op)
        assert problem.solution.endswith(f"#### {value}") and problem.answer == str(value)
        asked = problem.question.split(". ")[-1]
        assert asked in (f"What is {previous}?", f"Find {previous}.", f"What does {previous} equal?")
        seen_lengths.add(len(steps))
        seen_phrasings.add((problem.question.startswith("Let"), asked.split(" ")[0], len(asked.split(" "))))
    assert seen_ops == {"+", "-", "*"} and seen_lengths == {2, 3, 4} and len(seen_phrasings) == 6


@pytest.mark.parametrize("text, expected", [
    ("Ann=3+2=5. Ben=5-1=4. #### 4", "4"),
    ("#### 1,234", "1234"),
    ("so #### 7.", "7"),
    ("#### -12 apples", "-12"),
    ("The answer is 12.", "12"),
    ("Tom has 3, then 1,000 more.", "1000"),
    ("x = -3", "-3"),
    ("#### 4 and later 9", "4"),
    ("no number here", None),
    ("", None),
])
def test_extract_answer_the_gsm8k_way(text, expected):
    assert arith.extract_answer(text) == expected


def test_is_correct_and_prompt():
    problem = arith.problems(1, seed=0)[0]
    assert arith.is_correct(problem.solution, problem)
    assert not arith.is_correct(problem.solution.replace(f"#### {problem.answer}", "#### 10"), problem)

    class Template:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return "|".join(f"{m['role']}:{m['content']}" for m in messages)

    text = arith.prompt(problem, Template(), shots=2)
    parts = text.split("|")
    assert [p.split(":")[0] for p in parts] == ["user", "assistant", "user", "assistant", "user"]
    assert parts[-1] == f"user:{problem.question}" and "####" in parts[1]
    assert arith.prompt(problem, Template()) == f"user:{problem.question}"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'dev'"):
        arith.problems(3, seed=0, split="dev")
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got -1"):
        arith.problems(-1, seed=0)
