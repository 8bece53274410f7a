"""The gold-standard half-map pipeline: half sets, back-projection of each half, half maps and full map.

:func:`half_sets` splits the particles into two independent halves (keeping particles that share pixels
together); :func:`backproject_halves` inserts them, batch by batch from disk, into one
:class:`~cryolive.projection.Reconstructor` per half; :func:`finalize_halves` turns the two accumulators into
half maps and a full map: unregularised for a known-pose reconstruction (as ``relion_reconstruct``), or with an
FSC-derived Wiener prior (RELION's tau2) for the references of a refinement or classification: a first pass with a
small constant gives the FSC, ``SSNR = FSC / (1 - FSC)`` per half set, then the half maps are remade with that
prior and the full map with RELION's full-set SSNR (docs/maths.md, "Half maps and the Wiener prior").
:func:`reconstruct` runs the three for a known-pose reconstruction in memory and adds the gold-standard FSC.

Shapes and units: particle images are ``(n, n)`` real, maps ``(n, n, n)`` ``[z, y, x]`` on the chosen backend
(:mod:`cryolive.backend`; :class:`HalfMaps` holds NumPy float32), half-set labels ``(N,)`` int in ``{1, 2}``,
origins in Å in the particle stack and in pixels inside the reconstructor, resolutions in Å.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cryolive.backend import to_numpy, xp
from cryolive.batching import AdaptiveBatch
from cryolive.image.ctf import ctf_2d
from cryolive.image.fourier import rfft2c
from cryolive.io import InputError, ParticleStack
from cryolive.projection import Reconstructor
from cryolive.resolution.fsc import FSCResult, fsc, fsc_weight, gold_standard_fsc, ssnr_from_fsc

#: device bytes a back-projected image needs per pixel of its box before insertion (the image, its transforms and
#: CTF); the insertion sizes its own chunks
BACKPROJECT_BYTES_PER_PIXEL = 48


#: a random split whose neighbour groups would leave the smaller half with less than this fraction of the
#: particles (e.g. a few densely picked micrographs) is redone with the next, shorter distance of
#: :data:`NEIGHBOUR_DISTANCES`
MIN_HALF_FRACTION = 0.45

#: distances (in boxes) within which picks on one micrograph are kept in one half set, tried in turn until the
#: halves balance: boxes that overlap (they share pixels); picks that could be the same particle (closer than half
#: a box: duplicate picks, whose shared noise lands at the same place in 3D once both are aligned; two *different*
#: particles that share pixels put them at different places); identical images only
NEIGHBOUR_DISTANCES = (1.0, 0.5, 0.0)
#: picks on one micrograph closer than this (in boxes) are taken as duplicate picks of one particle
DUPLICATE_DISTANCE = NEIGHBOUR_DISTANCES[1]
#: what the log says of the particles kept together at each distance of :data:`NEIGHBOUR_DISTANCES`
_KEPT_TOGETHER = {
    1.0: "share pixels with a neighbour or are duplicates",
    0.5: "are picks closer than half a box, likely duplicate picks (overlapping boxes chained into groups too big "
         "to balance the halves)",
    0.0: "are duplicate images (picks chained into groups too big to balance the halves)",
}


def half_sets(stack: ParticleStack, seed: int = 0) -> np.ndarray:
    """Half-set labels ``(N,)`` int in ``{1, 2}``: the file's own (``rlnRandomSubset``), or a random split where
    any is missing.

    The random split keeps *neighbours* together (:func:`neighbour_groups`): the same image listed twice, and picks
    on one micrograph closer than a box, whose images share pixels and so share noise (duplicate picks of one
    particle also share its pose). In different half sets they would correlate the half maps at every resolution
    and inflate the gold-standard FSC. Groups are shuffled (``seed``) and cut where the cumulative count passes
    half the particles, so the halves stay balanced; when the groups are too big for that (the smaller half under
    :data:`MIN_HALF_FRACTION`: few, densely picked micrographs, where overlapping boxes chain into one group), the
    split is redone keeping only picks closer than half a box together (duplicate picks of one particle), and
    then only identical images (:data:`NEIGHBOUR_DISTANCES`).
    """
    half = np.asarray(stack.half_set, dtype=int).copy()
    missing = ~np.isin(half, (1, 2))
    if missing.any():
        idx = np.nonzero(missing)[0]
        for within in NEIGHBOUR_DISTANCES:
            labels = _split_groups(neighbour_groups(stack, within)[idx], seed)
            if min(np.mean(labels == 1), np.mean(labels == 2)) >= MIN_HALF_FRACTION or len(idx) < 2:
                break
        half[idx] = labels
    return half


def kept_within(stack: ParticleStack, half: np.ndarray) -> float:
    """The longest distance of :data:`NEIGHBOUR_DISTANCES` (in boxes) within which the half-set labels ``half``
    ``(N,)`` keep every pair of picks on one micrograph in one half (0: only identical images, or not even those)."""
    for within in NEIGHBOUR_DISTANCES:
        if split_neighbours(stack, half, within) == 0:
            return within
    return 0.0


def describe_half_sets(stack: ParticleStack, half: np.ndarray) -> str:
    """One log line on the half sets ``half`` ``(N,)`` of ``stack``: their sizes, where they came from (the file's
    ``rlnRandomSubset`` or a random split) and how many particles a random split kept together with a neighbour
    (duplicate images, or picks on one micrograph closer than a box, :func:`neighbour_groups`)."""
    n1, n2 = int(np.sum(half == 1)), int(np.sum(half == 2))
    own = np.isin(np.asarray(stack.half_set, int), (1, 2))
    if own.all():
        # overlapping boxes of two different particles are harmless in different halves; duplicate picks are not
        split = split_neighbours(stack, half, within=DUPLICATE_DISTANCE)
        warn = "" if split == 0 else (
            f"; WARNING: {split:,} particles have a pick closer than half a box (a duplicate pick) in the other "
            "half set, which correlates the half maps and inflates the GSFSC: remove duplicate picks, or drop "
            "rlnRandomSubset from the STAR to let cryolive split them")
        return f"half sets {n1:,} / {n2:,} particles (the file's rlnRandomSubset{warn})"
    within = kept_within(stack, half)
    groups = neighbour_groups(stack, within)[~own]
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    shared = int(np.sum(sizes[inverse] > 1))
    apix = coordinate_pixel_size(stack)
    scale = "" if np.allclose(apix, stack.pixel_size) else f"; coordinates read at {float(np.min(apix)):.4g} Å/px"
    what = _KEPT_TOGETHER[within]
    return (f"half sets {n1:,} / {n2:,} particles (random split{'' if own.sum() == 0 else ' where the file has none'}"
            f"; {shared:,} particles {what}, kept in one half with them{scale})")


def split_neighbours(stack: ParticleStack, half: np.ndarray, within: float = 1.0) -> int:
    """How many particles sit in a group of :func:`neighbour_groups` (duplicates, picks closer than ``within``
    boxes) whose members the half-set labels ``half`` ``(N,)`` put in both halves."""
    groups = neighbour_groups(stack, within)
    both = pd.DataFrame({"g": groups, "h": half}).groupby("g")["h"].nunique()
    return int(np.isin(groups, both.index[(both > 1).to_numpy()]).sum())


def _split_groups(groups: np.ndarray, seed: int) -> np.ndarray:
    """Labels ``(N,)`` in ``{1, 2}`` that keep each group (``(N,)`` int labels) in one half: the groups are
    shuffled (``seed``) and cut where the cumulative count passes half the particles."""
    rng = np.random.default_rng(seed)
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    ends = np.cumsum(sizes[order])
    first_half = np.empty(len(uniq), bool)
    first_half[order] = (ends - sizes[order] / 2.0) <= ends[-1] / 2.0
    return np.where(first_half[inverse], 1, 2)


def coordinate_pixel_size(stack: ParticleStack) -> np.ndarray:
    """Å per pixel of each particle's ``rlnCoordinateX/Y`` ``(N,)``: coordinates are in pixels of the micrograph,
    which differ from the particles' when they were extracted with rescaling (binned particles). From the optics
    group's ``rlnMicrographPixelSize``, else its ``rlnMicrographOriginalPixelSize`` (RELION 3.1+; as
    ``relion_star_handler --remove_duplicates`` does), else the particle table's own columns of those names, else
    the particles' pixel size."""
    n = len(stack)
    out = np.full(n, np.nan)
    sources = []
    if stack.optics is not None and "rlnOpticsGroup" in stack.optics.columns:
        groups = pd.to_numeric(stack.optics["rlnOpticsGroup"], errors="coerce").to_numpy()
        for label in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
            if label in stack.optics.columns:
                per_group = dict(zip(groups, pd.to_numeric(stack.optics[label], errors="coerce"), strict=True))
                sources.append(np.array([per_group.get(g, np.nan) for g in stack.optics_group], float))
    for label in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
        if label in stack.table.columns:
            sources.append(pd.to_numeric(stack.table[label], errors="coerce").to_numpy(float))
    for values in sources:
        use = ~np.isfinite(out) & np.isfinite(values) & (values > 0)
        out[use] = values[use]
    return np.where(np.isfinite(out), out, float(stack.pixel_size))


def neighbour_groups(stack: ParticleStack, within: float = 1.0) -> np.ndarray:
    """Group label ``(N,)`` int per particle: particles that share pixels get one label.

    Two particles are grouped when they are the same image (same stack and index) or, with ``within`` > 0, when
    they were picked on the same micrograph (``rlnMicrographName``) less than ``within`` boxes apart
    (``rlnCoordinateX/Y``, in micrograph pixels of :func:`coordinate_pixel_size` Å: a box of ``n`` particle pixels
    spans ``n * pixel_size / that`` of them; 1: the boxes overlap). Without micrograph names or coordinates only
    identical images are grouped.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(stack)
    image_key = stack.stack_file_id.astype(np.int64) * (int(stack.stack_index.max(initial=0)) + 1) \
        + stack.stack_index
    _, same_image = np.unique(image_key, return_inverse=True)
    rows, cols = [np.arange(n)], [same_image + n]  # particle -> its image node
    table = stack.table
    if within > 0 and {"rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"} <= set(table.columns) \
            and stack.box > 0:
        xy = np.stack([pd.to_numeric(table["rlnCoordinateX"], errors="coerce").to_numpy(float),
                       pd.to_numeric(table["rlnCoordinateY"], errors="coerce").to_numpy(float)], axis=1)
        reach = within * float(stack.box) * float(stack.pixel_size) / coordinate_pixel_size(stack)  # mic. pixels
        valid = np.nonzero(np.isfinite(xy).all(axis=1))[0]
        _, mic_of = np.unique(table["rlnMicrographName"].astype(str).to_numpy()[valid], return_inverse=True)
        order = np.argsort(mic_of, kind="stable")  # the valid particles, micrograph by micrograph
        for sel in np.split(valid[order], np.flatnonzero(np.diff(mic_of[order])) + 1):
            if len(sel) < 2:
                continue
            pairs = cKDTree(xy[sel]).query_pairs(r=float(reach[sel].max()) - 1e-6, output_type="ndarray")
            if len(pairs):
                rows.append(sel[pairs[:, 0]])
                cols.append(sel[pairs[:, 1]])
    r, c = np.concatenate(rows), np.concatenate(cols)
    size = n + int(same_image.max(initial=0)) + 1
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def backproject_halves(stack: ParticleStack, half: np.ndarray, symmetry: str = "C1",
                       batch_size: int = 256) -> Iterator[tuple[int, tuple[Reconstructor, Reconstructor]]]:
    """Insert every particle of ``stack`` into the reconstructor of its half set, batch by batch.

    ``half``: ``(N,)`` labels in ``{1, 2}`` (:func:`half_sets`); ``symmetry``: point group (``C1``, ``Cn``, ``Dn``,
    ``T``, ``O``, ``I1``, ``I2``). Each image ``(n, n)`` is Fourier transformed, its CTF (from ``stack.ctf`` at
    ``stack.pixel_size`` Å/px) applied, and inserted at its pose (RELION ``A``) and origin (Å, converted to
    pixels). Yields ``(n_done, (rec_A, rec_B))`` after each batch (the same two objects each time). Images are read
    from disk in batches, so memory is bounded by ``batch_size``. Poses must be present (:class:`InputError`
    otherwise).

    On the GPU the batch is at most ``batch_size`` and what the free device memory holds
    (:class:`~cryolive.batching.AdaptiveBatch`); out of memory, it is halved and the job goes on. A batch is read,
    transformed and its CTFs made in one step that changes nothing, then inserted (the commit): the insertion
    adapts its own chunks, so an image is never inserted twice.
    """
    if stack.rotations is None:
        raise InputError(f"{stack.source}: the particles have no poses (rlnAngleRot/Tilt/Psi); "
                         "a known-pose reconstruction needs them")
    m = xp()
    recs = (Reconstructor(stack.box, symmetry=symmetry), Reconstructor(stack.box, symmetry=symmetry))
    shifts_px = (np.zeros((len(stack), 2)) if stack.shifts is None else stack.shifts / stack.pixel_size)

    def transforms(start: int, stop: int) -> tuple[np.ndarray, Any, Any]:
        idx = np.arange(start, stop)
        f = rfft2c(m.asarray(stack.images(idx), dtype=m.float32))
        return idx, f, ctf_2d(stack.ctf.subset(idx), stack.box, stack.pixel_size)

    batches = AdaptiveBatch(batch_size, label="back-projection")
    for _, done, (idx, f, ctf) in batches.run(len(stack), transforms, item_bytes=BACKPROJECT_BYTES_PER_PIXEL
                                              * stack.box**2):
        for h, rec in zip((1, 2), recs, strict=True):
            sel = np.nonzero(half[idx] == h)[0]
            if len(sel):
                rec.insert(f, stack.rotations[idx[sel]], ctf=ctf, shifts=shifts_px[idx[sel]], take=sel)
        del f, ctf  # this batch's device arrays, before the next one is read
        yield done, recs


def finalize_halves(rec_a: Reconstructor, rec_b: Reconstructor, passes: int = 2,
                    prior: bool = True) -> tuple[Any, Any, Any]:
    """Half maps and full map ``(half_A, half_B, full)``, each ``(n, n, n)`` on the backend, with or without a
    Wiener prior from the half-map FSC.

    ``prior=False`` (known-pose reconstruction, like ``relion_reconstruct``): all three maps are the plain
    ratio ``num / den`` with a tiny constant. ``prior=True`` (references inside refinement, like RELION's
    auto-refine): pass 1 uses a small constant; each further pass (``passes`` in all) remakes the half maps with
    ``SSNR_half = FSC / (1 - FSC)`` of the previous half maps, and the full map (the sum of both accumulators) is
    made with RELION's full-set conversion ``SSNR = F / (1 - F)``, ``F = sqrt(2 FSC / (1 + FSC))``.
    The accumulators are not changed.
    """
    half_a, half_b = rec_a.finalize(), rec_b.finalize()
    if not prior:  # the full map from the sum of both accumulators (no third copy of them)
        return half_a, half_b, rec_a.finalize(plus=rec_b)
    for _ in range(max(passes - 1, 0)):
        half_a, half_b = regularised_halves(rec_a, rec_b, half_a, half_b)
    curve = fsc(half_a, half_b)
    full = rec_a.finalize(ssnr=ssnr_from_fsc(fsc_weight(curve), full_set=False), plus=rec_b)
    return half_a, half_b, full


def regularised_halves(rec_a: Reconstructor, rec_b: Reconstructor, half_a: Any, half_b: Any) -> tuple[Any, Any]:
    """The half maps ``(n, n, n)`` remade from the accumulators with the Wiener prior ``SSNR_half = FSC / (1 - FSC)``
    per shell, the FSC taken between ``half_a`` and ``half_b`` (RELION's tau2 from the FSC)."""
    ssnr_half = ssnr_from_fsc(fsc(half_a, half_b), full_set=False)
    return rec_a.finalize(ssnr=ssnr_half), rec_b.finalize(ssnr=ssnr_half)


@dataclass(frozen=True)
class HalfMaps:
    """A known-pose reconstruction: NumPy float32 maps ``(n, n, n)`` ``[z, y, x]`` at ``pixel_size`` Å/px, the
    half-set label ``(N,)`` of each particle, and the gold-standard FSC of the half maps (masked and corrected
    when a mask was given; resolutions in Å: ``fsc.res_0143``, ``fsc.res_05``)."""

    half_a: np.ndarray
    half_b: np.ndarray
    map: np.ndarray
    half_set: np.ndarray
    fsc: FSCResult
    pixel_size: float

    @property
    def resolution_A(self) -> float:
        """The gold-standard resolution (Å) at FSC 0.143."""
        return float(self.fsc.res_0143)


def reconstruct(stack: ParticleStack, symmetry: str = "C1", *, mask: Any = None, batch_size: int = 256,
                seed: int = 0, progress: Callable[[int, int], None] | None = None) -> HalfMaps:
    """Known-pose reconstruction of ``stack`` in memory, as ``cryolive reconstruct`` computes it: half sets
    (:func:`half_sets` with ``seed``), back-projection of each half (:func:`backproject_halves`), unregularised
    half maps and full map (:func:`finalize_halves` with ``prior=False``, like ``relion_reconstruct``), and the
    gold-standard FSC of the half maps (:func:`~cryolive.resolution.fsc.gold_standard_fsc`; with ``mask``,
    ``(n, n, n)`` in ``[0, 1]``, masked and phase-randomisation corrected). ``progress(n_done, n_total)`` is
    called after every batch. Nothing is written (the job that writes a folder is
    :func:`cryolive.jobs.reconstruct.reconstruct_job`).
    """
    half = half_sets(stack, seed)
    recs = None
    for done, batch_recs in backproject_halves(stack, half, symmetry, batch_size):
        recs = batch_recs
        if progress is not None:
            progress(done, len(stack))
    if recs is None:
        raise InputError(f"{stack.source}: no particles to reconstruct")
    half_a, half_b, full = finalize_halves(*recs, prior=False)
    result_fsc = gold_standard_fsc(half_a, half_b, stack.pixel_size, mask=mask, seed=seed)
    return HalfMaps(to_numpy(half_a).astype(np.float32), to_numpy(half_b).astype(np.float32),
                    to_numpy(full).astype(np.float32), half, result_fsc, float(stack.pixel_size))
