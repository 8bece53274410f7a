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
    return m.fft.rfft2(m.fft.ifftshift(img, axes=(-2, -1)), axes=(-2, -1))


def irfft2c(f: Any, n: int) -> Any:
    """Inverse of :func:`rfft2c` for images of box ``n``."""
    m = array_module(f)
    return m.fft.fftshift(m.fft.irfft2(f, s=(n, n), axes=(-2, -1)), axes=(-2, -1))


def fftnc(vol: Any) -> Any:
    """Centred full 3D FFT, output also centred (zero frequency at index ``n // 2``)."""
    m = array_module(vol)
    return m.fft.fftshift(m.fft.fftn(m.fft.ifftshift(vol)))


def ifftnc(f: Any) -> Any:
    """Inverse of :func:`fftnc` (real part not taken)."""
    m = array_module(f)
    return m.fft.fftshift(m.fft.ifftn(m.fft.ifftshift(f)))


def rfftnc(vol: Any) -> Any:
    """Centred real 3D FFT of a cubic ``(N, N, N)`` volume ``[z, y, x]`` -> the Hermitian half grid
    ``(N, N, N // 2 + 1)`` complex64: ``kz`` and ``ky`` centred (zero frequency at index ``N // 2``), ``kx = 0 ..
    N // 2``. The other half is ``F(-k) = conj F(k)``. NumPy inputs use ``scipy.fft`` on every core."""
    m = array_module(vol)
    shifted = m.fft.ifftshift(vol)
    if m.__name__ == "numpy":
        import os

        import scipy.fft

        out = scipy.fft.rfftn(shifted.astype(m.float32, copy=False), workers=os.cpu_count() or 1)
    else:
        out = m.fft.rfftn(shifted)
    return m.fft.fftshift(out, axes=(0, 1)).astype(m.complex64, copy=False)


def irfftnc(f: Any, n: int) -> Any:
    """Inverse of :func:`rfftnc`: the half grid ``(n, n, n // 2 + 1)`` -> real ``(n, n, n)`` float32, centred.
    ``f`` may be overwritten (NumPy: transformed in place to bound memory)."""
    m = array_module(f)
    shifted = m.fft.ifftshift(f, axes=(0, 1))
    if m.__name__ == "numpy":
        import os

        import scipy.fft

        del f
        out = scipy.fft.irfftn(shifted, s=(n, n, n), workers=os.cpu_count() or 1, overwrite_x=True)
    else:
        out = m.fft.irfftn(shifted, s=(n, n, n))
    return m.fft.fftshift(out).astype(m.float32, copy=False)


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
