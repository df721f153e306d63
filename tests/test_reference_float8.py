"""Tests of float8 tensorwise/axiswise scaling (spec/02-float8-scaling.md, F8-1..F8-8)."""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from qtrain.formats import FLOAT8_FORMATS
from qtrain import reference as R

FORMATS = sorted(FLOAT8_FORMATS)
PROPERTY_SETTINGS = settings(max_examples=50, deadline=None)


def _codes(a):
    return np.asarray(a).view(np.uint8)


def _expected_tensorwise(x32, fmt):
    """Independent F8-2/F8-4 path: fp64 division, fp32 product, clamp, ml_dtypes rne cast."""
    f = FLOAT8_FORMATS[fmt]
    amax = np.max(np.abs(x32))
    qs = np.float32(f.max / max(float(amax), 1e-12))
    product = x32 * qs
    return _codes(np.clip(product, -f.max, f.max).astype(R.float8_dtype(fmt))), qs


@pytest.mark.parametrize("fmt", FORMATS)
def test_F8_4_tensorwise_matches_independent_path(fmt, assert_bits_equal):
    rng = np.random.default_rng(7)
    print("seed 7")
    x = (rng.standard_normal((16, 64)) * np.exp2(rng.integers(-20, 20, (16, 1)))).astype(np.float32)
    data, qs = R.quantize_float8(x, fmt)
    expected, expected_qs = _expected_tensorwise(x, fmt)
    assert qs.shape == () and qs.dtype == np.float32 and qs == expected_qs
    assert_bits_equal(_codes(data), expected, f"{fmt} tensorwise data")


@pytest.mark.parametrize("axis", [0, -1, 1])
def test_F8_7_axiswise_keepdims_equals_tensorwise_per_slice(axis, assert_bits_equal):
    rng = np.random.default_rng(11)
    print("seed 11")
    x = (rng.standard_normal((8, 48)) * np.exp2(rng.integers(-10, 10, (8, 48)))).astype(ml_dtypes.bfloat16)
    data, qs = R.quantize_float8(x, "float8_e4m3fn", axis=axis, pow2_scale=True)
    expected_shape = (1, 48) if axis == 0 else (8, 1)
    assert qs.shape == expected_shape and data.shape == x.shape
    slices = x.T if axis == 0 else x
    for i, row in enumerate(slices):
        d, s = R.quantize_float8(row, "float8_e4m3fn", pow2_scale=True)
        got_row = data.T[i] if axis == 0 else data[i]
        assert s == qs.reshape(-1)[i]
        assert_bits_equal(_codes(got_row), _codes(d), f"slice {i}")


def test_F8_3_pow2_exact_just_below_power_of_two():
    # amax = next fp32 above 7 makes fp32(448 / amax) = 0x427FFFFF = 64 * (1 - 2^-24):
    # exact floor(log2) gives 32 (a log2f-based rounding would give 64)
    amax = np.nextafter(np.float32(7), np.float32(8))
    x = np.array([amax, 1.0], dtype=np.float32)
    _, qs = R.quantize_float8(x, "float8_e4m3fn")
    assert qs.view(np.uint32) == 0x427FFFFF
    data, qs2 = R.quantize_float8(x, "float8_e4m3fn", pow2_scale=True)
    assert qs2 == 32.0
    assert _codes(data)[0] == 0x76                                # 224.00003 rounds to 224


@pytest.mark.parametrize("fmt", FORMATS)
def test_F8_6_zero_group(fmt):
    f = FLOAT8_FORMATS[fmt]
    x = np.array([[0.0, -0.0, 0.0], [1.0, -2.0, 0.5]], dtype=np.float32)
    data, qs = R.quantize_float8(x, fmt, axis=-1)
    assert qs[0, 0] == np.float32(f.max / 1e-12)
    neg_zero = 0x80 if f.has_negative_zero else 0x00
    assert list(_codes(data)[0]) == [0x00, neg_zero, 0x00]
    _, qs_pow2 = R.quantize_float8(x, fmt, axis=-1, pow2_scale=True)
    assert qs_pow2[0, 0] == 2.0 ** np.floor(np.log2(np.float32(f.max / 1e-12)))   # e4m3fn: 2^48


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["F8-5-nan-group", "F8-5-inf-group", "F8-5-neg-inf-group"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_F8_5_non_finite_group_is_nan(fmt, bad):
    f = FLOAT8_FORMATS[fmt]
    x = np.array([[1.0, bad, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    data, qs = R.quantize_float8(x, fmt, axis=1)
    assert np.isnan(qs[0, 0]) and qs[1, 0] == np.float32(f.max / 3.0)
    assert np.isin(_codes(data)[0], f.nan_bits).all()
    assert not np.isin(_codes(data)[1], f.nan_bits).any()
    data_t, qs_t = R.quantize_float8(x, fmt)
    assert np.isnan(qs_t) and np.isin(_codes(data_t), f.nan_bits).all()
    assert np.isnan(R.dequantize_float8(data, qs)[0]).all()


def test_F8_4_saturation_when_scale_rounds_up():
    # find amax values where fp32(amax * fp32(448 / amax)) > 448: the clamp (FMT-3) must give 448
    amax = np.float32(1.0) + np.arange(1, 20000, dtype=np.float32) * np.float32(2.0 ** -23)
    qs = R.float8_quant_scale(amax, "float8_e4m3fn")
    over = amax[(amax * qs) > np.float32(448)]
    assert over.size > 0
    for a in over[:20]:
        data, _ = R.quantize_float8(np.array([a, -a], dtype=np.float32), "float8_e4m3fn")
        assert list(_codes(data)) == [0x7E, 0xFE]


def test_F8_8_dequantize_is_fp64_division_rounded_once():
    data = np.array([0x7E, 0x38, 0x01], dtype=np.uint8).view(R.float8_dtype("float8_e4m3fn"))
    qs = np.float32(3.0)
    got = R.dequantize_float8(data, qs, np.float32)
    assert got.tolist() == [np.float32(448 / 3), np.float32(1 / 3), np.float32(2.0 ** -9 / 3)]
    assert R.dequantize_float8(data, qs, ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16
    assert np.array_equal(R.float8_dequant_factor(qs), 1 / 3.0)


def test_FMT5_float16_input_is_exact():
    x = np.array([2.0 ** -24, 65504.0, -1.5], dtype=np.float16)
    d16, q16 = R.quantize_float8(x, "float8_e5m2")
    d32, q32 = R.quantize_float8(x.astype(np.float32), "float8_e5m2")
    assert q16 == q32 and np.array_equal(_codes(d16), _codes(d32))


def test_errors_name_dtype_format_axis():
    x = np.ones((4, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        R.quantize_float8(x.astype(np.float64), "float8_e4m3fn")
    with pytest.raises(TypeError, match="out_dtype"):
        R.dequantize_float8(R.quantize_float8(x, "float8_e4m3fn")[0], np.float32(1), np.float64)
    with pytest.raises(ValueError, match="float8_e5m2fnuz"):
        R.quantize_float8(x, "float8_e4m3")
    with pytest.raises(ValueError, match=r"axis 2 .*\(4, 8\)"):
        R.quantize_float8(x, "float8_e4m3fn", axis=2)
    with pytest.raises(ValueError, match="broadcast"):
        R.dequantize_float8(R.quantize_float8(x, "float8_e4m3fn")[0], np.ones((3, 1), np.float32))


# ---- properties -------------------------------------------------------------------------------
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# round trips stay below 2^126: near fp32 max, a dequantized value rounded up overflows to Inf
# in the float32 output (FMT-6), which is correct but outside these bounds
round_trip_f32 = st.floats(width=32, min_value=-2.0 ** 126, max_value=2.0 ** 126)
SHAPES_2D = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=16)
arrays_2d = hnp.arrays(np.float32, SHAPES_2D, elements=finite_f32)
round_trip_2d = hnp.arrays(np.float32, SHAPES_2D, elements=round_trip_f32)


def _error_bound(x, qs, fmt):
    """Derived bound on |dequant(quant(x)) - x| per element (F8-2, F8-4):
    the fp32 product adds 2^-24 |x s|; a clamp only happens when qs rounded up, by <= 2^-23 amax s;
    the rne cast adds 2^-(mbits+1) |x s| (normal range) or min_subnormal/2 (subnormal range);
    dividing by s gives the terms below (with slack for the product's rounding); the float32 output
    adds 2^-24 |result| (2^-150 absolute below the fp32 normal range)."""
    f = FLOAT8_FORMATS[fmt]
    x64, s = x.astype(np.float64), qs.astype(np.float64)
    amax = np.max(np.abs(x64), axis=-1, keepdims=True)
    return (2.0 ** -(f.mbits + 1) * (1 + 2.0 ** -20) * np.abs(x64) + 2.0 ** -24 * np.abs(x64)
            + 2.0 ** -22 * amax + f.min_subnormal / 2 / s + 2.0 ** -23 * np.abs(x64) + 2.0 ** -149)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pow2", [False, True])
@PROPERTY_SETTINGS
@given(x=round_trip_2d)
def test_F8_property_round_trip_error_bound(fmt, pow2, x):
    data, qs = R.quantize_float8(x, fmt, axis=-1, pow2_scale=pow2)
    got = R.dequantize_float8(data, qs, np.float32).astype(np.float64)
    assert np.all(np.abs(got - x) <= _error_bound(x, qs, fmt))


@PROPERTY_SETTINGS
@given(amax=st.lists(st.floats(min_value=0, width=32, allow_infinity=False), min_size=2, max_size=30))
def test_F8_property_scale_non_increasing_in_amax(amax):
    amax = np.sort(np.array(amax, dtype=np.float32))
    for fmt in FORMATS:
        for pow2 in (False, True):
            qs = R.float8_quant_scale(amax, fmt, pow2)
            assert np.all(np.diff(qs.astype(np.float64)) <= 0)


@pytest.mark.parametrize("fmt", FORMATS)
@PROPERTY_SETTINGS
@given(x=arrays_2d)
def test_F8_property_sign_symmetry(fmt, x):
    d_pos, qs_pos = R.quantize_float8(x, fmt, axis=0)
    d_neg, qs_neg = R.quantize_float8(-x, fmt, axis=0)
    assert np.array_equal(qs_pos, qs_neg)
    expected = _codes(d_pos) ^ 0x80
    if not FLOAT8_FORMATS[fmt].has_negative_zero:
        expected = np.where(_codes(d_pos) == 0, 0, expected)      # fnuz: zero is +0 either way
    assert np.array_equal(_codes(d_neg), expected)


F8_7_TABLE = [  # spec/02 F8-7, e4m3fn, x = [[1, -3], [0.5, 0.25]]
    ("F8-7-axis-last", -1, [0x43155555, 0x44600000], [0x71, 0xFE, 0x7E, 0x76]),
    ("F8-7-axis-0", 0, [0x43E00000, 0x43155555], [0x7E, 0xFE, 0x76, 0x61]),
    ("F8-7-tensorwise", None, [0x43155555], [0x71, 0xFE, 0x69, 0x61]),
]


@pytest.mark.parametrize("axis,scale_bits,codes", [c[1:] for c in F8_7_TABLE], ids=[c[0] for c in F8_7_TABLE])
def test_F8_7_spec_table(axis, scale_bits, codes):
    x = np.array([[1, -3], [0.5, 0.25]], dtype=np.float32)
    data, qs = R.quantize_float8(x, "float8_e4m3fn", axis=axis)
    assert qs.reshape(-1).view(np.uint32).tolist() == scale_bits
    assert _codes(data).reshape(-1).tolist() == codes


F8_4_TABLE = [  # spec/02 F8-4: x bits, quant_scale bits, e4m3fn code
    ("F8-4-amax-to-max", 0x40400000, 0x43155555, 0x7E),
    ("F8-4-rne", 0x3F800000, 0x43155555, 0x71),
    ("F8-4-negative", 0xC0000000, 0x43155555, 0xF9),
    ("F8-4-small", 0x3A83126F, 0x43155555, 0x22),
    ("F8-4-product-above-max-clamped", 0x3FD187F6, 0x4388D6C1, 0x7E),
    ("F8-4-pow2", 0x40400000, 0x43000000, 0x7C),
]


@pytest.mark.parametrize("x,qs,code", [c[1:] for c in F8_4_TABLE], ids=[c[0] for c in F8_4_TABLE])
def test_F8_4_spec_table(x, qs, code):
    x32 = np.array([x], np.uint32).view(np.float32)
    qs32 = np.array(qs, np.uint32).view(np.float32)
    data = R.cast_to_float8((x32 * qs32).astype(np.float32), "float8_e4m3fn")
    assert int(_codes(data)[0]) == code
    if x == 0x3FD187F6:                                  # amax whose F8-2 scale is that quant_scale
        assert R.float8_quant_scale(x32, "float8_e4m3fn").view(np.uint32)[0] == qs
