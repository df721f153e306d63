"""Float8 encode/decode and exact power-of-two helpers (spec/01-formats.md, FMT-1..FMT-4).

Written for clarity, not speed. The rne rounding is done here on float64 values from first
principles (quantum = 2^(exponent - mbits)); ml_dtypes is only used to label the uint8 codes with
their float8 dtype and to decode them (decoding is exact). The tests check this encoder against
ml_dtypes and torch over every bf16 input.
"""
import ml_dtypes
import numpy as np

from qtrain.formats import FLOAT8_FORMATS, float8_format
from ._checks import check_out_dtype

FLOAT8_DTYPES = {name: np.dtype(getattr(ml_dtypes, name)) for name in FLOAT8_FORMATS}
FLOAT8_NAMES = {dt: name for name, dt in FLOAT8_DTYPES.items()}

# floor_log2 / ceil_log2 of zero: one below the exponent of the smallest fp32 subnormal (2^-149),
# so that clamping at -127 (MX-3, MX-4) treats zero like the tiniest value.
ZERO_LOG2 = -150
_TWO_POW_64 = np.float32(2.0 ** 64)


def float8_dtype(fmt):
    """The ml_dtypes dtype of a float8 format name (ValueError listing the names otherwise)."""
    return FLOAT8_DTYPES[float8_format(fmt).name]


def float32_bits(v):
    return np.asarray(v, dtype=np.float32).view(np.uint32)


def _exponent_and_fraction(v):
    """(floor(log2|v|), fraction bits) of finite nonzero fp32 values, exact, from the fp32 bits.

    Subnormals are first multiplied by 2^64 (exact: the product is a normal fp32 number), so their
    exponent field becomes meaningful; 64 is subtracted again afterwards.
    """
    mag = np.abs(np.asarray(v, dtype=np.float32))
    subnormal = (mag != 0) & (mag < np.float32(2.0 ** -126))
    bits = float32_bits(np.where(subnormal, np.where(subnormal, mag, 0) * _TWO_POW_64, mag))
    exponent = ((bits >> 23) & 0xFF).astype(np.int64) - 127 - np.where(subnormal, 64, 0)
    return exponent, bits & 0x7FFFFF


def floor_log2(v):
    """floor(log2|v|) of fp32 values as int64, exact (never log2f); zero -> ZERO_LOG2.

    Only meaningful for finite v; callers handle NaN and Inf first (their result is 128).
    """
    exponent, _ = _exponent_and_fraction(v)
    return np.where(np.asarray(v) == 0, ZERO_LOG2, exponent)


def ceil_log2(v):
    """ceil(log2|v|) of fp32 values as int64, exact: floor, plus one unless |v| is a power of two."""
    exponent, fraction = _exponent_and_fraction(v)
    return np.where(np.asarray(v) == 0, ZERO_LOG2, exponent + (fraction != 0))


def exp2_int(e):
    """2^e as fp32 for integers e in [-149, 127], exact (ldexp, not exp2f)."""
    return np.ldexp(np.float32(1.0), np.asarray(e, dtype=np.int32)).astype(np.float32)


def pow2_floor(v):
    """F8-3: 2^floor(log2 v) of positive fp32 values, exact from the bits; NaN stays NaN, Inf stays Inf."""
    v = np.asarray(v, dtype=np.float32)
    finite_nonzero = np.isfinite(v) & (v != 0)
    safe = np.where(finite_nonzero, v, np.float32(1.0))
    # for a normal number this clears the mantissa bits; for a subnormal it keeps the top set bit
    return np.where(finite_nonzero, exp2_int(floor_log2(safe)), v).astype(np.float32)


def round_to_grid(v, mbits, min_exponent):
    """FMT-4: rne of float64 values onto a binary grid with `mbits` fraction bits, exponents floored
    at `min_exponent` (below it the grid is the fixed subnormal quantum 2^(min_exponent - mbits)) and
    unbounded above. Exact: the scaling by the quantum is by a power of two."""
    v = np.asarray(v, dtype=np.float64)
    mag = np.abs(v)
    _, k = np.frexp(mag)                      # mag = f * 2^k with f in [0.5, 1): floor(log2) = k - 1
    exponent = np.maximum(k.astype(np.int64) - 1, min_exponent)
    quantum = np.ldexp(1.0, exponent - mbits)
    return np.copysign(np.rint(mag / quantum) * quantum, v)   # np.rint is round-half-even


def _nan_code(f):
    # NaN payload and sign are free (FMT-2); the positive all-ones encoding, or fnuz's only NaN 0x80
    return 0x80 if 0x80 in f.nan_bits else 0x7F


def cast_to_float8(v, fmt):
    """FMT-2/FMT-3: saturating rne cast of fp32 (or exact fp64) values to a float8 format.

    Case order: NaN -> the format's NaN; +-Inf -> +-max; zero -> zero of the same sign (fnuz: +0);
    finite -> clamp to [-max, max] then rne onto the grid, subnormals included; a result that
    rounds to zero keeps the sign (fnuz: +0). float64 input is rounded once, directly (used by MX-6
    where x * 2^-e is exact in float64).
    """
    f = float8_format(fmt)
    v = np.asarray(v)
    if v.dtype not in (np.float32, np.float64):
        raise TypeError(f"qtrain.reference.casts.cast_to_float8: values have dtype {v.dtype}; "
                        "expected float32 or float64")
    # Case NaN: set last (below) over the computed codes; here NaN is replaced by 0 to keep the
    # arithmetic quiet.
    nan = np.isnan(v)
    # Case +-Inf and the finite case: FMT-3 explicit saturation before rounding (ml_dtypes would
    # not saturate: 500 -> NaN in e4m3fn); np.clip maps +-Inf to +-max.
    with np.errstate(invalid="ignore"):                        # signalling NaNs raise the flag
        clamped = np.clip(np.where(nan, 0.0, v.astype(np.float64)), -f.max, f.max)
    # FMT-4: rne onto the grid, subnormals included; |rounded| <= max because max is on the grid
    rounded = round_to_grid(clamped, f.mbits, 1 - f.bias)
    mag = np.abs(rounded)
    normal = mag >= f.min_normal
    _, k = np.frexp(np.where(normal, mag, 1.0))
    exponent = k.astype(np.int64) - 1
    # fields: normal -> (exponent + bias, (mag / 2^exponent - 1) * 2^mbits);
    #         subnormal or zero -> (0, mag / min_subnormal)
    exp_field = np.where(normal, exponent + f.bias, 0)
    mant_field = np.where(normal, (np.ldexp(mag, -exponent) - 1.0) * 2.0 ** f.mbits, mag / f.min_subnormal)
    magnitude_code = (exp_field << f.mbits) | np.rint(mant_field).astype(np.int64)   # exact integers
    # Case zero (input zero, or a result that rounded to zero): keeps the sign; fnuz has no -0
    negative = np.signbit(rounded)
    if not f.has_negative_zero:
        negative &= mag != 0
    codes = np.where(negative, magnitude_code | 0x80, magnitude_code)
    codes = np.where(nan, _nan_code(f), codes)                 # case NaN: the format's NaN
    return codes.astype(np.uint8).view(FLOAT8_DTYPES[f.name])


def float8_format_of(data, where):
    """The format name of a float8 ml_dtypes array; TypeError naming the dtype otherwise."""
    dt = np.asarray(data).dtype
    if dt not in FLOAT8_NAMES:
        raise TypeError(f"qtrain.reference.{where}: data has dtype {dt}; expected one of "
                        f"{sorted(FLOAT8_NAMES.values())} (ml_dtypes)")
    return FLOAT8_NAMES[dt]


def float8_to_float64(data):
    """Exact float64 value of float8 codes (every float8 value is a float64 value)."""
    float8_format_of(data, "casts.float8_to_float64")
    return np.asarray(data).astype(np.float64)


_BF16_MAX = float.fromhex("0x1.fep127")


def round_float64(v, out_dtype):
    """FMT-6: one rne rounding of float64 values to out_dtype (float32 or bfloat16), overflow to +-Inf.

    ml_dtypes rounds float64 -> bfloat16 through float32 (double rounding), so bfloat16 is rounded
    here with round_to_grid; the result is then a bf16 value and the casts after it are exact.
    """
    dt = check_out_dtype(out_dtype, "casts.round_float64")
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore"):
        if dt == np.float32:
            return v.astype(np.float32)               # numpy's double -> float cast is rne
        rounded = round_to_grid(v, 7, -126)
        rounded = np.where(np.abs(rounded) > _BF16_MAX, np.copysign(np.inf, rounded), rounded)
        return rounded.astype(np.float32).astype(dt)
