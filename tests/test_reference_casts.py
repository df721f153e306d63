"""Exhaustive tests of the float8 codec and exact pow2 helpers (spec/01-formats.md, FMT-1..FMT-4)."""
import ml_dtypes
import numpy as np
import pytest

from qtrain.formats import FLOAT8_FORMATS
from qtrain import reference as R

FORMATS = sorted(FLOAT8_FORMATS)
ALL_BF16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ml_dtypes.bfloat16)


def _f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def _codes(a):
    return np.asarray(a).view(np.uint8)


def _spec_decode(fmt):
    """FMT-1 values of all 256 codes from the sign / exponent / mantissa fields (not ml_dtypes)."""
    f = FLOAT8_FORMATS[fmt]
    code = np.arange(256)
    sign = np.where(code >> 7, -1.0, 1.0)
    exp_field = (code >> f.mbits) & ((1 << f.ebits) - 1)
    mant = code & ((1 << f.mbits) - 1)
    value = np.where(exp_field == 0,
                     mant * 2.0 ** (1 - f.bias - f.mbits),
                     (1 + mant / 2.0 ** f.mbits) * 2.0 ** (exp_field - f.bias)) * sign
    top = exp_field == (1 << f.ebits) - 1
    if fmt == "float8_e4m3fn":
        value[top & (mant == 7)] = np.nan                      # S.1111.111 is NaN, no inf
    elif fmt == "float8_e5m2":
        value[top & (mant == 0)] = np.inf * sign[top & (mant == 0)]
        value[top & (mant != 0)] = np.nan
    else:
        value[0x80] = np.nan                                   # fnuz: 0x80 is NaN, no -0, no inf
    return value


@pytest.mark.parametrize("fmt", FORMATS)
def test_FMT1_every_code_decodes_to_spec_value(fmt):
    expected = _spec_decode(fmt)
    got = R.float8_to_float64(np.arange(256, dtype=np.uint8).view(R.float8_dtype(fmt)))
    assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_FMT1_format_record_matches_codes_and_finfo(fmt):
    f = FLOAT8_FORMATS[fmt]
    values = _spec_decode(fmt)
    finite = values[np.isfinite(values)]
    assert f.max == finite.max() == float(ml_dtypes.finfo(R.float8_dtype(fmt)).max)
    assert f.min_subnormal == finite[finite > 0].min() == float(ml_dtypes.finfo(R.float8_dtype(fmt)).smallest_subnormal)
    assert f.min_normal == 2.0 ** (1 - f.bias) == float(ml_dtypes.finfo(R.float8_dtype(fmt)).smallest_normal)
    assert f.nan_bits == tuple(np.flatnonzero(np.isnan(values)))
    assert f.has_inf == bool(np.isinf(values).any())
    assert f.emax == int(np.floor(np.log2(f.max)))
    assert f.has_negative_zero == (fmt in ("float8_e4m3fn", "float8_e5m2"))


def _cast_all_bf16(fmt):
    x = ALL_BF16.astype(np.float32)
    return x, _codes(R.cast_to_float8(x, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_FMT2_every_bf16_matches_ml_dtypes_after_clamp(fmt, assert_bits_equal):
    f = FLOAT8_FORMATS[fmt]
    x, got = _cast_all_bf16(fmt)
    # independent path: explicit saturation (FMT-3), then ml_dtypes' rne cast from float32
    with np.errstate(invalid="ignore"):                       # signalling-NaN bf16 inputs
        expected = _codes(np.clip(x, -f.max, f.max).astype(R.float8_dtype(fmt)))
    nan = np.isnan(x)
    assert_bits_equal(got[~nan], expected[~nan], f"{fmt} cast of every non-NaN bf16")
    assert np.isin(got[nan], f.nan_bits).all()                 # NaN compared as is-NaN


@pytest.mark.parametrize("fmt", FORMATS)
def test_FMT2_every_bf16_matches_torch_after_clamp(fmt, assert_bits_equal):
    torch = pytest.importorskip("torch")
    f = FLOAT8_FORMATS[fmt]
    x, got = _cast_all_bf16(fmt)
    clamped = torch.from_numpy(np.clip(x, -f.max, f.max))
    expected = clamped.to(getattr(torch, fmt)).view(torch.uint8).numpy()
    nan = np.isnan(x)
    assert_bits_equal(got[~nan], expected[~nan], f"{fmt} cast vs torch")
    assert np.isin(got[nan], f.nan_bits).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_FMT2_every_finite_code_round_trips(fmt):
    values = _spec_decode(fmt)
    finite = np.isfinite(values)
    got = _codes(R.cast_to_float8(values[finite].astype(np.float32), fmt))
    assert np.array_equal(got, np.arange(256)[finite])


# (format, fp32 input, expected code): FMT-2 case order NaN, Inf, zero, finite
GOLDEN_CASTS = [
    ("FMT-2-nan", "float8_e4m3fn", np.nan, 0x7F),
    ("FMT-2-nan-fnuz", "float8_e4m3fnuz", np.nan, 0x80),
    ("FMT-2-inf-saturates", "float8_e4m3fn", np.inf, 0x7E),
    ("FMT-2-neg-inf-saturates", "float8_e5m2", -np.inf, 0xFB),
    ("FMT-2-neg-zero", "float8_e4m3fn", -0.0, 0x80),
    ("FMT-2-neg-zero-fnuz", "float8_e4m3fnuz", -0.0, 0x00),
    ("FMT-2-neg-underflow-keeps-sign", "float8_e5m2", -2.0 ** -30, 0x80),
    ("FMT-2-neg-underflow-fnuz-is-pos-zero", "float8_e5m2fnuz", -2.0 ** -30, 0x00),
    ("FMT-3-saturate-e4m3fn", "float8_e4m3fn", 500.0, 0x7E),
    ("FMT-3-saturate-e4m3fnuz", "float8_e4m3fnuz", -1e6, 0xFF),
    ("FMT-3-saturate-e5m2", "float8_e5m2", 1e9, 0x7B),
    ("FMT-4-tie-to-even-down", "float8_e4m3fn", 1.0 + 1 / 16, 0x38),
    ("FMT-4-tie-to-even-up", "float8_e4m3fn", 1.0 + 3 / 16, 0x3A),
    ("FMT-4-subnormal-tie-to-zero", "float8_e4m3fn", 2.0 ** -10, 0x00),
    ("FMT-4-subnormal-tie-up", "float8_e4m3fn", 3 * 2.0 ** -10, 0x02),
    ("FMT-4-above-max-tie-clamped", "float8_e4m3fn", 464.0, 0x7E),
]


@pytest.mark.parametrize("fmt,value,code", [c[1:] for c in GOLDEN_CASTS], ids=[c[0] for c in GOLDEN_CASTS])
def test_FMT2_golden_casts(fmt, value, code):
    assert int(_codes(R.cast_to_float8(np.float32(value), fmt))) == code


def test_FMT4_round_float64_to_bf16_single_rounding():
    # ml_dtypes rounds float64 -> bf16 through float32 and would give 1.0 here (double rounding)
    v = np.array([1 + 2.0 ** -8 + 2.0 ** -40, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8,
                  2.0 ** 128 * (1 - 2.0 ** -9), 2.0 ** 128 * (1 - 2.0 ** -9) * (1 - 2.0 ** -50), 2.0 ** -134 * (1 + 2.0 ** -6),
                  2.0 ** -135])
    got = R.round_float64(v, ml_dtypes.bfloat16).astype(np.float64)
    bf16_max = float.fromhex("0x1.fep127")
    assert list(got) == [1 + 2.0 ** -7, 1.0, 1 + 2.0 ** -6, np.inf, bf16_max, 2.0 ** -133, 0.0]


def test_FMT4_round_float64_to_bf16_random_vs_bit_truncation():
    rng = np.random.default_rng(1234)
    print("seed 1234")
    v = rng.standard_normal(20000) * np.exp2(rng.integers(-100, 100, 20000))
    # independent: truncate the float64 bits to bf16 (7 fraction bits), take the nearer neighbour,
    # ties to the even one (both distances are exact by Sterbenz)
    truncated = v.view(np.uint64) & ~np.uint64((1 << 45) - 1)
    lo = truncated.view(np.float64)
    hi = (truncated + np.uint64(1 << 45)).view(np.float64)
    dlo, dhi = np.abs(v - lo), np.abs(hi - v)
    lo_even = ((lo.view(np.uint64) >> np.uint64(45)) & np.uint64(1)) == 0
    expected = np.where((dlo < dhi) | ((dlo == dhi) & lo_even), lo, hi)
    got = R.round_float64(v, ml_dtypes.bfloat16).astype(np.float64)
    assert np.array_equal(got, expected)


FMT6_TABLE = [("0x1.01000004p+0", ml_dtypes.bfloat16, 0x3F81), ("0x1.ffffffp127", np.float32, 0x7F800000),
              ("0x1.ffp127", ml_dtypes.bfloat16, 0x7F80), ("0x1.8p-150", np.float32, 0x00000001)]


@pytest.mark.parametrize("value,out_dtype,bits", FMT6_TABLE, ids=[f"FMT-6-{v}" for v, _, _ in FMT6_TABLE])
def test_FMT6_spec_table(value, out_dtype, bits):
    got = R.round_float64(np.array([float.fromhex(value)]), out_dtype)
    assert got.dtype == out_dtype and int(got.view(np.uint32 if got.itemsize == 4 else np.uint16)[0]) == bits


def test_FMT6_other_out_dtypes_are_type_errors():
    for bad in (np.float64, np.float16, "int8"):
        with pytest.raises(TypeError, match="out_dtype"):
            R.round_float64(np.zeros(2), bad)


def test_FMT4_round_float64_to_float32_is_numpy_rne():
    v = np.array([1 + 2.0 ** -24, 1 + 3 * 2.0 ** -24, 1 + 2.0 ** -24 + 2.0 ** -50])
    assert list(R.round_float64(v, np.float32)) == [1.0, 1 + 2.0 ** -22, 1 + 2.0 ** -23]


def test_log2_helpers_exact_on_random_fp32_bits():
    rng = np.random.default_rng(99)
    print("seed 99")
    bits = np.concatenate([rng.integers(1, 0x7F800000, 50000), np.arange(1, 40), [0x00400000, 0x007FFFFF, 0x00800000, 0x7F7FFFFF]])
    v = _f32(bits)
    frac, k = np.frexp(v.astype(np.float64))             # independent: float64 frexp (exact)
    assert np.array_equal(R.floor_log2(v), k - 1)
    assert np.array_equal(R.ceil_log2(v), np.where(frac == 0.5, k - 1, k))
    assert np.array_equal(R.exp2_int(k - 1), np.ldexp(1.0, k - 1).astype(np.float32))


def test_F8_3_pow2_floor_exact_just_below_powers_of_two():
    k = np.arange(-126, 127)
    just_below = (np.ldexp(1.0, k) * (2 - 2.0 ** -23)).astype(np.float32)   # 2^k * (2 - 2^-23)
    assert np.array_equal(R.pow2_floor(just_below), np.ldexp(np.float32(1), k))
    sub = _f32([1, 3, 0x00400000, 0x007FFFFF])
    assert np.array_equal(R.pow2_floor(sub), _f32([1, 2, 0x00400000, 0x00400000]))
    assert np.isnan(R.pow2_floor(np.float32(np.nan)))
