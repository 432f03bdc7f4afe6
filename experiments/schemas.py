"""Dataclass schemas of the config groups, made from the signatures of the classes they build.

Each file of conf/<group>/ starts with `defaults: [/schema/<group>@_here_: <Name>]`, so Hydra checks
it, and every override of it, against the target's parameters: a misspelt key or a value of the
wrong type is an error when the config is composed, before anything is loaded. (Under schema/, so
that they are not listed among a group's options.)
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object

from dllm_accel import POLICIES

# group -> {schema name: target}
TARGETS = {
    "model": {"model": "dllm_accel.load_model"},
    "task": {
        "arith": "dllm_accel.tasks.arith.Arith",
        "gsm8k": "dllm_accel.tasks.gsm8k.GSM8K",
        "humaneval": "dllm_accel.tasks.humaneval.HumanEval",
    },
    # the policy groups: the classes of dllm_accel.POLICIES (the one table of names)
    **{
        group: {
            policy.__name__: f"dllm_accel.{policy.__name__}"
            for policy in table.values()
            if policy is not None
        }
        for group, table in POLICIES.items()
    },
}
PLAIN_TYPES = (int, float, bool, str)


def schema(target: str) -> type:
    """A dataclass with `_target_` and one field per parameter of the callable `target` (typed where
    OmegaConf can check the annotation, Any elsewhere; required where the parameter has no
    default)."""
    function = get_object(target)
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    fields = [("_target_", str, dataclasses.field(default=target))]
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind = _checkable(hints.get(name, Any))
        default = "???" if parameter.default is parameter.empty else parameter.default
        if not isinstance(default, PLAIN_TYPES + (type(None),)):
            kind, default = Any, None
        fields.append((name, kind, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{target.rsplit('.', 1)[-1]}Schema", fields)


def _checkable(hint) -> Any:
    """int, float, bool, str, or Optional of one of them; anything else is Any."""
    if hint in PLAIN_TYPES:
        return hint
    args = typing.get_args(hint)
    if (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and type(None) in args
        and len(args) == 2
    ):
        inner = next(a for a in args if a is not type(None))
        # OmegaConf reads Optional, not X | None
        return typing.Optional[inner] if inner in PLAIN_TYPES else Any  # noqa: UP045
    return Any


def register() -> None:
    store = ConfigStore.instance()
    for group, targets in TARGETS.items():
        for name, target in targets.items():
            store.store(group=f"schema/{group}", name=name, node=schema(target))
