"""Counting host syncs: the ops that make the host wait for the device (ARCHITECTURE.md §8).

    with HostSyncs() as syncs:
        out = sampler.generate(ids, mask, max_new_tokens=32, block_length=8)
    syncs.count, syncs.per_step(out), syncs.by_op      # totals, per decode step, per op

One sync is one op call whose result the host must read from the device's data, or whose output
shape depends on it, counted once whatever the tensor's size. The counter sees them on CPU tensors
too, so a CPU test finds the syncs a GPU run would pay:
- `aten._local_scalar_dense`: `.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`;
- `Tensor.tolist()` and `Tensor.numpy()`, which read the data without dispatching an op (counted
  by wrapping them while the counter is active);
- `aten.nonzero` (`nonzero(as_tuple=True)`, `argwhere`), `aten.masked_select`,
  `aten.unique*`, `aten.bincount`, `aten.equal` (`torch.equal`);
- `aten.index.Tensor` and `aten.index_put(_)` with a bool index tensor (`t[mask]`,
  `t[mask] = v`): the number of selected elements is read from the device;
- `aten.repeat_interleave.Tensor` without `output_size`.

A copy to the host (`.cpu()`, `.to("cpu")`) is a sync on a GPU too, but on CPU tensors it is not
an op at all, so it is not counted here: the library's decode loop does not copy to the host.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .checks import check_bool

_ALWAYS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "bincount",
    "equal",
}
_BOOL_INDEX = {"index", "index_put", "index_put_", "_index_put_impl_"}
_LIBRARY = str(Path(__file__).resolve().parent)


def _is_sync(func, args, kwargs) -> bool:
    name = func._overloadpacket.__name__
    if name in _ALWAYS:
        return True
    if name in _BOOL_INDEX:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
            for index in indices
        )
    if name == "repeat_interleave" and isinstance(args[0], torch.Tensor):
        return func._overloadname.startswith("Tensor") and kwargs.get("output_size") is None
    return False


def _caller() -> str:
    """The innermost frame inside dllm_accel (other than this file): 'module.py:line function'."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_LIBRARY) and not frame.filename.endswith("syncs.py"):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "outside dllm_accel"


class HostSyncs(TorchDispatchMode):
    """A context manager counting host syncs (see the module docstring for what counts).

    count: the total; by_op: Counter of op names; by_site (with sites=True): Counter of the
    innermost dllm_accel line that asked for each sync, to find where a loop syncs."""

    def __init__(self, *, sites: bool = False):
        super().__init__()
        self.sites = check_bool(sites, "sites")
        self.count = 0
        self.by_op: Counter[str] = Counter()
        self.by_site: Counter[str] = Counter()
        self._saved: dict[str, object] = {}

    def _record(self, op: str) -> None:
        self.count += 1
        self.by_op[op] += 1
        if self.sites:
            self.by_site[_caller()] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self._record(func._overloadpacket.__name__)
        return func(*args, **kwargs)

    def __enter__(self):
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._saved[method] = original
            setattr(torch.Tensor, method, self._counting(method, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for method, original in self._saved.items():
                setattr(torch.Tensor, method, original)
            self._saved.clear()

    def _counting(self, method: str, original):
        def counted(tensor, *args, **kwargs):
            self._record(method)
            return original(tensor, *args, **kwargs)

        return counted

    def per_step(self, output) -> float:
        """Syncs per decode step of a GenerationOutput (its `steps`: the steps that ran a forward)
        counted while this counter was active; a step that needed no forward is not a step."""
        steps = getattr(output, "steps", None)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"output must be a GenerationOutput with steps >= 1, got steps={steps!r}"
            )
        return self.count / steps
