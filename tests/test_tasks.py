"""The synthetic arithmetic task: determinism, disjoint splits, correct solutions, GSM8K
extraction."""

import re
import string

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


def trace(problem) -> int:
    """Checks that the solution traces the question's chain step by step -> its number of steps."""
    steps = re.findall(r"([a-z])=(\d)([-+*])(\d)=(\d)\.", problem.solution)
    previous, value = re.match(r"(?:Let )?([a-z])=(\d)\.", problem.question).groups()
    value = int(value)
    for name, left, op, right, result in steps:
        assert int(left) == value, "each step starts from the previous result"
        assert f"{name}={previous}{op}{right}." in problem.question, "and follows its definition"
        computed = {"+": int(left) + int(right), "-": int(left) - int(right)}
        assert int(result) == computed.get(op, int(left) * int(right))
        previous, value = name, int(result)
    assert problem.solution.endswith(f"#### {value}") and problem.answer == str(value)
    asked = problem.question.split(". ")[-1]
    assert asked in (f"What is {previous}?", f"Find {previous}.", f"What does {previous} equal?")
    assert (
        problem.solution
        == " ".join(f"{m.group(0)}" for m in re.finditer(r"[a-z]=\d[-+*]\d=\d\.", problem.solution))
        + f" #### {value}"
    ), "nothing but the steps"
    return len(steps)


def test_solutions_trace_the_chain_correctly():
    seen_ops, seen_lengths, seen_phrasings = set(), set(), set()
    for problem in arith.problems(500, seed=1, split="train"):
        seen_lengths.add(trace(problem))
        seen_ops |= set(re.findall(r"=\d([-+*])\d=", problem.solution))
        asked = problem.question.split(". ")[-1]
        seen_phrasings.add(
            (problem.question.startswith("Let"), asked.split(" ")[0], len(asked.split(" ")))
        )
    assert seen_ops == {"+", "-", "*"} and seen_lengths == {2, 3, 4} and len(seen_phrasings) == 6


def test_the_default_chain_keeps_the_problems_the_bundled_models_were_trained_on():
    problems = arith.problems(3, seed=0)
    assert [p.question for p in problems] == [
        "g=0. i=g+7. k=i-6. What is k?",
        "Let y=5. l=y-3. x=l-2. p=x+8. s=p+1. What is s?",
        "n=9. l=n-3. m=l-4. What is m?",
    ]
    assert problems == arith.problems(3, seed=0, chain=arith.CHAIN)


def test_long_chains_are_long_dependent_and_split():
    fewest, most, names = arith.LONG_CHAIN
    train = arith.problems(1500, seed=0, split="train", chain=arith.LONG_CHAIN)
    test = arith.problems(150, seed=0, split="test", chain=arith.LONG_CHAIN)
    assert not {p.question for p in train} & {p.question for p in test}
    lengths = [trace(p) for p in train + test]
    assert min(lengths) == fewest >= 9 and max(lengths) == most == 20  # 9+ dependent values
    assert 80 <= min(len(p.solution) for p in test) and max(len(p.solution) for p in test) <= 200
    tokens = len(arith.prompt(test[0], _Characters(), shots=2, chain=arith.LONG_CHAIN))
    assert tokens >= 200, "two solved examples make a long prompt"
    assert names == "ordered"
    for problem in test:  # each step's name is the letter after the one before
        defined = re.findall(r"([a-z])=", problem.question)
        assert "".join(defined) in string.ascii_lowercase
    assert len({p.question[p.question.index("=") - 1] for p in test}) > 5, "from a random letter"


def test_a_chain_is_normalised_and_its_naming_kept_apart():
    assert arith.check_chain([9, 20]) == arith.Chain(9, 20, "random") == (9, 20, "random")
    assert arith.check_chain((9, 20, "ordered")) == arith.LONG_CHAIN
    random_names = arith.problems(50, seed=0, split="test", chain=(9, 20))
    assert any(
        "".join(re.findall(r"([a-z])=", p.question)) not in string.ascii_lowercase
        for p in random_names
    )
    tags = {
        arith.Arith(chain=chain, limit=1).samples()[0].id
        for chain in (None, (9, 20), (9, 20, "ordered"))
    }
    assert tags == {"test-0-0", "test-0-0-chain9-20", "test-0-0-chain9-20-ordered"}


class _Characters:
    """The testbed tokenizer's chat template, as text (one token per character)."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return "".join(f"<{m['role']}>{m['content']}<eot>" for m in messages) + "<assistant>"


@pytest.mark.parametrize(
    "chain", [(0, 3), (3, 2), (2, 26), (2,), "2-4", (2.0, 4), (2, 4, "sorted"), (2, 4, "random", 1)]
)
def test_a_bad_chain_is_named(chain):
    with pytest.raises(ValueError, match="chain must be"):
        arith.problems(1, seed=0, chain=chain)


@pytest.mark.parametrize(
    "text, expected",
    [
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
    ],
)
def test_extract_answer_the_gsm8k_way(text, expected):
    assert arith.extract_answer(text) == expected


def test_is_correct_and_prompt():
    problem = arith.problems(1, seed=0)[0]
    assert arith.is_correct(problem.solution, problem)
    assert not arith.is_correct(
        problem.solution.replace(f"#### {problem.answer}", "#### 10"), problem
    )

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
    with pytest.raises(ValueError, match=r"n must be an integer >= 0, got -1"):
        arith.problems(-1, seed=0)


# -- the Task --------------------------------------------------------------------------------------
def test_arith_task_samples_are_the_held_out_problems():
    task = arith.Arith(size=50, seed=2, shots=2)
    samples = task.samples()
    assert task.name == "arith" and len(samples) == 50
    assert [s.data for s in samples] == arith.problems(50, seed=2, split="test")
    assert [s.id for s in samples] == [f"test-2-{i}" for i in range(50)]
    for sample in samples:
        assert (
            sample.prompt == arith.messages(sample.data, shots=2, seed=2)
            and sample.target == sample.data.answer
        )
    assert arith.Arith(size=50, seed=2, shots=2).samples() == samples, "stable"


def test_arith_task_limit_keeps_ids():
    every = arith.Arith(size=30).samples()
    assert arith.Arith(size=30, limit=10).samples() == every[:10]
    assert arith.Arith(size=30, limit=100).samples() == every
    assert {s.id for s in arith.Arith(split="train", seed=1, limit=5).samples()} == {
        f"train-1-{i}" for i in range(5)
    }


def test_arith_task_score():
    task = arith.Arith(limit=1)
    sample = task.samples()[0]
    assert task.score(sample, sample.data.solution + "\n") == {
        "correct": True,
        "answer": sample.target,
        "exact_match": True,
    }
    assert task.score(sample, "#### 10") == {"correct": False, "answer": "10", "exact_match": False}
    renamed = "q" + sample.data.solution[1:]  # the right numbers under another name
    assert task.score(sample, renamed) == {
        "correct": True,
        "answer": sample.target,
        "exact_match": False,
    }
    assert task.score_many([sample], ["nothing"]) == [
        {"correct": False, "answer": None, "exact_match": False}
    ]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"limit": 0}, r"task.limit must be None \(every sample\) or an integer >= 1, got 0"),
        ({"shots": -2}, r"task.shots must be an integer >= 0, got -2"),
        ({"split": "dev"}, r"task.split must be one of \('train', 'test'\), got 'dev'"),
        ({"seed": "0"}, r"task.seed must be an integer, got '0'"),
        ({"size": 0}, r"task.size must be an integer >= 1, got 0"),
    ],
    ids=["limit", "shots", "split", "seed", "size"],
)
def test_arith_task_bad_arguments_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        arith.Arith(**settings)
