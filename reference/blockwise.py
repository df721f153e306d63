"""Blockwise float8 scaling, 1x128 / 128x128 blocks (spec/05-blockwise.md, BW-1..BW-3).

Written for clarity, not speed.
"""
import numpy as np

from qtrain.formats import float8_format
from ._checks import as_float32
from .casts import float8_format_of, float8_to_float64, round_float64
from .float8 import scale_and_cast_float8


def _check_block(shape, block, where):
    """BW-1: a 2-D array whose shape is a multiple of the 2-tuple block."""
    if len(shape) != 2:
        raise ValueError(f"qtrain.reference.blockwise.{where}: expected a 2-D array, got shape {tuple(shape)}")
    if (not isinstance(block, tuple) or len(block) != 2
            or not all(isinstance(b, (int, np.integer)) and b > 0 for b in block)):
        raise ValueError(f"qtrain.reference.blockwise.{where}: block {block!r} must be a tuple of two "
                         "positive ints, e.g. (1, 128) or (128, 128)")
    for axis in (0, 1):
        if shape[axis] % block[axis]:
            raise ValueError(
                f"qtrain.reference.blockwise.{where}: shape {tuple(shape)} is not a multiple of block "
                f"{block} along axis {axis} ({shape[axis]} % {block[axis]} != 0)")
    return shape[0] // block[0], shape[1] // block[1]


def quantize_blockwise(x, block=(1, 128), fmt="float8_e4m3fn"):
    """BW-1..BW-3: float8 data shaped like x, fp32 quant_scale of shape (M/b0, K/b1)."""
    f = float8_format(fmt)
    x32 = as_float32(x, "blockwise.quantize_blockwise")
    rows, cols = _check_block(x32.shape, block, "quantize_blockwise")
    blocks = x32.reshape(rows, block[0], cols, block[1])
    # BW-2 = F8-1: amax per block on fp32 values (NaN propagates); then F8-2, F8-4..F8-6, no pow2
    amax = np.max(np.abs(blocks), axis=(1, 3), keepdims=True)
    data, quant_scale = scale_and_cast_float8(blocks, amax, f.name, pow2_scale=False)
    return data.reshape(x32.shape), quant_scale.reshape(rows, cols)   # BW-3


def dequantize_blockwise(data, quant_scale, block=(1, 128), out_dtype=np.float32):
    """F8-8 per block: fp64(data) / fp64(quant_scale[r//b0, c//b1]), rounded once to out_dtype."""
    float8_format_of(data, "blockwise.dequantize_blockwise")
    data = np.asarray(data)
    rows, cols = _check_block(data.shape, block, "dequantize_blockwise")
    quant_scale = np.asarray(quant_scale, dtype=np.float32)
    if quant_scale.shape != (rows, cols):
        raise ValueError(f"qtrain.reference.blockwise.dequantize_blockwise: quant_scale shape "
                         f"{quant_scale.shape} != {(rows, cols)} for data shape {data.shape} and block {block}")
    values = float8_to_float64(data).reshape(rows, block[0], cols, block[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        values = values / quant_scale.astype(np.float64)[:, None, :, None]
    return round_float64(values.reshape(data.shape), out_dtype)
