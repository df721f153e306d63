"""qtrain.fast scaled products vs qtrain.reference within the MM-4 bound: every routing
(torch._scaled_mm / torch._int_mm where this torch has them, the Triton block-scaled kernel)
and every MM-1 block pattern (tensorwise, rowwise, MX 1x32, blockwise 1x128 x 128x128)."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend, from_numpy, reference, seed, to_numpy  # noqa: F401
from benchmarks.common import fast_operand_pair
from linear_helpers import TOLERANCES, U_OUT, _g
from qtrain.fast.scaled_mm import scaled_mm_nt_triton

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

def promote_every(a):
    """MM-7's P for this product: fp8 tensor cores on the GPU promote partial sums to fp32 at
    least every P terms (torch._scaled_mm without fast accumulation, cuBLAS blockwise, the
    Triton kernel); CPU and interpreter paths accumulate in fp32 and int8 in int32 (P = 0)."""
    gpu_fp8 = a.device.type == "cuda" and a.dtype != torch.int8
    return TOLERANCES["tensor_core_promote_every"] if gpu_fp8 else 0


def mm4_ratio(a, da, b, db, out, out_dtype, promote=0):
    """max over elements of |out - ref| / bound (MM-4 with MM-7's promotion interval);
    <= 1 conforms. ref in float64."""
    A = to_numpy(a).astype(np.float64) * reference.expand_dequant(to_numpy(da), a.shape, "a")
    B = to_numpy(b).astype(np.float64) * reference.expand_dequant(to_numpy(db), b.shape, "b")
    ref = A @ B.T
    abs_sum = np.abs(A) @ np.abs(B).T
    u = U_OUT[out_dtype]
    k = A.shape[1]
    acc = _g(2.0 ** -13, min(promote, k)) + _g(2.0 ** -23, k) + 2.0 ** -22
    bound = 2 * u * np.abs(ref) + acc * abs_sum
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
        ratio = mm4_ratio(a, da, b, db, out, out_dtype, promote_every(a))
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
        ratio = mm4_ratio(a, da, b, db, out, out_dtype, promote_every(a))
        assert ratio <= 1.0, f"k block {k_block} {variant} {out_dtype}: {ratio} (seed {seed})"


def _torch_blockwise_semantics(a, scale_a, b, scale_b, case):
    """What torch.nn.functional.scaled_mm computes for mat_a = a (M, K), mat_b = b.T (K, N) with
    DeepSeek-style scales, written from torch's documented layouts (float64, exact sums)."""
    M, K = a.shape
    N = b.shape[0]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = np.zeros((M, N))
    for kb in range(K // 128):
        part = a64[:, kb * 128:(kb + 1) * 128] @ b64[:, kb * 128:(kb + 1) * 128].T
        sb = (scale_b[kb, np.arange(N) // 128][None, :] if case == "1x128_128x128"
              else scale_b[:, kb][None, :])
        out += part * scale_a[:, kb][:, None] * sb
    return out


@pytest.mark.parametrize("br_b", [128, 1])
@pytest.mark.parametrize("K", [128, 384, 512, 640])
def test_blockwise_scale_layouts_for_cublas_MM_1(br_b, K):
    """The scales handed to torch's blockwise scaled_mm have the shapes and strides torch checks,
    and read with torch's semantics they give the MM-1 product (K/128 not a multiple of 4 is
    padded for 128x128 weights; the padding is never read)."""
    from qtrain.fast.scaled_mm import blockwise_scale_layouts
    M, N = 8, 256
    rng = np.random.default_rng(K + br_b)
    a = rng.integers(-8, 8, (M, K)).astype(np.float32)
    b = rng.integers(-8, 8, (N, K)).astype(np.float32)
    da = torch.from_numpy(2.0 ** rng.integers(-4, 4, (M, K // 128)).astype(np.float32))
    db = torch.from_numpy(2.0 ** rng.integers(-4, 4, (N // br_b, K // 128)).astype(np.float32))
    scale_a, scale_b, case = blockwise_scale_layouts(da, 1, db, br_b, M, N, K)
    kb, kb4 = K // 128, -(-(K // 128) // 4) * 4
    assert scale_a.shape == (M, kb) and scale_a.stride()[0] == 1
    assert kb == 1 or scale_a.stride() == (1, M)
    if br_b == 128:
        assert case == "1x128_128x128"
        assert scale_b.shape == (kb4, N // 128) and scale_b.stride() == (1, kb4)
    else:
        assert case == "1x128_1x128" and scale_b.shape == (N, kb)
        assert scale_b.stride()[0] == 1 and (kb == 1 or scale_b.stride() == (1, N))
    got = _torch_blockwise_semantics(a, scale_a.numpy(), b, scale_b.numpy(), case)
    full_a = np.repeat(da.numpy(), 128, 1).astype(np.float64)
    full_b = np.repeat(np.repeat(db.numpy(), br_b, 0), 128, 1).astype(np.float64)
    want = (a * full_a) @ (b * full_b).T
    np.testing.assert_array_equal(got, want)


def test_blockwise_scale_layouts_refuse_other_blocks():
    from qtrain.fast.scaled_mm import blockwise_scale_layouts
    d = torch.ones(4, 2)
    assert blockwise_scale_layouts(d, 128, d, 128, 512, 512, 256) is None     # a 128x128
    assert blockwise_scale_layouts(d, 1, d, 32, 4, 128, 256) is None          # b 32 x 128


@pytest.mark.skipif(DEVICE != "cuda", reason="cuBLAS blockwise products need a CUDA sm90 GPU")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("M,N,K", [(64, 256, 512), (256, 384, 640), (8, 128, 128)])
def test_blockwise_on_cublas_within_MM_7(M, N, K, out_dtype, seed):
    """The three blockwise products (1x128 x 128x128 for output and grad_input, 1x128 x 1x128
    for grad_weight) routed to torch's cuBLAS blockwise scaled_mm, within MM-4 with MM-7."""
    from qtrain.fast import cast_blockwise
    from qtrain.fast import scaled_mm as fs
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("torch's blockwise scaled_mm is sm90-only")
    fast = fast_backend()
    rng = np.random.default_rng(seed)
    x = from_numpy((rng.standard_normal((M, K)) * 4).astype(np.float32))
    w = from_numpy(rng.standard_normal((N, K)).astype(np.float32))
    a, qa = cast_blockwise.quantize_blockwise(x, (1, 128))
    for block in ((128, 128), (1, 128)):
        b, qb = cast_blockwise.quantize_blockwise(w, block)
        out = fast.scaled_mm_nt(a, 1 / qa, b, 1 / qb, out_dtype)
        refused = dict(fs._CUBLAS_BLOCKWISE_REFUSED)
        if refused:
            pytest.skip(f"this torch refuses the cuBLAS blockwise product (logged, Triton ran): "
                        f"{refused}")
        ratio = mm4_ratio(a, 1 / qa, b, 1 / qb, out, out_dtype, promote_every(a))
        assert ratio <= 1.0, f"blockwise {block} {(M, N, K)} {out_dtype}: error/bound {ratio}"


@pytest.mark.skipif(DEVICE != "cuda", reason="the bf16-GEMM route of MX products is CUDA-only")
@pytest.mark.parametrize("M,N,K", [(64, 256, 512), (17, 96, 160), (256, 384, 1024)])
def test_mx_with_pow2_promise_as_bf16_gemm_within_MM_4(M, N, K, seed):
    """MX operands with the pow2_factors promise run as a bf16 GEMM of their exact values:
    within MM-4 with plain fp32 accumulation (no MM-7 interval), bf16 out."""
    fast = fast_backend()
    rng = np.random.default_rng(seed)
    a, da, b, db = _operands("mx", M, N, K, rng)
    out = fast.scaled_mm_nt(a, da, b, db, torch.bfloat16, pow2_factors=True)
    assert out.dtype == torch.bfloat16 and out.shape == (M, N)
    ratio = mm4_ratio(a, da, b, db, out, torch.bfloat16, 0)
    assert ratio <= 1.0, f"mx bf16 route {(M, N, K)}: error/bound {ratio} (seed {seed})"


@pytest.mark.parametrize("M,N,K", [(64, 256, 96), (200, 32, 64), (48, 48, 32), (17, 96, 160)])
def test_mx_bf16_route_in_chunks_equals_one_gemm(M, N, K, seed, monkeypatch):
    """The bf16-GEMM route dequantizes the larger operand in row chunks the size of the smaller
    one (bounded transient memory): within MM-4, and on the CPU the same bits as one GEMM of
    the whole operands (a GPU's GEMM may pick another summation order per shape)."""
    from qtrain.fast import scaled_mm as fast_mm
    from qtrain.fast.block_dequant import dequant_blocks
    fast_backend()
    rng = np.random.default_rng(seed)
    a, da, b, db = _operands("mx", M, N, K, rng)
    sizes = []

    def counted(p, d, dtype):
        sizes.append(p.shape[0])
        return dequant_blocks(p, d, dtype)

    monkeypatch.setattr(fast_mm, "dequant_blocks", counted)
    out = fast_mm.bf16_product_in_chunks(a, da, b, db)
    assert out is not None and out.dtype == torch.bfloat16 and out.shape == (M, N)
    small, large = min(M, N), max(M, N)
    assert sizes[0] == small and sum(sizes[1:]) == large and max(sizes[1:]) <= small, sizes
    whole = dequant_blocks(a, da, torch.bfloat16) @ dequant_blocks(b, db, torch.bfloat16).t()
    if DEVICE == "cpu":
        assert torch.equal(out, whole), f"{(M, N, K)} (seed {seed})"
    ratio = mm4_ratio(a, da, b, db, out, torch.bfloat16, 0)
    assert ratio <= 1.0, f"mx bf16 chunks {(M, N, K)}: error/bound {ratio} (seed {seed})"
