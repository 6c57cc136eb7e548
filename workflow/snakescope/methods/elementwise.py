"""A model's pixel-by-pixel pre- and post-processing, as bioimageio.core declares it, applied to numpy arrays.

bioimageio.core applies each operator of a model's ``preprocessing`` and ``postprocessing`` to xarray tensors; on
small fields those wrappers are a noticeable part of the whole prediction (bench/README, "Inference tiles"). Most
models declare only operators whose value at a pixel depends on that pixel and on given statistics (dtype, a
linear scale, zero mean and unit variance with the image's or fixed measures, a sigmoid). For such a list,
:func:`twin` returns the same arithmetic on the numpy array, operator by operator, on the same numpy ufuncs and
dtypes. It returns None for a list holding any other operator (the prediction then keeps bioimageio.core's),
and :func:`agrees` is the check a caller runs before use: the twin must give bioimageio.core's own result,
bit for bit, on a probe.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

Twin = Callable[[np.ndarray, tuple[str, ...], Mapping[Any, Any]], np.ndarray]


def _aligned(value: Any, dims: tuple[str, ...]) -> Any:
    """A scalar as it is; a bioimageio.core Tensor or xarray DataArray as a numpy array broadcasting over ``dims``."""
    import xarray as xr

    data = value if isinstance(value, xr.DataArray) else getattr(value, "data", None)  # a Tensor holds a DataArray
    if not isinstance(data, xr.DataArray):
        return value
    own = tuple(str(d) for d in data.dims)
    if not set(own) <= set(dims):
        raise ValueError(f"a measure along {own} does not fit an array along {dims}")
    ordered = data.transpose(*[d for d in dims if d in own]).values
    return ordered.reshape([data.sizes[d] if d in own else 1 for d in dims])


def _step(op: Any, member: str) -> Callable[[np.ndarray, tuple[str, ...], dict[Any, Any]], np.ndarray] | None:
    """One operator's arithmetic (as its ``_apply`` in bioimageio.core.proc_ops), or None when it has no twin here."""
    from bioimageio.core import proc_ops as ops

    kind = type(op)
    if kind is ops.AddKnownDatasetStats:
        def add(x, dims, stat):
            stat.update(op.dataset_stats)
            return x
        return add
    if str(getattr(op, "input", "")) != member or str(getattr(op, "output", "")) != member:
        return None
    if kind is ops.EnsureDtype:
        return lambda x, dims, stat: x.astype(op.dtype)
    if kind is ops.ScaleLinear:
        return lambda x, dims, stat: x * _aligned(op.gain, dims) + _aligned(op.offset, dims)
    if kind is ops.ZeroMeanUnitVariance:
        return lambda x, dims, stat: (x - _aligned(stat[op.mean], dims)) / (_aligned(stat[op.std], dims) + op.eps)
    if kind is ops.FixedZeroMeanUnitVariance:
        return lambda x, dims, stat: (x - _aligned(op.mean, dims)) / (_aligned(op.std, dims) + op.eps)
    if kind is ops.Sigmoid:
        return lambda x, dims, stat: 1.0 / (1.0 + np.exp(-x))
    return None


def twin(operators: Sequence[Any], *, member: str) -> Twin | None:
    """The numpy twin of ``operators`` (bioimageio.core operator objects, in order) acting on tensor ``member``,
    or None when one of them has none. The twin takes (array, its dims, the sample's statistics) and returns a
    new array; the statistics mapping it is given is not changed."""
    steps = [_step(op, member) for op in operators]
    if any(step is None for step in steps):
        return None

    def apply(x: np.ndarray, dims: tuple[str, ...], stat: Mapping[Any, Any]) -> np.ndarray:
        own = dict(stat)
        for step in steps:
            x = step(x, dims, own)
        return np.asarray(x)

    return apply


def agrees(apply: Twin, operators: Sequence[Any], *, member: str, probe: np.ndarray, dims: tuple[str, ...],
           stat: Mapping[Any, Any]) -> bool:
    """Whether ``apply`` gives exactly what bioimageio.core's ``operators`` give on ``probe`` (dtype and values)."""
    from bioimageio.core import Sample, Tensor

    sample = Sample(members={member: Tensor(probe.copy(), dims=dims)}, stat=dict(stat), id="probe")
    for op in operators:
        op(sample)
    theirs = sample.members[member].data.transpose(*dims).values
    ours = apply(probe.copy(), dims, stat)
    return ours.dtype == theirs.dtype and ours.shape == theirs.shape and bool(np.array_equal(ours, theirs, equal_nan=True))
