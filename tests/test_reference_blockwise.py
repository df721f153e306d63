"""Tests of blockwise float8 scaling, 1x128 and 128x128 (spec/05-blockwise.md, BW-1..BW-3)."""
import ml_dtypes
import numpy as np
import pytest

from qtrain import reference as R


def _codes(a):
    return np.asarray(a).view(np.uint8)


@pytest.mark.parametrize("shape,block", [((4, 256), (1, 128)), ((256, 384), (128, 128)), ((256, 2), (128, 1))],
                         ids=["BW-1-1x128", "BW-1-128x128", "BW-1-128x1"])
def test_BW_2_each_block_is_tensorwise_float8(shape, block, assert_bits_equal):
    rng = np.random.default_rng(17)
    print("seed 17")
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, shape))).astype(ml_dtypes.bfloat16)
    data, qs = R.quantize_blockwise(x, block)
    rows, cols = shape[0] // block[0], shape[1] // block[1]
    assert qs.shape == (rows, cols) and qs.dtype == np.float32 and data.shape == shape    # BW-3
    for r in range(rows):
        for c in range(cols):
            sl = np.s_[r * block[0]:(r + 1) * block[0], c * block[1]:(c + 1) * block[1]]
            d, s = R.quantize_float8(x[sl], "float8_e4m3fn")
            assert s == qs[r, c]
            assert_bits_equal(_codes(data[sl]), _codes(d), f"block {(r, c)}")
    back = R.dequantize_blockwise(data, qs, block, np.float32)
    expected = (data.astype(np.float64) / np.kron(qs.astype(np.float64), np.ones(block))).astype(np.float32)
    assert np.array_equal(back, expected)


def test_BW_2_non_finite_and_zero_blocks_stay_local():
    x = np.ones((2, 256), dtype=np.float32)
    x[0, 3] = np.nan
    x[1, 128:] = 0.0
    data, qs = R.quantize_blockwise(x, (1, 128), fmt="float8_e5m2")
    assert np.isnan(qs[0, 0]) and qs[0, 1] == np.float32(57344.0)
    assert qs[1, 1] == np.float32(57344.0 / 1e-12)                              # F8-6
    assert np.isnan(data[0, :128].astype(np.float32)).all()
    assert not np.isnan(data[0, 128:].astype(np.float32)).any()
    assert (_codes(data[1, 128:]) == 0).all()


def test_BW_1_shape_errors():
    with pytest.raises(ValueError, match=r"\(4, 200\).*\(1, 128\).*axis 1"):
        R.quantize_blockwise(np.ones((4, 200), np.float32))
    with pytest.raises(ValueError, match=r"\(100, 128\).*\(128, 128\).*axis 0"):
        R.quantize_blockwise(np.ones((100, 128), np.float32), (128, 128))
    with pytest.raises(ValueError, match="2-D"):
        R.quantize_blockwise(np.ones((2, 2, 128), np.float32))
    with pytest.raises(ValueError, match="tuple of two"):
        R.quantize_blockwise(np.ones((2, 128), np.float32), 128)
    with pytest.raises(ValueError, match=r"quant_scale shape \(1, 1\)"):
        data, _ = R.quantize_blockwise(np.ones((2, 128), np.float32))
        R.dequantize_blockwise(data, np.ones((1, 1), np.float32))


def test_BW_4_spec_example():
    data = np.full((1, 128), 0x52, np.uint8).view(ml_dtypes.float8_e4m3fn)
    qs = np.full((1, 1), 3.5, np.float32)
    assert R.dequantize_blockwise(data, qs).view(np.uint32)[0, 0] == 0x4036DB6E
    assert R.dequantize_blockwise(data, qs, out_dtype=ml_dtypes.bfloat16).view(np.uint16)[0, 0] == 0x4037


def test_BW_5_128x1_is_transposed_1x128():
    rng = np.random.default_rng(19)
    print("seed 19")
    x = rng.standard_normal((256, 3)).astype(np.float32)
    data, qs = R.quantize_blockwise(x, (128, 1))
    data_t, qs_t = R.quantize_blockwise(np.ascontiguousarray(x.T), (1, 128))
    assert np.array_equal(qs, qs_t.T) and np.array_equal(_codes(data), _codes(data_t).T)
