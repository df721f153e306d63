"""Symmetric int8 axiswise quantization, rne or stochastic (spec/04-int8.md, I8-1..I8-8).

Written for clarity, not speed. Every arithmetic step is an fp32 operation (numpy float32 ops
are correctly rounded, rne), so any backend can match it bit for bit.
"""
import numpy as np

from qtrain.formats import EPS_AMAX, INT8_MAX
from ._checks import normalize_axis, as_float32
from .casts import round_float64


def quantize_int8(x, axis, noise=None):
    """I8-1..I8-7: (data int8 shaped like x, dequant_scale fp32 keepdims along `axis`).

    axis=None reduces over the whole tensor (dequant_scale shape ()). noise: None for rne (I8-4),
    or a float32 array shaped like x with values in [0, 1) for stochastic rounding (I8-5).
    """
    where = "int8.quantize_int8"
    x32 = as_float32(x, where)
    if axis is not None:
        axis = normalize_axis(axis, x32.shape, where)
    if noise is not None:
        noise = np.asarray(noise)
        if noise.dtype != np.float32:
            raise TypeError(f"qtrain.reference.{where}: noise has dtype {noise.dtype}; expected float32")
        if noise.shape != x32.shape:
            raise ValueError(f"qtrain.reference.{where}: noise shape {noise.shape} != x shape {x32.shape}")
        if not np.all((noise >= 0) & (noise < 1)):
            raise ValueError(f"qtrain.reference.{where}: noise values must lie in [0, 1)")
    # I8-1: amax on fp32 values, keepdims; np.max propagates NaN
    amax = np.max(np.abs(x32), axis=axis, keepdims=axis is not None).astype(np.float32)
    non_finite = ~np.isfinite(amax)
    # I8-2: fp32 division (rne), floored at fp32(1e-12) in the STORED scale, so tiny groups still
    # round-trip (I8-9). I8-7: a zero group gets dequant_scale EPS32.
    dequant_scale = np.maximum((amax / np.float32(INT8_MAX)).astype(np.float32), np.float32(EPS_AMAX))
    # I8-3: fp32 reciprocal of the (floored) dequant scale
    inv = (np.float32(1.0) / dequant_scale).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        product = (x32 * inv).astype(np.float32)
        if noise is None:
            rounded = np.rint(product)                                        # I8-4: rne
        else:
            rounded = np.floor((product + noise).astype(np.float32))           # I8-5: fp32 add, floor
    # I8-6: a non-finite group has dequant_scale NaN and data 0 (so dequantize gives NaN)
    rounded = np.where(np.broadcast_to(non_finite, rounded.shape), 0.0, rounded)
    data = np.clip(rounded, -INT8_MAX, INT8_MAX).astype(np.int8)             # -128 never produced
    dequant_scale = np.where(non_finite, np.float32(np.nan), dequant_scale).astype(np.float32)
    return data, dequant_scale


def dequantize_int8(data, dequant_scale, out_dtype=np.float32):
    """I8-8: fp64(data) * fp64(dequant_scale), rounded once to out_dtype."""
    data = np.asarray(data)
    if data.dtype != np.int8:
        raise TypeError(f"qtrain.reference.int8.dequantize_int8: data has dtype {data.dtype}; expected int8")
    dequant_scale = np.asarray(dequant_scale, dtype=np.float32)
    try:
        np.broadcast_shapes(data.shape, dequant_scale.shape)
    except ValueError:
        raise ValueError(f"qtrain.reference.int8.dequantize_int8: dequant_scale shape "
                         f"{dequant_scale.shape} does not broadcast to data shape {data.shape}") from None
    return round_float64(data.astype(np.float64) * dequant_scale.astype(np.float64), out_dtype)


def int8_dequant_factor(dequant_scale):
    """MM-1 dequant factor of an int8 operand: the dequant_scale as is (as float64)."""
    return np.asarray(dequant_scale, dtype=np.float32).astype(np.float64)
