"""MX (OCP microscaling) float8 with e8m0 block scales (spec/03-mx.md, MX-1..MX-8).

Written for clarity, not speed. Exponents come from the fp32 bits (casts.floor_log2 / ceil_log2),
never from log2f, and fp32 subnormals are handled exactly.
"""
import ml_dtypes
import numpy as np

from qtrain.formats import (E8M0_BIAS, E8M0_MAX_EXP, E8M0_MIN_EXP, E8M0_NAN, MX_ELEM_FORMATS,
                            MX_SCALE_MODES, float8_format)
from ._checks import as_float32, check_block_divides, check_choice, normalize_axis
from .casts import (cast_to_float8, ceil_log2, float8_format_of, float8_to_float64, floor_log2,
                    round_float64)


def e8m0_to_float(scale_bits):
    """FMT-1: e8m0 byte b -> 2^(b - 127) as float64; 0xFF -> NaN. Accepts uint8 or float8_e8m0fnu."""
    bits = np.asarray(scale_bits)
    if bits.dtype not in (np.dtype(np.uint8), np.dtype(ml_dtypes.float8_e8m0fnu)):
        raise TypeError(f"qtrain.reference.mx.e8m0_to_float: scale_bits has dtype {bits.dtype}; "
                        "expected uint8 or ml_dtypes.float8_e8m0fnu")
    bits = bits.view(np.uint8).astype(np.int64)
    return np.where(bits == E8M0_NAN, np.nan, np.ldexp(1.0, bits - E8M0_BIAS))


def mx_dequant_factor(scale_bits):
    """MM-1 dequant factor of an MX operand: 2^(b - 127) per block, NaN for 0xFF."""
    return e8m0_to_float(scale_bits)


def float32_to_e8m0_rceil(v):
    """MX-4 helper: e8m0 byte of 2^ceil(log2 v) for fp32 v, exact from the fp32 bits.

    Case order: NaN or Inf -> 0xFF; v <= 0 -> 0 (2^-127; e8m0 has no sign or zero); finite ->
    e = ceil(log2 v) (subnormals exact, so v <= 2^-127 gives e <= -127), clamped below at -127;
    e > 127 -> 0xFF (NaN).
    """
    v = np.asarray(v)
    if v.dtype != np.float32:
        raise TypeError(f"qtrain.reference.mx.float32_to_e8m0_rceil: v has dtype {v.dtype}; expected float32")
    finite = np.isfinite(v)
    positive = finite & (v > 0)
    e = np.where(positive, ceil_log2(np.where(positive, v, np.float32(1.0))), E8M0_MIN_EXP)
    e = np.maximum(e, E8M0_MIN_EXP)
    byte = np.where(finite & (e <= E8M0_MAX_EXP), e + E8M0_BIAS, E8M0_NAN)
    return byte.astype(np.uint8)


def _blocks_last(x, axis, block_size):
    """Move `axis` last and split it into (n_blocks, block_size)."""
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // block_size, block_size))


def _unblock(blocks, axis):
    merged = blocks.reshape(blocks.shape[:-2] + (blocks.shape[-2] * blocks.shape[-1],))
    return np.moveaxis(merged, -1, axis)


def quantize_mx(x, elem_fmt, block_size=32, axis=-1, scale_mode="floor"):
    """MX-1..MX-7: (data float8 shaped like x, scale_bits uint8 shaped like x with axis / block_size)."""
    where = "mx.quantize_mx"
    check_choice(elem_fmt, MX_ELEM_FORMATS, "MX element format", where)
    check_choice(scale_mode, MX_SCALE_MODES, "scale_mode", where)
    f = float8_format(elem_fmt)
    x32 = as_float32(x, where)                      # MX-7: the fp32 value as is, never via bf16
    axis = normalize_axis(axis, x32.shape, where)
    check_block_divides(x32.shape, axis, block_size, where)              # MX-1
    blocks = _blocks_last(x32, axis, block_size)
    amax = np.max(np.abs(blocks), axis=-1, keepdims=True)  # MX-2: fp32 amax, NaN propagates
    non_finite = ~np.isfinite(amax)                        # MX-2: any NaN or Inf in the block
    safe_amax = np.where(non_finite, np.float32(0.0), amax)
    if scale_mode == "floor":
        # MX-3: e = floor(log2 amax) - emax_elem, exact; zero gives ZERO_LOG2 and clamps to -127
        # (MX-5: byte 0)
        e = np.clip(floor_log2(safe_amax) - f.emax, E8M0_MIN_EXP, E8M0_MAX_EXP)
        byte = np.where(non_finite, E8M0_NAN, e + E8M0_BIAS)
    else:
        # MX-4: multiply by the fp32 reciprocal of max_elem, product rounded to fp32 (not a division)
        descale = (safe_amax * (np.float32(1.0) / np.float32(f.max))).astype(np.float32)
        byte = np.where(non_finite, E8M0_NAN, float32_to_e8m0_rceil(descale).astype(np.int64))
    byte = byte.astype(np.int64)
    nan_block = byte == E8M0_NAN                  # MX-2, or MX-4's e > 127: the whole block is NaN
    e = np.where(nan_block, 0, byte - E8M0_BIAS)
    # MX-6: x * 2^-e is exact in float64 and is rounded once by the cast (clamp, then rne);
    # MX-5: a zero block has e = -127 and its +-0 elements stay +-0.
    scaled = blocks.astype(np.float64) * np.ldexp(1.0, -e)
    scaled = np.where(np.broadcast_to(nan_block, scaled.shape), np.nan, scaled)
    data = _unblock(cast_to_float8(scaled, f.name), axis)
    scale_bits = np.moveaxis(byte[..., 0].astype(np.uint8), -1, axis)
    return data, scale_bits


def dequantize_mx(data, scale_bits, block_size=32, axis=-1, out_dtype=np.float32):
    """MX-8: fp64(data) * 2^(byte - 127) (NaN for 0xFF), rounded once to out_dtype."""
    where = "mx.dequantize_mx"
    check_choice(float8_format_of(data, where), MX_ELEM_FORMATS, "MX element format", where)
    data = np.asarray(data)
    axis = normalize_axis(axis, data.shape, where)
    check_block_divides(data.shape, axis, block_size, where)
    expected = data.shape[:axis] + (data.shape[axis] // block_size,) + data.shape[axis + 1:]
    scale_bits = np.asarray(scale_bits)
    if scale_bits.shape != expected:
        raise ValueError(f"qtrain.reference.{where}: scale_bits shape {scale_bits.shape} != {expected} "
                         f"for data shape {data.shape}, axis {axis}, block_size {block_size}")
    factor = np.moveaxis(e8m0_to_float(scale_bits), axis, -1)[..., None]
    values = _blocks_last(float8_to_float64(data), axis, block_size) * factor
    return round_float64(_unblock(values, axis), out_dtype)


def quantize_mx_values(x, elem_fmt, block_size=32, axis=-1, scale_mode="floor"):
    """MX-10: the bfloat16 values of x's MX quantization, in x's layout: MX-8 of quantize_mx's
    result into bfloat16 (an emulated MX product's operand)."""
    data, scale_bits = quantize_mx(x, elem_fmt, block_size, axis, scale_mode)
    return dequantize_mx(data, scale_bits, block_size, axis, out_dtype=ml_dtypes.bfloat16)
