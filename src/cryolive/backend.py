"""The one array-backend switch: NumPy or CuPy, chosen once per process.

``CRYOLIVE_BACKEND=numpy|cupy`` picks it; without it, CuPy is used when a GPU is really usable
(``cupy.cuda.is_available()``, not just an importable module), else NumPy. Core functions call :func:`xp`
and accept/return that module's arrays; :func:`to_numpy` hands NumPy ``float32``/``complex64`` data to
napari, files and plots.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

_XP: ModuleType | None = None


def _cupy_usable() -> bool:
    try:
        import cupy  # noqa: F401

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def _choose() -> ModuleType:
    name = os.environ.get("CRYOLIVE_BACKEND", "").strip().lower()
    if name in ("", "auto"):
        if _cupy_usable():
            import cupy

            return cupy
        return np
    if name == "numpy":
        return np
    if name == "cupy":
        if not _cupy_usable():
            raise RuntimeError("CRYOLIVE_BACKEND=cupy but CuPy cannot use a GPU on this machine")
        import cupy

        return cupy
    raise ValueError(f"CRYOLIVE_BACKEND must be 'numpy' or 'cupy', not {name!r}")


def xp() -> ModuleType:
    """The array module in use (``numpy`` or ``cupy``), chosen on first call."""
    global _XP
    if _XP is None:
        _XP = _choose()
    return _XP


def set_backend(name: str) -> ModuleType:
    """Switch the backend explicitly (``'numpy'`` or ``'cupy'``); meant for tests and benchmarks."""
    global _XP
    old = os.environ.get("CRYOLIVE_BACKEND")
    os.environ["CRYOLIVE_BACKEND"] = name
    try:
        _XP = _choose()
    finally:
        if old is None:
            os.environ.pop("CRYOLIVE_BACKEND", None)
        else:
            os.environ["CRYOLIVE_BACKEND"] = old
    return _XP


def available_backends() -> list[str]:
    """Backends that can run here: always ``'numpy'``, plus ``'cupy'`` when a GPU is usable."""
    return ["numpy", "cupy"] if _cupy_usable() else ["numpy"]


def backend_name() -> str:
    """``'numpy'`` or ``'cupy'``."""
    return "cupy" if xp().__name__ == "cupy" else "numpy"


def device_label() -> str:
    """A short label for the UI/log: ``'CPU (NumPy)'`` or ``'GPU (CuPy: <name>)'``."""
    if backend_name() == "numpy":
        return "CPU (NumPy)"
    import cupy

    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:  # pragma: no cover - depends on the driver
        name = "GPU"
    return f"GPU (CuPy: {name})"


def array_module(a: Any) -> ModuleType:
    """The module that owns array ``a``: CuPy for a CuPy array, else NumPy (so host arrays stay on the host,
    whichever backend is chosen). For helpers that transform data where it lies (e.g. the centred FFTs)."""
    if type(a).__module__.startswith("cupy"):
        return xp() if backend_name() == "cupy" else __import__("cupy")
    return np


def asarray(a: Any, dtype: Any = None) -> Any:
    """Move ``a`` to the current backend (no copy when already there)."""
    return xp().asarray(a, dtype=dtype)


def to_numpy(a: Any) -> np.ndarray:
    """Return ``a`` as a NumPy array (copies from the GPU when needed)."""
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def scatter_add(target: Any, index: Any, values: Any) -> None:
    """``target.ravel()[index] += values`` with repeated indices accumulated (in place, 1-D ``target``).

    NumPy uses ``bincount`` (much faster than ``np.add.at``); CuPy uses atomic ``cupyx.scatter_add``.
    Complex data are split into real and imaginary parts. One step: see :func:`scatter_add_all`.
    """
    scatter_add_all([(target, index, values)])


def scatter_add_all(ops: list[tuple[Any, Any, Any]]) -> None:
    """Several :func:`scatter_add` ``(target, index, values)`` as one step that either adds everything or changes
    nothing: every temporary (split real and imaginary parts, casts, doubled indices, NumPy's ``bincount`` sums) is
    made before the first target is touched, so an out-of-memory error on the way leaves all targets as they were
    (the batch that raised can be retried, :mod:`cryolive.batching`). The adds themselves allocate nothing large.
    """
    mod = xp()
    if mod.__name__ == "cupy":
        import cupyx

        kernels = []
        for target, index, values in ops:
            if mod.iscomplexobj(target):
                real = target.view(mod.float32 if target.dtype == mod.complex64 else mod.float64)
                kernels.append((real, 2 * index, values.real.astype(real.dtype)))
                kernels.append((real, 2 * index + 1, values.imag.astype(real.dtype)))
            else:
                kernels.append((target, index, values.astype(target.dtype)))
        for target, index, values in kernels:
            cupyx.scatter_add(target, index, values)
        return
    sums = []
    for target, index, values in ops:
        size = target.size
        if np.iscomplexobj(target):
            part = np.bincount(index, weights=values.real, minlength=size).astype(target.dtype)
            part.imag = np.bincount(index, weights=values.imag, minlength=size)
        else:
            part = np.bincount(index, weights=values, minlength=size).astype(target.dtype)
        sums.append((target, part))
    for target, part in sums:
        target += part


def free_device_bytes() -> int | None:
    """Bytes the device can still hand out: the driver's free memory (``cudaMemGetInfo``) plus the blocks CuPy's
    memory pool holds cached but unused, no more than the pool's own limit allows when one is set. None on NumPy
    (host memory is not sized here)."""
    if backend_name() != "cupy":
        return None
    import cupy

    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    avail = int(free) + int(pool.free_bytes())
    limit = int(pool.get_limit())  # 0: no limit
    return max(0, min(avail, limit - int(pool.used_bytes()))) if limit else avail


def free_memory_pool() -> None:
    """Give the cached blocks of CuPy's memory pool back to the driver (after an out-of-memory error); nothing on
    NumPy."""
    if backend_name() == "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()


class OutOfDeviceMemory(MemoryError):
    """Out of memory even with a batch of one item: nothing smaller is left to try (:mod:`cryolive.batching`).
    Not retried again by an enclosing batch loop (:func:`is_out_of_memory` is False for it)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means an allocation failed, so that a smaller batch may succeed: ``MemoryError`` (which
    CuPy's ``cupy.cuda.memory.OutOfMemoryError`` is), and CUDA errors from CuPy's libraries that report an
    allocation failure (``cudaErrorMemoryAllocation`` "out of memory", cuFFT/cuBLAS ``..._ALLOC_FAILED``).
    :class:`OutOfDeviceMemory` is not: it was already tried down to a batch of one."""
    if isinstance(exc, OutOfDeviceMemory):
        return False
    if isinstance(exc, MemoryError):
        return True
    for cls in type(exc).__mro__:
        if cls.__module__.startswith(("cupy", "cupy_backends")):
            text = str(exc).lower()
            return cls.__name__ == "OutOfMemoryError" or "out of memory" in text or "alloc_failed" in text
    return False
