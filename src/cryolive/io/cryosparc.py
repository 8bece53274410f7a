"""cryoSPARC ``.cs`` particle files (NumPy structured arrays) <-> :class:`~cryolive.io.particles.ParticleStack`.

Fields (docs/conventions.md, "Files"): ``blob/path`` (relative to the project folder; a leading ``>`` is stripped),
``blob/idx`` (0-based), ``blob/shape`` (box), ``blob/psize_A`` (Å); ``ctf/df1_A``, ``ctf/df2_A`` (= RELION
DefocusU/V, Å), ``ctf/df_angle_rad``, ``ctf/phase_shift_rad`` (radians), ``ctf/accel_kv``, ``ctf/cs_mm``,
``ctf/amp_contrast``, ``ctf/bfactor``, ``ctf/scale``; ``alignments3D/pose`` (axis-angle, radians, the
back-projection rotation: RELION ``A = R_cs^T``, see :mod:`cryolive.rotations.euler`), ``alignments3D/shift``
(pixels, same sign as RELION's origin: ``rlnOriginX`` [px] = shift; converted to Å with
``alignments3D/psize_A``), ``alignments3D/split`` (0/1 -> half set 1/2), ``alignments3D/class`` (0-based ->
``class_number`` 1-based), ``alignments3D/alpha`` (per-particle scale, kept as ``table['alpha']``).

``blob/sign`` is kept in ``table`` and written back but not applied: images are returned as stored.
Every field is kept in ``table``; vector fields are flattened to ``name_0``, ``name_1``, ...
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryolive.image.ctf import CTFParams
from cryolive.io._atomic import atomic_path, check_destination
from cryolive.io.errors import InputError
from cryolive.io.particles import (
    ParticleStack,
    check_finite,
    check_stacks,
    f32_to_decimal,
    image_file_names,
    locate_stacks,
    mixed_value_check,
    search_dirs,
)
from cryolive.io.star import _make_optics
from cryolive.rotations.euler import cryosparc_pose_to_matrix, matrix_to_cryosparc_pose

PathLike = str | os.PathLike

_REQUIRED = ["blob/path", "blob/idx", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/accel_kv", "ctf/cs_mm",
             "ctf/amp_contrast"]
_ABERRATIONS = ["ctf/shift_A", "ctf/tilt_A", "ctf/trefoil_A", "ctf/tetra_A", "ctf/anisomag"]


def read_cs(path: PathLike, require_images: bool = True, *, project_dir: PathLike | None = None,
            pixel_size: float | None = None, allow_mixed_pixel_size: bool = False) -> ParticleStack:
    """Read a cryoSPARC particle ``.cs`` file into a :class:`ParticleStack`.

    Image paths are looked up relative to the .cs file's folder, ``project_dir``, the .cs folder's parent (the
    project folder when the file sits in a job folder) and the current directory. ``require_images=False``
    reads the metadata only (stacks neither checked nor opened). ``pixel_size`` (Å) overrides ``blob/psize_A``.
    Raises InputError (naming the file) for unreadable files, missing fields, NaN values, missing stacks or
    images and inconsistent boxes / pixel sizes.
    """
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: file not found")
    if src.is_dir():
        raise InputError(f"{src}: is a folder, not a .cs file")
    try:
        arr = np.load(src, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{src}: not a cryoSPARC .cs file (NumPy could not load it: {exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None or arr.ndim != 1:
        raise InputError(f"{src}: not a cryoSPARC .cs file (expected a 1-D NumPy structured array)")
    n = len(arr)
    if n == 0:
        raise InputError(f"{src}: holds no particles")
    fields = set(arr.dtype.names)
    missing = [f for f in _REQUIRED if f not in fields]
    if pixel_size is None and "blob/psize_A" not in fields:
        missing.append("blob/psize_A")
    if missing:
        raise InputError(f"{src}: required field(s) {', '.join(missing)} missing")

    raw = _decode(arr["blob/path"])
    lookup = np.array([r[1:] if r.startswith(">") else r for r in raw], dtype=object)
    idx = arr["blob/idx"].astype(np.int64)

    def row(i: int) -> str:
        return f"row {i} (0-based; blob/path {raw[i]!r}, blob/idx {idx[i]})"

    table = flatten(arr)
    used = [c for c in table.columns if c.startswith(("ctf/", "blob/psize_A", "alignments3D/pose",
                                                      "alignments3D/shift", "alignments3D/psize_A"))]
    check_finite(src, table, used, row, "field")
    if "alignments3D/alpha" in table.columns:
        table = table.rename(columns={"alignments3D/alpha": "alpha"})

    # pixel size, box, optics groups
    if pixel_size is not None:
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"{src}: pixel_size must be a positive number of Å, not {pixel_size!r}")
        psize = np.full(n, float(pixel_size))
    else:
        psize = f32_to_decimal(arr["blob/psize_A"])
    if not (psize > 0).all():
        i = int(np.flatnonzero(~(psize > 0))[0])
        raise InputError(f"{src}: blob/psize_A is {psize[i]:g} at {row(i)}; fix blob/psize_A in the .cs "
                         "or pass pixel_size= (Å) from Python")
    voltage, cs, amp = (f32_to_decimal(arr[f]) for f in ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast"))
    keys = pd.DataFrame({"e": arr["ctf/exp_group_id"] if "ctf/exp_group_id" in fields else np.zeros(n),
                         "v": voltage, "cs": cs, "q": amp, "p": psize})
    group = keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy() + 1
    set_psize = mixed_value_check(src, psize, group, "pixel size", " Å", allow_mixed_pixel_size,
                                  "Split the particles by pixel size, or pass allow_mixed_pixel_size=True to read "
                                  "the metadata anyway.")
    box = 0
    if "blob/shape" in fields:
        shape = np.asarray(arr["blob/shape"]).reshape(n, -1).astype(np.int64)
        if shape.shape[1] != 2 or (shape[:, 0] != shape[:, 1]).any():
            i = int(np.flatnonzero(shape[:, 0] != shape[:, -1])[0]) if shape.shape[1] == 2 else 0
            raise InputError(f"{src}: blob/shape {shape[i].tolist()} at {row(i)} is not a square image")
        box = int(mixed_value_check(src, shape[:, 0], group, "box size", " px", False, ""))

    # CTF
    def opt(name: str, default: float) -> np.ndarray:
        return f32_to_decimal(arr[name]) if name in fields else np.full(n, default)

    ctf = CTFParams.make(f32_to_decimal(arr["ctf/df1_A"]), f32_to_decimal(arr["ctf/df2_A"]),
                         f32_to_decimal(arr["ctf/df_angle_rad"]), voltage, cs, amp,
                         opt("ctf/phase_shift_rad", 0.0), opt("ctf/bfactor", 0.0), opt("ctf/scale", 1.0))
    _warn_aberrations(src, arr)

    # poses
    rotations = shifts = class_number = None
    half_set = np.zeros(n, np.int64)
    if "alignments3D/pose" in fields:
        pose = np.asarray(arr["alignments3D/pose"], dtype=np.float64).reshape(n, -1)
        if pose.shape[1] != 3:
            raise InputError(f"{src}: alignments3D/pose has {pose.shape[1]} values per particle, expected 3")
        rotations = cryosparc_pose_to_matrix(pose)
    if "alignments3D/shift" in fields:
        shift_px = np.asarray(arr["alignments3D/shift"], dtype=np.float64).reshape(n, -1)
        if shift_px.shape[1] != 2:
            raise InputError(f"{src}: alignments3D/shift has {shift_px.shape[1]} values per particle, expected 2")
        shifts = shift_px * _align_psize(table, psize)[:, None]
    if "alignments3D/split" in fields:
        split = arr["alignments3D/split"].astype(np.int64)
        if not np.isin(split, (0, 1)).all():
            i = int(np.flatnonzero(~np.isin(split, (0, 1)))[0])
            raise InputError(f"{src}: alignments3D/split must be 0 or 1, got {split[i]} at {row(i)}")
        half_set = split + 1
    if "alignments3D/class" in fields:
        class_number = arr["alignments3D/class"].astype(np.int64) + 1

    # images
    dirs = search_dirs(src, project_dir, extra=[src.parent.parent])
    stack_paths, stack_names, file_id = locate_stacks(src, raw, lookup, dirs, require_images, row)
    if require_images:
        box = check_stacks(src, stack_paths, file_id, idx, box, psize, row, index_base=0)
    optics = _make_optics(group, voltage, cs, amp, psize, box)
    return ParticleStack(pixel_size=set_psize, box=box, ctf=ctf, stack_paths=stack_paths, stack_names=stack_names,
                         stack_file_id=file_id, stack_index=idx, rotations=rotations, shifts=shifts,
                         half_set=half_set, class_number=class_number, optics_group=group, table=table,
                         optics=optics, source=src, cs_dtype=arr.dtype)


def _decode(values: np.ndarray) -> list[str]:
    if values.dtype.kind == "S":
        return [v.decode("utf-8", errors="replace") for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def _align_psize(table: pd.DataFrame, psize: np.ndarray) -> np.ndarray:
    """Pixel size (Å) of the alignment shifts: ``alignments3D/psize_A`` when present, else the image's."""
    if "alignments3D/psize_A" in table.columns:
        p = f32_to_decimal(table["alignments3D/psize_A"].to_numpy())
        return np.where(p > 0, p, psize)
    return psize


def _warn_aberrations(src: Path, arr: np.ndarray) -> None:
    present = [f for f in _ABERRATIONS if f in arr.dtype.names and np.any(np.asarray(arr[f]) != 0)]
    if present:
        warnings.warn(f"{src}: {', '.join(present)} (beam tilt / higher-order aberrations / anisotropic "
                      "magnification) are ignored by cryolive; they are kept and written back unchanged",
                      stacklevel=3)


def _subfield_columns(name: str, shape: tuple[int, ...]) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}_{'_'.join(map(str, ix))}" for ix in np.ndindex(*shape)]


def flatten(arr: np.ndarray) -> pd.DataFrame:
    """A structured array as a DataFrame: vector fields become ``name_0, name_1, ...``; bytes become str."""
    n = len(arr)
    cols: dict[str, Any] = {}
    for name in arr.dtype.names:
        values = arr[name]
        sub = values.shape[1:]
        if values.dtype.kind == "S" and not sub:
            cols[name] = np.array(_decode(values), dtype=object)
            continue
        names = _subfield_columns(name, sub)
        flat = values.reshape(n, -1)
        for j, col in enumerate(names):
            cols[col] = flat[:, j]
    return pd.DataFrame(cols, index=pd.RangeIndex(n))


def write_cs(stack: ParticleStack, path: PathLike, overwrite: bool = False, *,
             relative_to: PathLike | None = None) -> None:
    """Write ``stack`` as a cryoSPARC ``.cs`` file (``np.save`` of a structured array), atomically.

    Fields: ``uid``, ``blob/path`` (relative to the output folder or ``relative_to`` when the stack exists,
    else the name as read), ``blob/idx``, ``blob/shape``, ``blob/psize_A``, ``blob/sign``, ``ctf/*`` and, with
    poses, ``alignments3D/pose``, ``shift`` (px), ``psize_A``, ``split``, ``alpha`` (and ``class`` with class
    numbers). Fields of a .cs input are all kept (with their dtypes). FileExistsError if ``path`` exists and
    ``overwrite`` is False.
    """
    dest = check_destination(path, overwrite)
    out_dir = Path(os.path.abspath(relative_to if relative_to is not None else dest.parent))
    arr = cs_array(stack, out_dir)
    with atomic_path(dest, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)


def cs_array(stack: ParticleStack, out_dir: Path) -> np.ndarray:
    """The structured array :func:`write_cs` writes (image paths relative to ``out_dir``)."""
    n = len(stack)
    table, ctf = stack.table, stack.ctf
    names = image_file_names(stack, out_dir)
    paths = np.array([names[f].encode("utf-8") for f in stack.stack_file_id.tolist()], dtype=object)
    path_len = max(1, max((len(p) for p in paths), default=1))
    psize = stack.particle_pixel_sizes()

    fields: dict[str, tuple[Any, tuple[int, ...]]] = {}
    if stack.cs_dtype is not None:
        for name in stack.cs_dtype.names:
            sub = stack.cs_dtype[name]
            fields[name] = (sub.base, sub.shape)
    standard: list[tuple[str, Any, tuple[int, ...]]] = [
        ("uid", np.uint64, ()), ("blob/path", f"S{path_len}", ()), ("blob/idx", np.uint32, ()),
        ("blob/shape", np.uint32, (2,)), ("blob/psize_A", np.float32, ()), ("blob/sign", np.float32, ()),
        ("ctf/exp_group_id", np.uint32, ()), ("ctf/accel_kv", np.float32, ()), ("ctf/cs_mm", np.float32, ()),
        ("ctf/amp_contrast", np.float32, ()), ("ctf/df1_A", np.float32, ()), ("ctf/df2_A", np.float32, ()),
        ("ctf/df_angle_rad", np.float32, ()), ("ctf/phase_shift_rad", np.float32, ()),
        ("ctf/scale", np.float32, ()), ("ctf/bfactor", np.float32, ())]
    if stack.rotations is not None:
        standard += [("alignments3D/split", np.uint32, ()), ("alignments3D/shift", np.float32, (2,)),
                     ("alignments3D/pose", np.float32, (3,)), ("alignments3D/psize_A", np.float32, ()),
                     ("alignments3D/alpha", np.float32, ())]
        if stack.class_number is not None:
            standard.append(("alignments3D/class", np.uint32, ()))
    for name, dt, shape in standard:
        if name not in fields:
            fields[name] = (np.dtype(dt), shape)
    old = fields["blob/path"][0]
    if old.kind != "S" or old.itemsize < path_len:
        fields["blob/path"] = (np.dtype(f"S{path_len}"), ())
    dtype = np.dtype([(name, dt, shape) if shape else (name, dt) for name, (dt, shape) in fields.items()])
    out = np.zeros(n, dtype=dtype)

    # everything the table holds (flattened names), then the stack's own values on top
    for name, (dt, shape) in fields.items():
        col_name = "alpha" if name == "alignments3D/alpha" else name
        cols = _subfield_columns(col_name, shape)
        if not all(c in table.columns for c in cols):
            continue
        if dt.kind == "S":
            out[name] = [str(v).encode("utf-8") for v in table[cols[0]].tolist()]
        else:
            out[name] = table[cols].to_numpy().reshape((n, *shape)).astype(dt) if shape else \
                table[cols[0]].to_numpy().astype(dt)
    if "uid" not in table.columns:
        out["uid"] = np.random.default_rng().integers(1, np.iinfo(np.uint64).max, size=n, dtype=np.uint64)
    if "blob/sign" not in table.columns:
        out["blob/sign"] = -1.0
    if "ctf/exp_group_id" not in table.columns:
        out["ctf/exp_group_id"] = stack.optics_group
    out["ctf/scale"] = ctf.scale
    out["blob/path"] = paths.astype(f"S{path_len}")
    out["blob/idx"] = stack.stack_index
    if stack.box:
        out["blob/shape"] = stack.box
    out["blob/psize_A"] = psize
    for name, values in (("ctf/accel_kv", ctf.voltage), ("ctf/cs_mm", ctf.cs), ("ctf/amp_contrast", ctf.amp_contrast),
                         ("ctf/df1_A", ctf.defocus_u), ("ctf/df2_A", ctf.defocus_v),
                         ("ctf/df_angle_rad", ctf.astig_angle), ("ctf/phase_shift_rad", ctf.phase_shift),
                         ("ctf/bfactor", ctf.bfactor)):
        out[name] = values
    if stack.rotations is not None:
        pose_cols = _subfield_columns("alignments3D/pose", (3,))
        new_pose = matrix_to_cryosparc_pose(stack.rotations)
        if all(c in table.columns for c in pose_cols):
            orig = table[pose_cols].to_numpy(dtype=np.float64)
            same = np.abs(cryosparc_pose_to_matrix(orig) - stack.rotations).max(axis=(1, 2)) < 1e-9
            new_pose = np.where(same[:, None], orig, new_pose)
        out["alignments3D/pose"] = new_pose
        if "alignments3D/psize_A" not in table.columns:
            out["alignments3D/psize_A"] = psize
        align_psize = _align_psize(table, psize)
        if stack.shifts is not None:
            shift_cols = _subfield_columns("alignments3D/shift", (2,))
            new_shift = stack.shifts / align_psize[:, None]
            if all(c in table.columns for c in shift_cols):
                orig = table[shift_cols].to_numpy(dtype=np.float64)
                same = np.isclose(orig * align_psize[:, None], stack.shifts, rtol=1e-9, atol=1e-9).all(axis=1)
                new_shift = np.where(same[:, None], orig, new_shift)
            out["alignments3D/shift"] = new_shift
        known = stack.half_set > 0
        split = np.asarray(out["alignments3D/split"], dtype=np.int64)
        split[known] = stack.half_set[known] - 1
        out["alignments3D/split"] = split
        if "alpha" not in table.columns:
            out["alignments3D/alpha"] = 1.0
        if stack.class_number is not None:
            out["alignments3D/class"] = np.maximum(stack.class_number - 1, 0)
    return out
