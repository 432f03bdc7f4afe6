"""HumanEval's execution: the canonical solutions pass; bad completions fail in time and leave
nothing behind; the syscall guard against code written to escape. (test_humaneval_task.py:
postprocess, prompts, data loading and the errors for bad settings.)"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from humaneval_cases import ADD, CORRECT, DOUBLED_SUM, guarded

from dllm_accel.tasks import humaneval
from dllm_accel.tasks.base import Sample
from dllm_accel.tasks.humaneval import HumanEval, execute

HANG_TIMEOUT = 3.0


def execute_all(completions: list[str], timeout: float = 5.0) -> list[dict]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda completion: execute(ADD, completion, timeout), completions))


def after_correct(code: str) -> str:
    """A correct body, then `code` at the top level, which runs before the tests."""
    return CORRECT + textwrap.dedent(code) + "\n"


def live_group_members(pgid: int) -> list[int]:
    """The processes of a process group that are alive (zombies are dead, waiting for their
    parent)."""
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


# -- the canonical solutions -----------------------------------------------------------------------
@guarded
def test_every_canonical_solution_passes_as_a_body(problems):
    task = HumanEval(chat=False, timeout=30, workers=4)
    records = task.score_many(problems, [sample.target for sample in problems])
    assert len(records) == 164
    assert [(s.id, r) for s, r in zip(problems, records, strict=True) if not r["correct"]] == []
    assert all(r == {"correct": True, "result": "passed"} for r in records)


@guarded
def test_every_canonical_solution_passes_restated_in_a_chat_answer(problems):
    task = HumanEval(chat=True, timeout=30, workers=4)
    outputs = [
        f"Here is the function:\n\n```python\n{s.data['prompt']}{s.target}```\n\nIt passes the "
        "examples."
        for s in problems
    ]
    records = task.score_many(problems, outputs)
    assert [(s.id, r) for s, r in zip(problems, records, strict=True) if not r["correct"]] == []


@guarded
def test_execute_follows_the_official_meaning_of_completion():
    assert execute(ADD, CORRECT) == {"passed": True, "result": "passed"}
    assert execute(DOUBLED_SUM, DOUBLED_SUM["canonical_solution"]) == {
        "passed": True,
        "result": "passed",
    }


# -- failing completions ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion, result",
    [
        pytest.param("    return a - b\n", "failed: AssertionError", id="wrong-answer"),
        pytest.param("    raise ValueError('boom')\n", "failed: ValueError: boom", id="raises"),
        pytest.param(
            "    return a +\n",
            "failed: SyntaxError: invalid syntax (<completion>, line 3)",
            id="syntax-error",
        ),
        pytest.param(
            "    return undefined_name\n",
            "failed: NameError: name 'undefined_name' is not defined",
            id="name-error",
        ),
        pytest.param(
            "    raise ValueError('x' * 10_000)\n",
            ("failed: ValueError: " + "x" * 300)[: humaneval.RESULT_CHARS],
            id="long-message",
        ),
    ],
)
@guarded
def test_failures_are_described(completion, result):
    outcome = execute(ADD, completion)
    assert outcome == {"passed": False, "result": result}
    assert len(outcome["result"]) <= humaneval.RESULT_CHARS


@pytest.mark.parametrize(
    "code",
    [
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
    ],
)
@guarded
def test_exiting_before_the_tests_is_not_a_pass(code):
    outcome = execute(ADD, after_correct(code))
    assert not outcome["passed"] and outcome["result"].startswith("failed: ")
    body_exit = execute(ADD, "    import sys\n    sys.exit(0)\n")
    assert body_exit == {"passed": False, "result": "failed: SystemExit: 0"}


@guarded
def test_hanging_completions_time_out_and_no_process_survives(started_pids):
    hangs = [
        "while True:\n    pass",
        "import time\ntime.sleep(600)",
        "while True:\n    print('x' * 65536)",  # gigabytes of output go nowhere
        # a grandchild spinning too
        "import ctypes\nctypes.CDLL(None).fork()\nwhile True:\n    pass",
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n "
        "       pass",
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


@guarded
def test_a_passing_completion_leaves_no_process_or_thread_behind(started_pids):
    code = after_correct("""\
        import ctypes, threading, time
        # non-daemon: would hold up a normal exit
        threading.Thread(target=time.sleep, args=(600,)).start()
        if ctypes.CDLL(None).fork() == 0:
            time.sleep(600)  # the forked grandchild waits; the child goes on to the tests
        """)
    start = time.monotonic()
    assert execute(ADD, code, timeout=HANG_TIMEOUT) == {"passed": True, "result": "passed"}
    assert time.monotonic() - start < HANG_TIMEOUT
    assert_gone(started_pids[0])


@pytest.mark.parametrize(
    "code", ["x = bytearray(100 * 2**30)", "x = [0] * 10**11", "x = 'x' * (8 * 2**30)"]
)
@guarded
def test_memory_hogs_fail_with_memory_error(code):
    assert execute(ADD, after_correct(code)) == {"passed": False, "result": "failed: MemoryError"}


@guarded
def test_crashes_fail():
    outcome = execute(ADD, after_correct("import ctypes\nctypes.string_at(0)"))
    assert outcome == {"passed": False, "result": "failed: killed by signal SIGSEGV"}


@guarded
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
        # in the child's directory
        "import sqlite3\nsqlite3.connect('data.db').execute('create table t (x)')",
    ]
    outcomes = execute_all([after_correct(code) for code in attempts])
    for code, outcome in zip(attempts, outcomes, strict=True):
        assert not outcome["passed"], code
    assert kept.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


@guarded
def test_files_can_be_read(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("5")
    code = after_correct(f"assert int(open({str(data)!r}).read()) == 5")
    assert execute(ADD, code) == {"passed": True, "result": "passed"}


@guarded
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


@guarded
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
    for code, outcome in zip(
        attempts, execute_all([after_correct(code) for code in attempts]), strict=True
    ):
        assert outcome["result"].startswith("failed: PermissionError"), (code, outcome)
    os.kill(me, 0)  # still here


@guarded
def test_processes_cannot_be_started(tmp_path, started_pids):
    marker = tmp_path / "ran"
    touch = f"touch {marker}"
    raising = [
        f"import subprocess\nsubprocess.run({touch!r}, shell=True)",
        f"import subprocess\nsubprocess.Popen(['sh', '-c', {touch!r}])",
        f"import subprocess\nsubprocess.check_output({touch!r}, shell=True)",
        f"import os\nos.popen({touch!r})",
        f"import os\nos.execv('/bin/sh', ['sh', '-c', {touch!r}])",
        f"import os\nos.spawnv(os.P_WAIT, '/bin/sh', ['sh', '-c', {touch!r}])",
        f"import os\nos.posix_spawn('/bin/sh', ['sh', '-c', {touch!r}], {{}})",
        "import os\nos.fork()",
        "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "import pty\npty.fork()",
    ]
    # system() reports a failed fork as -1
    silent = [f"import os\nassert os.system({touch!r}) != 0"]
    outcomes = execute_all([after_correct(code) for code in raising + silent])
    for code, outcome in zip(
        raising, outcomes, strict=False
    ):  # pty.fork: "OSError: out of pty devices"
        assert outcome["result"].startswith(("failed: PermissionError", "failed: OSError")), (
            code,
            outcome,
        )
    assert outcomes[-1] == {"passed": True, "result": "passed"}
    assert not marker.exists()
    for pid in started_pids:
        assert_gone(pid)


@guarded
def test_the_network_is_off():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        attempts = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}))",
            f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))",
            "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
            f"('127.0.0.1', {port}))",
            "import socket\nsocket.socketpair()",
            f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}', timeout=1)",
            "import ctypes\nassert ctypes.CDLL(None).socket(2, 1, 0) < 0",
        ]
        outcomes = execute_all([after_correct(code) for code in attempts])
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    for code, outcome in zip(attempts[:-1], outcomes, strict=False):
        assert outcome["result"].startswith("failed: ") and not outcome["passed"], code
        assert "PermissionError" in outcome["result"] or "URLError" in outcome["result"], (
            code,
            outcome,
        )
    assert outcomes[-1]["passed"], outcomes[-1]


@pytest.mark.parametrize(
    "code, error",
    [
        # lowering a limit is always allowed by the kernel; CPython words the filter's EPERM as:
        (
            "import resource\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))",
            "ValueError: not allowed to raise maximum limit",
        ),
        (
            "import resource\nresource.prlimit(0, resource.RLIMIT_CPU, (100, 100))",
            "PermissionError: [Errno 1]",
        ),
        ("import os\nos.chdir('/')", "PermissionError: [Errno 1] Operation not permitted: '/'"),
        ("import os\nos.fchdir(os.open('/', os.O_RDONLY))", "PermissionError: [Errno 1]"),
        ("import os\nos.setsid()", "PermissionError: [Errno 1]"),
        ("import os\nos.setpgid(0, 0)", "PermissionError: [Errno 1]"),
        ("import os\nos.kill(os.getppid(), 0)", "PermissionError: [Errno 1]"),
    ],
)
@guarded
def test_limits_directory_and_session_cannot_be_changed(code, error):
    assert execute(ADD, after_correct(code))["result"].startswith(f"failed: {error}")


@pytest.mark.parametrize(
    "code, name",
    [
        ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "resource.setrlimit"),
        ("import os\nos.chdir('/')", "os.chdir"),
        ("import os\nos.setsid()", "os.setsid"),
        ("import faulthandler\nfaulthandler.enable()", "faulthandler.enable"),
        ("import posix\nposix.system('true')", "posix.system"),
    ],
)
def test_the_unsafe_python_guard_refuses_by_name(code, name):
    result = execute(ADD, after_correct(code), unsafe_python_guard=True)["result"]
    assert result == f"failed: PermissionError: {name} is disabled while a completion is evaluated"


def test_the_unsafe_python_guard_lets_numpy_import():
    pytest.importorskip("numpy")
    code = "    import numpy as np\n    return int(np.add(a, b))\n"
    assert execute(ADD, code, unsafe_python_guard=True) == {"passed": True, "result": "passed"}


@guarded
def test_the_working_directory_is_temporary_and_removed():
    result = execute(ADD, "    raise Exception(__import__('os').getcwd())\n")["result"]
    workdir = Path(result.removeprefix("failed: Exception: "))
    assert workdir.parent == Path(tempfile.gettempdir()).resolve() and workdir.name.startswith(
        "humaneval-"
    )
    assert not workdir.exists()


@guarded
def test_score_many_runs_in_parallel_and_keeps_the_order(problem_file):
    task = HumanEval(timeout=HANG_TIMEOUT, workers=4, problem_file=problem_file)
    samples = [Sample(f"Test/{i}", "", CORRECT, ADD) for i in range(4)]
    outputs = [after_correct("import time\ntime.sleep(1.5)"), "    return a - b\n"] * 2
    start = time.monotonic()
    records = task.score_many(samples, outputs)
    assert time.monotonic() - start < 2.5  # the two sleeps overlap
    passed, failed = (
        {"correct": True, "result": "passed"},
        {"correct": False, "result": "failed: AssertionError"},
    )
    assert records == [passed, failed] * 2
    assert task.score_many([], []) == []


@guarded
def test_execute_is_safe_to_call_from_many_threads():
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(
            pool.map(
                lambda completion: execute(ADD, completion), [CORRECT, "    return a - b\n"] * 8
            )
        )
    assert [o["passed"] for o in outcomes] == [True, False] * 8


# -- the syscall guard against code written to escape ----------------------------------------------
REIMPORT_POSIX = (
    "import sys\ndel sys.modules['posix']\nimport posix\n"  # undid the Python-level guard
)
# a process that would outlive the run
SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(600)', 'MARK']"
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def file_flags(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        import fcntl

        return int.from_bytes(fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4), sys.byteorder)
    except OSError:
        return None
    finally:
        os.close(fd)


def snapshot(root: Path) -> dict:
    """Everything about a tree that a completion could change: names, kinds, modes, owners, sizes,
    contents, modification times and inode flags (immutable, append-only, ...)."""
    state = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        state[str(path.relative_to(root))] = (
            info.st_mode,
            info.st_uid,
            info.st_size,
            info.st_mtime_ns,
            content,
            file_flags(path),
        )
    return state


def survivors(*needles: str) -> list[int]:
    """Live processes whose command line holds one of the needles (a zombie's command line is
    empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            if any(needle in cmdline for needle in needles):
                found.append(int(entry.name))
    return found


class Case:
    """A sentinel tree that the attacks aim at, and a private temporary folder for the case
    directories. check() asserts what must hold after any completion: nothing changed outside the
    case's directory (the sentinel tree as before, the case directories all removed), no process of
    the case alive, the evaluator alive."""

    def __init__(self, tmp_path: Path, started_pids: list[int]):
        self.root = tmp_path / "sentinel"
        (self.root / "folder").mkdir(parents=True)
        self.kept, self.new = self.root / "kept.txt", self.root / "new.txt"
        self.kept.write_text("precious")
        (self.root / "folder" / "inner.txt").write_text("inner")
        self.cases = tmp_path / "cases"
        self.cases.mkdir()
        # in the command line of anything it starts
        self.mark = f"escape-{os.getpid()}-{time.monotonic_ns()}"
        self.started_pids = started_pids
        self.before = snapshot(self.root)

    def fill(self, code: str) -> str:
        return (
            code.replace("KEPT", repr(str(self.kept)))
            .replace("NEW", repr(str(self.new)))
            .replace("ROOT", repr(str(self.root)))
            .replace("MARK", self.mark)
        )

    def run(self, codes: list[str], **options) -> list[dict]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda code: execute(ADD, self.fill(code), **options), codes))

    def check(self) -> None:
        assert snapshot(self.root) == self.before
        assert list(self.cases.iterdir()) == []
        for pid in self.started_pids:
            assert_gone(pid)
        alive = survivors(str(self.cases), self.mark)
        for pid in alive:  # this test's escapees: ended before the assertion reports them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert alive == []
        os.kill(os.getpid(), 0)


@pytest.fixture
def case(tmp_path, monkeypatch, started_pids):
    # where mkdtemp puts the case folders
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "cases"))
    return Case(tmp_path, started_pids)


# Completions that try to change the world outside their directory. Each is a correct body followed
# by the
# attack, so a silently ineffective attack passes: what counts is that nothing changed
# (case.check()).
ESCAPES = {
    "posix-reimported-unlink": REIMPORT_POSIX + "posix.unlink(KEPT)",
    "posix-reimported-rename": REIMPORT_POSIX + "posix.rename(KEPT, NEW)",
    "posix-reimported-daemon": REIMPORT_POSIX + "if posix.fork() == 0:\n    posix.setsid()\n"
    f"    posix.execv(sys.executable, {SLEEPER})\nimport time\ntime.sleep(0.5)",
    "posix-reimported-exec": REIMPORT_POSIX
    + "posix.execv('/bin/sh', ['sh', '-c', 'touch ' + NEW + ' # MARK'])",
    "io-open-truncate": "import _io\n_io.open(KEPT, 'w')",
    "io-open-append": "import _io\n_io.open(KEPT, 'ab').write(b'x')",
    "io-open-create": "import _io\n_io.open(NEW, 'x')",
    "io-fileio-read-write": "import _io\n_io.FileIO(KEPT, 'r+').write(b'X')",
    "os-open-read-write": "import os\nos.write(os.open(KEPT, os.O_RDWR), b'X')",
    "os-open-through-proc-fd": "import os\nfd = os.open(KEPT, os.O_RDONLY)\n"
    "os.open(f'/proc/self/fd/{fd}', os.O_WRONLY | os.O_TRUNC)",
    "mmap-shared-write": "import mmap\nf = open(KEPT, 'rb')\n"
    "mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE)[:1] = b'X'",
    "mmap-mprotect": "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = "
    "ctypes.c_void_p\n"
    "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + "
    "[ctypes.c_long]\n"
    "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]\n"
    "address = libc.mmap(None, 4096, 1, 1, os.open(KEPT, os.O_RDONLY), 0)\n"
    "if libc.mprotect(address, 4096, 3) == 0:\n    ctypes.memmove(address, b'X', 1)",
    "sqlite-creates-a-file": "import sqlite3\nsqlite3.connect(NEW).execute('create table t (x)')",
    "sqlite-opens-for-writing": "import sqlite3\nsqlite3.connect(KEPT).execute('create table t "
    "(x)')",
    "ioctl-immutable-directory": "import fcntl, os, struct\n"
    "fcntl.ioctl(os.open('.', os.O_RDONLY), 0x40086602, struct.pack('i', 0x10))",
    "ioctl-immutable-outside": "import fcntl, os, struct\n"
    "fcntl.ioctl(os.open(KEPT, os.O_RDONLY), 0x40086602, struct.pack('i', 0x10))",
    "ctypes-unlink": "import ctypes\nctypes.CDLL(None).unlink(KEPT.encode())",
    "ctypes-open-create": "import ctypes\nlibc = ctypes.CDLL(None)\n"
    "libc.write(libc.open(NEW.encode(), 0o1101, 0o644), b'x', 1)",
    "ctypes-truncate": "import ctypes\nctypes.CDLL(None).truncate(KEPT.encode(), 0)",
    "ctypes-chmod-utime": "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.chmod(KEPT.encode(), 0)\n"
    "libc.utime(KEPT.encode(), None)",
    "ctypes-link-symlink-mkdir": "import ctypes\nlibc = "
    "ctypes.CDLL(None)\nlibc.link(KEPT.encode(), NEW.encode())\n"
    "libc.symlink(KEPT.encode(), NEW.encode())\nlibc.mkdir(NEW.encode(), 0o755)",
    "ctypes-fork-exec": "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n"
    "    libc.execl(b'/bin/sh', b'sh', b'-c', ('touch ' + NEW + ' # MARK').encode(), None)\n"
    "time.sleep(0.5)",
    "ctypes-posix-spawn-shell": "import ctypes\nctypes.CDLL(None).system(('touch ' + NEW + ' # "
    "MARK').encode())",
    "subprocess": f"import subprocess, sys\nsubprocess.Popen({SLEEPER}, start_new_session=True)",
    "os-system": "import os\nos.system('touch ' + NEW + ' # MARK')",
    "shutil-rmtree": "import shutil\nshutil.rmtree(ROOT)",
    "rename-into-case-directory": "import os\nos.rename(KEPT, 'stolen')",
    "xattr": "import os\nos.setxattr(KEPT, 'user.x', b'1')",
    "x32-abi-open-create": "import ctypes\nctypes.CDLL(None).syscall(0x40000002, NEW.encode(), "
    "0o101, 0o644)",
    "thread-escapes-the-filter": "import threading, os\nt = threading.Thread(target=os.remove, "
    "args=(KEPT,))\n"
    "t.start()\nt.join()",
}


@guarded
@pytest.mark.parametrize("code", ESCAPES.values(), ids=ESCAPES.keys())
def test_escapes_change_nothing_outside_and_leave_no_process(case, code):
    [outcome] = case.run([after_correct(code)])
    case.check()
    assert outcome["passed"] or outcome["result"].startswith("failed: "), outcome


# Calls that, allowed, would reach outside the process; each must be refused (the completion asserts
# so,
# so a refused call passes and an allowed one fails naming the call).
DENIED_CALLS = {
    "kill-parent": "libc.kill(os.getppid(), 0)",
    "kill-everyone": "libc.kill(-1, 0)",
    "kill-own-group": "libc.kill(0, 0)",
    "tgkill-parent": "libc.tgkill(os.getppid(), os.getppid(), 0)",
    "ptrace-parent": "libc.ptrace(0x4206, os.getppid(), 0, 0)",  # PTRACE_SEIZE: would not stop it
    # RLIMIT_CORE, lowered: allowed it would pass
    "setrlimit": "libc.setrlimit(4, (ctypes.c_ulong * 2)(0, 0))",
    "prlimit": "libc.prlimit(0, 4, (ctypes.c_ulong * 2)(0, 0), None)",
    "chdir": "libc.chdir(b'/')",
    "chroot": "libc.chroot(b'/')",
    "setpgid": "libc.setpgid(0, 0)",
    "socket": "libc.socket(2, 1, 0)",
    "socketpair": "libc.socketpair(1, 1, 0, (ctypes.c_int * 2)())",
    "unshare": "libc.unshare(0x10000000)",
    "setns": "libc.setns(os.open('/proc/self/ns/mnt', os.O_RDONLY), 0)",
    "mount": "libc.mount(b'none', b'.', b'tmpfs', 0, None)",
    "memfd": "libc.memfd_create(b'x', 0)",
    "flock": "libc.flock(os.open(KEPT, os.O_RDONLY), 2)",
    "mknod": "libc.mknod(NEW.encode(), 0o10644, 0)",
    "personality": "libc.personality(0x0040000)",
    "dumpable": "libc.prctl(4, 1, 0, 0, 0)",
    "seccomp-change": "libc.prctl(22, 2, 0, 0, 0)",
    "madvise-hwpoison": "libc.madvise(ctypes.c_void_p(ctypes.addressof(page) & ~4095), 4096, 100)",
    "proc-parent-environ": "libc.open(f'/proc/{os.getppid()}/environ'.encode(), 0)",
    "proc-parent-mem": "libc.open(f'/proc/{os.getppid()}/mem'.encode(), 0)",
    "proc-init-environ": "libc.open(b'/proc/1/environ', 0)",
    "proc-self-mem-write": "libc.open(b'/proc/self/mem', 2)",
    "io-uring-setup": "libc.syscall(425, 8, (ctypes.c_char * 120)())",
    "pidfd-open-parent": "libc.syscall(434, os.getppid(), 0)",
    "clone3": "libc.syscall(435, (ctypes.c_char * 88)(), 88)",
    "fork": "libc.fork()",
    "fork-through-clone": "libc.syscall(56, 17, 0, 0, 0, 0) if os.uname().machine == 'x86_64' else "
    "-1",
    "userfaultfd": "libc.syscall(323, 0) if os.uname().machine == 'x86_64' else -1",
    "keyctl": "libc.syscall(250, 0, -3, 0) if os.uname().machine == 'x86_64' else -1",
    "ioctl-setflags": "libc.ioctl(os.open(KEPT, os.O_RDONLY), 0x40086602, "
    "ctypes.byref(ctypes.c_int(0)))",
    "fcntl-setlease": "libc.fcntl(os.open(KEPT, os.O_RDONLY), 1024, 0)",
}


@guarded
@pytest.mark.parametrize("call", DENIED_CALLS.values(), ids=DENIED_CALLS.keys())
def test_calls_that_reach_outside_are_refused(case, call):
    code = after_correct(f"""\
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        page = ctypes.create_string_buffer(8192)
        result = {call}
        if result != -1:
            raise SystemError(f"allowed: {{result}}")
        """)
    [outcome] = case.run([code])
    case.check()
    assert outcome == {"passed": True, "result": "passed"}, (call, outcome)


@guarded
def test_completions_can_compute_read_and_use_threads(case, tmp_path):
    code = after_correct("""\
        import math, re, collections, itertools, functools, heapq, fractions, decimal, string
        import hashlib
        import datetime, statistics, random, json, time, sys, threading
        from concurrent.futures import ThreadPoolExecutor
        assert open(KEPT).read() == "precious" and sorted(__import__("os").listdir(ROOT))
        assert math.comb(5, 2) == 10 and re.sub(r"\\d", "#", "a1") == "a#"
        assert collections.Counter("aab").most_common(1) == [("a", 2)]
        assert list(itertools.pairwise([1, 2, 3])) == [(1, 2), (2, 3)]
        assert functools.lru_cache(lambda n: n * 2)(3) == 6 and heapq.nlargest(1, [1, 3]) == [3]
        assert fractions.Fraction(1, 3) * 3 == 1
        assert decimal.Decimal("0.1") * 3 == decimal.Decimal("0.3")
        assert string.ascii_lowercase[:2] == "ab"
        assert hashlib.sha256(b"").hexdigest().startswith("e3b0c442") and hashlib.md5(b"x").digest()
        assert datetime.datetime(2024, 1, 1).strftime("%A") == "Monday"
        assert datetime.datetime.now().year > 2000
        assert statistics.median([1, 3, 2]) == 2
        assert json.loads(json.dumps({"a": [1]})) == {"a": [1]}
        random.seed(0)
        time.sleep(0.01)
        print("out")
        print("err", file=sys.stderr)
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(lambda x: x * x, range(100))) == [x * x for x in range(100)]
        done = threading.Event(); threading.Timer(0.01, done.set).start(); assert done.wait(5)
        """)
    assert case.run([code]) == [{"passed": True, "result": "passed"}]
    case.check()


@guarded
def test_completions_that_import_numpy_pass(case):
    pytest.importorskip("numpy")
    code = after_correct("""\
        import numpy as np
        solved = np.linalg.solve(np.array([[2.0, 0.0], [0.0, 4.0]]), np.array([2.0, 4.0]))
        assert solved.tolist() == [1.0, 1.0]
        assert np.sort(np.random.default_rng(0).integers(0, 9, 1000)).shape == (1000,)
        assert float(np.arange(1000.0) @ np.ones(1000)) == 499500.0
        """)
    assert (
        case.run([code, "    import numpy\n    return int(numpy.int64(a) + b)\n"])
        == [{"passed": True, "result": "passed"}] * 2
    )
    case.check()


WRONG = "    return a - b\n"
FAKE_PASSES = {
    "json-encoder": "import json\n"
    "json.JSONEncoder.encode = lambda self, o: '{\"passed\": true, \"result\": \"passed\"}'\n"
    "json.dumps = lambda *a, **k: '{\"passed\": true, \"result\": \"passed\"}'",
    "builtins": "import builtins\nfor name in ('print', 'str', 'repr', 'bytes', 'type', "
    "'isinstance', 'len', 'all',"
    " 'id', 'issubclass', 'compile', 'exec', 'BaseException', 'Exception', 'AssertionError'):\n"
    "    setattr(builtins, name, lambda *a, **k: 'passed')",
    "os-write": "import os, posix\nos.write = posix.write = lambda fd, data: len(data)\nos._exit = "
    "lambda code: None",
    "exception-str-exits": "import os\nclass Evil(AssertionError):\n    def __str__(self):\n       "
    " os._exit(0)\n"
    "import builtins\nbuiltins.AssertionError = Evil",
    "metaclass-name": "class Meta(type):\n    __name__ = property(lambda cls: 1 / 0)\n"
    "    def __eq__(cls, other):\n        return True\n    __hash__ = type.__hash__\n"
    "class Odd(Exception, metaclass=Meta):\n    pass\nraise Odd(Odd('x'))",
}


@guarded
@pytest.mark.parametrize("code", FAKE_PASSES.values(), ids=FAKE_PASSES.keys())
def test_patching_the_interpreter_cannot_fake_a_pass(case, code):
    [outcome] = case.run([textwrap.dedent(code) + "\n\ndef add(a, b):\n    return a - b\n"])
    case.check()
    assert not outcome["passed"] and outcome["result"].startswith("failed: "), outcome


@guarded
def test_what_the_guard_does_not_stop_is_a_pass_faked_inside_the_process():
    """As the README says: the completion shares its interpreter with check(), so it can make the
    test's own assertions hold without solving anything. Only an honest completion is scored
    honestly."""
    always_equal = (
        "    class Anything:\n        def __eq__(self, other):\n            return True\n"
        "    return Anything()\n"
    )
    assert execute(ADD, always_equal) == {"passed": True, "result": "passed"}


@guarded
def test_exception_messages_run_none_of_the_completions_code():
    code = (
        "    class Evil(ValueError):\n        def __str__(self):\n            import os\n          "
        "  os._exit(0)\n"
        "    raise Evil('x')\n"
    )
    assert execute(ADD, code) == {"passed": False, "result": "failed: Evil: x"}
    code = (
        "    class Loud:\n        def __str__(self):\n            import os\n            "
        "os._exit(0)\n"
        "    raise ValueError(Loud())\n"
    )
    assert execute(ADD, code) == {"passed": False, "result": "failed: ValueError"}
    code = (
        "    e = OSError(2, 'gone')\n"
        "    e.filename = type('Loud', (), {'__repr__': lambda s: 1 / 0})()\n    raise e\n"
    )
    assert execute(ADD, code) == {
        "passed": False,
        "result": "failed: FileNotFoundError: (2, 'gone')",
    }


@guarded
def test_the_evaluators_environment_stays_out_of_the_child(tmp_path):
    secret = f"secret-{os.getpid()}-{time.monotonic_ns()}"
    completion = textwrap.indent(
        textwrap.dedent("""\
        import os
        seen, readable = [repr(sorted(os.environ.items()))], 0
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                for name in ("environ", "mem"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as file:
                            seen.append(file.read(1 << 16).decode("latin-1"))
                        readable += 1
                    except OSError:
                        pass
        raise Exception(f"{readable} {sorted(os.environ)} " + "".join(seen)[-150:])
        """),
        "    ",
    )
    script = textwrap.dedent("""\
        import json, sys
        from dllm_accel.tasks.humaneval import execute
        problem = json.loads(sys.argv[1])
        print(json.dumps(execute(problem, sys.argv[2])))
        """)
    evaluator = subprocess.run(
        [sys.executable, "-c", script, json.dumps(ADD), completion],
        capture_output=True,
        text=True,
        env={**os.environ, "HUMANEVAL_TEST_SECRET": secret},
        check=True,
    )
    result = json.loads(evaluator.stdout)["result"]
    assert secret not in evaluator.stdout and "HUMANEVAL_TEST_SECRET" not in evaluator.stdout
    expected_keys = sorted(humaneval._CHILD_ENV)
    assert result.startswith(f"failed: Exception: 0 {expected_keys} "), result


# -- the guard's absence, its failures, and failed cleanups
# ------------------------------------------
def test_without_the_guard_execute_refuses_unless_told(monkeypatch, problem_file):
    monkeypatch.setattr(humaneval, "guard_unavailable", lambda: "no libseccomp here (a test)")
    with pytest.raises(
        humaneval.GuardUnavailable,
        match=r"no libseccomp here \(a test\)\. Pass unsafe_python_guard",
    ):
        execute(ADD, CORRECT)
    with pytest.raises(humaneval.GuardUnavailable, match="task.unsafe_python_guard=True"):
        HumanEval(problem_file=problem_file)
    assert execute(ADD, CORRECT, unsafe_python_guard=True) == {"passed": True, "result": "passed"}
    task = HumanEval(problem_file=problem_file, unsafe_python_guard=True)
    assert task.unsafe_python_guard is True
    assert task.score_many([Sample("Test/0", "", CORRECT, ADD)] * 2, [CORRECT, WRONG]) == [
        {"correct": True, "result": "passed"},
        {"correct": False, "result": "failed: AssertionError"},
    ]
    with pytest.raises(
        ValueError, match=r"unsafe_python_guard must be true .* or false .*got 'yes'"
    ):
        execute(ADD, CORRECT, unsafe_python_guard="yes")


@guarded
def test_a_guard_the_child_cannot_install_is_an_error_not_a_result(case, monkeypatch):
    source = humaneval._child_source()
    broken = source.replace(
        "    seccomp = binding()\n", "    raise OSError('seccomp is off in this test')\n"
    )
    assert broken != source
    monkeypatch.setattr(humaneval, "_child_source", lambda: broken)
    with pytest.raises(humaneval.GuardUnavailable, match="OSError: seccomp is off in this test"):
        execute(ADD, CORRECT)
    case.check()


@guarded
def test_a_cleanup_that_fails_once_is_retried(case, monkeypatch):
    real_rmtree, calls = humaneval.shutil.rmtree, []

    def flaky_rmtree(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise PermissionError(1, "Operation not permitted", path)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(humaneval.shutil, "rmtree", flaky_rmtree)
    assert execute(ADD, CORRECT) == {"passed": True, "result": "passed"}
    assert len(calls) == 2
    case.check()


@guarded
def test_a_cleanup_that_keeps_failing_fails_the_sample_and_the_run_goes_on(
    case, monkeypatch, problem_file
):
    real_rmtree = humaneval.shutil.rmtree

    def stuck_rmtree(path, *args, **kwargs):
        if os.path.exists(os.path.join(path, "stuck")):
            raise PermissionError(1, "Operation not permitted", path)
        real_rmtree(path, *args, **kwargs)

    def make_stuck(workdir):  # the case directory of the first sample cannot be removed
        Path(workdir, "stuck").touch()
        return workdir

    real_mkdtemp, made = tempfile.mkdtemp, []

    def mkdtemp(*args, **kwargs):
        made.append(real_mkdtemp(*args, **kwargs))
        return make_stuck(made[-1]) if len(made) == 1 else made[-1]

    monkeypatch.setattr(humaneval.shutil, "rmtree", stuck_rmtree)
    monkeypatch.setattr(humaneval.tempfile, "mkdtemp", mkdtemp)
    task = HumanEval(problem_file=problem_file, workers=1)
    records = task.score_many([Sample("Test/0", "", CORRECT, ADD)] * 2, [CORRECT, CORRECT])
    assert records[0]["correct"] is False
    assert records[0]["result"].startswith("failed: its temporary directory could not be removed: ")
    assert records[1] == {"correct": True, "result": "passed"}
    monkeypatch.undo()
    shutil.rmtree(made[0])
    case.check()


def test_an_immutable_case_directory_is_unlocked_and_removed(case, tmp_path):
    import fcntl

    probe = tmp_path / "probe"
    probe.write_text("x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, FS_IMMUTABLE_FL.to_bytes(4, sys.byteorder))
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, (0).to_bytes(4, sys.byteorder))
    except OSError as error:
        pytest.skip(f"this user or filesystem cannot set the immutable flag: {error}")
    finally:
        os.close(fd)
    lock = REIMPORT_POSIX + textwrap.dedent("""\
        import fcntl, struct
        # empty: the size limit is 0
        posix.close(posix.open("locked", posix.O_CREAT | posix.O_WRONLY))
        for path in ("locked", "."):
            fcntl.ioctl(posix.open(path, posix.O_RDONLY), 0x40086602, struct.pack("i", 0x10))
        """)
    # Only the Python-level guard lets a completion do this; the cleanup must still cope.
    assert case.run([after_correct(lock)], unsafe_python_guard=True) == [
        {"passed": True, "result": "passed"}
    ]
    case.check()
