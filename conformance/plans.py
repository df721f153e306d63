"""Recipe plans as case data (spec/07-recipes.md RC-1, RC-4..RC-9, RC-13): each product's operands
quantized by qtrain.reference, independently of qtrain/recipes.py.

A case file's `products` (RC-1) names, per product, the tensor and the axis it is contracted
along: {"output": [["x", 1], ["w", 1]], "grad_input": [["g", 1], ["w", 0]], "grad_weight":
[["g", 0], ["x", 0]]}. Its `plans` give, per plan name, per product, either "hp" or
{"a": side, "b": side, "accumulation": "fp32"|"tensor_core"|"fast"} with a side one of
  {"quant": "float8", "format", "granularity": "tensorwise"|"axiswise", "pow2"}
  {"quant": "mx", "format", "block", "scale_mode"}
  {"quant": "int8", "stochastic": bool}
  {"quant": "blockwise", "format", "block": [b0, b1]}   (block in the tensor's own orientation)
A side is quantized in the tensor's own orientation along its contraction axis, then brought to
NT form (MM-1): transposed, with its factors, when that axis is 0.
"""
import numpy as np

from . import bits
from .ops import _ref
from .products import abs_products, expand


def nt(t, along):
    """The NT operand (contraction last) of tensor t (R, C) contracted along axis `along`."""
    return t if along == 1 else t.T


def quantize_along(t, along, side):
    """(payload, dequant factors fp64 2-D) in NT form of 2-D t contracted along `along`.
    Stochastic int8 is quantized with rne here; its slack is sr_slack's (tolerances.SR_STEPS)."""
    ref = _ref()
    kind = side["quant"]
    t = _pad_blocked(t, along, side)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "float8":
            axis = None if side["granularity"] == "tensorwise" else along
            data, qs = ref.quantize_float8(t, side["format"], axis=axis,
                                           pow2_scale=bool(side.get("pow2", False)))
            deq = 1.0 / qs.astype(np.float64).reshape(qs.shape or (1, 1))        # MM-1
        elif kind == "mx":
            data, sb = ref.quantize_mx(t, side["format"], block_size=int(side["block"]),
                                       axis=along, scale_mode=side["scale_mode"])
            deq = np.asarray(ref.e8m0_to_float(sb), dtype=np.float64)
        elif kind == "int8":
            data, ds = ref.quantize_int8(t, along)
            deq = ds.astype(np.float64)
        elif kind == "blockwise":
            data, qs = ref.quantize_blockwise(t, block=tuple(side["block"]), fmt=side["format"])
            deq = 1.0 / qs.astype(np.float64)
        else:
            raise ValueError(f"qtrain.conformance.plans: unknown quant {kind!r} in a plan")
    if along == 0 and deq.shape != (1, 1):
        deq = deq.T
    return nt(data, along), deq


def _pad_blocked(t, along, side):
    """RC-12: a blocked contraction (mx, blockwise) whose length is not a multiple of the block
    is zero-padded to it; zeros change no amax and add nothing to a product."""
    if side["quant"] == "mx":
        block = int(side["block"])
    elif side["quant"] == "blockwise":
        block = int(side["block"][along])
    else:
        return t
    short = -t.shape[along] % block
    if short == 0:
        return t
    pad_shape = list(t.shape)
    pad_shape[along] = short
    return np.concatenate([t, np.zeros(pad_shape, dtype=t.dtype)], axis=along)


def payload_dtype(side):
    return np.dtype(np.int8) if side["quant"] == "int8" else bits.value_dtype(side["format"])


def per_group(side):
    """RC-13: a 2d x 2d grad_weight product scales per group and row for axiswise float8 and
    int8; tensorwise is one scalar across groups, MX and blockwise blocks lie inside groups."""
    return side["quant"] == "int8" or (side["quant"] == "float8" and side["granularity"] == "axiswise")


def quantize_along_groups(t, side, groups):
    """t (T, C) contracted along axis 0 (tokens) in groups [(start, end)]: NT payload (C, T) and
    element-wise fp64 factors (C, T) (MM-5's per-group form); tokens past the last group get
    payload 0 and factor 1 (MM-5 ignores them)."""
    rows, cols = t.shape
    payload = np.zeros((cols, rows), dtype=payload_dtype(side))
    factors = np.ones((cols, rows))
    for start, end in groups:
        if end > start:
            data, deq = quantize_along(t[start:end], 0, side)
            payload[:, start:end] = data
            factors[:, start:end] = expand(deq, data.shape)
    return payload, factors


def dequantized(payload, factors):
    """fp64 A * dA of an NT operand (MM-1 block rule); NaN/Inf products as they fall (MM-6)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return payload.astype(np.float64) * expand(factors, payload.shape)


def sr_slack(qa, qb, side_a, side_b):
    """Extra absolute slack of a product whose int8 operand used stochastic rounding (RC-8,
    I8-5): one quantization step per term, sum_k dA(m,k) |B dB|[n,k] (and symmetrically)."""
    slack = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        if side_a.get("stochastic"):
            slack = slack + expand(qa[1], qa[0].shape) @ np.abs(dequantized(*qb)).T
        if side_b.get("stochastic"):
            slack = slack + np.abs(dequantized(*qa)) @ expand(qb[1], qb[0].shape).T
    return slack


def product_terms(qa, qb):
    """(T64, S) of MM-4 for NT operands (payload, fp64 factors) each."""
    return abs_products(qa[0], qa[1], qb[0], qb[1])


def hp_terms(a, b):
    """(T64, S) of an hp product (RC-2) of NT operands in the model dtype, exact in fp64."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a64 @ b64.T, np.abs(a64) @ np.abs(b64).T
