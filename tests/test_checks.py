"""dllm_accel.checks: what each check accepts and refuses, and that no module writes its own."""

import math
import re
from pathlib import Path

import pytest

from dllm_accel import checks
from dllm_accel.checks import check_bool, check_choice, check_int, check_number, require

ROOT = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), math.inf


def test_is_int_and_is_number_refuse_bools_and_non_finite_numbers():
    assert checks.is_int(0) and checks.is_int(-3) and checks.is_int(10**400)
    assert not any(checks.is_int(v) for v in (True, False, 1.0, "1", None))
    assert checks.is_number(0) and checks.is_number(-2.5) and checks.is_number(10**400)
    assert not any(checks.is_number(v) for v in (True, False, NAN, INF, -INF, "1", None))


def test_require_names_the_argument_the_allowed_values_and_the_value():
    require(True, "x", "anything", 1)
    with pytest.raises(ValueError, match=r"^x must be a colour, got 'cat'$"):
        require(False, "x", "a colour", "cat")


def test_check_bool():
    assert check_bool(True, "flag") is True and check_bool(False, "flag") is False
    with pytest.raises(ValueError, match=r"^flag must be True or False, got 1$"):
        check_bool(1, "flag")
    with pytest.raises(ValueError, match=r"^chat must be true \(instruct\) or false, got 'yes'$"):
        check_bool("yes", "chat", "true (instruct) or false")


@pytest.mark.parametrize(
    "value, minimum, kwargs",
    [
        (0, None, {}),
        (-5, None, {}),
        (1, 1, {}),
        (7, 0, {}),
        (None, 1, {"optional": True}),
        (None, 1, {"optional": "every sample"}),
    ],
)
def test_check_int_accepts(value, minimum, kwargs):
    assert check_int(value, "n", minimum, **kwargs) is value


@pytest.mark.parametrize(
    "value, minimum, kwargs, message",
    [
        (True, None, {}, r"n must be an integer, got True"),
        (1.0, None, {}, r"n must be an integer, got 1.0"),
        ("3", None, {}, r"n must be an integer, got '3'"),
        (None, None, {}, r"n must be an integer, got None"),
        (0, 1, {}, r"n must be an integer >= 1, got 0"),
        (False, 0, {}, r"n must be an integer >= 0, got False"),
        (0, 1, {"optional": True}, r"n must be None or an integer >= 1, got 0"),
        (0, 1, {"optional": "all"}, r"n must be None \(all\) or an integer >= 1, got 0"),
        (
            0,
            1,
            {"optional": True, "note": "cpu"},
            r"n must be None or an integer >= 1 \(cpu\), got 0",
        ),
    ],
)
def test_check_int_refuses(value, minimum, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int(value, "n", minimum, **kwargs)


@pytest.mark.parametrize(
    "value, bounds",
    [
        (0, {}),
        (-1e300, {}),
        (0, {"low": 0}),
        (0.5, {"low": 0, "high": 1, "open_low": True}),
        (1, {"low": 0, "high": 1, "open_low": True}),
        (1e-9, {"low": 0, "open_low": True}),
        (-2, {"high": -2}),
        (None, {"low": 0, "optional": True}),
    ],
)
def test_check_number_accepts(value, bounds):
    assert check_number(value, "x", **bounds) is value


@pytest.mark.parametrize(
    "value, bounds, message",
    [
        (NAN, {}, r"x must be a finite number, got nan"),
        (INF, {"low": 0}, r"x must be a finite number >= 0, got inf"),
        (-INF, {"high": 0}, r"x must be a finite number <= 0, got -inf"),
        (True, {"low": 0}, r"x must be a finite number >= 0, got True"),
        ("1", {}, r"x must be a finite number, got '1'"),
        (None, {"low": 0}, r"x must be a finite number >= 0, got None"),
        (-0.5, {"low": 0}, r"x must be a finite number >= 0, got -0.5"),
        (0, {"low": 0, "open_low": True}, r"x must be a finite number > 0, got 0"),
        (0, {"high": 0, "open_high": True}, r"x must be a finite number < 0, got 0"),
        (0.0, {"low": 0, "high": 1, "open_low": True}, r"x must be in \(0, 1\], got 0.0"),
        (1, {"low": 0, "high": 1, "open_high": True}, r"x must be in \[0, 1\), got 1"),
        (NAN, {"low": 0, "high": 1}, r"x must be in \[0, 1\], got nan"),
        (
            2,
            {"low": 0, "high": 1, "open_low": True, "optional": True},
            r"x must be None or in \(0, 1\], got 2",
        ),
        (
            -1,
            {"low": 0, "note": "0: never"},
            r"x must be a finite number >= 0 \(0: never\), got -1",
        ),
    ],
)
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number(value, "x", **bounds)


def test_check_choice():
    assert check_choice("keys", "axis", ("keys", "heads")) == "keys"
    with pytest.raises(ValueError, match=r"^axis must be one of \('keys', 'heads'\), got 'rows'$"):
        check_choice("rows", "axis", ("keys", "heads"))
    with pytest.raises(ValueError, match=r"^axis must be one of \{'keys'\}, got \['keys'\]$"):
        check_choice(["keys"], "axis", {"keys"})  # unhashable: refused, not a TypeError


# `isinstance(x, bool) or not isinstance(x, int)` and its variants, written out by hand
HAND_WRITTEN = re.compile(
    r"isinstance\([^()]*,\s*bool\)\s+or\s+not\s+isinstance\(|"
    r"not\s+isinstance\([^()]*,\s*int\)\s+or\s+isinstance\([^()]*,\s*bool\)"
)


def test_no_module_writes_its_own_integer_check():
    files = [
        path
        for folder in ("dllm_accel", "experiments")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    assert len(files) > 20, "the source folders were not found"
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        if path.name != "checks.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if HAND_WRITTEN.search(line)
    ]
    assert not found, f"write these with dllm_accel.checks (check_int, is_int, ...): {found}"


def test_the_source_pattern_finds_what_it_is_meant_to():
    assert HAND_WRITTEN.search("if isinstance(seed, bool) or not isinstance(seed, int):")
    assert HAND_WRITTEN.search("if isinstance(v, bool) or not isinstance(v, (str, int)):")
    assert HAND_WRITTEN.search("if not isinstance(n, int) or isinstance(n, bool) or n <= 0:")
    assert not HAND_WRITTEN.search("check_int(seed, 'seed')")
