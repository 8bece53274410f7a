"""Centred Fourier transforms and frequency grids shared by every module.

Conventions
-----------
* Real-space arrays are indexed ``[..., y, x]`` (2D) or ``[z, y, x]`` (3D); the centre is pixel ``n // 2`` on
  each axis (odd and even boxes alike).
* "Centred" transforms move the centre pixel to index 0 first (``ifftshift``), so a centred, symmetric object has
  a real transform and phases do not alternate. 2D images use ``rfft2`` layout: ``[..., ky, kx]`` with
  ``ky`` in ``fftfreq`` order and ``kx = 0 .. n // 2``.
* The transforms run where their input lies (NumPy for host arrays, CuPy for device arrays: see
  :func:`cryolive.backend.array_module`); the grids are made on the chosen backend.
* Frequencies are in **cycles per pixel** (``[-0.5, 0.5)``); divide by the pixel size (Å) for 1/Å.
* Shifting an image by ``t = (tx, ty)`` pixels (content moves towards +x, +y) multiplies its transform by
  ``exp(-2 pi i (kx tx + ky ty))``.
"""

from __future__ import annotations

from typing import Any

from cryolive.backend import array_module, xp


def rfft2c(img: Any) -> Any:
    """Centred real FFT of images ``(..., n, n)`` -> ``(..., n, n // 2 + 1)`` complex."""
    m = array_module(img)
    fft, kw = fft_module(m)
    return fft.rfft2(m.fft.ifftshift(img, axes=(-2, -1)), axes=(-2, -1), **kw)


def irfft2c(f: Any, n: int) -> Any:
    """Inverse of :func:`rfft2c` for images of box ``n``."""
    m = array_module(f)
    fft, kw = fft_module(m, overwrite=False)
    return m.fft.fftshift(fft.irfft2(f, s=(n, n), axes=(-2, -1), **kw), axes=(-2, -1))


def fftnc(vol: Any) -> Any:
    """Centred full 3D FFT, output also centred (zero frequency at index ``n // 2``)."""
    m = array_module(vol)
    fft, kw = fft_module(m)
    return m.fft.fftshift(fft.fftn(m.fft.ifftshift(vol), **kw))


def ifftnc(f: Any) -> Any:
    """Inverse of :func:`fftnc` (real part not taken)."""
    m = array_module(f)
    fft, kw = fft_module(m)
    return m.fft.fftshift(fft.ifftn(m.fft.ifftshift(f), **kw))


#: elements per chunk of the axis-by-axis inverse transform (bounds its temporaries)
_CHUNK = 1 << 22


def fft_module(m: Any, overwrite: bool = True) -> tuple[Any, dict]:
    """The FFT module for arrays of ``m`` and its keyword arguments: ``scipy.fft`` on every core for NumPy (same
    pocketfft as ``numpy.fft``, in the input's precision; ``overwrite``: the input may be destroyed, for inputs the
    caller made itself) or ``cupy.fft``."""
    if m.__name__ == "numpy":
        import os

        import scipy.fft

        return scipy.fft, {"workers": os.cpu_count() or 1, "overwrite_x": overwrite}
    return m.fft, {}


def _alternating(idx: Any, m: Any) -> Any:
    """``(-1) ** idx`` as float32 (multiplying real space by it moves the spectrum by half the grid)."""
    return (1 - 2 * (idx % 2)).astype(m.float32)


def padded_rfftnc(vol: Any, big: int) -> Any:
    """Real 3D FFT of a cubic volume ``(n, n, n)`` (centre voxel ``n // 2``) zero-padded to ``(N, N, N)``, ``N = big``
    (even): the Hermitian half grid ``(N, N, N // 2 + 1)`` complex64 with ``kz``, ``ky`` centred (zero frequency at
    index ``N // 2``) and ``kx = 0 .. N // 2`` — the same values as ``fftshift(fftn(ifftshift(pad(vol))))`` on those
    indices. The volume is placed with its centre at index 0 and multiplied by ``(-1)^(z + y)`` (which centres the
    spectrum along z and y), so no full-size shifted copy is made: peak memory is the padded volume and the output.
    """
    m = array_module(vol)
    v = m.asarray(vol, dtype=m.float32)
    n = v.shape[0]
    dest = (m.arange(n) - n // 2) % big  # where voxel a goes: its offset from the centre, wrapped
    sign = _alternating(dest, m)
    padded = m.zeros((big, big, big), dtype=m.float32)
    padded[dest[:, None, None], dest[None, :, None], dest[None, None, :]] = \
        v * sign[:, None, None] * sign[None, :, None]
    fft, kw = fft_module(m)
    return fft.rfftn(padded, **kw).astype(m.complex64, copy=False)


def cropped_irfftnc(f: Any, big: int, n: int) -> Any:
    """The central ``(n, n, n)`` block (centre voxel ``n // 2``) of the real volume whose padded half grid
    ``(N, N, N // 2 + 1)`` is laid out as :func:`padded_rfftnc` makes it; float32.

    ``f``: that half grid, or a function ``f(j0, j1)`` returning its columns ``[:, :, j0:j1]`` (so a caller can
    compute the grid a few columns at a time and never hold it whole). The inverse runs axis by axis, in chunks,
    and keeps only the ``n`` planes the crop needs after each axis, so the memory it needs is about ``n / N`` of
    the grid's.
    """
    columns = f if callable(f) else (lambda j0, j1: f[:, :, j0:j1])
    h = big // 2 + 1
    m = array_module(columns(0, 1))
    fft, kw = fft_module(m)
    kw = {k: v for k, v in kw.items() if k != "overwrite_x"}
    keep = (m.arange(n) - n // 2) % big  # offsets from the centre of the kept voxels, wrapped
    sign = _alternating(keep, m)
    step = max(1, _CHUNK // (big * big))
    g = m.empty((n, big, h), dtype=m.complex64)
    for j in range(0, h, step):  # along z, a few x columns at a time: centred kz gives (-1)^z; n planes kept
        g[:, :, j:j + step] = fft.ifft(columns(j, min(h, j + step)), axis=0, **kw)[keep] * sign[:, None, None]
    g2 = m.empty((n, n, h), dtype=m.complex64)
    step = max(1, _CHUNK // (big * h))
    for j in range(0, n, step):  # along y, a few z planes at a time
        g2[j:j + step] = fft.ifft(g[j:j + step], axis=1, **kw)[:, keep] * sign[None, :, None]
    del g
    out = fft.irfft(g2, n=big, axis=2, **kw)[:, :, keep]
    return m.ascontiguousarray(out, dtype=m.float32)


def rfft_freqs_2d(n: int) -> tuple[Any, Any]:
    """``(ky, kx)`` grids (cycles/pixel) of shape ``(n, n // 2 + 1)`` matching :func:`rfft2c`."""
    m = xp()
    ky = m.fft.fftfreq(n).astype(m.float32)
    kx = m.fft.rfftfreq(n).astype(m.float32)
    return m.broadcast_to(ky[:, None], (n, n // 2 + 1)), m.broadcast_to(kx[None, :], (n, n // 2 + 1))


def radial_index_2d(n: int) -> Any:
    """Integer shell index ``round(|k| n)`` of each ``rfft2`` pixel, shape ``(n, n // 2 + 1)``."""
    m = xp()
    ky, kx = rfft_freqs_2d(n)
    return m.rint(m.sqrt(kx * kx + ky * ky) * n).astype(m.int32)


def centered_grid_3d(n: int) -> Any:
    """Radius in pixels from the centre voxel ``n // 2`` for a centred ``(n, n, n)`` grid."""
    m = xp()
    c = m.arange(n, dtype=m.float32) - n // 2
    return m.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)


def radial_index_3d(n: int) -> Any:
    """Integer shell index (pixels from the centre) for a centred 3D transform of box ``n``."""
    m = xp()
    return m.rint(centered_grid_3d(n)).astype(m.int32)


def shift_phase(kx: Any, ky: Any, tx: Any, ty: Any) -> Any:
    """Phase factors ``exp(-2 pi i (kx tx + ky ty))`` that shift images by ``(tx, ty)`` pixels.

    ``kx, ky``: frequency grids (cycles/pixel), e.g. from :func:`rfft_freqs_2d`; ``tx, ty``: arrays of shape
    ``(B,)``. Returns ``(B,) + kx.shape`` complex64.
    """
    m = xp()
    tx = m.asarray(tx, dtype=m.float32).reshape((-1,) + (1,) * kx.ndim)
    ty = m.asarray(ty, dtype=m.float32).reshape((-1,) + (1,) * kx.ndim)
    return m.exp(-2j * m.pi * (kx * tx + ky * ty)).astype(m.complex64)


def shift_images(imgs: Any, tx: Any, ty: Any) -> Any:
    """Shift real images ``(B, n, n)`` by ``(tx, ty)`` pixels (sub-pixel, periodic) in Fourier space."""
    n = imgs.shape[-1]
    ky, kx = rfft_freqs_2d(n)
    return irfft2c(rfft2c(imgs) * shift_phase(kx, ky, tx, ty), n)
