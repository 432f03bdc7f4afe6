"""Argument checks shared by the policies, the tasks and the front ends.

Every refusal reads "<name> must be <allowed>, got <value!r>" and is a ValueError. A bool is never
an integer or a number here (Python's True is an int; a caller's never is), and a number is finite.
"""

from __future__ import annotations

import math
from collections.abc import Collection


def is_int(value) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float that is not a bool."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value)


def require(ok: bool, name: str, allowed: str, value) -> None:
    """Raises ValueError("<name> must be <allowed>, got <value!r>") unless `ok`."""
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_bool(value, name: str, allowed: str = "True or False") -> bool:
    """`value` if it is True or False; `allowed` may say what each means."""
    require(isinstance(value, bool), name, allowed, value)
    return value


def check_int(
    value,
    name: str,
    minimum: int | None = None,
    *,
    optional: bool | str = False,
    note: str | None = None,
) -> int | None:
    """`value` if it is an integer (>= `minimum` when given). `optional`: None is allowed too (a
    string says what None means); `note` is added in parentheses after the allowed values."""
    allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
    ok = is_int(value) and (minimum is None or value >= minimum)
    return _check(ok, value, name, allowed, optional, note)


def check_number(
    value,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool | str = False,
    note: str | None = None,
) -> float | None:
    """`value` if it is a finite number between `low` and `high` (each included unless open_low /
    open_high says otherwise, each unbounded when None). `optional` and `note` as in check_int."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    return _check(ok, value, name, _range(low, high, open_low, open_high), optional, note)


def check_choice(value, name: str, choices: Collection):
    """`value` if it is one of `choices`."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value and a set or dict of choices
        ok = False
    require(ok, name, f"one of {choices}", value)
    return value


def _range(low, high, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"a finite number {'>' if open_low else '>='} {low}"
    if high is not None:
        return f"a finite number {'<' if open_high else '<='} {high}"
    return "a finite number"


def _check(ok: bool, value, name: str, allowed: str, optional: bool | str, note: str | None):
    if optional is True:
        allowed = f"None or {allowed}"
    elif optional:
        allowed = f"None ({optional}) or {allowed}"
    if note:
        allowed = f"{allowed} ({note})"
    require(ok or (bool(optional) and value is None), name, allowed, value)
    return value
