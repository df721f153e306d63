"""Format parameter records (spec/01-formats.md, FMT-1): the one place these constants live.

Pure Python on purpose: `reference/` maps names to ml_dtypes, `fast/` to torch dtypes.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Float8Format:
    name: str             # the ml_dtypes / torch name, never aliased
    ebits: int
    mbits: int
    bias: int
    max: float            # largest finite value, written in hex-float form
    min_normal: float
    min_subnormal: float
    has_inf: bool
    has_negative_zero: bool
    nan_bits: tuple       # every encoding that decodes to NaN
    emax: int             # floor(log2(max)): the MX "emax_elem"


def _nan_codes(*codes):
    return tuple(sorted(codes))


FLOAT8_E4M3FN = Float8Format(
    "float8_e4m3fn", 4, 3, 7, float.fromhex("0x1.cp8"), float.fromhex("0x1p-6"),
    float.fromhex("0x1p-9"), False, True, _nan_codes(0x7F, 0xFF), 8)
FLOAT8_E5M2 = Float8Format(
    "float8_e5m2", 5, 2, 15, float.fromhex("0x1.cp15"), float.fromhex("0x1p-14"),
    float.fromhex("0x1p-16"), True, True, _nan_codes(0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF), 15)
FLOAT8_E4M3FNUZ = Float8Format(
    "float8_e4m3fnuz", 4, 3, 8, float.fromhex("0x1.ep7"), float.fromhex("0x1p-7"),
    float.fromhex("0x1p-10"), False, False, _nan_codes(0x80), 7)
FLOAT8_E5M2FNUZ = Float8Format(
    "float8_e5m2fnuz", 5, 2, 16, float.fromhex("0x1.cp15"), float.fromhex("0x1p-15"),
    float.fromhex("0x1p-17"), False, False, _nan_codes(0x80), 15)

FLOAT8_FORMATS = {f.name: f for f in (FLOAT8_E4M3FN, FLOAT8_E5M2, FLOAT8_E4M3FNUZ, FLOAT8_E5M2FNUZ)}

# MX element formats (spec/03-mx.md): the float8 formats of the OCP MX v1.0 spec.
MX_ELEM_FORMATS = ("float8_e4m3fn", "float8_e5m2")
MX_SCALE_MODES = ("floor", "rceil")

# float8_e8m0fnu (FMT-1): byte b in 0..254 means 2^(b - 127); 0xFF is NaN; no zero, inf or sign.
E8M0_BIAS = 127
E8M0_NAN = 0xFF
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127

INT8_MAX = 127             # symmetric: -128 is never produced (FMT-1)
EPS_AMAX = 1e-12           # floor on amax in scale computations (F8-2, I8-3)


def float8_format(name: str) -> Float8Format:
    """Look a float8 format up by its exact name; raise a ValueError naming the choices."""
    try:
        return FLOAT8_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown float8 format {name!r}; expected one of {sorted(FLOAT8_FORMATS)}") from None
