"""Grouped (MoE) recipe cases (spec/07-recipes.md RC-13 over spec/06 MM-5): `qtrain.grouped_mm`
forward + backward on the backend under test, judged against the case's plan applied with
qtrain.reference (conformance/plans.py), never through qtrain/qgrouped_mm.py.

x (M, K) tokens sorted by expert, w (E, N, K), offs int32 (E,), g (M, N). The plan's products
take RC-13's forms: output and grad_input 2d x 3d (B = w[g] along K, resp. along N),
grad_weight 2d x 2d along the tokens of each group (per group and row for axiswise float8 and
int8; MX / blockwise blocks inside groups, which RC-13 makes the caller's duty; hp per group).
Outputs: out (M, N), grad_input (M, K), grad_weight (E, N, K), in the model dtype.
"""
import numpy as np

from . import bits
from .compare import Bound
from .generators import make_input
from .linear import plan_of
from .ops import _ref
from .plans import hp_terms, per_group, quantize_along, quantize_along_groups
from .products import _groups, grouped_terms_2d2d, grouped_terms_2d3d
from .torch_io import to_numpy, to_torch


def _tensors(case):
    m, k, n = case["shape"]
    e = len(case["offs"])
    dt, gen = case["dtype"], case["input"]
    return {"x": make_input(gen["x"], [m, k], dt), "w": make_input(gen["w"], [e, n, k], dt),
            "g": make_input(gen["g"], [m, n], dt), "offs": np.asarray(case["offs"], dtype=np.int32)}


def _expected_2d3d(row, a_t, a_along, w, w_along, offs, dtype):
    qa = quantize_along(a_t, a_along, row["a"])
    per_expert = [quantize_along(w[e], w_along, row["b"]) for e in range(w.shape[0])]
    b = np.stack([p[0] for p in per_expert])
    db = np.stack([p[1] for p in per_expert])
    want = _ref().scaled_grouped_mm(qa[0], qa[1], b, db, offs, out_dtype=bits.value_dtype(dtype))
    t64, s = grouped_terms_2d3d(qa[0], qa[1], b, db, offs)
    return want, Bound(t64, s, dtype, row["accumulation"], a_t.shape[a_along])


def _quantize_tokens(t, side, groups):
    """t (M, C) contracted along the tokens (axis 0), NT (C, M) with fp64 factors."""
    if per_group(side):
        return quantize_along_groups(t, side, groups)
    return quantize_along(t, 0, side)


def _expected_grad_weight(row, g, x, offs, dtype):
    groups = _groups(offs)
    if row == "hp":                                     # per group, in the model dtype (RC-2)
        t64 = np.zeros((len(groups), g.shape[1], x.shape[1]))
        s = np.zeros_like(t64)
        k = np.zeros((len(groups), 1, 1))
        for i, (start, end) in enumerate(groups):
            k[i] = end - start
            t64[i], s[i] = hp_terms(g[start:end].T, x[start:end].T)
        return _ref().round_float64(t64, bits.value_dtype(dtype)), Bound(t64, s, dtype, "hp", k)
    qa = _quantize_tokens(g, row["a"], groups)
    qb = _quantize_tokens(x, row["b"], groups)
    want = _ref().scaled_grouped_mm(qa[0], qa[1], qb[0], qb[1], offs,
                                    out_dtype=bits.value_dtype(dtype))
    t64, s, k = grouped_terms_2d2d(qa[0], qa[1], qb[0], qb[1], offs)
    return want, Bound(t64, s, dtype, row["accumulation"], k)


def grouped_linear_inputs(case):
    t = _tensors(case)
    if "raises" in case:
        return {"tensors": t}
    plan, dt, offs = plan_of(case), case["dtype"], t["offs"]
    (xa, x_along), (wa, w_along) = case["products"]["output"]
    (ga, g_along), (wb, w_along_gi) = case["products"]["grad_input"]
    if (xa, wa, ga, wb) != ("x", "w", "g", "w"):
        raise ValueError("qtrain.conformance.grouped_linear: products must be RC-1's table")
    want, bounds = {}, {}
    want["out"], bounds["out"] = _expected_2d3d(plan["output"], t["x"], x_along, t["w"], w_along,
                                                offs, dt)
    want["grad_input"], bounds["grad_input"] = _expected_2d3d(plan["grad_input"], t["g"], g_along,
                                                              t["w"], w_along_gi, offs, dt)
    want["grad_weight"], bounds["grad_weight"] = _expected_grad_weight(
        plan["grad_weight"], t["g"], t["x"], offs, dt)
    return {"tensors": t, "want": want, "bounds": bounds}


def grouped_linear_reference(case, inputs):
    return inputs["want"]


def grouped_linear_bounds(case, inputs):
    return inputs["bounds"]


def grouped_linear_backend(case, inputs, backend, device):
    """qtrain.grouped_mm(x, w, offs, config) then backward(g), config backend = the one judged."""
    import qtrain
    from .linear import _config
    t = inputs["tensors"]
    x = to_torch(t["x"], device).requires_grad_()
    w = to_torch(t["w"], device).requires_grad_()
    out = qtrain.grouped_mm(x, w, to_torch(t["offs"], device), _config(case, backend))
    out.backward(to_torch(t["g"], device))
    return {"out": to_numpy(out), "grad_input": to_numpy(x.grad), "grad_weight": to_numpy(w.grad)}
