"""A strict stand-in for CuPy, so the GPU code path runs and is checked on machines without a GPU.

It computes with NumPy but keeps CuPy's rules about where data live, which is where a CuPy path breaks first:

* implicit device → host conversion (``np.asarray(a)``, a device array inside a NumPy call, indexing a NumPy
  array with a device array, ``host[...] = device``) raises ``TypeError``, as ``cupy.ndarray.__array__`` does;
* host arrays as operands of device arithmetic or device functions (``device * host``, ``cupy.exp(host)``,
  ``cupy.bincount(idx, weights=host)``) raise ``TypeError``; only ``asarray``/``array`` move data to the device;
* ``device[idx] = host`` raises unless it fills the whole array (``device[:] = host``), as in CuPy;
* reductions and element access return 0-d device arrays, not NumPy scalars; ``float()``, ``int()``, ``bool()``
  and ``.get()`` are the explicit ways back to the host.

The module is installed as ``cupy`` (and ``cupyx``, ``cupyx.scipy.ndimage``) in ``sys.modules`` by the
``emulated_device`` fixture, so the product's own ``if xp().__name__ == "cupy"`` branches run. Passing here does
not prove the CuPy path (kernels, precision, memory), but a failure here is a failure there. For the batch sizing
and out-of-memory tests (``tests/test_batching.py``) it has ``cupy.cuda.runtime.memGetInfo`` (a roomy device,
``EMULATED_FREE_BYTES``), a memory pool that counts ``free_all_blocks`` calls, and
``cupy.cuda.memory.OutOfMemoryError`` to raise.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import scipy.ndimage
from numpy.lib.mixins import NDArrayOperatorsMixin

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")


class DeviceArray(NDArrayOperatorsMixin):
    """An array "on the device": NumPy storage behind CuPy's host/device rules."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    # --- the ways back to the host -------------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT)

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self) -> str:
        return f"emulated_device_array({self._a!r})"

    def item(self) -> Any:
        return self._a.item()

    def tolist(self) -> Any:
        return self._a.tolist()

    # --- computing on the device ---------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.pop("out", None)
        kwargs = _dev_kwargs(kwargs)
        if out is not None:
            kwargs["out"] = tuple(_dev(o, strict=True) for o in out)
        res = getattr(ufunc, method)(*[_dev(x) for x in inputs], **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(res)

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        return _call(func, args, kwargs)

    def __getitem__(self, key: Any) -> DeviceArray:
        return _wrap(self._a[_index(key)], scalars=True)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, np.ndarray) and value.ndim > 0:
            if not (isinstance(key, slice) and key == slice(None)):
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            self._a[:] = value
            return
        self._a[_index(key)] = _dev(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        for i in range(len(self._a)):
            yield self[i]

    def __copy__(self) -> DeviceArray:
        return DeviceArray(self._a.copy())

    def __deepcopy__(self, memo: Any) -> DeviceArray:
        return DeviceArray(self._a.copy())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # no __array_interface__ / __array_struct__: those would hand NumPy the data
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _wrap(attr(*[_dev(x) for x in a], **_dev_kwargs(k)))
        return _wrap(attr)


DeviceArray.__module__ = "cupy._emulated"  # what cryolive's to_numpy() looks for


def _dev(x: Any, strict: bool = False) -> Any:
    """The NumPy storage of a device operand; a host array there is an error (0-d host arrays pass as scalars)."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray) and (x.ndim > 0 or strict):
        raise TypeError(f"Unsupported type {type(x)}: a host array where a device array is needed")
    if isinstance(x, list | tuple):
        return type(x)(_dev(v) for v in x)
    return x


def _dev_kwargs(kwargs: dict) -> dict:
    return {k: _dev(v) for k, v in kwargs.items()}


def _index(key: Any) -> Any:
    """An index for device storage: device or host index arrays both work (CuPy accepts host index arrays)."""
    if isinstance(key, DeviceArray):
        return key._a
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key


def _wrap(res: Any, scalars: bool = True) -> Any:
    """Results stay on the device: arrays and NumPy scalars become device arrays (0-d for scalars)."""
    if isinstance(res, np.ndarray):
        return DeviceArray(res)
    if scalars and isinstance(res, np.generic):
        return DeviceArray(np.asarray(res))
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    if isinstance(res, list):
        return [_wrap(r) for r in res]
    return res


def _call(func: Any, args: Any, kwargs: Any) -> Any:
    return _wrap(func(*[_dev(a) for a in args], **_dev_kwargs(kwargs)))


class _Namespace(types.ModuleType):
    """A device namespace over a NumPy/SciPy module: its functions take and give device arrays only."""

    def __init__(self, name: str, host: Any) -> None:
        super().__init__(name)
        self._host = host

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._host, name)
        if isinstance(attr, type) or not callable(attr):  # dtypes, constants
            return attr

        def device_function(*args: Any, **kwargs: Any) -> Any:
            return _call(attr, args, kwargs)

        device_function.__name__ = name
        if isinstance(attr, np.ufunc):
            for method in ("reduce", "accumulate", "outer"):
                setattr(device_function, method,
                        lambda *a, _m=method, **k: _call(getattr(attr, _m), a, k))
        return device_function


class _Cuda(types.SimpleNamespace):
    pass


#: what the emulated ``cupy.cuda.runtime.memGetInfo()`` reports: (free, total) bytes
EMULATED_FREE_BYTES = 64 * 2**30
EMULATED_TOTAL_BYTES = 80 * 2**30


class OutOfMemoryError(MemoryError):
    """``cupy.cuda.memory.OutOfMemoryError`` (a ``MemoryError``, as in CuPy), for fault injection."""

    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


OutOfMemoryError.__module__ = "cupy.cuda.memory"


def make_modules() -> dict[str, types.ModuleType]:
    """The emulated ``cupy``, ``cupyx``, ``cupyx.scipy`` and ``cupyx.scipy.ndimage`` modules, by name."""
    cp = _Namespace("cupy", np)

    def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or a._a.dtype == np.dtype(dtype) else DeviceArray(a._a.astype(dtype))
        return DeviceArray(np.array(a, dtype=dtype, order=order or "K"))  # host -> device copies

    def array(a: Any, dtype: Any = None, copy: bool = True, order: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return DeviceArray(a._a.astype(dtype or a._a.dtype, copy=True))
        return DeviceArray(np.array(a, dtype=dtype, order=order or "K"))

    def asnumpy(a: Any) -> np.ndarray:
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

    def ascontiguousarray(a: Any, dtype: Any = None) -> DeviceArray:
        return DeviceArray(np.ascontiguousarray(_dev(a, strict=True), dtype=dtype))

    cp.ndarray = DeviceArray
    cp.asarray, cp.array, cp.asnumpy, cp.ascontiguousarray = asarray, array, asnumpy, ascontiguousarray
    cp.get_array_module = lambda *a: cp
    cp.fft = _Namespace("cupy.fft", np.fft)
    cp.linalg = _Namespace("cupy.linalg", np.linalg)
    device = types.SimpleNamespace(id=0, synchronize=lambda: None)
    # a roomy device by default (batches stay at the user's size); tests set free memory through memGetInfo
    runtime = types.SimpleNamespace(getDeviceProperties=lambda i: {"name": b"emulated device"},
                                    memGetInfo=lambda: (EMULATED_FREE_BYTES, EMULATED_TOTAL_BYTES))
    cp.cuda = _Cuda(is_available=lambda: True, Device=lambda *a: device, runtime=runtime,
                    memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))

    class _Pool:
        """CuPy's default memory pool: nothing cached; counts ``free_all_blocks`` calls."""

        freed = 0

        def used_bytes(self) -> int:
            return 0

        def free_bytes(self) -> int:
            return 0

        def total_bytes(self) -> int:
            return 0

        def get_limit(self) -> int:
            return 0

        def free_all_blocks(self) -> None:
            self.freed += 1

    pool = _Pool()
    cp.get_default_memory_pool = lambda: pool

    def scatter_add(a: DeviceArray, index: Any, values: Any) -> None:
        np.add.at(_dev(a, strict=True), _index(index), _dev(values))

    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = scatter_add
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    ndimage = _Namespace("cupyx.scipy.ndimage", scipy.ndimage)
    cupyx.scipy = cupyx_scipy
    cupyx_scipy.ndimage = ndimage
    return {"cupy": cp, "cupyx": cupyx, "cupyx.scipy": cupyx_scipy, "cupyx.scipy.ndimage": ndimage}
