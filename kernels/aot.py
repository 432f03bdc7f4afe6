"""Ahead-of-time compilation of every kernel configuration the launchers choose, for sm_80 and
sm_90, on a machine without a GPU (Triton's bundled ptxas and cuobjdump).

    records = compile_report("aot.json")          # runs `python -m dllm_accel.kernels.aot` apart
    python -m dllm_accel.kernels.aot --json aot.json [--quick] [--verbose]

Configurations are not listed by hand: each launcher is called with small CPU tensors of every
supported shape (the released configs' heads, head dims and vocabularies, the bundled tiny models,
the tests' tiny models and head dim 64), dtype (fp32, fp16, bf16) and option (key mask, mass
weights, axis, layer inputs, rope table dtype, query-row and key counts that reach each tile size),
with its kernels replaced by spies that record the launch instead of running it. Each recorded
launch goes through Triton's own binder, so the signature, the constexprs and the specialisation
(pointer alignment, integers equal to 1 or divisible by 16) are those a real launch with contiguous
tensors would compile; identical compiles are done once. Each compile is cached by Triton
(TRITON_CACHE_DIR, default ~/.triton/cache), so a rerun only reads the cubins.

A record per (kernel, target, compile): registers, spill-store bytes and stack frame per thread
(from cuobjdump), the dynamic shared memory Triton launches with and the target's limit per block,
and whether an 8B-shape 16-bit case uses it.

Triton's interpreter (TRITON_INTERPRET=1, as the tests set it) replaces @triton.jit functions by
interpreted ones that cannot be compiled, so compile_report runs the compiles in a child process
without it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

# usable shared memory per block (opt-in maximum): sm_80 163 KiB, sm_90 227 KiB
TARGETS = {"sm_80": (80, 166912), "sm_90": (90, 232448)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LARGE_HEAD_DIM = 128  # the released 7B/8B models' head dim: their shapes are the "8B shapes"
MAX_QUERY_ROWS = 64  # query rows per call searched for partial_attention's row tiles
MAX_KEYS = 4096  # key counts searched for attention_drift's key tiles


@dataclass(frozen=True)
class Shape:
    """The heads and sizes one model gives every kernel."""

    name: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab: int

    @property
    def large(self) -> bool:
        return self.head_dim == LARGE_HEAD_DIM and self.d_model >= 2048


@dataclass
class Launch:
    """One kernel launch a launcher asked for, with what it was asked for."""

    kernel: str
    fn: object
    args: tuple
    kwargs: dict
    dtype: str
    case: str
    large: bool


@dataclass
class Record:
    kernel: str
    target: str
    dtype: str
    config: dict
    num_warps: int
    num_stages: int
    regs: int
    spill_bytes: int
    stack: int
    shared: int
    shared_limit: int
    large_16bit: bool
    cases: list = field(default_factory=list)
    driver_regs: int | None = None  # read back by the CUDA driver where the target is this GPU's
    driver_spills: int | None = None


def model_shapes() -> list[Shape]:
    """The released models' shapes (their bundled configs), the bundled tiny models', the tests'
    tiny models' (tiny_config's defaults, with and without GQA) and a head dim of 64."""
    from importlib import resources

    from dllm_accel.models.tiny import RELEASED, released_config, tiny_config

    configs = [(kind, kind, released_config(kind)) for kind in RELEASED]
    for name in ("tiny-llada", "tiny-dream"):
        text = resources.files("dllm_accel.assets").joinpath(name, "config.json").read_text()
        config = json.loads(text)
        configs.append((name, config["model_type"], config))
    configs += [
        ("tiny-tests", "llada", tiny_config("llada")),
        ("tiny-tests-gqa", "Dream", tiny_config("Dream", n_kv_heads=2)),
    ]
    shapes = [_shape(name, kind, config) for name, kind, config in configs]
    shapes += [
        Shape("head-dim-64", 16, 16, 64, 1024, 32000),
        Shape("head-dim-64-gqa", 16, 4, 64, 1024, 32000),
    ]
    # one shape per distinct (heads, kv heads, head dim, d_model, vocab)
    unique = {}
    for shape in shapes:
        key = (shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.d_model, shape.vocab)
        unique.setdefault(key, shape)
    return list(unique.values())


def _shape(name: str, model_type: str, config: dict) -> Shape:
    """A config.json's heads and sizes, under its model type's field names."""
    from dllm_accel.models.tiny import _FIELDS

    names = _FIELDS[model_type]
    n_heads, d_model = config[names["n_heads"]], config[names["d_model"]]
    n_kv = config.get(names["n_kv_heads"]) or n_heads
    return Shape(name, n_heads, n_kv, d_model // n_heads, d_model, config[names["vocab"][0]])


class _Spy:
    def __init__(self, name, fn, record):
        self.name, self.fn, self.record = name, fn, record

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.record(self.name, self.fn, args, kwargs)

        return launch


@contextlib.contextmanager
def _spying(module, names, sink: list, **labels):
    """Replace the module's kernels by spies that append a Launch to `sink` instead of running."""
    saved = {name: getattr(module, name) for name in names}

    def record(name, fn, args, kwargs):
        sink.append(Launch(name, fn, args, kwargs, **labels))

    try:
        for name, fn in saved.items():
            setattr(module, name, _Spy(name, fn, record))
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


def _kernels(name: str):
    return importlib.import_module(f"dllm_accel.kernels.{name}")


def _labels(shape: Shape, dtype: str, **options) -> dict:
    text = ",".join(f"{key}={value}" for key, value in options.items())
    return dict(dtype=dtype, case=f"{shape.name}:{dtype}:{text}", large=shape.large)


def cases(*, quick: bool = False) -> list[tuple[Shape, str]]:
    """(shape, dtype name) pairs to compile: every shape in every dtype, or (quick) LLaDA-8B's and
    Dream-7B's shapes in fp16 and bf16 and the bundled tiny model's in all three dtypes."""
    shapes = model_shapes()
    if not quick:
        return [(shape, dtype) for shape in shapes for dtype in DTYPES]
    chosen = []
    for shape in shapes:
        if shape.name in ("llada", "Dream"):
            chosen += [(shape, "fp16"), (shape, "bf16")]
        elif shape.name == "tiny-llada":
            chosen += [(shape, dtype) for dtype in DTYPES]
    return chosen


def launches(chosen: list[tuple[Shape, str]] | None = None) -> list[Launch]:
    """Every launch the four launchers make over the given shapes, dtypes and all options."""
    found: list[Launch] = []
    for shape, dtype_name in cases() if chosen is None else chosen:
        dtype = DTYPES[dtype_name]
        _partial_attention(shape, dtype_name, dtype, found)
        _attention_drift(shape, dtype_name, dtype, found)
        _rope_write(shape, dtype_name, dtype, found)
        _score_tokens(shape, dtype_name, dtype, found)
    return found


def _partial_attention(shape, dtype_name, dtype, sink):
    module = _kernels("partial_attention")
    group = shape.n_heads // shape.n_kv_heads
    length = 64
    # per tile configuration _config picks for 1..MAX_QUERY_ROWS query rows, the most rows it serves
    chosen = {}
    for n in range(1, MAX_QUERY_ROWS + 1):
        chosen[repr(module._config(group * n, shape.head_dim, dtype))] = n
    for n in chosen.values():
        q = torch.zeros(1, shape.n_heads, n, shape.head_dim, dtype=dtype)
        k = torch.zeros(1, shape.n_kv_heads, length, shape.head_dim, dtype=dtype)
        for masked in (False, True):
            key_mask = torch.ones(1, length, dtype=torch.bool) if masked else None
            for mass in (False, True):
                weights = torch.ones(1, n) if mass else None
                labels = _labels(shape, dtype_name, group=group, n=n, mask=masked, mass=mass)
                with _spying(module, ("_attention_fwd", "_attention_mass"), sink, **labels):
                    module.partial_attention(q, k, k, key_mask, mass_weights=weights)


def _attention_drift(shape, dtype_name, dtype, sink):
    module = _kernels("attention_drift")
    d = shape.head_dim
    # per key tile _blocks picks for 16, 32, ... MAX_KEYS keys, the fewest keys that reach it
    chosen, length = {}, 16
    while length <= MAX_KEYS:
        chosen.setdefault(module._blocks(d, length), length)
        length *= 2
    for length in chosen.values():
        for tracked in (2,):
            q = torch.zeros(1, shape.n_heads, tracked, d, dtype=dtype)
            k = torch.zeros(1, shape.n_kv_heads, length, d, dtype=dtype)
            written = torch.zeros(1, 1, dtype=torch.long)
            before = torch.zeros(1, shape.n_kv_heads, 1, d, dtype=dtype)
            for masked in (False, True):
                key_mask = torch.ones(1, length, dtype=torch.bool) if masked else None
                for axis in ("keys", "heads"):
                    labels = _labels(shape, dtype_name, T=length, m=tracked, mask=masked, axis=axis)
                    with _spying(module, ("_head_kernel", "_key_tile_kernel"), sink, **labels):
                        module.attention_drift(q, q, k, key_mask, written, before, axis=axis)


def _rope_write(shape, dtype_name, dtype, sink):
    module = _kernels("rope_write")
    from dllm_accel.models.base import Rope

    d, n, length = shape.head_dim, 4, 16
    q = torch.zeros(1, shape.n_heads, n, d, dtype=dtype)
    k = torch.zeros(1, shape.n_kv_heads, n, d, dtype=dtype)
    keys = torch.zeros(1, shape.n_kv_heads, length, d, dtype=dtype)
    rows = torch.zeros(1, dtype=torch.long)
    index = torch.arange(n).unsqueeze(0)
    for table_dtype in {dtype, torch.float32}:
        table = torch.zeros(1, 1, n, d, dtype=table_dtype)
        for inputs in (False, True):
            extra = {}
            if inputs:
                extra = dict(
                    inputs=torch.zeros(1, length, shape.d_model, dtype=dtype),
                    hidden=torch.zeros(1, n, shape.d_model, dtype=dtype),
                )
            tables = str(table_dtype).removeprefix("torch.")
            labels = _labels(shape, dtype_name, tables=tables, inputs=inputs)
            with _spying(module, ("_rope_write_kernel",), sink, **labels):
                module.rope_write(q, k, k, Rope(table, table), keys, keys, rows, index, **extra)


def _score_tokens(shape, dtype_name, dtype, sink):
    module = _kernels("score_tokens")
    logits = torch.zeros(2, shape.vocab, dtype=dtype)
    for exclude in (None, shape.vocab - 1):
        labels = _labels(shape, dtype_name, vocab=shape.vocab, exclude=exclude is not None)
        with _spying(module, ("_score_tokens_kernel",), sink, **labels):
            module.score_tokens(logits, exclude=exclude)


# -- compiling -------------------------------------------------------------------------------------
def unavailable() -> str | None:
    """Why nothing can be compiled here (None when Triton's NVIDIA backend and its tools are)."""
    try:
        from triton import knobs
        from triton.backends import backends
    except ImportError as error:
        return f"triton does not import ({error})"
    if "nvidia" not in backends:
        return "Triton has no NVIDIA backend"
    for tool in ("ptxas", "cuobjdump"):
        try:
            path = getattr(knobs.nvidia, tool).path
        except (AttributeError, RuntimeError) as error:
            return f"Triton's {tool} is not found ({error})"
        if not path or not os.access(path, os.X_OK):
            return f"Triton's {tool} is not executable ({path})"
    return None


def _bind(launch: Launch, backend):
    """(signature, constexprs, attrs, options) as JITFunction.run derives them for this launch."""
    from triton.runtime.jit import JITFunction, create_function_from_signature

    fn = launch.fn
    if not isinstance(fn, JITFunction):
        raise RuntimeError(
            f"{launch.kernel} is {type(fn).__name__}, not a JITFunction: compile in a process "
            "without TRITON_INTERPRET=1 (compile_report does)"
        )
    kwargs = dict(launch.kwargs, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    return signature, constexprs, attrs, options


def _resources(cubin: bytes, kernel: str) -> tuple[int, int, int]:
    """(registers, spill-store bytes, stack frame bytes) per thread of the cubin's kernel, from
    cuobjdump: the spill bytes add up the widths of the local stores (STL) in its SASS, as ptxas -v
    counts "bytes spill stores" (these kernels keep no arrays in local memory)."""
    import tempfile

    from triton import knobs

    tool = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()

        def dump(flag: str) -> str:
            command = [tool, flag, file.name]
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout

        usage = dump("--dump-resource-usage")
        found = re.search(rf"Function {kernel}:\s*REG:(\d+) STACK:(\d+)", usage)
        if found is None:
            raise RuntimeError(f"cuobjdump gave no resource usage for {kernel}:\n{usage}")
        # a spill needs a stack frame: read the SASS only where there is one
        sass = dump("--dump-sass") if int(found[2]) else ""
    stores = re.findall(r"\bSTL(?:\.(\d+|U?8|U?16))?\s", sass)
    widths = {"": 32, "64": 64, "128": 128, "8": 8, "U8": 8, "16": 16, "U16": 16}
    return int(found[1]), sum(widths[width] for width in stores) // 8, int(found[2])


def _config_of(constexprs: dict, names: list) -> dict:
    """The constexprs by name (dtypes as their names), with the integers Triton specialised to 1."""
    config = {}
    for path, value in constexprs.items():
        name = names[path[0]]
        config[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return {key: config[key] for key in sorted(config)}


def compile_launches(
    found: list[Launch], targets=tuple(TARGETS), *, shard=(0, 1), log=None
) -> list[Record]:
    """Compile each distinct launch once per target -> one Record each; shard (i, n): only the
    distinct compiles numbered i mod n (n processes share the work)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    records: dict[tuple, Record] = {}
    distinct: dict[tuple, int] = {}
    native_capability = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        native_capability = 10 * major + minor
    for target_name in targets:
        capability, limit = TARGETS[target_name]
        target = GPUTarget("cuda", capability, 32)
        backend = make_backend(target)
        for launch in found:
            signature, constexprs, attrs, options = _bind(launch, backend)
            key = (
                target_name,
                launch.kernel,
                repr(sorted(signature.items())),
                repr(sorted(constexprs.items())),
                repr(sorted(attrs.items())),
                options.num_warps,
                options.num_stages,
            )
            if distinct.setdefault(key, len(distinct)) % shard[1] != shard[0]:
                continue
            record = records.get(key)
            if record is None:
                started = time.perf_counter()
                try:
                    compiled = triton.compile(
                        ASTSource(launch.fn, signature, constexprs, attrs),
                        target=target,
                        options=options.__dict__,
                    )
                except Exception as error:  # a compile error names the configuration
                    raise RuntimeError(
                        f"{launch.kernel} ({launch.case}) does not compile for {target_name}: "
                        f"{error}"
                    ) from error
                regs, spills, stack = _resources(compiled.asm["cubin"], compiled.metadata.name)
                native = {}
                if capability == native_capability:  # on this GPU: the driver's own reading
                    compiled._init_handles()
                    native = dict(driver_regs=compiled.n_regs, driver_spills=compiled.n_spills)
                record = records[key] = Record(
                    kernel=launch.kernel,
                    target=target_name,
                    dtype=launch.dtype,
                    config=_config_of(constexprs, launch.fn.arg_names),
                    num_warps=options.num_warps,
                    num_stages=options.num_stages,
                    regs=regs,
                    spill_bytes=spills,
                    stack=stack,
                    shared=compiled.metadata.shared,
                    shared_limit=limit,
                    large_16bit=False,
                    **native,
                )
                if log is not None:
                    elapsed = time.perf_counter() - started
                    print(f"{len(records):5d} {target_name} {launch.case} {elapsed:.2f}s", file=log)
            record.large_16bit |= launch.large and launch.dtype != "fp32"
            record.cases.append(launch.case)
    return list(records.values())


def problems(records: list[dict], *, any_spill: bool) -> list[str]:
    """What fails the AOT test (records as compile_report returns them): shared memory over the
    target's limit, and spills in a compile an 8B-shape 16-bit case uses (anywhere, with
    any_spill)."""
    found = []
    for record in records:
        where = f"{record['kernel']} {record['target']} {record['dtype']} {record['config']}"
        if record["shared"] > record["shared_limit"]:
            found.append(f"{where}: shared {record['shared']} > {record['shared_limit']}")
        if record["spill_bytes"] and (any_spill or record["large_16bit"]):
            found.append(f"{where}: {record['spill_bytes']} bytes spilled per thread")
    return found


def compile_report(path, *, quick: bool = False, jobs: int | None = None, timeout=3600):
    """Compile in `jobs` child processes without Triton's interpreter (default: one per CPU, at
    most 8), write the records to `path` (JSON) and return them."""
    jobs = jobs or min(8, os.cpu_count() or 1)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    # the children import this very package, wherever it was imported from
    package = importlib.import_module("dllm_accel").__file__
    root = os.path.dirname(os.path.dirname(os.path.abspath(package)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    started = time.perf_counter()
    children = []
    for index in range(jobs):
        part = f"{path}.{index}"
        command = [sys.executable, "-m", "dllm_accel.kernels.aot", "--json", part]
        command += ["--shard", f"{index}/{jobs}"] + (["--quick"] if quick else [])
        children.append(
            (
                part,
                command,
                subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    records, summary = [], {}
    for part, command, child in children:
        _, stderr = child.communicate(timeout=timeout)
        if child.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-4000:]}")
        with open(part) as file:
            written = json.load(file)
        os.remove(part)
        records += written["records"]
        summary = written["summary"]
    summary.update(
        compiles=len(records), jobs=jobs, seconds=round(time.perf_counter() - started, 1)
    )
    with open(path, "w") as file:
        json.dump(dict(summary=summary, records=records), file, indent=1)
    return records


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the records")
    parser.add_argument("--quick", action="store_true", help="the quick selection of cases()")
    parser.add_argument("--shard", default="0/1", help="i/n: this process's share of the compiles")
    parser.add_argument("--verbose", action="store_true", help="one line per compile on stderr")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason:
        sys.exit(f"cannot compile ahead of time: {reason}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    index, count = (int(part) for part in args.shard.split("/"))
    started = time.perf_counter()
    found = launches(cases(quick=args.quick))
    records = compile_launches(
        found, shard=(index, count), log=sys.stderr if args.verbose else None
    )
    summary = dict(
        launches=len(found),
        compiles=len(records),
        seconds=round(time.perf_counter() - started, 1),
        triton=importlib.import_module("triton").__version__,
        ptxas=importlib.import_module("triton").knobs.nvidia.ptxas.path,
    )
    with open(args.json, "w") as file:
        json.dump(dict(summary=summary, records=[asdict(r) for r in records]), file, indent=1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
