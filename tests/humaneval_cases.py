"""The HumanEval test modules' shared problems (their fixtures are in conftest.py)."""

import textwrap

import pytest

from dllm_accel.tasks import humaneval

ADD = {
    "task_id": "Test/0",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, "
    "1) == 0\n",
    "entry_point": "add",
}
# Like many HumanEval prompts: an import and a helper before the function, which the tests rely on.
DOUBLED_SUM = {
    "task_id": "Test/1",
    "prompt": textwrap.dedent('''\
        from typing import List


        def double(x: int) -> int:
            return 2 * x


        def doubled_sum(numbers: List[int]) -> int:
            """ The sum of the doubled numbers.
            >>> doubled_sum([1, 2])
            6
            """
        '''),
    "canonical_solution": "    return sum(double(n) for n in numbers)\n",
    "test": "\n\ndef check(candidate):\n    assert candidate([1, 2]) == 6\n    assert "
    "candidate([]) == 0\n"
    "    assert double(4) == 8\n",
    "entry_point": "doubled_sum",
}
CORRECT = ADD["canonical_solution"]
GUARD_MISSING = humaneval.guard_unavailable()
guarded = pytest.mark.skipif(
    GUARD_MISSING is not None, reason=f"the syscall guard cannot be installed: {GUARD_MISSING}"
)
