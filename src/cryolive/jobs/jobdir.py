"""Job folders: ``<parent>/job_<kind>_<nnn>/`` holding ``params.json``, ``log.txt``, ``status.json`` and outputs.

A job never writes outside its own new folder, and every file is written under a temporary name and renamed
(:func:`cryolive.io._atomic.atomic_write_text`), so an interrupted job leaves complete files only. The checks a job
makes before it creates its folder (output place, memory) are :mod:`cryolive.io.preflight`. ``status.json`` says
``running``, ``finished``, ``stopped`` or ``failed`` (with the message), and which step was the last one completed.

Jobs that can go on after a kill (refinement, 3D classification, heterogeneous refinement) write the state after
each completed iteration as ``checkpoint.npz`` (:func:`save_checkpoint` / :func:`load_checkpoint`, one frozen
dataclass of arrays, numbers and strings); :func:`continuable_params` decides whether a folder can be continued.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import socket
import time
from collections.abc import Callable, Collection, Generator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cryolive.io._atomic import atomic_path, atomic_write_text
from cryolive.io.errors import InputError

Step = TypeVar("Step")
Result = TypeVar("Result")
Checkpoint = TypeVar("Checkpoint")

#: the state after a job's last completed iteration (removed when the job finishes)
CHECKPOINT = "checkpoint.npz"


def new_job_dir(parent: str | os.PathLike, kind: str) -> Path:
    """Create and return the next free ``job_<kind>_<nnn>`` folder under ``parent`` (created if needed)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100000):
        path = parent / f"job_{kind}_{i:03d}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"{parent}: no free job folder name left for {kind}")


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys, the first row's order) as CSV with a header, atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class JobFolder:
    """A job's folder: parameters, a log with timestamps, and a status file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self._log = open(self.path / "log.txt", "a", buffering=1)  # noqa: SIM115 - closed in close()

    @classmethod
    def create(cls, parent: str | os.PathLike, kind: str) -> JobFolder:
        """A new folder ``job_<kind>_<nnn>`` under ``parent``."""
        return cls(new_job_dir(parent, kind))

    def file(self, name: str) -> Path:
        """Path of an output file inside the job folder."""
        return self.path / name

    def write_params(self, params: dict[str, Any]) -> None:
        """Write ``params.json`` (paths and NumPy scalars are converted to JSON)."""
        atomic_write_text(self.path / "params.json", json.dumps(params, indent=2, default=_json_default) + "\n")

    def log(self, message: str) -> None:
        """Append a line ``[  12.3 s] message`` to ``log.txt``."""
        self._log.write(f"[{time.perf_counter() - self._t0:8.1f} s] {message}\n")

    def set_status(self, state: str, **info: Any) -> None:
        """Write ``status.json``: ``{"state": ..., **info, "pid", "host", "updated"}`` (the process that wrote
        it and when, so that :func:`job_state` can tell a running job from one that was killed)."""
        record = {"state": state, **info, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time()}
        atomic_write_text(self.path / "status.json", json.dumps(record, indent=2, default=_json_default) + "\n")

    def close(self) -> None:
        """Log the process's peak memory (resident set, GiB) and close the log."""
        if not self._log.closed:
            self.log(f"peak memory {peak_memory_gib():.2f} GiB (this process's maximum resident set)")
            self._log.close()


def peak_memory_gib() -> float:
    """The process's peak resident memory in GiB (``getrusage``; 0 where unavailable)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0.0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


@contextlib.contextmanager
def captured_notes(logger: str = "cryolive.io") -> Generator[list[str], None, None]:
    """Collect what ``logger`` reports (e.g. a reference resampled to the particles' pixel size) while inputs
    are read, so that the job can write it into its log once its folder exists."""
    import logging

    notes: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    handler = _Collect(level=logging.INFO)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield notes
    finally:
        log.removeHandler(handler)


def job_state(path: str | os.PathLike) -> dict[str, Any]:
    """The job folder's ``status.json`` as a dict; a job that says ``running`` but whose process is gone from this
    machine (killed, or the machine restarted) reads ``interrupted``. A folder without a status reads
    ``unknown``."""
    try:
        status = json.loads((Path(path) / "status.json").read_text())
    except (OSError, ValueError):
        return {"state": "unknown"}
    if status.get("state") == "running" and status.get("host") == socket.gethostname():
        if not _process_alive(int(status.get("pid", -1))):
            status["state"] = "interrupted"
    return status


def interrupted_jobs(parent: str | os.PathLike, patterns: Collection[str]) -> list[Path]:
    """The job folders under ``parent`` whose names match one of ``patterns`` (globs such as ``job_refine_*``) that
    were interrupted (:func:`job_state`) and can go on from their :data:`CHECKPOINT`, newest first (by the time
    their ``status.json`` was last written). Empty when ``parent`` is not a folder."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    found = {path for pattern in patterns for path in parent.glob(pattern) if path.is_dir()}
    jobs = [path for path in found if (path / CHECKPOINT).is_file() and job_state(path)["state"] == "interrupted"]
    return sorted(jobs, key=lambda path: ((path / "status.json").stat().st_mtime, path.name), reverse=True)


def interrupted_text(folder: str | os.PathLike) -> str:
    """How far an interrupted job got: "job_refine_003 was interrupted after iteration 4"."""
    iteration = job_state(folder).get("iteration")
    where = f"after iteration {iteration}" if iteration else "before its first iteration ended"
    return f"{Path(folder).name} was interrupted {where}"


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_in_job(job: JobFolder, gen: Generator[Step, None, Result], on_step: Callable[[Step], Step],
               progress: Callable[[], dict[str, Any]],
               finish: Callable[[Result], None] | None = None) -> Generator[Step, None, Result]:
    """Drive a core job generator inside ``job`` and return its result.

    ``on_step`` writes each step's files and returns what to yield (the step, or a copy of it with more fields);
    ``finish(result)`` writes the final outputs. If the consumer closes this generator (the user stops), or a
    step or ``finish`` fails, ``log.txt`` says ``STOPPED by the user`` or ``FAILED: ...``, ``status.json`` says
    ``stopped`` or ``failed`` with ``progress()`` (how far it got), the folder and the core generator are closed
    and the exception goes on to the caller (a folder never says ``running`` after its process gave up).
    """
    try:
        while True:
            out = on_step(next(gen))
            yield out
    except StopIteration as stop:
        result = stop.value
    except BaseException as exc:
        _mark_ended(job, exc, progress)
        gen.close()
        raise
    if finish is not None:
        try:
            finish(result)
        except BaseException as exc:
            _mark_ended(job, exc, progress)
            raise
    return result


def _mark_ended(job: JobFolder, exc: BaseException, progress: Callable[[], dict[str, Any]]) -> None:
    """Log and record a job that failed (an Exception) or was stopped (KeyboardInterrupt, generator closed)."""
    failed = isinstance(exc, Exception)
    job.log(f"FAILED: {exc}" if failed else "STOPPED by the user")
    job.set_status("failed" if failed else "stopped", error=str(exc) if failed else "", **progress())
    job.close()


def save_checkpoint(path: str | os.PathLike, c: Any) -> None:
    """Write the frozen dataclass ``c`` (fields: arrays, numbers, booleans, strings) as ``.npz``, one entry per
    field, under a temporary name, then rename over ``path`` (a kill never leaves a half-written checkpoint)."""
    values = {f.name: np.asarray(getattr(c, f.name)) for f in dataclasses.fields(c)}
    with atomic_path(Path(path), overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **values)


def load_checkpoint(path: str | os.PathLike, kind: type[Checkpoint]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` as the dataclass ``kind`` (fields annotated ``int``,
    ``float``, ``bool`` or ``str`` become Python scalars, the others stay NumPy arrays; fields with a default may
    be absent). InputError naming the file if it is unreadable or holds another kind of checkpoint."""
    conv: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": bool, "str": str}
    try:
        with np.load(path) as data:
            values = {k: data[k] for k in data.files}
        fields = dataclasses.fields(kind)  # type: ignore[arg-type]
        types = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "") for f in fields}
        # a field with a default may be missing (a checkpoint written before the field was added)
        optional = {f.name for f in fields if f.default is not dataclasses.MISSING}
        if not set(types) - optional <= set(values) <= set(types):
            raise KeyError(f"fields {sorted(set(values) ^ set(types))} differ")
        return kind(**{k: conv[types[k]](v.item()) if types[k] in conv else v for k, v in values.items()})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable checkpoint of this kind of job ({exc})") from None


def continuable_params(folder: str | os.PathLike, what: str, keys: Collection[str],
                       finished_hint: str) -> dict[str, Any]:
    """``params.json`` of the job folder ``folder`` if it can be continued from its :data:`CHECKPOINT`; otherwise
    an InputError of one line naming the folder: not a ``what`` job folder (no ``params.json``, or one without all
    of ``keys``), still running, finished (``finished_hint`` says what to do instead), or no checkpoint."""
    folder = Path(folder)
    try:
        prm = json.loads((folder / "params.json").read_text())
    except FileNotFoundError:
        raise InputError(f"{folder}: not a {what} job folder (no params.json)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}/params.json: unreadable ({exc})") from None
    if not isinstance(prm, dict) or not set(keys) <= prm.keys():
        raise InputError(f"{folder}: not a {what} job folder (params.json has no {' or '.join(keys)})")
    state = job_state(folder)
    if state["state"] == "running":
        raise InputError(f"{folder}: still running (process {state.get('pid')}); stop it first")
    if state["state"] == "finished":
        raise InputError(f"{folder}: finished; {finished_hint}")
    if not (folder / CHECKPOINT).is_file():
        raise InputError(f"{folder}: no {CHECKPOINT} (it stopped before its first iteration ended); start it again")
    return prm


def write_input_maps(job: JobFolder, inputs: dict[str, Any]) -> dict[str, Any]:
    """The map inputs as ``params.json`` records them (``name`` → value): a path as given, None as None; a map in
    memory (:class:`cryolive.io.MapInput`) written into the job's own folder as ``input_<name>.mrc`` at its own
    pixel size (atomically, never over a file), recorded by its absolute path, so a continued job reads the same
    map from the folder alone. A list (starting maps) gives ``input_<name>_001.mrc``, …. Each file written is
    logged with the layer it came from. If a write fails the folder is marked failed and the error goes on."""
    from cryolive.io.mrc import MapInput, read_map_source, write_map

    def one(source: Any, stem: str) -> Any:
        if source is None:
            return None
        if not isinstance(source, MapInput):
            return os.fspath(source)
        data, apix = read_map_source(source)
        path = job.file(f"input_{stem}.mrc")
        write_map(path, data, apix)
        job.log(f"wrote {path.name} from {source} ({data.shape[0]} px, {apix:.4g} Å/px)")
        return str(path.resolve())

    try:
        return {name: [one(s, f"{name}_{i + 1:03d}") for i, s in enumerate(v)] if isinstance(v, list | tuple)
                else one(v, name) for name, v in inputs.items()}
    except BaseException as exc:
        _mark_ended(job, exc, dict)
        raise


def input_in_folder(folder: str | os.PathLike, value: Any) -> Any:
    """A map input ``params.json`` recorded (a path, a list of paths or None), with each ``input_*.mrc`` the job
    wrote into its own folder taken from ``folder`` itself when the recorded path is gone (the folder moved)."""
    if isinstance(value, list):
        return [input_in_folder(folder, v) for v in value]
    if not value:
        return value
    path = Path(value)
    own = Path(folder) / path.name
    if path.name.startswith("input_") and not path.is_file() and own.is_file():
        return str(own)
    return value


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a job's ``iterations.csv`` (empty if there is none), numbers as ``int`` / ``float``."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
