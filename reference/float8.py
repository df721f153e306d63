"""Float8 tensorwise and axiswise scaling (spec/02-float8-scaling.md, F8-1..F8-8).

Written for clarity, not speed.
"""
import numpy as np

from qtrain.formats import EPS_AMAX, float8_format
from ._checks import as_float32, normalize_axis
from .casts import cast_to_float8, float8_format_of, float8_to_float64, pow2_floor, round_float64


def float8_quant_scale(amax, fmt, pow2_scale=False):
    """F8-2 (and F8-3): quant_scale from an fp32 amax array; NaN amax gives NaN."""
    f = float8_format(fmt)
    amax64 = np.asarray(amax, dtype=np.float32).astype(np.float64)
    # F8-2: fp64 division, then one rounding to fp32. np.maximum propagates NaN (F8-1).
    quant_scale = (np.float64(f.max) / np.maximum(amax64, EPS_AMAX)).astype(np.float32)
    if pow2_scale:
        quant_scale = pow2_floor(quant_scale)                  # F8-3: exact, from the fp32 bits
    return quant_scale


def scale_and_cast_float8(x32, amax, fmt, pow2_scale=False):
    """F8-2..F8-6 for fp32 values x32 whose group amax (fp32, broadcastable to x32) is given.

    Returns (data, quant_scale) with quant_scale shaped like amax. Shared by float8 and blockwise.
    """
    f = float8_format(fmt)
    amax = np.asarray(amax, dtype=np.float32)
    non_finite = ~np.isfinite(amax)                            # F8-5: amax NaN or Inf
    quant_scale = float8_quant_scale(amax, f.name, pow2_scale)
    quant_scale = np.where(non_finite, np.float32(np.nan), quant_scale).astype(np.float32)
    # F8-4: the product is rounded to fp32 (numpy float32 multiply is rne), then clamp + rne cast
    # (cast_to_float8 does the FMT-3 clamp). F8-6: a zero group has amax 0 -> quant_scale =
    # fp32(max/1e-12) and x * quant_scale is +-0, so data keeps the signs with no special case.
    with np.errstate(invalid="ignore", over="ignore"):
        product = (x32 * quant_scale).astype(np.float32)
    # F8-5: every element of a non-finite group is NaN
    product = np.where(np.broadcast_to(non_finite, product.shape), np.float32(np.nan), product)
    return cast_to_float8(product.astype(np.float32), f.name), quant_scale


def quantize_float8(x, fmt, axis=None, pow2_scale=False):
    """F8-7: tensorwise (axis=None, quant_scale shape ()) or axiswise (amax along `axis`, keepdims).

    x: float32 or bfloat16 array. Returns (data float8 array shaped like x, quant_scale float32).
    """
    f = float8_format(fmt)
    x32 = as_float32(x, "float8.quantize_float8")
    if axis is not None:
        axis = normalize_axis(axis, x32.shape, "float8.quantize_float8")
    # F8-1: amax of |x| on the fp32 values; np.max propagates NaN
    amax = np.max(np.abs(x32), axis=axis, keepdims=axis is not None).astype(np.float32)
    return scale_and_cast_float8(x32, amax, f.name, pow2_scale)


def dequantize_float8(data, quant_scale, out_dtype=np.float32):
    """F8-8: fp64(data) / fp64(quant_scale), rounded once to out_dtype (quant_scale () or keepdims)."""
    float8_format_of(data, "float8.dequantize_float8")
    quant_scale = np.asarray(quant_scale, dtype=np.float32)
    data = np.asarray(data)
    try:
        np.broadcast_shapes(data.shape, quant_scale.shape)
    except ValueError:
        raise ValueError(f"qtrain.reference.float8.dequantize_float8: quant_scale shape "
                         f"{quant_scale.shape} does not broadcast to data shape {data.shape}; "
                         "expected () or data's shape with the scaled axis of size 1") from None
    with np.errstate(invalid="ignore", divide="ignore"):
        values = float8_to_float64(data) / quant_scale.astype(np.float64)
    return round_float64(values, out_dtype)


def float8_dequant_factor(quant_scale):
    """MM-1 dequant factor of a float8 or blockwise operand: fp64 1/quant_scale (NaN stays NaN)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(quant_scale, dtype=np.float32).astype(np.float64)
