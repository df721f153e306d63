"""Triton device functions shared by the cast kernels: amax bits, float8 scales (F8-2, F8-3, F8-5),
the final fp32 -> float8 encoding (FMT-2, FMT-3, FMT-4) and the exact decoding (FMT-1).

The encoding has two paths chosen by the constexpr SOFT (EXACT_SOFT_CAST in the kernels):
- SOFT=False: the hardware conversion `.to(tl.float8e4nv)` etc. (GPU path; sm89+ rounds rne).
- SOFT=True: integer bit arithmetic, rne onto the format's grid including subnormals. Used under
  TRITON_INTERPRET=1, whose fp8 downcast is wrong in Triton 3.9 (31.9 -> 16.0), and for the fnuz
  formats on NVIDIA GPUs, which have no conversion instruction for them. See fast/README.md.
Both paths return the uint8 code; kernels store it into a uint8 view of the float8 output.
"""
import triton
import triton.language as tl


@triton.jit
def widen_to_fp32(x, IS_BF16: tl.constexpr):
    """Exact fp32 value of a loaded element (fp32, fp16 or bf16; FMT-5). bf16 arrives as int16 bits and is widened by a shift:
    the interpreter's bf16 -> fp32 conversion flushes bf16 subnormals to zero (Triton 3.9), and
    the bit shift is exact and as cheap on the GPU. Masked lanes must load as 0."""
    if IS_BF16:
        return (x.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def abs_bits(x):
    """fp32 bits of |x| (x fp32) as int32. For non-negative floats the integer order is the float order,
    and NaN (bits > 0x7F800000) compares above +inf, so an integer max propagates NaN (F8-1)
    without relying on the NaN behaviour of a float max (which differs between GPU and CPU)."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def loaded_abs_max_bits(x, axis, IS_BF16: tl.constexpr):
    """fp32 bits of max |x| along `axis` (int32) of a tile as loaded (bf16 as int16 bits): for
    bf16 the max runs on the 16-bit |x| bits, which order like the fp32 bits they widen to
    (NaN above inf), so the tile need not be widened to 32 bits before its reduction."""
    if IS_BF16:
        return tl.max(x & 0x7FFF, axis=axis).to(tl.int32) << 16
    else:
        return tl.max(abs_bits(widen_to_fp32(x, IS_BF16)), axis=axis)


@triton.jit
def row_amax_bits(x_ptr, base, row_ok, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                  IS_BF16: tl.constexpr):
    """Per-row max of |x| bits over rows `base` (int64 row offsets) of a row-major x with K
    columns, read BLOCK_K at a time (F8-1 / I8-1 amax; NaN bits sort above inf)."""
    amax = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = widen_to_fp32(tl.load(x_ptr + base + cols[None, :], mask=mask, other=0), IS_BF16)
        amax = tl.maximum(amax, tl.max(abs_bits(x), axis=1))
    return amax


@triton.jit
def is_finite_bits(amax_bits):
    """amax bits below +inf: the group is finite (F8-5, MX-2, I8-6 test this)."""
    return amax_bits < 0x7F800000


@triton.jit
def pow2_floor(qs):
    """F8-3: 2^floor(log2(qs)) exactly, by clearing the mantissa bits. qs is positive and
    normal (qs >= 240 / fp32max > 2^-126); NaN stays NaN."""
    bits = qs.to(tl.int32, bitcast=True) & 0x7F800000
    return tl.where(qs != qs, qs, bits.to(tl.float32, bitcast=True))


@triton.jit
def float8_quant_scale(amax_bits, MAX: tl.constexpr, POW2: tl.constexpr):
    """F8-2: fp32(fp64(max) / max(fp64(amax), 1e-12)); F8-5: NaN for a non-finite group."""
    amax = amax_bits.to(tl.float32, bitcast=True).to(tl.float64)
    qs = (MAX / tl.maximum(amax, 1e-12)).to(tl.float32)
    qs = tl.where(is_finite_bits(amax_bits), qs, float("nan"))
    if POW2:
        qs = pow2_floor(qs)
    return qs


@triton.jit
def clamp_nan_safe(y, LIMIT: tl.constexpr):
    """FMT-3 saturation written with compares, so NaN passes through unchanged (a float min/max
    may drop NaN on the GPU)."""
    y = tl.where(y > LIMIT, LIMIT, y)
    return tl.where(y < -LIMIT, -LIMIT, y)


@triton.jit
def _rne_shift(m, shift):
    """Round the non-negative int32 m / 2^shift to nearest, ties to even (FMT-4); 1<=shift<=30."""
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up.to(tl.int32)


@triton.jit
def soft_float8_code(y, MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr):
    """Exact rne of fp32 y (already clamped to [-max, max], or NaN) to the float8 code, FMT-2.

    Normal results: rne of the fp32 bits shifted right by 23 - MBITS (a mantissa carry moves into
    the exponent field, which is the right answer), minus the bias difference. Subnormal results
    (|y| < 2^(1-BIAS)): rne of the full significand onto the quantum 2^(1-BIAS-MBITS); reaching
    2^MBITS is the smallest normal code, which is again right."""
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 31) & 1
    a = bits & 0x7FFFFFFF
    normal = _rne_shift(a, 23 - MBITS) - ((127 - BIAS) << MBITS)
    exp_field = a >> 23
    significand = tl.where(exp_field == 0, a & 0x7FFFFF, (a & 0x7FFFFF) | 0x800000)
    shift = (1 - BIAS - MBITS) + 150 - tl.maximum(exp_field, 1)
    subnormal = _rne_shift(significand, tl.minimum(shift, 30))
    code = tl.where(a < ((128 - BIAS) << 23), subnormal, normal)
    if FNUZ:
        # no negative zero: a result that rounds to zero is +0; NaN is 0x80 (FMT-1)
        code = tl.where(code == 0, 0, code | (sign << 7))
        code = tl.where(y != y, 0x80, code)
    else:
        code = code | (sign << 7)
        code = tl.where(y != y, 0x7F, code)
    return code.to(tl.uint8)


@triton.jit
def encode_float8(y, MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                  FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr, SOFT: tl.constexpr):
    """FMT-2/FMT-3: clamp (explicit saturation) then rne to the float8 code (uint8)."""
    y = clamp_nan_safe(y, MAX)
    if SOFT:
        code = soft_float8_code(y, MBITS, BIAS, FNUZ)
    else:
        code = y.to(TL_DTYPE).to(tl.uint8, bitcast=True)
    return code


@triton.jit
def soft_bf16_bits(y):
    """fp32 -> bf16 with rne, as int16 bits, by integer arithmetic; NaN -> 0x7FC0. The
    interpreter's own fp32 -> bf16 conversion does not round to nearest even (Triton 3.9)."""
    bits = y.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return tl.where(y != y, 0x7FC0, rounded).to(tl.int16)


@triton.jit
def decode_float8(code, MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr):
    """Exact fp32 value of float8 codes (loaded as uint8), FMT-1: normal codes by moving the
    exponent and mantissa fields into fp32 bits, subnormals as m * 2^(1-BIAS-MBITS), then the
    specials: fnuz NaN 0x80; e4m3fn NaN S.1111.111; e5m2 Inf S.11111.00 and NaN S.11111.xx.
    Integer arithmetic, so the interpreter (whose fp8 -> fp32 upcast misreads NaN and Inf)
    and the GPU compute the same thing."""
    c = code.to(tl.int32) & 0xFF
    sign = c >> 7
    e = (c >> MBITS) & ((1 << (7 - MBITS)) - 1)
    m = c & ((1 << MBITS) - 1)
    normal = ((sign << 31) | ((e - BIAS + 127) << 23) | (m << (23 - MBITS))).to(
        tl.float32, bitcast=True)
    quantum = tl.full((), (128 - BIAS - MBITS) << 23, tl.int32).to(tl.float32, bitcast=True)
    sub = m.to(tl.float32) * quantum                 # 2^(1-BIAS-MBITS) built from bits: exact
    # the sign goes in as a bit: compiled Triton negates as 0 - x, which turns -0 (code 0x80 of
    # e4m3fn and e5m2) into +0 (seen on the H200, 2026-12-01); the interpreter did not show it
    sub = (sub.to(tl.int32, bitcast=True) | (sign << 31)).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, sub, normal)
    if FNUZ:
        v = tl.where(c == 0x80, float("nan"), v)
    elif MBITS == 3:
        v = tl.where((c & 0x7F) == 0x7F, float("nan"), v)
    else:
        emax = (1 << (7 - MBITS)) - 1
        v = tl.where((e == emax) & (m == 0), tl.where(sign == 1, float("-inf"), float("inf")), v)
        v = tl.where((e == emax) & (m != 0), float("nan"), v)
    return v
