"""MX-10 values (fast/cast_mx_values.py) against the reference: MX-8 of MX-1..MX-7 into bf16,
bit for bit (NaN payloads free), every element format, scale mode, axis and input dtype, the
MX-7 golden edge rows included; and the calls it refuses."""
import numpy as np
import pytest
import torch

from qtrain import reference
from test_fast_casts import DTYPES, _mx_input
from test_fast_common import DEVICE, assert_same, fast_backend, from_numpy, to_numpy


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 160), (64, 3, 32)], ids=str)
@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
def test_mx_values_MX_10_is_dequantized_quantization(shape, dtype, scale_mode, seed):
    from qtrain.fast.cast_mx_values import quantize_mx_values
    fast_backend()
    x2 = _mx_input((int(np.prod(shape[:-1])), shape[-1]), dtype, seed)
    x = x2.reshape(shape)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        for axis in (-1, 0):
            got = quantize_mx_values(from_numpy(x), fmt, 32, axis, scale_mode)
            want = reference.quantize_mx_values(x, fmt, 32, axis, scale_mode)
            assert got.dtype == torch.bfloat16 and tuple(got.shape) == shape
            assert_same(to_numpy(got), want, f"values {fmt} {scale_mode} axis={axis} {dtype} "
                        f"{shape}", seed)


@pytest.mark.parametrize("tile", [(32, 32, 1), (64, 128, 2), (128, 64, 4)], ids=str)
def test_mx_values_dim0_on_other_tiles(tile, monkeypatch, seed):
    """Tiles a benchmark may time: ragged columns and a partial last row group."""
    from qtrain.fast import cast_mx_values
    fast_backend()
    monkeypatch.setattr(cast_mx_values, "DIM0_TILE", tile)
    monkeypatch.setattr(cast_mx_values, "DIM_LAST_ELEMS", 64 * tile[0])
    x = _mx_input((160, 96), "bfloat16", seed)
    for axis in (0, -1):
        got = cast_mx_values.quantize_mx_values(from_numpy(x), "float8_e4m3fn", 32, axis, "rceil")
        want = reference.quantize_mx_values(x, "float8_e4m3fn", 32, axis, "rceil")
        assert_same(to_numpy(got), want, f"values tile {tile} axis={axis}", seed)


def test_mx_values_refuses_what_it_cannot_block():
    from qtrain.fast.cast_mx_values import quantize_mx_values
    fast_backend()
    x = torch.ones(40, 64, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of block_size 32"):
        quantize_mx_values(x, "float8_e4m3fn", 32, 0)
    with pytest.raises(ValueError, match="not contiguous"):
        quantize_mx_values(torch.ones(64, 64, device=DEVICE).t()[:, :32], "float8_e4m3fn", 32, -1)
    with pytest.raises(ValueError, match="axis 1"):
        quantize_mx_values(torch.ones(2, 64, 64, device=DEVICE), "float8_e4m3fn", 32, 1)
    with pytest.raises(ValueError, match="format"):
        quantize_mx_values(x[:32], "float8_e4m3fnuz", 32, -1)
