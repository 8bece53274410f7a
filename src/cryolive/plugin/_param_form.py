"""Parameter forms built from a ``*Params`` dataclass's :func:`cryolive.params.param_spec` with magicgui.

Each field declared with :func:`cryolive.params.param` becomes one magicgui widget: a ComboBox for ``choices``,
a CheckBox for a bool, a FloatSpinBox bounded by ``ge`` / ``gt`` / ``le`` for numbers (without decimals for an
``int`` field, whose value is read back as an ``int``: magicgui's SpinBox has neither a suffix nor a special-value
text), labelled with the spec's label, its unit as the suffix and its help (or its command-line flag) as the
tooltip. A float field shows as many decimals as its default or the value given needs (at least 2, at most
:data:`MAX_DECIMALS`), so reading a form back gives the value it was given. A field whose default
is ``None`` ("automatic") gets one more value below its range that reads "auto" and means None. Fields without a
spec are not shown and keep the value of the params the form was last given, so reading a form back never loses
a setting it does not show.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Widget
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QLabel

from cryolive.params import ParamSpec, param_spec

#: the upper end of a spin box whose spec has no upper bound
UNBOUNDED = 1e6
AUTO_TEXT = "auto"
#: the most decimals a float field shows
MAX_DECIMALS = 6


def decimals_for(value: float, least: int = 2) -> int:
    """The fewest decimals (``least`` … :data:`MAX_DECIMALS`) that show ``value`` exactly (to 1e-9)."""
    for d in range(least, MAX_DECIMALS):
        if abs(round(value, d) - value) < 1e-9:
            return d
    return MAX_DECIMALS


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


def field_widget(cls: type, field: dataclasses.Field, spec: ParamSpec,
                 choice_texts: Sequence[tuple[str, Any]] | None = None) -> tuple[Widget, float | None]:
    """One magicgui widget for ``field`` of the params dataclass ``cls``, described by ``spec``, and the value
    that means None ("auto"; None when the field cannot be None). ``choice_texts``: ``(text, value)`` pairs a
    choice field's list shows instead of its values."""
    default = field.default
    common = {"name": field.name, "label": spec.label or field.name.replace("_", " "),
              "tooltip": _tooltip(field.name, spec)}
    if spec.choices is not None:
        choices: list[Any] = list(spec.choices)
        if choice_texts is not None:
            if sorted(map(str, (v for _, v in choice_texts))) != sorted(map(str, spec.choices)):
                raise ValueError(f"{field.name}: the texts must name each of {spec.choices} once")
            choices = [tuple(c) for c in choice_texts]
        return ComboBox(value=default, choices=choices, **common), None
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
    w = FloatSpinBox(value=low if default is None else default, min=low, max=high, step=step, **common)
    native = w.native
    native.setDecimals(0 if kind is int else decimals_for(max(abs(low), abs(default or 0.0))))
    if spec.unit:
        native.setSuffix(" °" if spec.unit == "deg" else f" {spec.unit}")
    if auto is not None:
        native.setSpecialValueText(AUTO_TEXT)
    return w, auto


class _LabelColumn(QObject):
    """Keeps a form's labels one width (the widest label's), so that its fields line up in a column: measured
    when the form is shown or its style or font changes (napari's theme sets the font when the dock is added)."""

    EVENTS = (QEvent.Type.Show, QEvent.Type.StyleChange, QEvent.Type.FontChange)

    def __init__(self, form: Any) -> None:
        super().__init__(form)
        self._form = form
        form.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt API
        if event.type() in self.EVENTS:
            self.align()
        return False

    def align(self) -> None:
        labels = self._form.findChildren(QLabel)
        for label in labels:
            label.setMinimumWidth(0)
        width = max((label.sizeHint().width() for label in labels), default=0)
        for label in labels:
            label.setMinimumWidth(width)


class ParamForm:
    """A magicgui :class:`~magicgui.widgets.Container` of the spec'd fields of the params dataclass ``cls``.

    ``fields``: the field names to show, in order (default: every field with a spec, in declaration order);
    ``labels``: labels instead of the specs' (by field name); ``choice_texts``: for a choice field, the
    ``(text, value)`` pairs its list shows (by field name). :meth:`value` gives the params; :meth:`set_value` shows
    one.
    """

    def __init__(self, cls: type, fields: Sequence[str] | None = None, base: Any = None,
                 labels: dict[str, str] | None = None,
                 choice_texts: dict[str, Sequence[tuple[str, Any]]] | None = None) -> None:
        self.cls = cls
        specs = param_spec(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields) if fields is not None else list(specs)
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise ValueError(f"{cls.__name__} has no field with a spec named {', '.join(unknown)}")
        made = {n: field_widget(cls, by_name[n], specs[n], (choice_texts or {}).get(n)) for n in names}
        for n, text in (labels or {}).items():
            made[n][0].label = text
        self._int = {n for n in names if specs[n].choices is None
                     and _number_type(cls, n, by_name[n].default) is int and not isinstance(by_name[n].default, bool)}
        self.widgets: dict[str, Widget] = {n: w for n, (w, _) in made.items()}
        self._auto: dict[str, float | None] = {n: auto for n, (_, auto) in made.items()}
        self.container = Container(widgets=list(self.widgets.values()), labels=True)
        self._labels = _LabelColumn(self.container.native)
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
            value = w.value
            if auto is not None and value <= auto:
                value = None
            elif name in self._int:
                value = int(round(value))
            out[name] = value
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
            if isinstance(w, FloatSpinBox) and name not in self._int and v is not None:
                native = w.native
                need = decimals_for(float(v), native.decimals())
                if need > native.decimals():
                    native.setDecimals(need)
            w.value = auto if v is None and auto is not None else v
            line = w.native.lineEdit() if hasattr(w.native, "lineEdit") else None
            if line is not None:
                line.deselect()  # Qt selects a spin box's text when its value is set
