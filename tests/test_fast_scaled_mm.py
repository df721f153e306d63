"""qtrain.fast scaled products vs qtrain.reference within the MM-4 bound: every routing
(torch._scaled_mm / torch._int_mm where this torch has them, the Triton block-scaled kernel)
and every MM-1 block pattern (tensorwise, rowwise, MX 1x32, blockwise 1x128 x 128x128)."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend, from_numpy, reference, seed, to_numpy  # noqa: F401
from qtrain.fast.scaled_mm import scaled_mm_nt_triton

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# MM-4 tolerance table: p_acc, the accumulator precision the bound assumes, with the reason.
P_ACC = {
    "fp32_accumulation": 23,       # CPU and interpreter paths accumulate in fp32 (or exactly)
}
U_OUT = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8}


def mm4_ratio(a, da, b, db, out, out_dtype, p_acc):
    """max over elements of |out - ref| / bound (MM-4); <= 1 conforms. ref in float64."""
    A = to_numpy(a).astype(np.float64) * reference.expand_dequant(to_numpy(da), a.shape, "a")
    B = to_numpy(b).astype(np.float64) * reference.expand_dequant(to_numpy(db), b.shape, "b")
    ref = A @ B.T
    abs_sum = np.abs(A) @ np.abs(B).T
    u = U_OUT[out_dtype]
    bound = 2 * u * np.abs(ref) + (A.shape[1] * 2.0 ** -p_acc + 2.0 ** -22) * abs_sum
    err = np.abs(to_numpy(out.float()).astype(np.float64) - ref)
    return float(np.max(err / np.maximum(bound, np.finfo(np.float64).tiny)))


def _operands(kind, M, N, K, rng):
    from qtrain.fast import cast_blockwise, cast_float8, cast_int8, cast_mx
    x = from_numpy((rng.standard_normal((M, K)) * 4).astype(np.float32))
    w = from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    if kind == "tensorwise":
        a, sa = cast_float8.quantize_float8(x, "float8_e4m3fn")
        b, sb = cast_float8.quantize_float8(w, "float8_e5m2")
        return a, (1 / sa).reshape(1, 1), b, (1 / sb).reshape(1, 1)
    if kind == "rowwise":
        a, sa = cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True)
        b, sb = cast_float8.quantize_float8(w, "float8_e4m3fn", -1, True)
        return a, 1 / sa, b, 1 / sb
    if kind == "mx":
        a, sa = cast_mx.quantize_mx(x, "float8_e4m3fn", 32, -1, "rceil")
        b, sb = cast_mx.quantize_mx(w, "float8_e4m3fn", 32, -1, "rceil")
        return a, torch.exp2(sa.float() - 127), b, torch.exp2(sb.float() - 127)
    if kind == "blockwise":
        a, sa = cast_blockwise.quantize_blockwise(x, (1, 128))
        b, sb = cast_blockwise.quantize_blockwise(w, (128, 128))
        return a, 1 / sa, b, 1 / sb
    a, da = cast_int8.quantize_int8(x, -1)
    b, db = cast_int8.quantize_int8(w, -1)
    return a, da, b, db


CASES = [("tensorwise", 17, 48, 96), ("tensorwise", 1, 16, 16), ("rowwise", 33, 32, 160),
         ("rowwise", 17, 17, 40), ("mx", 17, 33, 96), ("blockwise", 17, 128, 256),
         ("int8", 33, 24, 96), ("int8", 5, 7, 40)]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind,M,N,K", CASES)
def test_scaled_mm_nt_MM_4(kind, M, N, K, out_dtype, seed):
    fast = fast_backend()
    rng = np.random.default_rng(seed)
    a, da, b, db = _operands(kind, M, N, K, rng)
    for name, run in (("routed", fast.scaled_mm_nt), ("triton", scaled_mm_nt_triton)):
        out = run(a, da, b, db, out_dtype)
        assert out.shape == (M, N) and out.dtype == out_dtype
        ratio = mm4_ratio(a, da, b, db, out, out_dtype, P_ACC["fp32_accumulation"])
        assert ratio <= 1.0, f"{name} {kind} {(M, N, K)} {out_dtype}: error/bound {ratio} (seed {seed})"


def test_scaled_mm_errors_name_what_would_work():
    fast = fast_backend()
    a = torch.zeros(16, 32, device=DEVICE).to(torch.float8_e4m3fn)
    one = torch.ones(1, 1, device=DEVICE)
    with pytest.raises(ValueError, match="share K"):
        fast.scaled_mm_nt(a, one, a[:, :16].contiguous(), one)
    with pytest.raises(ValueError, match="contiguous"):
        fast.scaled_mm_nt(a, one, a.t(), one)
    with pytest.raises(ValueError, match="does not tile"):
        fast.scaled_mm_nt(a, torch.ones(3, 1, device=DEVICE), a, one)
    with pytest.raises(TypeError, match="mix int8 and float8"):
        fast.scaled_mm_nt(a, one, torch.zeros(16, 32, dtype=torch.int8, device=DEVICE), one)
    with pytest.raises(ValueError, match="multiple of 16"):
        scaled_mm_nt_triton(a, torch.ones(16, 4, device=DEVICE), a, torch.ones(16, 4, device=DEVICE))
