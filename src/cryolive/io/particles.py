"""One particle-set type for RELION STAR and cryoSPARC .cs files: metadata in NumPy arrays, images on demand.

Conventions (docs/conventions.md, RELION is the reference):

* ``pixel_size`` Å, ``box`` pixels; one pixel size and box per set.
* ``rotations`` ``(N, 3, 3)`` RELION matrices ``A = Rz(psi) Ry(tilt) Rz(rot)`` (volume -> image frame).
* ``shifts`` ``(N, 2)`` in **Å**, RELION origin convention ``(rlnOriginXAngst, rlnOriginYAngst)``: the particle
  centre sits at ``-origin`` from the box centre (pixel ``box // 2``); centring an image means shifting it by
  ``+origin``.
* ``ctf``: :class:`~cryolive.image.ctf.CTFParams` (defocus Å, astigmatism angle and phase shift radians,
  voltage kV, Cs mm), RELION sign (particles bright on a dark background).
* ``half_set`` 1/2 (0 unknown), ``class_number`` 1-based (RELION), ``optics_group`` RELION optics group number.
* Images: ``stack_paths[stack_file_id[i]]``, image ``stack_index[i]`` (0-based; RELION's ``@`` number minus 1).

``table`` keeps every original per-particle column (STAR labels, or flattened .cs fields such as
``alignments3D/pose_0``) so that a write keeps every value; the attributes above are authoritative and are
merged into the table's columns by the writers.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryolive.image.ctf import CTFParams
from cryolive.io.errors import InputError
from cryolive.io.mrc import MrcStack

#: How many memory-mapped stacks a ParticleStack keeps open at once (least recently used are closed).
MAX_OPEN_STACKS = 64


class ParticleStack:
    """Particles (metadata + lazily read images) from a STAR or .cs file; see the module docstring for units.

    Build it with :func:`cryolive.io.read_star`, :func:`cryolive.io.read_cs` or
    :func:`cryolive.io.read_particles`; the constructor takes the arrays directly (all of length N).
    ``box`` is 0 when unknown (a metadata-only read of a file that does not state it).
    """

    def __init__(self, *, pixel_size: float, box: int, ctf: CTFParams, stack_paths: Sequence[str | os.PathLike],
                 stack_file_id: Any, stack_index: Any, rotations: np.ndarray | None = None,
                 shifts: np.ndarray | None = None, half_set: Any = None, class_number: Any = None,
                 optics_group: Any = None, table: pd.DataFrame | None = None, optics: pd.DataFrame | None = None,
                 source: str | os.PathLike | None = None, stack_names: Sequence[str] | None = None,
                 cs_dtype: np.dtype | None = None):
        n = len(ctf)
        self.pixel_size = float(pixel_size)
        self.box = int(box)
        self.ctf = ctf
        self.source = Path(source) if source is not None else Path("<memory>")
        self.stack_paths = [Path(os.path.abspath(p)) for p in stack_paths]  # immune to later chdir
        #: the image file names as written in the source file (used when a stack was not found on disk)
        self.stack_names = list(stack_names) if stack_names is not None else [str(p) for p in self.stack_paths]
        self.stack_file_id = _int_array(stack_file_id, n, "stack_file_id")
        self.stack_index = _int_array(stack_index, n, "stack_index")
        self.rotations = None if rotations is None else _float_array(rotations, (n, 3, 3), "rotations")
        self.shifts = None if shifts is None else _float_array(shifts, (n, 2), "shifts")
        self.half_set = _int_array(np.zeros(n, int) if half_set is None else half_set, n, "half_set")
        self.class_number = None if class_number is None else _int_array(class_number, n, "class_number")
        self.optics_group = _int_array(np.ones(n, int) if optics_group is None else optics_group, n,
                                       "optics_group")
        self.table = (pd.DataFrame(index=pd.RangeIndex(n)) if table is None
                      else table.reset_index(drop=True))
        self.optics = optics
        self.cs_dtype = cs_dtype
        if len(self.table) != n:
            raise ValueError(f"table has {len(self.table)} rows for {n} particles")
        if len(self.stack_names) != len(self.stack_paths):
            raise ValueError("stack_names and stack_paths differ in length")
        if n and (self.stack_file_id.min() < 0 or self.stack_file_id.max() >= len(self.stack_paths)):
            raise ValueError("stack_file_id refers to a stack not in stack_paths")
        self._open: OrderedDict[int, MrcStack] = OrderedDict()
        self._lock = threading.RLock()

    # ----------------------------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.ctf)

    def __repr__(self) -> str:
        return (f"ParticleStack({len(self)} particles, box {self.box}, {self.pixel_size:g} Å/px, "
                f"{len(self.stack_paths)} stack file(s), poses {'yes' if self.rotations is not None else 'no'}, "
                f"source {str(self.source)!r})")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps and locks do not travel to other processes
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the memory-mapped stacks this object opened (they reopen on the next read)."""
        with self._lock:
            while self._open:
                _, stack = self._open.popitem()
                stack.close()

    def __enter__(self) -> ParticleStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- images
    def _stack(self, fid: int) -> MrcStack:
        stack = self._open.get(fid)
        if stack is not None:
            self._open.move_to_end(fid)
            return stack
        path = self.stack_paths[fid]
        if not path.exists():
            raise InputError(f"{self.source}: image stack {path} not found (named {self.stack_names[fid]!r} "
                             "in the file)")
        stack = MrcStack(path)
        if self.box and stack.box != self.box:
            stack.close()
            raise InputError(f"{path}: holds {stack.box} x {stack.box} images but {self.source.name} says the "
                             f"box is {self.box}")
        self._open[fid] = stack
        while len(self._open) > MAX_OPEN_STACKS:
            _, old = self._open.popitem(last=False)
            old.close()
        return stack

    def images(self, indices: Any) -> np.ndarray:
        """Particle images ``indices`` (int, slice, integer array or boolean mask) as float32 ``(B, box, box)``
        in the requested order, read from the memory-mapped stacks (grouped by stack file).

        Raises InputError naming the stack file and image when a stack is missing, an index is beyond the
        stack or an image holds NaN/Inf. Thread-safe (reads are serialised per ParticleStack).
        """
        idx = np.atleast_1d(np.arange(len(self))[indices])
        if self.box <= 0:
            raise InputError(f"{self.source}: the box size is unknown (the file does not state it and it was read "
                             "with require_images=False); read it with require_images=True to load images")
        out = np.empty((len(idx), self.box, self.box), np.float32)
        if len(idx) == 0:
            return out
        fids = self.stack_file_id[idx]
        order = np.argsort(fids, kind="stable")
        bounds = np.flatnonzero(np.diff(fids[order])) + 1
        with self._lock:
            for pos in np.split(order, bounds):
                stack = self._stack(int(fids[pos[0]]))
                try:
                    out[pos] = stack.read(self.stack_index[idx[pos]])
                except InputError as exc:
                    raise InputError(f"{exc} (particle set {self.source.name})") from None
        return out

    def iter_batches(self, batch_size: int = 256, indices: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(indices, images)`` for consecutive batches of at most ``batch_size`` particles (all particles,
        or the given ``indices`` in that order)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        idx = np.arange(len(self)) if indices is None else np.atleast_1d(np.arange(len(self))[indices])
        for start in range(0, len(idx), batch_size):
            sel = idx[start:start + batch_size]
            yield sel, self.images(sel)

    # ---------------------------------------------------------------------------------------------- derived
    def subset(self, indices: Any) -> ParticleStack:
        """A new ParticleStack of the particles ``indices`` (int array, slice or boolean mask), same stacks."""
        idx = np.atleast_1d(np.arange(len(self))[indices])
        return self._replace(
            ctf=self.ctf.subset(idx), stack_file_id=self.stack_file_id[idx], stack_index=self.stack_index[idx],
            rotations=None if self.rotations is None else self.rotations[idx],
            shifts=None if self.shifts is None else self.shifts[idx], half_set=self.half_set[idx],
            class_number=None if self.class_number is None else self.class_number[idx],
            optics_group=self.optics_group[idx], table=self.table.iloc[idx].reset_index(drop=True))

    def with_poses(self, rotations: np.ndarray | None, shifts_A: np.ndarray | None, half_set: Any = None,
                   class_number: Any = None, extra_columns: dict[str, Any] | None = None) -> ParticleStack:
        """A new ParticleStack with updated poses (this one is not changed).

        ``rotations`` ``(N, 3, 3)`` RELION matrices; ``shifts_A`` ``(N, 2)`` RELION origins in Å; ``None`` keeps
        the current value (as do ``half_set``/``class_number`` left at None). ``extra_columns`` maps column
        names to length-N values added to (or replaced in) ``table``; STAR labels (``rln...``) are written by
        :func:`write_star`, ``.cs`` field names (``alignments3D/...``) by :func:`write_cs`.
        """
        n = len(self)
        table = self.table
        if extra_columns:
            table = table.copy()
            for name, values in extra_columns.items():
                values = np.asarray(values)
                if values.shape != (n,):
                    raise ValueError(f"extra column {name!r} has shape {values.shape}, expected ({n},)")
                table[name] = values
        return self._replace(
            rotations=self.rotations if rotations is None else rotations,
            shifts=self.shifts if shifts_A is None else shifts_A,
            half_set=self.half_set if half_set is None else half_set,
            class_number=self.class_number if class_number is None else class_number,
            table=table)

    def particle_pixel_sizes(self) -> np.ndarray:
        """Pixel size (Å) of each particle: its optics group's ``rlnImagePixelSize``, else ``pixel_size``."""
        out = np.full(len(self), self.pixel_size)
        if self.optics is not None and {"rlnOpticsGroup", "rlnImagePixelSize"} <= set(self.optics.columns):
            groups = pd.Index(self.optics["rlnOpticsGroup"].to_numpy())
            pos = groups.get_indexer(self.optics_group)
            ok = pos >= 0
            out[ok] = self.optics["rlnImagePixelSize"].to_numpy(dtype=float)[pos[ok]]
        return out

    def replace(self, **changes: Any) -> ParticleStack:
        """A new ParticleStack with the given constructor arguments changed (this one is not changed)."""
        return self._replace(**changes)

    def _replace(self, **changes: Any) -> ParticleStack:
        args = dict(pixel_size=self.pixel_size, box=self.box, ctf=self.ctf, stack_paths=self.stack_paths,
                    stack_file_id=self.stack_file_id, stack_index=self.stack_index, rotations=self.rotations,
                    shifts=self.shifts, half_set=self.half_set, class_number=self.class_number,
                    optics_group=self.optics_group, table=self.table, optics=self.optics, source=self.source,
                    stack_names=self.stack_names, cs_dtype=self.cs_dtype)
        args.update(changes)
        return ParticleStack(**args)


# ------------------------------------------------------------------------------------------------- helpers
def _int_array(values: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name} must hold integers")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got {arr.dtype}")
    return arr.astype(np.int64)


def _float_array(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def check_image_statistics(stack: ParticleStack, n_sample: int = 256, seed: int = 0) -> None:
    """Refuse particle images that cannot be cryo-EM particles before any work (InputError naming the file).

    Reads up to ``n_sample`` images spread over the set and refuses: images that are all zero or one constant
    value (an empty or blank stack), and unnormalised images whose mean lies more than 10 standard deviations
    from zero (e.g. raw integer counts: RELION's preprocessing normalises the background to mean 0, s.d. 1).
    Single blank images among good ones (empty picks) are allowed: they carry no weight in a reconstruction.
    """
    n = len(stack)
    if n == 0:
        raise InputError(f"{stack.source}: the particle set is empty")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, n_sample), replace=False))
    imgs = stack.images(idx).astype(np.float64)
    sd = imgs.std(axis=(1, 2))
    if not (sd > 0).any():
        what = "all zeros" if not imgs.any() else f"constant ({imgs.flat[0]:.6g})"
        raise InputError(f"{stack.source}: the particle images are {what} ({len(idx)} of {n} images checked)")
    mean = float(np.median(imgs.mean(axis=(1, 2))))
    typical_sd = float(np.median(sd[sd > 0]))
    if abs(mean) > 10.0 * typical_sd:
        raise InputError(f"{stack.source}: the particle images are not normalised (median image mean {mean:.4g}, "
                         f"standard deviation {typical_sd:.4g}); normalise them first (background mean 0, "
                         "s.d. 1, as relion_preprocess --norm does)")


def search_dirs(source: Path, project_dir: str | os.PathLike | None, extra: Sequence[Path] = ()) -> list[Path]:
    """Folders where relative image paths are looked up, in order: the file's folder, ``project_dir``,
    ``extra``, the current working directory, then the folders above the file's (a job's STAR names its images
    relative to the project folder it was written from, as RELION does; duplicates removed)."""
    dirs = [source.parent]
    if project_dir is not None:
        dirs.append(Path(project_dir))
    dirs.extend(extra)
    dirs.append(Path.cwd())
    dirs.extend(Path(os.path.abspath(source)).parent.parents)
    out: list[Path] = []
    seen: set[str] = set()
    for d in dirs:
        key = os.path.normcase(os.path.abspath(d))
        if key not in seen:
            seen.add(key)
            out.append(Path(os.path.abspath(d)))
    return out


def locate_stacks(source: Path, raw_names: np.ndarray, lookup_names: np.ndarray, dirs: Sequence[Path],
                  require_images: bool, describe_row: Callable[[int], str]) -> tuple[list[Path], list[str],
                                                                                       np.ndarray]:
    """Resolve per-particle image file names to stack files.

    ``raw_names`` are the names as written (kept for writing back when a stack is not on disk),
    ``lookup_names`` the names to look up (e.g. without cryoSPARC's ``>``). Returns ``(stack_paths,
    stack_names, stack_file_id)``, stacks deduplicated by absolute path. With ``require_images`` a missing stack
    is an InputError naming ``source``, the stack, the paths tried and the first particle row using it.
    """
    codes, uniques = pd.factorize(pd.Series(lookup_names, dtype=object), sort=False)
    raw_first = pd.Series(raw_names, dtype=object).groupby(codes).first()
    paths: list[Path] = []
    names: list[str] = []
    key_to_id: dict[str, int] = {}
    code_to_id = np.empty(len(uniques), np.int64)
    missing: list[tuple[str, list[Path], int]] = []
    for code, name in enumerate(uniques):
        name = str(name)
        p = Path(name)
        candidates = [p] if p.is_absolute() else [d / p for d in dirs]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            if require_images:
                first_row = int(np.flatnonzero(codes == code)[0])
                missing.append((name, candidates, first_row))
            found = candidates[0]
        resolved = Path(os.path.abspath(found))
        key = os.path.normcase(str(resolved))
        if key not in key_to_id:
            key_to_id[key] = len(paths)
            paths.append(resolved)
            names.append(str(raw_first.iloc[code]))
        code_to_id[code] = key_to_id[key]
    if missing:  # one line: the CLI shows the message as it is
        found = "; ".join(f"{name!r} (first used by {describe_row(row)}; tried: {', '.join(map(str, cands))})"
                          for name, cands, row in missing[:5])
        more = f"; ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"{source}: {len(missing)} image stack file(s) not found: {found}{more} (pass "
                         "project_dir= if the paths are relative to a project folder, or require_images=False to "
                         "read the metadata only)")
    return paths, names, code_to_id[codes]


def check_stacks(source: Path, stack_paths: Sequence[Path], stack_file_id: np.ndarray, stack_index: np.ndarray,
                 box: int | None, pixel_size: np.ndarray | float, describe_row: Callable[[int], str],
                 index_base: int) -> int:
    """Open every stack header and check images against the metadata; returns the box size.

    Raises InputError (naming ``source`` and the stack) when a stack is not a readable MRC, its images are not
    ``box`` pixels (or stacks disagree), or a particle's image index is beyond the stack's length
    (``index_base`` 1 reports RELION's 1-based numbers). Warns (once) when header pixel sizes differ from the
    metadata's by more than 1 % (the metadata is trusted).
    """
    psize = np.broadcast_to(np.asarray(pixel_size, dtype=float), stack_file_id.shape)
    order = np.argsort(stack_file_id, kind="stable")
    bounds = np.flatnonzero(np.diff(stack_file_id[order])) + 1
    mismatched: list[str] = []
    box_source = f"{source.name}" if box else ""
    for rows in np.split(order, bounds) if len(order) else []:
        fid = int(stack_file_id[rows[0]])
        path = stack_paths[fid]
        try:
            with MrcStack(path) as stack:
                n, sbox, spix = len(stack), stack.box, stack.pixel_size
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        if not box:
            box, box_source = sbox, path.name
        elif sbox != box:
            raise InputError(f"{source}: stack {path} holds {sbox} x {sbox} images but the box size is {box} "
                             f"(from {box_source})")
        idx = stack_index[rows]
        over = (idx >= n) | (idx < 0)
        if over.any():
            row = int(rows[over][0])
            raise InputError(f"{source}: {describe_row(row)} refers to image {int(stack_index[row]) + index_base} "
                             f"but {path.name} holds {n} images")
        p = float(np.median(psize[rows]))
        if spix > 0 and abs(spix - p) > 0.01 * p:
            mismatched.append(f"{path.name} ({spix:g} Å in the header vs {p:g} Å)")
    if mismatched:
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        warnings.warn(f"{source}: the pixel size differs by more than 1 % from the MRC header of "
                      f"{', '.join(mismatched[:3])}{more}; using the value from {source.name}", stacklevel=3)
    return int(box or 0)


def check_half_sets(stack: ParticleStack) -> None:
    """Refuse (InputError naming the file) an image listed in both half sets (``rlnRandomSubset`` 1 and 2), e.g. a
    duplicated row: the two half maps would share that image's noise and the gold-standard FSC would be inflated."""
    half = stack.half_set
    use = np.isin(half, (1, 2))
    if not ((half == 1).any() and (half == 2).any()):
        return
    image = stack.stack_file_id * (int(stack.stack_index.max()) + 1) + stack.stack_index  # one number per image
    halves = pd.DataFrame({"image": image[use], "half": half[use]}).groupby("image", sort=False)["half"].nunique()
    both = halves.index[(halves > 1).to_numpy()]
    if len(both) == 0:
        return
    rows = np.flatnonzero(use & (image == both[0])) + 1
    fid, idx = int(stack.stack_file_id[rows[0] - 1]), int(stack.stack_index[rows[0] - 1])
    name = f"{idx + 1:06d}@{stack.stack_names[fid]}"
    raise InputError(f"{stack.source}: {len(both)} image(s) are in both half sets (rlnRandomSubset 1 and 2), first "
                     f"{name} at rows {', '.join(map(str, rows[:4]))}: the half maps would share their noise and the "
                     "FSC would be inflated; remove the duplicated rows or give each image one half set")


def check_finite(source: Path, frame: pd.DataFrame, columns: Sequence[str], describe_row: Callable[[int], str],
                 what: str) -> None:
    """InputError if a numeric column among ``columns`` holds NaN/Inf; a warning for any other numeric column
    (such values are kept and written back as they are)."""
    for col in frame.columns:
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        arr = values.to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(arr)
        if not bad.any():
            continue
        row = int(np.flatnonzero(bad)[0])
        msg = f"{source}: {what} column {col} holds {int(bad.sum())} NaN/Inf value(s), first at {describe_row(row)}"
        if col in columns:
            raise InputError(msg)
        warnings.warn(msg + " (column not used by cryolive; kept as is)", stacklevel=3)


def mixed_value_check(source: Path, values: np.ndarray, groups: np.ndarray, what: str, unit: str,
                      allow: bool, hint: str) -> float:
    """The single value of ``values`` (per particle); InputError listing values by group when they differ by
    more than 1e-6 relative, unless ``allow`` (then warn and use the most common value)."""
    vals = np.asarray(values, dtype=float)
    uniq, counts = np.unique(vals, return_counts=True)
    common = float(uniq[np.argmax(counts)])
    if len(uniq) > 1 and (uniq.max() - uniq.min()) > 1e-6 * abs(common):
        per_group = pd.Series(vals).groupby(np.asarray(groups)).first()
        listing = ", ".join(f"group {g}: {v:g}{unit}" for g, v in per_group.items())
        if not allow:
            raise InputError(f"{source}: the particles have different {what}s ({listing}); cryolive supports a "
                             f"single {what} per particle set for now. {hint}")
        warnings.warn(f"{source}: different {what}s ({listing}); using {common:g}{unit} (the most common) as the "
                      f"set's {what}; the per-group values are kept in the optics table", stacklevel=3)
    return common


def relative_name(path: Path, out_dir: Path, climb: bool = True) -> str:
    """``path`` relative to ``out_dir`` when possible (else absolute), with forward slashes.

    ``climb=False``: a path that would start with ``..`` (outside ``out_dir``) is written absolute instead.
    """
    try:
        rel = os.path.relpath(path, out_dir)
    except ValueError:  # different drives on Windows
        return path.as_posix()
    if not climb and (rel == os.pardir or rel.startswith(os.pardir + os.sep)):
        return Path(os.path.abspath(path)).as_posix()
    return Path(rel).as_posix()


def image_file_names(stack: ParticleStack, out_dir: Path, climb: bool = True) -> list[str]:
    """Per stack file, the name to write into a particle file: relative to ``out_dir`` (or absolute, see
    :func:`relative_name`) when the stack exists, else the name as read (a metadata-only set keeps its names)."""
    return [relative_name(p, out_dir, climb) if p.exists() else name
            for p, name in zip(stack.stack_paths, stack.stack_names, strict=True)]


def round_sig(values: np.ndarray, digits: int = 12) -> np.ndarray:
    """Round to ``digits`` significant digits (for computed values written to text files)."""
    arr = np.asarray(values, dtype=float)
    return np.array([float(f"{v:.{digits}g}") for v in arr.ravel().tolist()]).reshape(arr.shape)


def f32_to_decimal(values: Any) -> np.ndarray:
    """float32 values as float64 holding their shortest decimal form (``np.float32(2.7)`` -> ``2.7``, not
    ``2.700000047683716``); casting the result back to float32 gives the original values exactly."""
    a32 = np.asarray(values, dtype=np.float32)
    flat32 = a32.ravel()
    x = flat32.astype(np.float64)
    out = x.copy()
    todo = np.isfinite(x) & (x != 0)
    for digits in (6, 7, 8, 9):
        if not todo.any():
            break
        pos = np.flatnonzero(todo)
        xi = x[pos]
        k = digits - 1 - np.floor(np.log10(np.abs(xi)))
        up = k >= 0
        cand = np.empty_like(xi)
        scale = 10.0 ** k[up]
        cand[up] = np.round(xi[up] * scale) / scale
        inv = 10.0 ** (-k[~up])
        cand[~up] = np.round(xi[~up] / inv) * inv
        ok = cand.astype(np.float32) == flat32[pos]
        out[pos[ok]] = cand[ok]
        todo[pos[ok]] = False
    return out.reshape(a32.shape)
