"""Recipe linear cases (spec/07-recipes.md RC-1..RC-12): `qtrain.linear` forward + backward on the
backend under test, judged against the case's plan applied with qtrain.reference (conformance/
plans.py), never through qtrain/recipes.py; and `convert_linear`, the RC-11 eligibility rule.

Outputs of `linear`: out (lead..., N), grad_input (lead..., K), grad_weight (N, K) and, with a
bias, grad_bias (N,); all in the model dtype (RC-1). Quantized products are compared within
MM-4 (u_acc by the plan's accumulation, RC-3), hp products (RC-2) and grad_bias (RC-10) within the
"hp" row of tolerances.py.
"""
import numpy as np

from . import bits
from .compare import Bound
from .generators import make_input
from .ops import _ref
from .plans import hp_terms, nt, product_terms, quantize_along, sr_slack
from .tolerances import bias_slack
from .torch_io import to_numpy, to_torch

# product -> name of its output in a linear case
OUTPUTS = {"output": "out", "grad_input": "grad_input", "grad_weight": "grad_weight"}


def plan_of(case):
    name = case.get("plan", case["recipe"])
    if name not in case["plans"]:
        raise ValueError(f"qtrain.conformance.linear: case {case['name']!r} names plan {name!r}; "
                         f"the file defines {sorted(case['plans'])}")
    return case["plans"][name]


def expected_product(row, sides, dtype):
    """(expected array, Bound) of one product: row is "hp" or {"a", "b", "accumulation"};
    sides = ((tensor a, along a), (tensor b, along b)) in their own orientation."""
    ref = _ref()
    (ta, along_a), (tb, along_b) = sides
    if row == "hp":
        a, b = nt(ta, along_a), nt(tb, along_b)
        t64, s = hp_terms(a, b)
        return ref.round_float64(t64, bits.value_dtype(dtype)), Bound(t64, s, dtype, "hp", a.shape[1])
    qa = quantize_along(ta, along_a, row["a"])
    qb = quantize_along(tb, along_b, row["b"])
    t64, s = product_terms(qa, qb)
    want = ref.scaled_mm_nt(qa[0], qa[1], qb[0], qb[1], out_dtype=bits.value_dtype(dtype))
    extra = sr_slack(qa, qb, row["a"], row["b"])
    return want, Bound(t64, s, dtype, row["accumulation"], qa[0].shape[1], extra)


def linear_tensors(case):
    """x (lead..., K), w (N, K), g (lead..., N) and bias (N,) or None, in the model dtype."""
    m, k, n = case["shape"]
    lead = list(case.get("lead", [m]))
    if int(np.prod(lead)) != m:
        raise ValueError(f"qtrain.conformance.linear: case {case['name']!r}: lead {lead} does not "
                         f"flatten to M = {m}")
    dt, gen = case["dtype"], case["input"]
    return {"x": make_input(gen["x"], lead + [k], dt), "w": make_input(gen["w"], [n, k], dt),
            "g": make_input(gen["g"], lead + [n], dt),
            "bias": make_input(gen["bias"], [n], dt) if case["bias"] else None}


def linear_inputs(case):
    t = linear_tensors(case)
    if "raises" in case:
        return {"tensors": t}
    m, k, n = case["shape"]
    dt = case["dtype"]
    flat = {"x": t["x"].reshape(m, k), "w": t["w"], "g": t["g"].reshape(m, n)}
    plan = plan_of(case)
    want, bounds = {}, {}
    for product, output in OUTPUTS.items():
        sides = [(flat[name], along) for name, along in case["products"][product]]
        want[output], bounds[output] = expected_product(plan[product], sides, dt)
    if t["bias"] is not None:                                   # RC-10
        b64 = t["bias"].astype(np.float64)
        terms = bounds["out"]
        terms.extra = terms.extra + bias_slack(dt, terms.t64, b64[None, :], terms.limit())
        want["out"] = _ref().round_float64(terms.t64 + b64[None, :], bits.value_dtype(dt))
        ones = np.ones((1, m), dtype=np.float64)
        t64, s = hp_terms(ones, flat["g"].T)                    # sum over every row of g
        want["grad_bias"] = _ref().round_float64(t64[0], bits.value_dtype(dt))
        bounds["grad_bias"] = Bound(t64[0], s[0], dt, "hp", m)
    lead = list(t["x"].shape[:-1])
    want["out"] = want["out"].reshape(lead + [n])
    want["grad_input"] = want["grad_input"].reshape(lead + [k])
    bounds["out"] = _reshaped(bounds["out"], lead + [n])
    bounds["grad_input"] = _reshaped(bounds["grad_input"], lead + [k])
    return {"tensors": t, "want": want, "bounds": bounds}


def _reshaped(b, shape):
    extra = np.asarray(b.extra)
    return Bound(b.t64.reshape(shape), b.s.reshape(shape), b.out_dtype, b.accumulation, b.k,
                 extra.reshape(shape) if extra.ndim else extra)


def linear_reference(case, inputs):
    return inputs["want"]


def linear_bounds(case, inputs):
    return inputs["bounds"]


def _config(case, backend):
    import qtrain
    from .backends import registry_name
    return qtrain.recipe_config(case["recipe"], backend=registry_name(backend),
                                **case.get("options", {}))


def linear_backend(case, inputs, backend, device):
    """qtrain.linear(x, w, bias) then backward(g) with config backend = the backend under test."""
    import qtrain
    t = inputs["tensors"]
    x = to_torch(t["x"], device).requires_grad_()
    w = to_torch(t["w"], device).requires_grad_()
    b = None if t["bias"] is None else to_torch(t["bias"], device).requires_grad_()
    out = qtrain.linear(x, w, b, config=_config(case, backend))
    out.backward(to_torch(t["g"], device))
    got = {"out": to_numpy(out), "grad_input": to_numpy(x.grad), "grad_weight": to_numpy(w.grad)}
    if b is not None:
        got["grad_bias"] = to_numpy(b.grad)
    return got


# ---- RC-11: eligible layers (qtrain.convert_to_quantized_training) ---------------------------
def convert_inputs(case):
    return {}


def convert_reference(case, inputs):
    """The spec table's verdict, from the case: is the layer converted?"""
    return {"converted": np.array([1 if case["eligible"] else 0], dtype=np.uint8)}


def convert_backend(case, inputs, backend, device):
    """One nn.Linear (N, K) at qualified name case["fqn"] (on the meta device: shapes only),
    converted with the default filter or a filter that forces it."""
    import qtrain
    from torch import nn
    n, k = case["shape"]
    path = case["fqn"].split(".")
    root = node = nn.Module()
    for part in path[:-1]:
        child = nn.Module()
        node.add_module(part, child)
        node = child
    node.add_module(path[-1], nn.Linear(k, n, bias=False, device="meta"))
    force = {"default": None, "force": lambda module, fqn: fqn == case["fqn"]}[case["filter"]]
    model = qtrain.convert_to_quantized_training(root, _config(case, backend), force)
    layer = model.get_submodule(case["fqn"])
    converted = isinstance(layer, qtrain.QuantizedLinear)
    return {"converted": np.array([1 if converted else 0], dtype=np.uint8)}
