"""Parameter forms built from a ``*Params`` dataclass's :func:`cryolive.params.param_spec` with magicgui.

Each field declared with :func:`cryolive.params.param` becomes one magicgui widget: a ComboBox for ``choices``,
a CheckBox for a bool, a SpinBox / FloatSpinBox bounded by ``ge`` / ``gt`` / ``le`` for numbers, labelled with the
spec's label, its unit as the suffix and its help (or its command-line flag) as the tooltip. A field whose default
is ``None`` ("automatic") gets one more value below its range that reads "auto" and means None. Fields without a
spec are not shown and keep the value of the params the form was last given, so reading a form back never loses
a setting it does not show.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox, Widget

from cryolive.params import ParamSpec, param_spec

#: the upper end of a spin box whose spec has no upper bound
UNBOUNDED = 1e6
AUTO_TEXT = "auto"


def _number_type(cls: type, name: str, default: Any) -> type:
    """``int`` or ``float`` for a numeric field (from its annotation when the default is None)."""
    if default is not None:
        return type(default)
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]


def _lower(spec: ParamSpec, kind: type) -> float:
    """The smallest value a spin box allows for ``spec`` (0 when the spec has no lower bound)."""
    if spec.ge is not None:
        return spec.ge
    if spec.gt is not None:
        return spec.gt + 1 if kind is int else spec.gt + 0.01
    return -UNBOUNDED


def _tooltip(name: str, spec: ParamSpec) -> str:
    tip = spec.help or spec.label or name
    return f"{tip} ({spec.flag})" if spec.flag else tip


def field_widget(cls: type, field: dataclasses.Field, spec: ParamSpec) -> tuple[Widget, float | None]:
    """One magicgui widget for ``field`` of the params dataclass ``cls``, described by ``spec``, and the value
    that means None ("auto"; None when the field cannot be None)."""
    default = field.default
    common = {"name": field.name, "label": spec.label or field.name.replace("_", " "),
              "tooltip": _tooltip(field.name, spec)}
    if spec.choices is not None:
        return ComboBox(value=default, choices=list(spec.choices), **common), None
    if isinstance(default, bool):
        return CheckBox(value=default, **common), None
    kind = _number_type(cls, field.name, default)
    low = _lower(spec, kind)
    high = spec.le if spec.le is not None else UNBOUNDED
    step = 1 if kind is int else 0.1
    auto = None
    if default is None:  # one step below the range reads "auto" and means None
        auto = spec.gt if spec.gt is not None else low - step
        low = auto
    widget_cls = SpinBox if kind is int else FloatSpinBox
    w = widget_cls(value=low if default is None else default, min=low, max=high, step=step, **common)
    native = w.native
    if spec.unit:
        native.setSuffix(" °" if spec.unit == "deg" else f" {spec.unit}")
    if auto is not None:
        native.setSpecialValueText(AUTO_TEXT)
    return w, auto


class ParamForm:
    """A magicgui :class:`~magicgui.widgets.Container` of the spec'd fields of the params dataclass ``cls``.

    ``fields``: the field names to show, in order (default: every field with a spec, in declaration order).
    :meth:`value` gives the params; :meth:`set_value` shows one.
    """

    def __init__(self, cls: type, fields: Sequence[str] | None = None, base: Any = None) -> None:
        self.cls = cls
        specs = param_spec(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields) if fields is not None else list(specs)
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ValueError(f"{cls.__name__} has no field with a spec named {', '.join(unknown)}")
        made = {n: field_widget(cls, by_name[n], specs[n]) for n in names}
        self.widgets: dict[str, Widget] = {n: w for n, (w, _) in made.items()}
        self._auto: dict[str, float | None] = {n: auto for n, (_, auto) in made.items()}
        self.container = Container(widgets=list(self.widgets.values()), labels=True)
        self._base = base if base is not None else cls()
        self.set_value(self._base)

    @property
    def native(self) -> Any:
        """The Qt widget to put in a layout."""
        return self.container.native

    def values(self) -> dict[str, Any]:
        """The shown fields' values (None where a field reads "auto")."""
        out = {}
        for name, w in self.widgets.items():
            auto = self._auto[name]
            out[name] = None if auto is not None and w.value <= auto else w.value
        return out

    def value(self, base: Any = None) -> Any:
        """A params object: ``base`` (default: the params last given to :meth:`set_value`) with the form's values."""
        return dataclasses.replace(base if base is not None else self._base, **self.values())

    def set_value(self, params: Any) -> None:
        """Show ``params`` (fields not in the form are kept for :meth:`value`)."""
        self._base = params
        for name, w in self.widgets.items():
            v = getattr(params, name)
            auto = self._auto[name]
            w.value = auto if v is None and auto is not None else v
            line = w.native.lineEdit() if hasattr(w.native, "lineEdit") else None
            if line is not None:
                line.deselect()  # Qt selects a spin box's text when its value is set
