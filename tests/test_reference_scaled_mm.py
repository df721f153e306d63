"""Tests of scaled_mm_nt and scaled_grouped_mm (spec/06-scaled-mm.md, MM-1, MM-2, MM-5)."""
import math

import ml_dtypes
import numpy as np
import pytest

from qtrain import reference as R
from qtrain.reference.scaled_mm import nt_float64

# The reference's fp64 sum T64 (any order, MM-3) differs from the exact sum T by at most
# K * 2^-53 * sum|t_k| (MM-2): the only bound here (one table, one reason). The rounded outputs
# are compared bitwise with round_out of math.fsum (T correctly rounded to fp64): with power-of-two
# factors every t_k and T are short dyadics, T64 == T exactly, and exact ties (common there) must
# round to even; with the other factors the fixed seeds keep T away from rounding boundaries.
FP64_ACCUMULATION_BOUND = lambda k, abs_sum: k * 2.0 ** -53 * abs_sum  # noqa: E731


def _dequant_direct(payload, d):
    """Independent MM-1: np.kron expands the factor blocks (the reference uses np.repeat)."""
    d = np.asarray(d, dtype=np.float64).reshape((1, 1) if np.ndim(d) == 0 else np.shape(d))
    block = (payload.shape[0] // d.shape[0], payload.shape[1] // d.shape[1])
    return payload.astype(np.float64) * np.kron(d, np.ones(block))


def _fsum_nt(a64, b64):
    """out[m, n] = exactly rounded sum_k a64[m, k] * b64[n, k] (math.fsum), plus sum of |terms|."""
    terms = a64[:, None, :] * b64[None, :, :]
    out = np.array([[math.fsum(row) for row in plane] for plane in terms])
    return out, np.abs(terms).sum(-1)


def _operands(recipe, rng, m=32, n=16, k=256):
    x = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-6, 6, (m, 1)))).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(ml_dtypes.bfloat16)
    if recipe == "tensorwise":
        (a, qa), (b, qb) = R.quantize_float8(x, "float8_e4m3fn"), R.quantize_float8(w, "float8_e5m2")
        return a, R.float8_dequant_factor(qa), b, R.float8_dequant_factor(qb)
    if recipe == "rowwise":
        (a, qa), (b, qb) = (R.quantize_float8(t, "float8_e4m3fn", axis=-1, pow2_scale=True) for t in (x, w))
        return a, R.float8_dequant_factor(qa), b, R.float8_dequant_factor(qb)
    if recipe == "mxfp8":
        (a, sa), (b, sb) = (R.quantize_mx(t, "float8_e4m3fn", scale_mode="rceil") for t in (x, w))
        return a, R.mx_dequant_factor(sa), b, R.mx_dequant_factor(sb)
    if recipe == "int8":
        (a, da), (b, db) = (R.quantize_int8(t.astype(np.float32), -1) for t in (x, w))
        return a, R.int8_dequant_factor(da), b, R.int8_dequant_factor(db).astype(np.float32)
    if recipe == "blockwise":
        w = rng.standard_normal((128, k)).astype(np.float32)
        (a, qa), (b, qb) = R.quantize_blockwise(x, (1, 128)), R.quantize_blockwise(w, (128, 128))
        return a, R.float8_dequant_factor(qa), b, R.float8_dequant_factor(qb)
    raise AssertionError(recipe)


RECIPES = ["tensorwise", "rowwise", "mxfp8", "int8", "blockwise"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"MM-2-{r}" for r in RECIPES])
def test_MM_2_scaled_mm_nt_matches_direct_float64(recipe):
    rng = np.random.default_rng(31)
    print("seed 31")
    a, da, b, db = _operands(recipe, rng)
    a64, b64 = _dequant_direct(a, da), _dequant_direct(b, db)
    exact, abs_sum = _fsum_nt(a64, b64)
    t64 = nt_float64(a64, b64)
    assert np.all(np.abs(t64 - exact) <= FP64_ACCUMULATION_BOUND(a.shape[1], abs_sum))
    for out_dtype in (np.float32, ml_dtypes.bfloat16):                 # MM-2: one rounding
        got = R.scaled_mm_nt(a, da, b, db, out_dtype)
        assert got.dtype == out_dtype and got.shape == (a.shape[0], b.shape[0])
        assert np.array_equal(got, R.round_float64(exact, out_dtype))


E4M3 = ml_dtypes.float8_e4m3fn


def _e4m3(codes):
    return np.array(codes, np.uint8).view(E4M3)


MM2_TABLE = [  # spec/06 MM-2: A codes, dA, B codes, dB, float32 bits, bfloat16 bits
    ("MM-2-simple", [[0x38, 0x40]], 0.5, [[0x44, 0x30]], 2.0, 0x40800000, 0x4080),
    ("MM-2-one-rounding", [[0x38, 0x38, 0x02]], 1.0, [[0x38, 0x02, 0x02]], 1.0, 0x3F808080, 0x3F81),
]


@pytest.mark.parametrize("a,da,b,db,f32,bf16", [c[1:] for c in MM2_TABLE], ids=[c[0] for c in MM2_TABLE])
def test_MM_2_spec_table(a, da, b, db, f32, bf16):
    args = (_e4m3(a), np.array(da), _e4m3(b), np.array(db))
    assert int(R.scaled_mm_nt(*args, np.float32).view(np.uint32)[0, 0]) == f32
    assert int(R.scaled_mm_nt(*args, ml_dtypes.bfloat16).view(np.uint16)[0, 0]) == bf16


def test_MM_6_nan_and_inf_cases():
    # spec/06 MM-6 table: a NaN code next to a zero partner, and a NaN factor on zero payloads
    out = R.scaled_mm_nt(_e4m3([[0x38, 0x7F], [0x38, 0x38]]), np.ones((2, 1)), _e4m3([[0x38, 0x00]]), np.ones(()))
    assert np.isnan(out[0, 0]) and out[1, 0] == 1.0
    out = R.scaled_mm_nt(_e4m3([[0x38, 0x38]]), np.full((1, 1), np.nan), _e4m3([[0x00, 0x00]]), np.ones(()))
    assert np.isnan(out[0, 0])
    # e5m2 carries Inf codes: +Inf term -> +Inf; +Inf and -Inf terms -> NaN; Inf * 0 -> NaN
    e5 = lambda c: np.array(c, np.uint8).view(ml_dtypes.float8_e5m2)  # noqa: E731
    a = e5([[0x7C, 0x3C], [0x7C, 0xFC], [0x7C, 0x3C], [0xFC, 0x3C]])      # (+Inf, 1), (+Inf, -Inf), ...
    b = e5([[0x3C, 0x3C], [0x00, 0x3C]])                                 # (1, 1), (0, 1)
    out = R.scaled_mm_nt(a, np.ones(()), b, np.ones(()))
    assert out[0, 0] == np.inf and np.isnan(out[1, 0]) and out[3, 0] == -np.inf
    assert np.isnan(out[0, 1]) and np.isnan(out[2, 1])
    # overflow of the rounding gives +-Inf (FMT-6)
    big = R.scaled_mm_nt(_e4m3([[0x7E]]), np.array(2.0 ** 127), _e4m3([[0x7E]]), np.array(2.0 ** 127))
    assert big[0, 0] == np.inf


def test_MM_1_scalar_factors_and_nan_rows():
    a = np.array([[1.0, 2.0], [3.0, np.nan]], np.float32).astype(ml_dtypes.float8_e4m3fn)
    b = np.array([[1.0, 1.0]], np.float32).astype(ml_dtypes.float8_e4m3fn)
    out = R.scaled_mm_nt(a, np.float32(0.5), b, np.array(2.0), np.float32)
    assert out[0, 0] == 3.0 and np.isnan(out[1, 0])


def test_MM_1_errors():
    a = np.zeros((4, 64), ml_dtypes.float8_e4m3fn)
    b = np.zeros((8, 64), ml_dtypes.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"a_dequant shape \(3, 1\).*\(4, 64\).*axis 0"):
        R.scaled_mm_nt(a, np.ones((3, 1)), b, np.ones(()), np.float32)
    with pytest.raises(ValueError, match="contraction"):
        R.scaled_mm_nt(a, np.ones(()), b[:, :32], np.ones(()), np.float32)
    with pytest.raises(TypeError, match="out_dtype"):
        R.scaled_mm_nt(a, np.ones(()), b, np.ones(()), np.float16)
    with pytest.raises(TypeError, match="both float8 or both int8"):
        R.scaled_mm_nt(a, np.ones(()), np.zeros((8, 64), np.int8), np.ones(()), np.float32)
    with pytest.raises(TypeError, match="float32"):
        R.scaled_mm_nt(a.astype(np.float32), np.ones(()), b, np.ones(()), np.float32)
    with pytest.raises(TypeError, match="int64"):
        R.scaled_mm_nt(a, np.ones((), np.int64), b, np.ones(()), np.float32)


def _rowwise_int8(rng, shape):
    return R.quantize_int8(rng.standard_normal(shape).astype(np.float32), -1)


@pytest.mark.parametrize("offs", [[3, 3, 10, 17], [0, 0, 20, 20], [5, 9, 12, 14]],
                         ids=["MM-5-uneven", "MM-5-empty-groups", "MM-5-tail-rows-zero"])
def test_MM_5_grouped_2d_3d_vs_per_row(offs):
    rng = np.random.default_rng(41)
    print("seed 41")
    m, n, k, e = 20, 6, 64, 4
    a, sa = R.quantize_mx(rng.standard_normal((m, k)).astype(np.float32), "float8_e4m3fn")
    b = np.empty((e, n, k), ml_dtypes.float8_e4m3fn)
    sb = np.empty((e, n, k // 32), np.uint8)
    for g in range(e):
        b[g], sb[g] = R.quantize_mx(rng.standard_normal((n, k)).astype(np.float32), "float8_e4m3fn")
    offs = np.array(offs, np.int32)
    got = R.scaled_grouped_mm(a, R.mx_dequant_factor(sa), b, R.mx_dequant_factor(sb), offs, np.float32)
    a64 = _dequant_direct(a, R.mx_dequant_factor(sa))
    expected = np.zeros((m, n))
    for row in range(m):
        g = int(np.searchsorted(offs, row, side="right"))       # group whose [start, end) holds row
        if g < e:
            b64 = _dequant_direct(b[g], R.mx_dequant_factor(sb[g]))
            expected[row] = [math.fsum(a64[row] * b64[j]) for j in range(n)]
    assert np.array_equal(got, expected.astype(np.float32))
    assert (got[offs[-1]:] == 0).all()


@pytest.mark.parametrize("offs", [[32, 32, 96, 128], [0, 64, 64, 96]], ids=["MM-5-2d2d-uneven", "MM-5-2d2d-empty-tail"])
def test_MM_5_grouped_2d_2d_along_contraction(offs):
    rng = np.random.default_rng(43)
    print("seed 43")
    m, n, t = 8, 5, 128
    offs = np.array(offs, np.int32)
    # a: MX along T (block form, blocks of 32 aligned with the group ends); b: per-group form (E, N, 1)
    a, sa = R.quantize_mx(rng.standard_normal((m, t)).astype(np.float32), "float8_e4m3fn")
    b = rng.standard_normal((n, t)).astype(np.float32).astype(ml_dtypes.float8_e5m2)
    db = np.exp2(rng.integers(-3, 3, (len(offs), n, 1))).astype(np.float32)
    got = R.scaled_grouped_mm(a, R.mx_dequant_factor(sa), b, db, offs, ml_dtypes.bfloat16)
    assert got.shape == (len(offs), m, n)
    a64 = _dequant_direct(a, R.mx_dequant_factor(sa))
    starts = [0] + list(offs[:-1])
    for g, (s, e) in enumerate(zip(starts, offs)):
        b64 = b.astype(np.float64) * db[g]
        exact, _ = _fsum_nt(a64[:, s:e], b64[:, s:e]) if e > s else (np.zeros((m, n)), None)
        assert np.array_equal(got[g], R.round_float64(exact, ml_dtypes.bfloat16)), f"group {g}"


def test_MM_5_offs_validation():
    rng = np.random.default_rng(0)
    a, da = _rowwise_int8(rng, (8, 32))
    b = np.zeros((2, 4, 32), np.int8)
    db = np.ones((2, 4, 1), np.float32)
    call = lambda offs: R.scaled_grouped_mm(a, da, b, db, offs, np.float32)  # noqa: E731
    with pytest.raises(TypeError, match="int64"):
        call(np.array([4, 8]))
    with pytest.raises(ValueError, match="1-D"):
        call(np.array([[4, 8]], np.int32))
    with pytest.raises(ValueError, match=r"one entry per group \(2\)"):
        call(np.array([8], np.int32))
    with pytest.raises(ValueError, match="non-decreasing"):
        call(np.array([6, 4], np.int32))
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        call(np.array([4, 9], np.int32))
    with pytest.raises(ValueError, match="b_dequant shape"):
        R.scaled_grouped_mm(a, da, b, np.ones((4, 1), np.float32), np.array([4, 8], np.int32), np.float32)
    # 2d x 2d block form: blocks of 16 along T must align with the group ends
    a2 = np.zeros((4, 32), np.int8)
    with pytest.raises(ValueError, match="do not align"):
        R.scaled_grouped_mm(a2, np.ones((4, 2)), a2, np.ones(()), np.array([8, 32], np.int32), np.float32)
    with pytest.raises(ValueError, match=r"per-group b_dequant must have shape \(2, 4, 1\)"):
        R.scaled_grouped_mm(a2, np.ones(()), a2, np.ones((2, 4, 2)), np.array([8, 32], np.int32), np.float32)


def test_MM_5_spec_table_row_groups():
    # M = 6, offs [2, 2, 5]: rows 0-1 -> B[0]; group 1 empty; rows 2-4 -> B[2]; row 5 -> +0
    a = np.ones((6, 32), np.int8)
    b = np.stack([np.full((1, 32), v, np.int8) for v in (1, 2, 3)])
    out = R.scaled_grouped_mm(a, np.ones(()), b, np.ones((3, 1, 1)), np.array([2, 2, 5], np.int32))
    assert out[:, 0].tolist() == [32, 32, 96, 96, 96, 0] and not np.signbit(out[5, 0])
    # 2d x 2d, T = 4, offs [1, 3]: out[0] sums t = 0; out[1] sums t = 1, 2; t = 3 ignored
    a = np.array([[1, 2, 4, 8]], np.int8)
    out = R.scaled_grouped_mm(a, np.ones(()), np.ones((1, 4), np.int8), np.ones(()), np.array([1, 3], np.int32))
    assert out[:, 0, 0].tolist() == [1, 6]
