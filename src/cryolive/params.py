"""One description per job parameter: label, unit, allowed range, help and command-line flag, kept with the field.

A ``*Params`` dataclass declares a field with :func:`param` instead of a bare default::

    max_iter: int = param(12, ge=1, flag="--max-iter", label="Maximum iterations", help="...")

:func:`check_params` then refuses out-of-range values before any work, in one line that names the flag the user
typed (``--max-iter must be at least 1 (got 0)``), and :func:`param_spec` gives forms and argparse the same
label, unit, range and help. Fields declared with a bare default are not checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cryolive.io.errors import InputError


@dataclass(frozen=True)
class ParamSpec:
    """What a parameter is: ``label`` (form), ``unit`` (``'Å'``, ``'deg'``, ``'px'``...), ``help``, ``flag``
    (the CLI option), bounds ``ge`` / ``gt`` / ``le`` (inclusive / exclusive lower, inclusive upper) and
    ``choices``. ``None`` as a value is always allowed when the default is ``None`` (meaning "automatic")."""

    label: str = ""
    unit: str = ""
    help: str = ""
    flag: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None


def param(default: Any, *, label: str = "", unit: str = "", help: str = "", flag: str | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None,
          choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with default ``default`` that carries a :class:`ParamSpec`."""
    spec = ParamSpec(label, unit, help, flag, ge, gt, le, choices)
    return dataclasses.field(default=default, metadata={"param": spec})


def param_spec(cls_or_obj: Any) -> dict[str, ParamSpec]:
    """``{field name: ParamSpec}`` of the fields of a params dataclass declared with :func:`param`."""
    return {f.name: f.metadata["param"] for f in dataclasses.fields(cls_or_obj) if "param" in f.metadata}


def _bound_error(value: Any, s: ParamSpec) -> str | None:
    """What is wrong with ``value`` under ``s`` (None when it is allowed)."""
    if s.choices is not None:
        return None if value in s.choices else f"must be one of {', '.join(map(str, s.choices))}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value:  # NaN
        return "must be a number"
    unit = f" {s.unit}" if s.unit else ""
    if s.ge is not None and value < s.ge:
        return f"must be at least {s.ge:g}{unit}"
    if s.gt is not None and value <= s.gt:
        return f"must be more than {s.gt:g}{unit}"
    if s.le is not None and value > s.le:
        return f"must be at most {s.le:g}{unit}"
    return None


def check_params(p: Any) -> None:
    """Raise :class:`InputError` naming the flag (or field) of the first parameter of ``p`` outside its range."""
    for f in dataclasses.fields(p):
        s = f.metadata.get("param")
        if s is None:
            continue
        value = getattr(p, f.name)
        if value is None and f.default is None:
            continue
        problem = _bound_error(value, s)
        if problem:
            raise InputError(f"{s.flag or f.name} {problem} (got {value})")
