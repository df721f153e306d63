"""Grouped float8 casts (spec/07 RC-13, F8-7 within a group): quantize_float8_grouped_t (tokens
along axis 0 within each group, payload transposed into the padded layout) and
quantize_float8_experts_t (expert weights along N within each expert). Judged bitwise.

Case fields: shape ([M, C], resp. [E, N, K]), dtype, input, format, pow2; grouped_t adds offs
(cumulative ends, MM-5) and align.
"""
import numpy as np

from .generators import make_input
from .ops import _method, _ref
from .torch_io import to_numpy, to_torch

NAMES = ("data", "quant_scale")


def inputs(case):
    x = make_input(case["input"], case["shape"], case.get("dtype", "float32"))
    return {"x": x, "offs": np.asarray(case.get("offs", []), dtype=np.int32)}


def _args(case):
    return case["format"], bool(case.get("pow2", False))


def reference(case, inp):
    if case["op"] == "quantize_float8_grouped_t":
        out = _ref().quantize_float8_grouped_t(inp["x"], inp["offs"], int(case["align"]), *_args(case))
    else:
        out = _ref().quantize_float8_experts_t(inp["x"], *_args(case))
    return dict(zip(NAMES, out))


def backend(case, inp, impl, device):
    fn = _method(impl, case["op"])
    x = to_torch(inp["x"], device)
    if case["op"] == "quantize_float8_grouped_t":
        out = fn(x, to_torch(inp["offs"], device), int(case["align"]), *_args(case))
    else:
        out = fn(x, *_args(case))
    return {name: to_numpy(t) for name, t in zip(NAMES, out)}
