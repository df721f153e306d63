"""The one assert helper: compare bit for bit (NaN as is-NaN, FMT-2) or within the MM-4 bound."""
from dataclasses import dataclass, asdict
from typing import Optional

import numpy as np

from . import bits
from .tolerances import mm_bound_terms


@dataclass
class Check:
    output: str                 # which output: "data", "quant_scale", "scale_bits", "out", ...
    subject: str                # what was judged: the backend name, or "reference" (golden cases)
    ok: bool
    mismatches: int
    total: int
    worst: Optional[float] = None    # bound compares: max |got - ref| / bound (<= 1 passes)
    first_bad: Optional[str] = None  # index, got vs expected as value, hex bits and fields

    def as_dict(self):
        return asdict(self)


def _first_bad(output, bad, got, expected, extra=""):
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if bad.ndim else ()
    return (f"{output}{list(index)}: got {bits.describe(got, index)} "
            f"expected {bits.describe(expected, index)}{extra}")


def _shape_dtype_problem(output, subject, got, expected):
    if got.shape != expected.shape:
        return Check(output, subject, False, int(np.prod(expected.shape)), int(np.prod(expected.shape)),
                     first_bad=f"{output}: shape {got.shape} but expected {expected.shape}")
    if got.dtype != expected.dtype:
        return Check(output, subject, False, int(got.size), int(got.size),
                     first_bad=f"{output}: dtype {got.dtype} but expected {expected.dtype}")
    return None


def bitwise(output: str, subject: str, got: np.ndarray, expected: np.ndarray) -> Check:
    """Equal bits everywhere, except that any NaN matches any NaN (its bits are FREE, FMT-2)."""
    got, expected = np.asarray(got), np.asarray(expected)
    problem = _shape_dtype_problem(output, subject, got, expected)
    if problem:
        return problem
    same = bits.to_bits(got) == bits.to_bits(expected)
    same |= bits.is_nan(got) & bits.is_nan(expected)
    bad = ~same
    count = int(bad.sum())
    first = _first_bad(output, bad, got, expected) if count else None
    return Check(output, subject, count == 0, count, int(got.size), first_bad=first)


def bound(output: str, subject: str, got: np.ndarray, ref: np.ndarray, t64: np.ndarray,
          s: np.ndarray, out_dtype: str, accumulation: str, k: int) -> Check:
    """MM-4: |got - ref| <= 2 u_out |T64| + (1 + u_out)(g_K + 2^-22) S + eta_out + K 2^-148, with
    T64 the exact fp64 sum and S = sum_k |t_k|. NaN and +-Inf positions must match (MM-6)."""
    got, ref = np.asarray(got), np.asarray(ref)
    problem = _shape_dtype_problem(output, subject, got, ref)
    if problem:
        return problem
    g, r = got.astype(np.float64), ref.astype(np.float64)
    rel, coef, floor = mm_bound_terms(out_dtype, accumulation, k)
    with np.errstate(invalid="ignore"):
        limit = rel * np.abs(np.asarray(t64, dtype=np.float64)) + coef * np.asarray(s, dtype=np.float64) + floor
    finite = np.isfinite(r)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(finite, np.abs(g - r), 0.0)
        bad_finite = finite & ~(err <= limit)        # also catches a NaN/Inf got where ref is finite
        bad_special = ~finite & ~((np.isnan(g) & np.isnan(r)) | (g == r))
        ratio = np.where(limit > 0, err / np.where(limit > 0, limit, 1.0), np.where(err > 0, np.inf, 0.0))
    bad = bad_finite | bad_special
    worst_ratio = float(np.max(ratio[finite])) if finite.any() else 0.0
    if np.any(finite & ~np.isfinite(g)):
        worst_ratio = float("inf")
    count = int(bad.sum())
    first = None
    if count:
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        first = _first_bad(output, bad, got, ref,
                           f"; |err|={float(err[idx]):.6g} bound={float(limit[idx]):.6g}")
    return Check(output, subject, count == 0, count, int(got.size), worst=worst_ratio, first_bad=first)


def raised(subject: str, exc: Optional[BaseException], expect_type: str, fragment: str) -> Check:
    """An invalid input must raise `expect_type` whose message contains `fragment`."""
    if exc is None:
        return Check("raises", subject, False, 1, 1, first_bad=f"no exception; expected {expect_type}")
    names = {cls.__name__ for cls in type(exc).__mro__}
    ok = expect_type in names and fragment.lower() in str(exc).lower()
    first = None if ok else f"raised {type(exc).__name__}: {exc}; expected {expect_type} containing {fragment!r}"
    return Check("raises", subject, ok, 0 if ok else 1, 1, first_bad=first)
