"""qtrain.fast scaled products vs qtrain.reference within the MM-4 bound: every routing
(torch._scaled_mm / torch._int_mm where this torch has them, the Triton block-scaled kernel)
and every MM-1 block pattern (tensorwise, rowwise, MX 1x32, blockwise 1x128 x 128x128)."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend, from_numpy, reference, seed, to_numpy  # noqa: F401
from benchmarks.common import fast_operand_pair
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
    x = from_numpy((rng.standard_normal((M, K)) * 4).astype(np.float32))
    w = from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    return fast_operand_pair(kind, x, w, tensorwise_b_fmt="float8_e5m2")


# K = 16 and 17 rows: sm90 fp8/int8 dots need K >= 32, so the kernels load 32 with zero lanes.
CASES = [("tensorwise", 17, 48, 96), ("tensorwise", 1, 16, 16), ("tensorwise", 17, 16, 16),
         ("rowwise", 33, 32, 160), ("rowwise", 17, 17, 40), ("rowwise", 17, 32, 16),
         ("mx", 17, 33, 96), ("mx", 17, 32, 416), ("blockwise", 17, 128, 256),
         ("blockwise", 3, 256, 384), ("int8", 33, 24, 96), ("int8", 5, 7, 40), ("int8", 17, 16, 16)]
VARIANTS = ("tuned", "v1")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind,M,N,K", CASES)
def test_scaled_mm_nt_MM_4(kind, M, N, K, out_dtype, seed):
    fast = fast_backend()
    rng = np.random.default_rng(seed)
    a, da, b, db = _operands(kind, M, N, K, rng)
    runs = [("routed", fast.scaled_mm_nt)] + [
        (v, lambda *x, v=v: scaled_mm_nt_triton(*x, variant=v)) for v in VARIANTS]
    for name, run in runs:
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
    with pytest.raises(ValueError, match="do not nest"):
        a48 = torch.zeros(16, 48, device=DEVICE).to(torch.float8_e4m3fn)
        scaled_mm_nt_triton(a48, torch.ones(16, 3, device=DEVICE), a48,
                            torch.ones(16, 2, device=DEVICE))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k_block", [8, 16, 48])
def test_scaled_mm_nt_small_k_blocks_MM_4(k_block, variant, seed):
    """Promotion intervals below the 32-wide dot (8, 16) or not a power of two (48): the dot
    loads 32 or 64 columns, those past the k block as zeros."""
    fast_backend()
    rng = np.random.default_rng(seed)
    M, N, K = 17, 24, 96
    a = from_numpy(rng.standard_normal((M, K)).astype(np.float32)).to(torch.float8_e4m3fn)
    b = from_numpy(rng.standard_normal((N, K)).astype(np.float32)).to(torch.float8_e4m3fn)
    da = from_numpy(np.exp2(rng.integers(-4, 4, (M, K // k_block))).astype(np.float32))
    db = from_numpy(np.exp2(rng.integers(-4, 4, (N, K // k_block))).astype(np.float32))
    for out_dtype in (torch.float32, torch.bfloat16):
        out = scaled_mm_nt_triton(a, da, b, db, out_dtype, variant=variant)
        ratio = mm4_ratio(a, da, b, db, out, out_dtype, P_ACC["fp32_accumulation"])
        assert ratio <= 1.0, f"k block {k_block} {variant} {out_dtype}: {ratio} (seed {seed})"
