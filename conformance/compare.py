"""The one assert helper: compare bit for bit (NaN as is-NaN, FMT-2) or within the MM-4 bound."""
from dataclasses import dataclass, asdict
from typing import Any, Optional

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


@dataclass
class Bound:
    """The MM-4 terms of one compared output: T64 and S (fp64, the output's shape), K (int, or an
    array when the contraction length varies per element, MM-5), u_out and u_acc by name, and
    `extra`, an absolute slack added to the limit (bias add RC-10, stochastic rounding RC-8)."""
    t64: Any
    s: Any
    out_dtype: str
    accumulation: str
    k: Any
    extra: Any = 0.0

    def limit(self):
        rel, coef, floor = mm_bound_terms(self.out_dtype, self.accumulation, self.k)
        with np.errstate(invalid="ignore"):
            return (rel * np.abs(np.asarray(self.t64, dtype=np.float64))
                    + coef * np.asarray(self.s, dtype=np.float64) + floor + self.extra)


def bound(output: str, subject: str, got: np.ndarray, ref: np.ndarray, terms: Bound) -> Check:
    """MM-4: |got - ref| <= 2 u_out |T64| + (1 + u_out)(g_K + 2^-22) S + eta_out + K 2^-148 (+ the
    case's extra slack), with T64 the exact fp64 sum and S = sum_k |t_k|. NaN and +-Inf positions
    must match (MM-6)."""
    got, ref = np.asarray(got), np.asarray(ref)
    problem = _shape_dtype_problem(output, subject, got, ref)
    if problem:
        return problem
    g, r = got.astype(np.float64), ref.astype(np.float64)
    limit = np.broadcast_to(terms.limit(), r.shape)
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


def raised(subject: str, exc: Optional[BaseException], expect_type: str, fragment) -> Check:
    """An invalid input must raise `expect_type` whose message contains `fragment` (a string, or
    a list of strings that must all appear: e.g. RC-11's layer name, shape and multiple)."""
    if exc is None:
        return Check("raises", subject, False, 1, 1, first_bad=f"no exception; expected {expect_type}")
    names = {cls.__name__ for cls in type(exc).__mro__}
    fragments = [fragment] if isinstance(fragment, str) else list(fragment)
    ok = expect_type in names and all(f.lower() in str(exc).lower() for f in fragments)
    first = None if ok else f"raised {type(exc).__name__}: {exc}; expected {expect_type} containing {fragments!r}"
    return Check("raises", subject, ok, 0 if ok else 1, 1, first_bad=first)
