"""Product ops (MM-*): operands quantized once by the reference, then multiplied by both sides.

An operand spec (case["operands"], overridden by case["a"] / case["b"]) names how the high
precision operand is quantized along its last (contraction) axis:
  {"quant": "float8", "format", "axis": null|-1, "pow2"} | {"quant": "mx", "format", "block",
  "scale_mode"} | {"quant": "int8"} | {"quant": "blockwise", "format", "block": [b0, b1]}
and its dequant factors are laid out by the MM-1 block rule, as fp32 (MM-3 leaves their fp32
rounding free; both sides get the same array).

Grouped products (MM-5) take case["form"]: "2d3d" (default; shape [M, N, K], B one (N, K) matrix
per group) or "2d2d" (shape [M, N, T], grouped along the contraction T). In 2d x 2d an operand
spec may add "per_group": true (axiswise float8 / int8 quantized within each group, RC-13),
passed as "factor_form" "elementwise" ((R, T), bc = 1, MM-5's form) or "per_group" ((E, R, 1)).
"""
import numpy as np

from . import bits
from .compare import Bound
from .generators import make_input
from .ops import _method, _ref
from .torch_io import to_numpy, to_torch, torch_dtype


def operand_spec(case, which):
    spec = dict(case.get("operands", {}))
    spec.update({k: v for k, v in case.get(which, {}).items() if k != "input"})
    return spec


def quantize_operand(x, spec):
    """(payload, dequant factors fp32 2-D) of a 2-D high-precision operand, by the reference."""
    ref = _ref()
    kind = spec["quant"]
    if kind == "float8":
        data, qs = ref.quantize_float8(x, spec["format"], axis=spec.get("axis"),
                                       pow2_scale=bool(spec.get("pow2", False)))
        deq = 1.0 / qs.astype(np.float64).reshape(qs.shape or (1, 1))
    elif kind == "mx":
        data, sb = ref.quantize_mx(x, spec["format"], block_size=int(spec.get("block", 32)),
                                   axis=-1, scale_mode=spec["scale_mode"])
        deq = np.asarray(ref.e8m0_to_float(sb), dtype=np.float64)
    elif kind == "int8":
        data, deq = ref.quantize_int8(x, -1)
    elif kind == "blockwise":
        data, qs = ref.quantize_blockwise(x, block=tuple(spec["block"]), fmt=spec.get("format", "float8_e4m3fn"))
        deq = 1.0 / qs.astype(np.float64)
    else:
        raise ValueError(f"qtrain.conformance.products: unknown operand quant {kind!r}")
    with np.errstate(invalid="ignore", over="ignore"):
        return data, np.asarray(deq, dtype=np.float64).astype(np.float32)


def expand(deq, shape):
    """Per-element dequant factor d[r // br, c // bc] (MM-1)."""
    br, bc = shape[0] // deq.shape[0], shape[1] // deq.shape[1]
    return np.repeat(np.repeat(deq.astype(np.float64), br, axis=0), bc, axis=1)


def abs_products(a, da, b, db):
    """(T64, S) of MM-4 in fp64: the sum of the terms t_k = A dA B dB, and the sum of |t_k|."""
    with np.errstate(invalid="ignore", over="ignore"):
        aa = a.astype(np.float64) * expand(da, a.shape)
        bb = b.astype(np.float64) * expand(db, b.shape)
        return aa @ bb.T, np.abs(aa) @ np.abs(bb).T


def _operand(case, which, rows, k):
    spec = operand_spec(case, which)
    x = make_input(case[which]["input"], (rows, k), case.get("dtype", "float32"))
    return quantize_operand(x, spec)


# ---- scaled_mm_nt ---------------------------------------------------------------------------
def mm_inputs(case):
    m, n, k = case["shape"]
    a, da = _operand(case, "a", m, k)
    b, db = _operand(case, "b", n, k)
    return {"a": a, "da": da, "b": b, "db": db}


def mm_reference(case, inputs):
    out_dtype = bits.value_dtype(case["out_dtype"])
    out = _ref().scaled_mm_nt(inputs["a"], inputs["da"], inputs["b"], inputs["db"], out_dtype=out_dtype)
    return {"out": out}


def mm_backend(case, inputs, backend, device):
    fn = _method(backend, "scaled_mm_nt")
    args = [to_torch(inputs[k], device) for k in ("a", "da", "b", "db")]
    return {"out": to_numpy(fn(*args, torch_dtype(case["out_dtype"])))}


def mm_bounds(case, inputs):
    t64, s = abs_products(inputs["a"], inputs["da"], inputs["b"], inputs["db"])
    return {"out": Bound(t64, s, case["out_dtype"], case.get("accumulation", "fp32"), case["shape"][-1])}


# ---- scaled_grouped_mm (MM-5) ----------------------------------------------------------------
def _groups(offs):
    starts = np.concatenate([[0], offs[:-1]]).astype(np.int64)
    return list(zip(starts.tolist(), offs.astype(np.int64).tolist()))


def _per_group_operand(x, spec, groups):
    """x (R, T) quantized along T within each group: payload (R, T), element-wise fp32 factors
    (R, T) and the per-group form (E, R, 1); columns past the last group: payload 0, factor 1."""
    rows, cols = x.shape
    dtype = np.int8 if spec["quant"] == "int8" else bits.value_dtype(spec["format"])
    payload = np.zeros((rows, cols), dtype=dtype)
    full = np.ones((rows, cols), dtype=np.float32)
    per = np.ones((len(groups), rows, 1), dtype=np.float32)
    for g, (start, end) in enumerate(groups):
        if end > start:
            data, deq = quantize_operand(x[:, start:end], spec)
            payload[:, start:end] = data
            full[:, start:end] = deq
            per[g] = deq
    return payload, full, per


def _operand_2d2d(case, which, rows, t, groups):
    spec = operand_spec(case, which)
    x = make_input(case[which]["input"], (rows, t), case.get("dtype", "float32"))
    if not spec.get("per_group"):
        return quantize_operand(x, spec)
    payload, full, per = _per_group_operand(x, spec, groups)
    return payload, (per if spec.get("factor_form", "elementwise") == "per_group" else full)


def grouped_inputs(case):
    m, n, k = case["shape"]
    offs = np.asarray(case["offs"], dtype=np.int32)
    if case.get("form", "2d3d") == "2d2d":
        groups = _groups(offs)
        a, da = _operand_2d2d(case, "a", m, k, groups)
        b, db = _operand_2d2d(case, "b", n, k, groups)
        return {"a": a, "da": da, "b": b, "db": db, "offs": offs}
    a, da = _operand(case, "a", m, k)
    spec = operand_spec(case, "b")
    x = make_input(case["b"]["input"], (len(offs) * n, k), case.get("dtype", "float32"))
    per_group = [quantize_operand(x[g * n:(g + 1) * n], spec) for g in range(len(offs))]
    b = np.stack([p[0] for p in per_group])
    db = np.stack([p[1] for p in per_group])
    return {"a": a, "da": da, "b": b, "db": db, "offs": offs}


def grouped_reference(case, inputs):
    out_dtype = bits.value_dtype(case["out_dtype"])
    out = _ref().scaled_grouped_mm(inputs["a"], inputs["da"], inputs["b"], inputs["db"],
                                   inputs["offs"], out_dtype=out_dtype)
    return {"out": out}


def grouped_backend(case, inputs, backend, device):
    fn = _method(backend, "scaled_grouped_mm")
    args = [to_torch(inputs[k], device) for k in ("a", "da", "b", "db", "offs")]
    return {"out": to_numpy(fn(*args, torch_dtype(case["out_dtype"])))}


def _elementwise(d, shape, groups):
    """Factors of a 2d x 2d operand as an element-wise (R, T) fp64 array (either form)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 3:
        full = np.ones(shape)
        for g, (start, end) in enumerate(groups):
            full[:, start:end] = d[g]
        return full
    return expand(d.reshape(d.shape or (1, 1)), shape)


def grouped_terms_2d3d(a, da, b, db, offs):
    """(T64, S) of a 2d x 3d product: rows of group g against b[g]; rows past offs[-1] zero."""
    t64 = np.zeros((a.shape[0], b.shape[1]))
    s = np.zeros_like(t64)
    for g, (start, end) in enumerate(_groups(np.asarray(offs))):
        if end > start:
            rows = da[start:end] if da.shape[0] == a.shape[0] else da
            t64[start:end], s[start:end] = abs_products(a[start:end], rows, b[g], db[g])
    return t64, s


def grouped_terms_2d2d(a, da, b, db, offs):
    """(T64, S, K) of a 2d x 2d product: out[g] over the group's columns, K its length."""
    groups = _groups(np.asarray(offs))
    fa, fb = _elementwise(da, a.shape, groups), _elementwise(db, b.shape, groups)
    t64 = np.zeros((len(groups), a.shape[0], b.shape[0]))
    s = np.zeros_like(t64)
    k = np.zeros((len(groups), 1, 1))
    for g, (start, end) in enumerate(groups):
        k[g] = end - start
        if end > start:
            t64[g], s[g] = abs_products(a[:, start:end], fa[:, start:end], b[:, start:end], fb[:, start:end])
    return t64, s, k


def grouped_bounds(case, inputs):
    args = [inputs[k] for k in ("a", "da", "b", "db", "offs")]
    if inputs["b"].ndim == 3:
        t64, s = grouped_terms_2d3d(*args)
        k = case["shape"][-1]
    else:
        t64, s, k = grouped_terms_2d2d(*args)
    return {"out": Bound(t64, s, case["out_dtype"], case.get("accumulation", "fp32"), k)}
