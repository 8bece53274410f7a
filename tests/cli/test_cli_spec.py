"""The command line's job options come from the parameter specs (issue 16): every spec'd field with a flag is an
option of its subcommands, shown in ``--help`` with its range, and what is typed reaches the params object."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from cryolive import cli
from cryolive.class2d import Class2DParams
from cryolive.classification.classify import ClassifyParams
from cryolive.jobs.reconstruct import ReconstructParams
from cryolive.motion import MotionParams
from cryolive.params import ParamSpec, add_arguments, help_text, param, param_spec, params_from_args
from cryolive.refinement.refine import RefineParams
from cryolive.simulator.dataset import SimulationParams

#: subcommand: (params class, the arguments it needs, fields with a flag it has no option for, and why)
COMMANDS = {
    "refine": (RefineParams, ["x.star", "--ref", "r.mrc", "--out", "o"], ()),
    "classify": (ClassifyParams, ["x.star", "--k", "2", "--out", "o"],
                 ("class_box", "coarse_step_deg")),  # fixed poses or a local search: no class box, no grid
    "hetero": (ClassifyParams, ["x.star", "--ref", "a.mrc", "b.mrc", "--out", "o"],
               ("n_classes",)),  # one class per --ref map
    "class2d": (Class2DParams, ["x.star", "--k", "2", "--out", "o"], ()),
    "simulate": (SimulationParams, ["--out", "o"], ()),
    "motion": (MotionParams, ["p.star", "--movies", "m", "--half-a", "a.mrc", "--half-b", "b.mrc", "--out", "o"], ()),
    "reconstruct": (ReconstructParams, ["x.star", "--out", "o.mrc"], ()),
}
#: where each job command hands its params over: (module, function)
JOBS = {"refine": ("cryolive.jobs.refine", "refine_job"),
        "classify": ("cryolive.jobs.classify", "classify_job"),
        "hetero": ("cryolive.jobs.classify", "classify_job"),
        "class2d": ("cryolive.jobs.class2d", "class2d_job"),
        "simulate": ("cryolive.simulator.dataset", "simulate_dataset"),
        "motion": ("cryolive.jobs.motion", "motion_job")}


class _Stop(Exception):
    pass


def _flagged(cmd: str) -> list[tuple[str, ParamSpec]]:
    cls, _, without = COMMANDS[cmd]
    return [(n, s) for n, s in param_spec(cls).items() if s.flag and n not in without]


def _other_value(cls: type, name: str, s: ParamSpec) -> tuple[list[str], object]:
    """Command-line words setting field ``name`` to an allowed value other than its default, and that value."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = field.default
    if isinstance(default, bool):  # a switch; one on by default is turned off by its --no- form
        return [s.flag if not default else "--no-" + s.flag[2:]], not default
    if s.choices is not None:
        value = next(c for c in s.choices if c != default)
        return [s.flag, str(value)], value
    hint = typing.get_type_hints(cls)[name]
    kind = type(default) if default is not None else next(a for a in typing.get_args(hint) if a is not type(None))
    low = next((b for b in (s.ge, s.gt) if b is not None), 0.0)
    high = s.le if s.le is not None else low + 100
    value = kind(low + 1) if kind is int else kind((low + high) / 2)
    if value == default:
        value = kind(low + 2) if kind is int else kind((value + high) / 2)
    assert value != default and (s.le is None or value <= s.le)
    return [s.flag, str(value)], value


def _subparser(cmd: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[cmd]


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_every_flag_of_the_spec_is_in_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    flagged = _flagged(cmd)
    assert flagged
    for _, s in flagged:
        assert f"{s.flag} " in out, s.flag
        for bound in (s.ge, s.gt, s.le):
            if bound is not None:
                assert f"{bound:g}" in out, (s.flag, bound)


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_every_flag_of_the_spec_round_trips(cmd, monkeypatch):
    cls, needed, _ = COMMANDS[cmd]
    parser = cli.build_parser()
    required = {"particles": "x.star"} if cls is ReconstructParams else {}
    # nothing typed: the spec's defaults (the class counts aside: typed above)
    got = params_from_args(cls, parser.parse_args([cmd, *needed]), **required)
    for name, _ in _flagged(cmd):
        if name not in ("n_classes", "k"):
            assert getattr(got, name) == getattr(cls(**required), name)

    captured: list[object] = []

    def job(*args: object, **kwargs: object) -> typing.NoReturn:
        captured.append(next(v for v in (*args, *kwargs.values()) if isinstance(v, cls)))
        raise _Stop  # before any work

    if cmd in JOBS:
        module, function = JOBS[cmd]
        monkeypatch.setattr(f"{module}.{function}", job)
    for name, s in _flagged(cmd):
        words, value = _other_value(cls, name, s)
        ns = parser.parse_args([cmd, *needed, *words])
        assert getattr(params_from_args(cls, ns, **required), name) == value, s.flag
        if cmd in JOBS:  # and the command hands it to the job
            captured.clear()
            with pytest.raises(_Stop):
                ns.func(ns)
            assert getattr(captured[0], name) == value, s.flag


def test_flags_keep_their_meaning_where_the_cli_differs_from_the_spec():
    parser = cli.build_parser()
    # classify: --k has no default (required unless --continue); --similarity is refused while parsing
    assert parser.parse_args(["classify", "x.star", "--out", "o"]).k is None
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "x.star", "--k", "2", "--out", "o", "--similarity", "1.5"])
    # class2d: --k is required
    with pytest.raises(SystemExit):
        parser.parse_args(["class2d", "x.star", "--out", "o"])
    # hetero: the classes are the starting maps
    ns = parser.parse_args(["hetero", "x.star", "--ref", "a", "b", "c", "--out", "o"])
    assert not hasattr(ns, "k")
    assert params_from_args(ClassifyParams, ns, n_classes=len(ns.ref)).n_classes == 3


@dataclasses.dataclass(frozen=True)
class _Example:
    step: float = param(7.5, gt=0, le=60, unit="deg", flag="--step", label="Coarse step", help="the 10 % step")
    count: int | None = param(None, ge=1, flag="--count", label="Count")
    mode: str = param("a", choices=("a", "b"), flag="--mode", label="Mode")
    fast: bool = param(False, flag="--fast", label="Fast")
    hidden: float = param(1.0, ge=0, label="No flag")
    plain: int = 3


def test_add_arguments_and_help_text():
    parser = argparse.ArgumentParser()
    assert add_arguments(parser, _Example) == ["step", "count", "mode", "fast"]
    text = " ".join(parser.format_help().split())
    assert "the 10 % step [more than 0 deg, at most 60 deg; default 7.5 deg]" in text
    assert "count [at least 1]" in text and "{a,b}" in text and "--hidden" not in text
    assert help_text(param_spec(_Example)["mode"], "a") == "mode [default a]"
    ns = parser.parse_args(["--step", "15", "--count", "4", "--mode", "b", "--fast"])
    assert params_from_args(_Example, ns, plain=9) == _Example(step=15.0, count=4, mode="b", fast=True, plain=9)
    assert params_from_args(_Example, parser.parse_args([])) == _Example()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    only = argparse.ArgumentParser()
    assert add_arguments(only, _Example, only=("mode",), override={"mode": {"default": "b"}}) == ["mode"]
    assert only.parse_args([]).mode == "b"
    with pytest.raises(ValueError, match="no field with a flag named hidden"):
        add_arguments(argparse.ArgumentParser(), _Example, exclude=("hidden",))
