"""One description per job parameter: label, unit, allowed range, help and command-line flag, kept with the field.

A ``*Params`` dataclass declares a field with :func:`param` instead of a bare default::

    max_iter: int = param(12, ge=1, flag="--max-iter", label="Maximum iterations", help="...")

:func:`check_params` then refuses out-of-range values before any work, in one line that names the flag the user
typed (``--max-iter must be at least 1 (got 0)``), and :func:`param_spec` gives forms and argparse the same
label, unit, range and help. :func:`add_arguments` adds a subcommand's ``--flag`` options from the spec (type,
default, choices, help with the unit, range and default) and :func:`params_from_args` reads them back into the
params. Fields declared with a bare default are not checked and get no option.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection, Mapping
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



def flag_dest(flag: str) -> str:
    """The attribute argparse stores the option ``flag`` under (``--max-iter`` -> ``max_iter``)."""
    return flag.lstrip("-").replace("-", "_")


def _value_type(cls: type, f: dataclasses.Field, s: ParamSpec) -> type:
    """The type of a field's values: its choices', its default's, else its annotation's (``int | None`` -> int)."""
    if s.choices:
        return type(s.choices[0])
    if f.default is not None:
        return type(f.default)
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]


def _range_text(s: ParamSpec) -> str:
    unit = f" {s.unit}" if s.unit else ""
    bounds = [f"{word} {bound:g}{unit}" for word, bound in (("at least", s.ge), ("more than", s.gt), ("at most", s.le))
              if bound is not None]
    return ", ".join(bounds)


def help_text(s: ParamSpec, default: Any, name: str = "") -> str:
    """The ``--help`` line of a parameter: its help (else its label), then its range and default with the unit,
    e.g. ``maximum iterations [at least 1; default 12]``. A None default is not shown: the help tells what it
    means."""
    tail = [_range_text(s)] if _range_text(s) else []
    if default is not None and not isinstance(default, bool):
        shown = f"{default:g}" if isinstance(default, int | float) else str(default)
        unit = f" {s.unit}" if s.unit and isinstance(default, int | float) else ""
        tail.append(f"default {shown}{unit}")
    label = s.label if s.label[:2].isupper() else s.label[:1].lower() + s.label[1:]  # "SNR" stays
    text = s.help or label or name.replace("_", " ")
    return f"{text} [{'; '.join(tail)}]" if tail else text


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, only: Collection[str] | None = None,
                  exclude: Collection[str] = (), override: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Add to ``parser`` one option per field of the params dataclass ``cls`` whose spec has a ``flag``: the flag,
    the field's type (``int``/``float``/``str``; a bool is a switch), its default, its ``choices`` and a help line
    from :func:`help_text`. Ranges are not checked here but by :func:`check_params`, which names the flag.

    ``only`` / ``exclude``: field names to add / leave out (``only`` keeps the declaration order);
    ``override``: per field name, argparse keywords that replace the spec's (a ``default=None`` where the command
    requires the option unless ``--continue``, a stricter ``type``...). Returns the field names added; the values
    parsed come back with :func:`params_from_args`.
    """
    specs = param_spec(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(only or ()).union(exclude, override or {}) - {n for n, s in specs.items() if s.flag})
    if unknown:
        raise ValueError(f"{cls.__name__} has no field with a flag named {', '.join(unknown)}")
    names = [n for n, s in specs.items() if s.flag and (only is None or n in only) and n not in exclude]
    for name in names:
        s, f = specs[name], fields[name]
        kwargs: dict[str, Any] = {"default": f.default}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_true" if not f.default else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _value_type(cls, f, s)
            if s.choices is not None:
                kwargs["choices"] = s.choices
        kwargs.update((override or {}).get(name, {}))
        if "help" not in kwargs:  # after the override: it may change the default
            kwargs["help"] = help_text(s, kwargs["default"], name).replace("%", "%%")
        parser.add_argument(s.flag, dest=flag_dest(s.flag), **kwargs)
    return names


def params_from_args(cls: type, namespace: argparse.Namespace, **values: Any) -> Any:
    """The params ``cls`` with the options :func:`add_arguments` added (those in ``namespace``, found by their
    flag), ``values`` (fields without a flag, or set otherwise) and the defaults for the rest. Not checked: see
    :func:`check_params`."""
    parsed = {name: getattr(namespace, flag_dest(s.flag)) for name, s in param_spec(cls).items()
              if s.flag and hasattr(namespace, flag_dest(s.flag))}
    return cls(**{**parsed, **values})
