"""RELION STAR particle files (3.0, 3.1, 4 and 5) <-> :class:`~cryolive.io.particles.ParticleStack`.

Reading: ``data_optics`` + ``data_particles`` (3.1+; per-particle optics through ``rlnOpticsGroup``) or one
block with per-particle optics (3.0: pixel size ``rlnDetectorPixelSize * 1e4 / rlnMagnification`` Å, or
``rlnImagePixelSize``). ``rlnImageName`` is ``000123@path.mrcs`` (1-based; paths relative to the STAR file's
folder, a ``project_dir`` or the current directory). Angles are degrees in the file and radians / matrices in
cryolive; ``rlnDefocusAngle`` and ``rlnPhaseShift`` degrees -> radians; origins ``rlnOriginXAngst/YAngst`` Å (or
the old ``rlnOriginX/Y`` in pixels, converted to Å).

Writing: STAR 3.1 (``# version 30001``, ``data_optics`` + ``data_particles``) with every original column
kept and the ParticleStack's values merged in (values that did not change are written exactly as read).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryolive.image.ctf import CTFParams
from cryolive.io._atomic import atomic_path, check_destination
from cryolive.io.errors import InputError
from cryolive.io.mrc import MrcStack
from cryolive.io.particles import (
    ParticleStack,
    check_finite,
    check_stacks,
    image_file_names,
    locate_stacks,
    mixed_value_check,
    round_sig,
    search_dirs,
)
from cryolive.rotations.euler import euler_to_matrix, matrix_to_euler

PathLike = str | os.PathLike

#: labels read as text (so that e.g. a micrograph named ``0003`` keeps its leading zeros)
STRING_LABELS = [
    "rlnImageName", "rlnMicrographName", "rlnImageOriginalName", "rlnOpticsGroupName", "rlnMicrographMovieName",
    "rlnCtfImage", "rlnGroupName", "rlnMicrographMetadata", "rlnOriginalParticleName", "rlnReconstructImageName",
    "rlnMicrographNameNoDW", "rlnCtfPowerSpectrum", "rlnOddZernike", "rlnEvenZernike", "rlnMicrographGainName",
    "rlnMicrographDefectFile", "rlnTomoName", "rlnHelicalTubeID_str",
]
#: labels that belong to ``data_optics`` in STAR 3.1 (moved there when a 3.0 file is written as 3.1)
OPTICS_LABELS = [
    "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
    "rlnImageDimensionality", "rlnMagnification", "rlnDetectorPixelSize", "rlnCtfDataAreCtfPremultiplied",
]
#: optical aberrations cryolive does not model yet (kept and written back, with a warning)
ABERRATION_LABELS = [
    "rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike", "rlnEvenZernike",
    "rlnMagMat00", "rlnMagMat01", "rlnMagMat10", "rlnMagMat11",
]
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_INT_RE = re.compile(r"\s*\d+\s*")


# ------------------------------------------------------------------------------------------------- reading
def read_star(path: PathLike, require_images: bool = True, *, project_dir: PathLike | None = None,
              pixel_size: float | None = None, allow_mixed_pixel_size: bool = False) -> ParticleStack:
    """Read a RELION particle STAR file (3.0 to 5) into a :class:`ParticleStack`.

    ``require_images``: check that every image stack exists, holds the referenced images and has the box of the
    optics table (False: metadata only; stacks are neither checked nor opened, ``box``/``pixel_size`` come from
    the optics table and ``box`` is 0 if the file does not state it). ``project_dir``: another folder where
    relative image paths are looked up (after the STAR file's folder, before the current directory).
    ``pixel_size`` (Å) overrides the file's. ``allow_mixed_pixel_size``: read a file whose optics groups have
    different pixel sizes (the most common becomes ``pixel_size``, with a warning) instead of refusing it.

    Raises InputError (naming the file) for unreadable/malformed files, missing CTF columns, NaN values,
    missing stacks or images, inconsistent boxes/pixel sizes and CTF-premultiplied data
    (``rlnCtfDataAreCtfPremultiplied = 1``). Beam tilt, Zernike and anisotropic-magnification columns are kept in
    ``optics`` but ignored, with a warning.
    """
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: file not found")
    if src.is_dir():
        raise InputError(f"{src}: is a folder, not a STAR file")
    parts, optics, block = _particle_blocks(src)
    n = len(parts)
    has_name = "rlnImageName" in parts.columns
    names = parts["rlnImageName"].astype(object).to_numpy() if has_name else np.full(n, "?", object)

    def row(i: int) -> str:
        return f"data_{block} row {i + 1} (rlnImageName {str(names[i])!r})"

    if not has_name:
        raise InputError(f"{src}: data_{block} has no rlnImageName column; it does not describe particle images")

    # --- optics values per particle (3.1: through rlnOpticsGroup; 3.0: per particle)
    if optics is not None:
        pos, group = _optics_rows(src, parts, optics, block, row)
    else:
        pos, group = None, None

    def param(label: str) -> np.ndarray | None:
        if optics is not None and label in optics.columns:
            return _numeric(src, optics[label], "data_optics", label)[pos]
        if label in parts.columns:
            return _numeric(src, parts[label], f"data_{block}", label)
        return None

    required = {"rlnDefocusU": None, "rlnDefocusV": None, "rlnDefocusAngle": None, "rlnVoltage": None,
                "rlnSphericalAberration": None, "rlnAmplitudeContrast": None}
    for label in required:
        required[label] = param(label)
    missing = [k for k, v in required.items() if v is None]
    if missing:
        where = "data_optics or data_" + block if optics is not None else "data_" + block
        raise InputError(f"{src}: required CTF column(s) {', '.join(missing)} not found in {where}")
    used = list(required) + ["rlnPhaseShift", "rlnCtfBfactor", "rlnCtfScalefactor", *_ANGLES, "rlnOriginXAngst",
                             "rlnOriginYAngst", "rlnOriginX", "rlnOriginY", "rlnRandomSubset", "rlnClassNumber",
                             "rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnMagnification",
                             "rlnDetectorPixelSize", "rlnPixelSize"]
    check_finite(src, parts, used, row, f"data_{block}")
    if optics is not None:
        check_finite(src, optics, used, lambda i: f"data_optics row {i + 1}", "data_optics")

    premult = param("rlnCtfDataAreCtfPremultiplied")
    if premult is not None and (premult != 0).any():
        i = int(np.flatnonzero(premult != 0)[0])
        raise InputError(f"{src}: rlnCtfDataAreCtfPremultiplied = 1 (first at {row(i)}): the images are "
                         "pre-multiplied by their CTF, which cryolive cannot handle yet")
    dims = param("rlnImageDimensionality")
    if dims is not None and (dims != 2).any():
        raise InputError(f"{src}: rlnImageDimensionality is {int(dims[dims != 2][0])}; only 2-D particle images "
                         "are supported")
    _warn_aberrations(src, optics if optics is not None else parts)

    # --- pixel size and box
    if pixel_size is not None:
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"{src}: pixel_size must be a positive number of Å, not {pixel_size!r}")
        psize = np.full(n, float(pixel_size))
    elif (p := param("rlnImagePixelSize")) is not None:
        psize = p
    elif (det := param("rlnDetectorPixelSize")) is not None and (mag := param("rlnMagnification")) is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            psize = det * 1e4 / mag
    elif (p := param("rlnPixelSize")) is not None:  # RELION 3.0 tools and other programs write this one
        psize = p
    else:
        raise InputError(f"{src}: no pixel size: the file has none of rlnImagePixelSize, rlnPixelSize, or "
                         "rlnDetectorPixelSize with rlnMagnification; add one (Å), or pass pixel_size= (Å) from "
                         "Python")
    if not (np.isfinite(psize).all() and (psize > 0).all()):
        i = int(np.flatnonzero(~(np.isfinite(psize) & (psize > 0)))[0])
        raise InputError(f"{src}: invalid pixel size {psize[i]:g} Å at {row(i)}")
    box_p = param("rlnImageSize")

    voltage, cs, amp = required["rlnVoltage"], required["rlnSphericalAberration"], required["rlnAmplitudeContrast"]
    if optics is None:  # RELION 3.0: make optics groups from unique voltage / Cs / Q / pixel size (/ box)
        keys = pd.DataFrame({"v": voltage, "cs": cs, "q": amp, "p": psize,
                             "b": box_p if box_p is not None else np.zeros(n)})
        group = keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy() + 1
    hint = ("Split the file by optics group, or pass allow_mixed_pixel_size=True to read it anyway "
            "(metadata-only use).")
    set_psize = mixed_value_check(src, psize, group, "pixel size", " Å", allow_mixed_pixel_size, hint)
    box = 0
    if box_p is not None:
        box = int(mixed_value_check(src, box_p, group, "box size", " px", False,
                                    "Split the file by optics group."))

    # --- CTF
    def opt(label: str, default: float) -> np.ndarray:
        v = param(label)
        return np.full(n, default) if v is None else v

    ctf = CTFParams.make(required["rlnDefocusU"], required["rlnDefocusV"], np.deg2rad(required["rlnDefocusAngle"]),
                         voltage, cs, amp, np.deg2rad(opt("rlnPhaseShift", 0.0)), opt("rlnCtfBfactor", 0.0),
                         opt("rlnCtfScalefactor", 1.0))

    # --- poses, half sets, classes
    rotations = None
    if any(a in parts.columns for a in _ANGLES):
        rot, tilt, psi = (np.deg2rad(_numeric(src, parts[a], f"data_{block}", a)) if a in parts.columns
                          else np.zeros(n) for a in _ANGLES)
        rotations = euler_to_matrix(rot, tilt, psi)
    shifts = _read_shifts(src, parts, block, psize)
    half_set = np.zeros(n, np.int64)
    if "rlnRandomSubset" in parts.columns:
        half_set = _integers(src, parts["rlnRandomSubset"], f"data_{block}", "rlnRandomSubset", row)
        bad = ~np.isin(half_set, (0, 1, 2))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{src}: rlnRandomSubset must be 1 or 2, got {half_set[i]} at {row(i)}")
    class_number = None
    if "rlnClassNumber" in parts.columns:
        class_number = _integers(src, parts["rlnClassNumber"], f"data_{block}", "rlnClassNumber", row)

    # --- images
    files, index1 = _split_image_names(src, names, row)
    dirs = search_dirs(src, project_dir)
    stack_paths, stack_names, file_id = locate_stacks(src, files, files, dirs, require_images, row)
    if require_images:
        box = check_stacks(src, stack_paths, file_id, index1 - 1, box, psize, row, index_base=1)
        _check_unnumbered(src, names, stack_paths, file_id, row)

    if optics is None:
        optics = _make_optics(group, voltage, cs, amp, psize, box)
    else:
        optics = optics.copy()
        if pixel_size is not None:
            optics["rlnImagePixelSize"] = float(pixel_size)
    return ParticleStack(pixel_size=set_psize, box=box, ctf=ctf, stack_paths=stack_paths, stack_names=stack_names,
                         stack_file_id=file_id, stack_index=index1 - 1, rotations=rotations, shifts=shifts,
                         half_set=half_set, class_number=class_number, optics_group=group, table=parts,
                         optics=optics, source=src)


def _particle_blocks(src: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(particles, optics or None, particle block name); InputError for unreadable or particle-less files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(src, always_dict=True, parse_as_string=STRING_LABELS)
    except Exception as exc:  # starfile/pandas raise many types on garbage
        raise InputError(f"{src}: not a readable STAR file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blocks, dict) or not blocks:
        raise InputError(f"{src}: not a STAR file (no data_ blocks found)")
    frames = {name: _as_frame(b) for name, b in blocks.items()}
    optics = frames.get("optics")
    if "particles" in frames:
        name = "particles"
    else:
        candidates = [k for k, df in frames.items() if k != "optics" and "rlnImageName" in df.columns]
        if len(candidates) != 1:
            found = ", ".join(f"data_{k}" for k in frames) or "none"
            raise InputError(f"{src}: no data_particles block (nor a single block with rlnImageName); "
                             f"blocks found: {found}")
        name = candidates[0]
        optics = None  # a 3.0 file: per-particle optics
    parts = frames[name]
    if len(parts) == 0:
        raise InputError(f"{src}: data_{name} holds no particles")
    return parts.reset_index(drop=True), optics, name


def _as_frame(block: Any) -> pd.DataFrame:
    if isinstance(block, pd.DataFrame):
        return block
    if isinstance(block, dict):  # a key-value (non-loop) block: one row
        return pd.DataFrame({k: [v] for k, v in block.items()})
    return pd.DataFrame()


def _numeric(src: Path, col: pd.Series, where: str, label: str) -> np.ndarray:
    try:
        return col.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        bad = pd.to_numeric(col, errors="coerce").isna()
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{src}: {where} column {label} holds a non-numeric value {col.iloc[i]!r} "
                         f"(row {i + 1})") from None


def _integers(src: Path, col: pd.Series, where: str, label: str, row: Any) -> np.ndarray:
    vals = _numeric(src, col, where, label)
    bad = vals != np.round(vals)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{src}: {where} column {label} must hold integers, got {float(vals[i]):g} at {row(i)}")
    return vals.astype(np.int64)


def _optics_rows(src: Path, parts: pd.DataFrame, optics: pd.DataFrame, block: str,
                 row: Any) -> tuple[np.ndarray, np.ndarray]:
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(f"{src}: data_optics has no rlnOpticsGroup column")
    if "rlnOpticsGroup" not in parts.columns:
        raise InputError(f"{src}: data_{block} has no rlnOpticsGroup column (needed with a data_optics block)")
    ogroups = _integers(src, optics["rlnOpticsGroup"], "data_optics", "rlnOpticsGroup", lambda i: f"row {i + 1}")
    if len(set(ogroups.tolist())) != len(ogroups):
        raise InputError(f"{src}: data_optics lists an optics group more than once ({ogroups.tolist()})")
    group = _integers(src, parts["rlnOpticsGroup"], f"data_{block}", "rlnOpticsGroup", row)
    pos = pd.Index(ogroups).get_indexer(group)
    if (pos < 0).any():
        i = int(np.flatnonzero(pos < 0)[0])
        raise InputError(f"{src}: {row(i)} is in optics group {group[i]}, which data_optics does not list "
                         f"(groups: {ogroups.tolist()})")
    return pos, group


def _read_shifts(src: Path, parts: pd.DataFrame, block: str, psize: np.ndarray) -> np.ndarray | None:
    where = f"data_{block}"
    for xl, yl, scale in (("rlnOriginXAngst", "rlnOriginYAngst", None), ("rlnOriginX", "rlnOriginY", psize)):
        has_x, has_y = xl in parts.columns, yl in parts.columns
        if has_x != has_y:
            raise InputError(f"{src}: {where} has {xl if has_x else yl} but not {yl if has_x else xl}")
        if has_x:
            xy = np.stack([_numeric(src, parts[xl], where, xl), _numeric(src, parts[yl], where, yl)], axis=1)
            return xy if scale is None else xy * scale[:, None]
    return None


def _split_image_names(src: Path, names: np.ndarray, row: Any) -> tuple[np.ndarray, np.ndarray]:
    """``000123@path`` -> (path, 123); a name without ``@`` is image 1 of that file."""
    s = pd.Series(names, dtype=object).astype(str)
    parts = s.str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    number = np.where(has_at, parts[0].to_numpy(), "1")
    files = np.where(has_at, parts[2].to_numpy(), s.to_numpy()).astype(object)
    valid = np.array(pd.Series(number, dtype=object).str.fullmatch(_INT_RE), dtype=bool)
    valid &= pd.Series(files, dtype=object).str.strip().str.len().to_numpy() > 0
    index1 = np.zeros(len(s), np.int64)
    index1[valid] = pd.Series(number[valid]).astype(np.int64).to_numpy()
    valid &= index1 >= 1
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        raise InputError(f"{src}: {row(i)}: rlnImageName must look like 000123@stack.mrcs (image numbers from 1)")
    return files, index1


def _check_unnumbered(src: Path, names: np.ndarray, stack_paths: list[Path], file_id: np.ndarray, row: Any) -> None:
    """A name without ``@`` is a one-image file: refuse one naming a stack of several images (which image?)."""
    bare = ~pd.Series(names, dtype=object).astype(str).str.contains("@", regex=False).to_numpy()
    for fid in np.unique(file_id[bare]).tolist():
        with MrcStack(stack_paths[fid]) as stack:
            n = len(stack)
        if n > 1:
            i = int(np.flatnonzero(bare & (file_id == fid))[0])
            raise InputError(f"{src}: {row(i)} has no image number (000123@{stack_paths[fid].name}) but "
                             f"{stack_paths[fid].name} holds {n} images")


def _warn_aberrations(src: Path, table: pd.DataFrame) -> None:
    present = []
    for label in ABERRATION_LABELS:
        if label not in table.columns:
            continue
        col = table[label]
        if label.endswith("Zernike"):
            nums = col.astype(str).str.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
            nontrivial = any(float(v) != 0 for lst in nums for v in lst)
        else:
            vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            ident = 1.0 if label in ("rlnMagMat00", "rlnMagMat11") else 0.0
            nontrivial = bool(np.any(vals != ident))
        if nontrivial:
            present.append(label)
    if present:
        warnings.warn(f"{src}: {', '.join(present)} (beam tilt / higher-order aberrations / anisotropic "
                      "magnification) are ignored by cryolive; they are kept and written back unchanged",
                      stacklevel=3)


def _make_optics(group: np.ndarray, voltage: np.ndarray, cs: np.ndarray, amp: np.ndarray, psize: np.ndarray,
                 box: int) -> pd.DataFrame:
    """A RELION 3.1 optics table for per-particle (3.0 / cryoSPARC) optics values grouped as ``group``."""
    df = pd.DataFrame({"rlnOpticsGroup": group, "rlnVoltage": voltage, "rlnSphericalAberration": cs,
                       "rlnAmplitudeContrast": amp, "rlnImagePixelSize": psize})
    df = df.groupby("rlnOpticsGroup", sort=True).first().reset_index()
    df.insert(1, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in df["rlnOpticsGroup"]])
    if box:
        df["rlnImageSize"] = int(box)
    df["rlnImageDimensionality"] = 2
    return df


# ------------------------------------------------------------------------------------------------- writing
def write_star(stack: ParticleStack, path: PathLike, overwrite: bool = False, *,
               relative_to: PathLike | None = None) -> None:
    """Write ``stack`` as a RELION 3.1 particle STAR file (``data_optics`` + ``data_particles``), atomically.

    Every original ``rln`` column is kept; the stack's values are merged in: CTF (defocus Å, angles in
    degrees), ``rlnAngleRot/Tilt/Psi`` (degrees), ``rlnOriginXAngst/YAngst`` (Å), ``rlnRandomSubset``,
    ``rlnClassNumber`` (when set), ``rlnOpticsGroup``; values that did not change are written exactly as read.
    Optics groups are renumbered 1..K over the groups in use (a 3.0 or .cs input gets groups made from unique
    voltage / Cs / amplitude contrast / pixel size). ``rlnImageName`` is ``%06d@path`` with the path relative
    to the *project folder* RELION runs in: ``relative_to``, by default the current working directory (not the
    STAR file's folder), as RELION resolves image names. A stack outside that folder is named by its absolute
    path; a stack that does not exist keeps the name as read.
    FileExistsError if ``path`` exists and ``overwrite`` is False.
    """
    dest = check_destination(path, overwrite)
    project = Path(os.path.abspath(relative_to if relative_to is not None else Path.cwd()))
    optics, parts = star_tables(stack, project)
    text = ("\n# version 30001\n\n" + _format_block("optics", optics) + "\n\n# version 30001\n\n"
            + _format_block("particles", parts) + "\n")
    with atomic_path(dest, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def star_tables(stack: ParticleStack, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``(data_optics, data_particles)`` tables :func:`write_star` writes (image paths relative to the
    project folder ``out_dir``, absolute outside it)."""
    n = len(stack)
    ctf = stack.ctf
    table = stack.table
    parts = pd.DataFrame({c: table[c].to_numpy() for c in table.columns
                          if isinstance(c, str) and c.startswith("rln")}, index=pd.RangeIndex(n))
    parts = parts.drop(columns=[c for c in OPTICS_LABELS + ["rlnOriginX", "rlnOriginY"] if c in parts.columns])
    psize = stack.particle_pixel_sizes()

    # optics groups: one per (original group, voltage, Cs, Q, pixel size) in use, renumbered 1..K
    keys = pd.DataFrame({"g": stack.optics_group, "v": ctf.voltage, "cs": ctf.cs, "q": ctf.amp_contrast,
                         "p": psize})
    new_group = keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy() + 1
    firsts = keys.assign(new=new_group).drop_duplicates("new").sort_values("new")
    templates = stack.optics if stack.optics is not None else pd.DataFrame({"rlnOpticsGroup": []})
    tmpl_index = pd.Index(pd.to_numeric(templates["rlnOpticsGroup"], errors="coerce")) \
        if "rlnOpticsGroup" in templates.columns else pd.Index([])
    rows = []
    used_names: set[str] = set()
    for k in firsts.itertuples(index=False):
        pos = tmpl_index.get_indexer([k.g])[0] if len(tmpl_index) else -1
        tmpl = templates.iloc[pos].to_dict() if pos >= 0 else {}
        row: dict[str, Any] = dict(tmpl)
        row["rlnOpticsGroup"] = int(k.new)
        name = str(tmpl.get("rlnOpticsGroupName", f"opticsGroup{k.new}"))
        if name in used_names:
            name = f"{name}_{k.new}"
        used_names.add(name)
        row["rlnOpticsGroupName"] = name
        for label, value in (("rlnVoltage", k.v), ("rlnSphericalAberration", k.cs), ("rlnAmplitudeContrast", k.q),
                             ("rlnImagePixelSize", k.p)):
            row[label] = _keep_or_new(tmpl.get(label), value)
        if "rlnImageSize" not in tmpl and stack.box:
            row["rlnImageSize"] = int(stack.box)
        row.setdefault("rlnImageDimensionality", 2)
        rows.append(row)
    order = ["rlnOpticsGroup", "rlnOpticsGroupName"] + [c for c in templates.columns
                                                         if c not in ("rlnOpticsGroup", "rlnOpticsGroupName")]
    for extra in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                  "rlnImageSize", "rlnImageDimensionality"):
        if extra not in order and any(extra in r for r in rows):
            order.append(extra)
    optics = pd.DataFrame(rows)
    optics = optics[[c for c in order if c in optics.columns]]
    for label in ("rlnOpticsGroup", "rlnImageSize", "rlnImageDimensionality"):
        if label in optics.columns and optics[label].notna().all():
            optics[label] = optics[label].astype(np.int64)

    # particles
    names = np.asarray(image_file_names(stack, out_dir, climb=False), dtype=object)
    numbers = pd.Series(stack.stack_index + 1).map("{:06d}".format)
    parts["rlnImageName"] = (numbers + "@" + pd.Series(names[stack.stack_file_id])).to_numpy()
    parts["rlnOpticsGroup"] = new_group
    for label, values in (("rlnDefocusU", ctf.defocus_u), ("rlnDefocusV", ctf.defocus_v),
                          ("rlnDefocusAngle", np.rad2deg(ctf.astig_angle)),
                          ("rlnPhaseShift", np.rad2deg(ctf.phase_shift)), ("rlnCtfBfactor", ctf.bfactor),
                          ("rlnCtfScalefactor", ctf.scale)):
        parts[label] = _merge(parts.get(label), values)
    if stack.rotations is not None:
        new = np.rad2deg(np.stack(matrix_to_euler(stack.rotations), axis=1))
        if all(a in parts.columns for a in _ANGLES):
            orig = np.stack([pd.to_numeric(parts[a], errors="coerce").to_numpy(float) for a in _ANGLES], axis=1)
            with np.errstate(invalid="ignore"):
                same = np.abs(euler_to_matrix(*np.deg2rad(orig.T)) - stack.rotations).max(axis=(1, 2)) < 1e-9
            same &= np.isfinite(orig).all(axis=1)
        else:
            orig, same = np.zeros_like(new), np.zeros(n, bool)
        angles = orig.copy()
        angles[~same] = round_sig(new[~same])
        for j, a in enumerate(_ANGLES):
            parts[a] = angles[:, j]
    if stack.shifts is not None:
        parts["rlnOriginXAngst"] = _merge(parts.get("rlnOriginXAngst"), stack.shifts[:, 0])
        parts["rlnOriginYAngst"] = _merge(parts.get("rlnOriginYAngst"), stack.shifts[:, 1])
    if "rlnRandomSubset" in parts.columns or (stack.half_set != 0).any():
        parts["rlnRandomSubset"] = stack.half_set.astype(np.int64)
    if stack.class_number is not None:
        parts["rlnClassNumber"] = stack.class_number.astype(np.int64)
    return optics, parts


def _keep_or_new(orig: Any, new: float) -> Any:
    try:
        if orig is not None and np.isclose(float(orig), float(new), rtol=1e-9, atol=1e-12):
            return orig
    except (TypeError, ValueError):
        pass
    return float(round_sig(np.array([new]))[0])


def _merge(orig_col: pd.Series | None, new: np.ndarray) -> np.ndarray:
    """New values (rounded to 12 significant digits), but the original ones where they agree within 1e-9."""
    new = np.asarray(new, dtype=float)
    if orig_col is None:
        out = round_sig(new)
        is_int = False
    else:
        orig = pd.to_numeric(orig_col, errors="coerce").to_numpy(dtype=float)
        same = np.isclose(orig, new, rtol=1e-9, atol=1e-9)
        out = orig.copy()
        if (~same).any():
            out[~same] = round_sig(new[~same])
        is_int = pd.api.types.is_integer_dtype(orig_col)
    if is_int and (out == np.round(out)).all():
        return out.astype(np.int64)
    return out


def _format_block(name: str, df: pd.DataFrame) -> str:
    header = [f"data_{name}", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(df.columns)]
    columns = [_column_strings(df[c]) for c in df.columns]
    rows = [" ".join(vals) for vals in zip(*columns, strict=True)] if columns else []
    return "\n".join(header + rows) + "\n"


def _column_strings(col: pd.Series) -> list[str]:
    if pd.api.types.is_bool_dtype(col):
        return [str(int(v)) for v in col.tolist()]
    if pd.api.types.is_integer_dtype(col) and not col.isna().any():
        return [str(int(v)) for v in col.tolist()]
    if pd.api.types.is_float_dtype(col):  # repr: the shortest text that reads back as the same float
        codes, uniques = pd.factorize(col.astype(np.float64), use_na_sentinel=True)
        text = np.array([repr(float(v)) for v in uniques.tolist()] + ["nan"], dtype=object)
        return text[codes].tolist()
    codes, uniques = pd.factorize(col.astype(object), use_na_sentinel=True)
    quoted = np.array([_quote(v) for v in uniques.tolist()] + ['""'], dtype=object)
    return quoted[codes].tolist()  # code -1 (missing) picks the trailing '""'


def _quote(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return '""'
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    s = str(value)
    if s == "":
        return '""'
    if any(ch.isspace() for ch in s) or s[0] in "\"'#$;_" or s.lower().startswith(("data_", "loop_", "save_")):
        q = "'" if '"' in s else '"'
        return f"{q}{s}{q}"
    return s
