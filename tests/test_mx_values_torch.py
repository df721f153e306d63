"""qtrain/mx_values_torch.py (MX-10 in torch ops, for inductor to fuse under torch.compile)
against the reference bit for bit (NaN payloads free): eager and compiled, every element format,
scale mode and axis, bf16 and fp32 x, the MX-7 golden edge rows included."""
import numpy as np
import pytest
import torch

from qtrain import reference
from qtrain.mx_values_torch import quantize_mx_values_torch
from test_fast_casts import _mx_input
from test_fast_common import assert_same, to_numpy


def _torch(x):
    if x.dtype == np.float32:
        return torch.from_numpy(x.copy())
    return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(32, 64), (96, 160), (64, 3, 32)], ids=str)
def test_torch_ops_values_are_MX_10(shape, dtype, seed):
    x = _mx_input((int(np.prod(shape[:-1])), shape[-1]), dtype, seed).reshape(shape)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        for mode in ("floor", "rceil"):
            for axis in (-1, 0):
                got = quantize_mx_values_torch(_torch(x), fmt, 32, axis, mode)
                want = reference.quantize_mx_values(x, fmt, 32, axis, mode)
                assert_same(to_numpy(got), want, f"{fmt} {mode} axis={axis} {dtype} {shape}",
                            seed)


@pytest.mark.parametrize("axis", [-1, 0])
def test_torch_ops_values_compiled_are_MX_10(axis, seed):
    torch._dynamo.reset()
    fn = torch.compile(quantize_mx_values_torch, fullgraph=True)
    x = _mx_input((96, 160), "bfloat16", seed)
    for mode in ("floor", "rceil"):
        got = fn(_torch(x), "float8_e4m3fn", 32, axis, mode)
        want = reference.quantize_mx_values(x, "float8_e4m3fn", 32, axis, mode)
        assert_same(to_numpy(got), want, f"compiled {mode} axis={axis}", seed)


def test_torch_ops_values_refuse_what_they_cannot_block():
    with pytest.raises(ValueError, match="multiple of block_size 32"):
        quantize_mx_values_torch(torch.ones(40, 64), "float8_e4m3fn", 32, 0)
    with pytest.raises(ValueError, match="element format"):
        quantize_mx_values_torch(torch.ones(32, 64), "float8_e4m3fnuz", 32, -1)
