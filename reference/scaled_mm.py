"""Scaled matrix products in NT form, plain and grouped (spec/06-scaled-mm.md, MM-1..MM-5).

Written for clarity, not speed: operands are dequantized to float64, multiplied with float64
accumulation, and rounded ONCE to out_dtype (MM-2). The order of accumulation is free (MM-3).
"""
import numpy as np

from ._checks import check_out_dtype
from .casts import FLOAT8_NAMES, round_float64


def _payload_float64(p, ndim, name, where):
    """Exact float64 values of a float8 (ml_dtypes) or int8 payload with the expected ndim."""
    p = np.asarray(p)
    if p.dtype not in FLOAT8_NAMES and p.dtype != np.int8:
        raise TypeError(f"qtrain.reference.scaled_mm.{where}: {name} has dtype {p.dtype}; expected int8 "
                        f"or one of {sorted(FLOAT8_NAMES.values())} (ml_dtypes)")
    if p.ndim != ndim:
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: {name} must be {ndim}-D, got shape {p.shape}")
    return p.astype(np.float64)


def expand_dequant(d, shape, name, where="expand_dequant"):
    """MM-1: broadcast a dequant factor array of shape (R/br, C/bc) to the operand shape (R, C).

    A 0-d factor is (1, 1). Element (r, c) gets d[r // br, c // bc]; br and bc must divide R and C.
    """
    d = np.asarray(d)
    if d.dtype not in (np.float32, np.float64):
        raise TypeError(f"qtrain.reference.scaled_mm.{where}: {name} has dtype {d.dtype}; "
                        "expected float32 or float64")
    d = d.astype(np.float64).reshape((1, 1) if d.ndim == 0 else d.shape)
    if d.ndim != 2:
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: {name} must be 0-d or 2-D, got shape {d.shape}")
    for axis in (0, 1):
        if d.shape[axis] == 0 or shape[axis] % d.shape[axis]:
            raise ValueError(
                f"qtrain.reference.scaled_mm.{where}: {name} shape {d.shape} does not tile operand "
                f"shape {tuple(shape)} along axis {axis} (block size must divide {shape[axis]})")
    rows, cols = shape[0] // d.shape[0], shape[1] // d.shape[1]
    return np.repeat(np.repeat(d, rows, axis=0), cols, axis=1)


def _check_kinds(a, b, where):
    """MM-1: both payloads float8 (any formats) or both int8."""
    kinds = {np.asarray(p).dtype == np.int8 for p in (a, b)}
    if len(kinds) != 1:
        raise TypeError(f"qtrain.reference.scaled_mm.{where}: a has dtype {np.asarray(a).dtype} and b "
                        f"{np.asarray(b).dtype}; expected both float8 or both int8")


def _check_k(a, b, where):
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: contraction mismatch, a shape {a.shape} "
                         f"and b shape {b.shape} must share their last axis (NT form, MM-1)")


def _any_pair(x, y):
    """out[m, n] = any_k x[m, k] & y[n, k], for boolean x (M, K) and y (N, K)."""
    return (x.astype(np.float64) @ y.T.astype(np.float64)) > 0


def nt_float64(a64, b64):
    """MM-2 and MM-6 on dequantized float64 operands (M, K), (N, K): the fp64 sum T64, unrounded.

    Cases in order for out[m, n]: NaN if some term is NaN (a NaN operand element, which includes
    a payload times a NaN factor, or 0 * Inf) or the terms hold both +Inf and -Inf; else +-Inf if
    some term is +-Inf; else the fp64 sum of the finite terms (any order, MM-3). The special
    positions are found separately so that they do not depend on how BLAS treats NaN.
    """
    if np.isfinite(a64).all() and np.isfinite(b64).all():
        return a64 @ b64.T                                # no special position: the plain sum
    nan = np.isnan(a64).any(1)[:, None] | np.isnan(b64).any(1)[None, :]
    nan |= _any_pair(np.isinf(a64), b64 == 0) | _any_pair(a64 == 0, np.isinf(b64))
    pos_inf_a, neg_inf_a, pos_inf_b, neg_inf_b = a64 == np.inf, a64 == -np.inf, b64 == np.inf, b64 == -np.inf
    plus_inf = (_any_pair(pos_inf_a, b64 > 0) | _any_pair(neg_inf_a, b64 < 0)
                | _any_pair(a64 > 0, pos_inf_b) | _any_pair(a64 < 0, neg_inf_b))
    minus_inf = (_any_pair(pos_inf_a, b64 < 0) | _any_pair(neg_inf_a, b64 > 0)
                 | _any_pair(a64 > 0, neg_inf_b) | _any_pair(a64 < 0, pos_inf_b))
    nan |= plus_inf & minus_inf
    finite_sum = np.where(np.isfinite(a64), a64, 0.0) @ np.where(np.isfinite(b64), b64, 0.0).T
    return np.where(nan, np.nan, np.where(plus_inf, np.inf, np.where(minus_inf, -np.inf, finite_sum)))


def scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype=np.float32):
    """MM-1/MM-2: out[m, n] = round_out(sum_k A[m,k] dA[m,k] B[n,k] dB[n,k]), a (M,K), b (N,K)."""
    where = "scaled_mm_nt"
    dt = check_out_dtype(out_dtype, f"scaled_mm.{where}")
    a64 = _payload_float64(a, 2, "a", where)
    b64 = _payload_float64(b, 2, "b", where)
    _check_kinds(a, b, where)
    _check_k(a64, b64, where)
    with np.errstate(invalid="ignore"):                   # 0 * Inf is NaN by MM-6
        a64 = a64 * expand_dequant(a_dequant, a64.shape, "a_dequant", where)
        b64 = b64 * expand_dequant(b_dequant, b64.shape, "b_dequant", where)
    return round_float64(nt_float64(a64, b64), dt)        # float64 accumulation, one rounding (MM-2)


def mm_mx_values(a, a_dequant, b, b_dequant, out_dtype=np.float32):
    """RC-7's emulated product: MM-2 of MX operands a (M, K), b (N, K), each given as its MX-10
    values (dequant None: bfloat16 or float32 values) or as its float8 payload and MM-1 factors
    (the powers of two of its scale bytes), whose products are exact in float64."""
    where = "mm_mx_values"
    dt = check_out_dtype(out_dtype, f"scaled_mm.{where}")
    a64 = _values_float64(a, a_dequant, 2, "a", where)
    b64 = _values_float64(b, b_dequant, 2, "b", where)
    _check_k(a64, b64, where)
    return round_float64(nt_float64(a64, b64), dt)


def _check_offs(offs, n_groups, limit, what, where):
    """MM-5: offs are int32 cumulative group END indices, 1-D, non-decreasing, in [0, limit]."""
    offs = np.asarray(offs)
    if offs.dtype != np.int32:
        raise TypeError(f"qtrain.reference.scaled_mm.{where}: offs has dtype {offs.dtype}; expected int32")
    if offs.ndim != 1 or (n_groups is not None and offs.shape[0] != n_groups):
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: offs must be 1-D with one entry per group"
                         f"{'' if n_groups is None else f' ({n_groups})'}, got shape {offs.shape}")
    if offs.size and (offs[0] < 0 or np.any(np.diff(offs) < 0) or offs[-1] > limit):
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: offs {offs.tolist()} must be non-decreasing "
                         f"group end indices in [0, {limit}] ({what})")
    starts = np.concatenate([[0], offs[:-1]]).astype(np.int64)
    return list(zip(starts.tolist(), offs.astype(np.int64).tolist()))


def _grouped_factor_2d2d(d, shape, groups, name, where):
    """MM-5 2d x 2d factors for an operand (R, T): block form (R/br, T/bc) with bc dividing every
    offs value (MM-1), or per-group form (E, R, 1) where element (r, t) of group g uses d[g, r, 0]."""
    d = np.asarray(d)
    if d.ndim == 3:
        if d.shape != (len(groups), shape[0], 1):
            raise ValueError(f"qtrain.reference.scaled_mm.{where}: per-group {name} must have shape "
                             f"{(len(groups), shape[0], 1)}, got {d.shape}")
        full = np.zeros(shape)
        for g, (start, end) in enumerate(groups):
            full[:, start:end] = d[g].astype(np.float64)     # t past offs[-1] is ignored anyway
        return full
    full = expand_dequant(d, shape, name, where)
    n_blocks = 1 if d.ndim == 0 else d.shape[1]
    bc = shape[1] // n_blocks
    # a single block along T (scalar or rowwise over all of T) is the same factor in every group,
    # so alignment only matters when there are several blocks
    if n_blocks > 1 and any(end % bc for _, end in groups):
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: {name} blocks of {bc} along the contraction "
                         f"do not align with the group ends {[end for _, end in groups]}")
    return full


def scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype=np.float32):
    """MM-5, two forms; every output element is an MM-2 (with MM-6) product rounded once:

    2d x 3d: a (M,K), b (E,N,K), b_dequant (E, N/br, K/bc) (b_dequant[g] follows MM-1 for b[g]);
      rows [offs[g-1], offs[g]) of a use b[g]; rows past offs[-1] are +0. Returns (M, N).
    2d x 2d: a (M,T), b (N,T), grouped along the contraction T: out[g] = a[:, cols_g] @ b[:, cols_g].T
      with cols_g = [offs[g-1], offs[g]). Factors in block form (MM-1 on the whole operand, blocks
      aligned with the group ends) or per-group form (E, R, 1). Returns (E, M, N); an empty group
      gives zeros.
    """
    where = "scaled_grouped_mm"
    dt = check_out_dtype(out_dtype, f"scaled_mm.{where}")
    a64 = _payload_float64(a, 2, "a", where)
    b = np.asarray(b)
    if b.ndim not in (2, 3):
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: b must be 2-D (N,T) or 3-D (E,N,K), "
                         f"got shape {b.shape}")
    b64 = _payload_float64(b, b.ndim, "b", where)
    _check_kinds(a, b, where)
    _check_k(a64, b64, where)
    with np.errstate(invalid="ignore"):                   # 0 * Inf is NaN by MM-6
        if b.ndim == 3:
            groups = _check_offs(offs, b64.shape[0], a64.shape[0], "rows of a", where)
            b_dequant = np.asarray(b_dequant)
            if b_dequant.ndim != 3 or b_dequant.shape[0] != b64.shape[0]:
                raise ValueError(f"qtrain.reference.scaled_mm.{where}: b_dequant shape {b_dequant.shape} "
                                 f"must be (E, N/br, K/bc) with E = {b64.shape[0]}")
            a64 = a64 * expand_dequant(a_dequant, a64.shape, "a_dequant", where)
            b64 = _per_expert(b64, b_dequant, "b_dequant[g]", where)
        else:
            groups = _check_offs(offs, None, a64.shape[1], "columns of the contraction axis", where)
            a64 = a64 * _grouped_factor_2d2d(a_dequant, a64.shape, groups, "a_dequant", where)
            b64 = b64 * _grouped_factor_2d2d(b_dequant, b64.shape, groups, "b_dequant", where)
    return round_float64(_grouped_sums(a64, b64, groups), dt)


def _grouped_sums(a64, b64, groups):
    """MM-5's unrounded sums (MM-2 with MM-6) of dequantized float64 operands over `groups`
    ((start, end) pairs, _check_offs): 2d x 3d, rows [start, end) of a against b[g], rows past
    the last group +0, (M, N); or 2d x 2d, columns [start, end) of both, (E, M, N), an empty
    group zeros."""
    if b64.ndim == 3:
        out = np.zeros((a64.shape[0], b64.shape[1]))       # rows past offs[-1] stay +0
        for g, (start, end) in enumerate(groups):
            out[start:end] = nt_float64(a64[start:end], b64[g])
        return out
    out = np.zeros((len(groups), a64.shape[0], b64.shape[0]))
    for g, (start, end) in enumerate(groups):
        out[g] = nt_float64(a64[:, start:end], b64[:, start:end])
    return out


def mm_mx_values_grouped(a, a_dequant, b, b_dequant, offs, out_dtype=np.float32):
    """RC-7's emulated MM-5 for MX operands given each as its MX-10 values (dequant None) or as
    payload and MM-1 block factors (block form; for b (E, N, K) per expert, (E, N/br, K/bc)):
    the same two forms and zero rules as scaled_grouped_mm, every element one MM-2 product."""
    where = "mm_mx_values_grouped"
    dt = check_out_dtype(out_dtype, f"scaled_mm.{where}")
    b = np.asarray(b)
    if b.ndim not in (2, 3):
        raise ValueError(f"qtrain.reference.scaled_mm.{where}: b must be 2-D (N,T) or 3-D (E,N,K), "
                         f"got shape {b.shape}")
    a64 = _values_float64(a, a_dequant, 2, "a", where)
    b64 = _values_float64(b, b_dequant, b.ndim, "b", where)
    _check_k(a64, b64, where)
    if b.ndim == 3:
        groups = _check_offs(offs, b64.shape[0], a64.shape[0], "rows of a", where)
    else:
        groups = _check_offs(offs, None, a64.shape[1], "columns of the contraction axis", where)
    return round_float64(_grouped_sums(a64, b64, groups), dt)


def _values_float64(p, d, ndim, name, where):
    """An emulated MX product's operand in float64: its MX-10 values as given (d None), or its
    float8 payload times its MM-1 block factors (per expert for a 3-D operand), exact."""
    if d is None:
        v = np.asarray(p).astype(np.float64)
        if v.ndim != ndim:
            raise ValueError(f"qtrain.reference.scaled_mm.{where}: {name} must be {ndim}-D, got "
                             f"shape {v.shape}")
        return v
    v = _payload_float64(p, ndim, name, where)
    d = np.asarray(d)
    with np.errstate(invalid="ignore"):                    # 0 * Inf is NaN by MM-6
        if ndim == 3:
            return _per_expert(v, d, name + "_dequant[g]", where)
        return v * expand_dequant(d, v.shape, name + "_dequant", where)


def _per_expert(v, d, name, where):
    """3-D payload values v (E, R, C) times each expert's MM-1 block factors d[g]."""
    out = np.empty_like(v)
    for g in range(v.shape[0]):
        out[g] = v[g] * expand_dequant(d[g], v.shape[1:], name, where)
    return out
