"""Scaled matrix products in NT form, spec/06-scaled-mm.md (MM-1..MM-4):
out[m, n] = sum_k A[m,k] dA[m,k] B[n,k] dB[n,k], a (M, K) and b (N, K) row-major payloads,
dequant factors with the MM-1 block rule. Float8 tensorwise/rowwise go to torch._scaled_mm,
int8 tensorwise/rowwise to torch._int_mm, everything else (MX, blockwise, shapes or formats
those reject) to the Triton kernel below, which promotes partial sums to fp32 at every scale
block. See fast/README.md for the layouts and the fp32-output choice."""
import torch
import triton
import triton.language as tl

from .common import TORCH_FLOAT8

LAYER = "qtrain.fast.scaled_mm"
_FLOAT8 = tuple(TORCH_FLOAT8.values())
_OUT_DTYPES = (torch.float32, torch.bfloat16)


@triton.jit
def _block_scaled_mm_nt_kernel(a_ptr, b_ptr, da_ptr, db_ptr, out_ptr, M, N, K,
                               BR_A, CA, BC_A, BR_B, CB, BC_B, SK,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr, IS_INT: tl.constexpr,
                               MAX_IMPRECISE: tl.constexpr):
    """Tile (BLOCK_M, BLOCK_N) of out. For each scale block of SK contraction indices (SK = the
    finer of the two operands' k block; K itself for tensorwise/rowwise):
        part = sum over the block of A B   (tensor-core dot; int32 for int8)
        acc += fp32(part) * (dA[m, blk] * dB[n, blk])      (promotion to fp32, MM-3 free order)
    MAX_IMPRECISE bounds the Hopper fp8 accumulation run before promotion inside tl.dot."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_rows = a_ptr + offs_m[:, None].to(tl.int64) * K
    b_rows = b_ptr + offs_n[:, None].to(tl.int64) * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K, SK):
        if IS_INT:
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(kb, kb + SK, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            a = tl.load(a_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_rows + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            if IS_INT:
                part = tl.dot(a, tl.trans(b), part)
            else:
                part = tl.dot(a, tl.trans(b), part, max_num_imprecise_acc=MAX_IMPRECISE)
        da = tl.load(da_ptr + (offs_m // BR_A) * CA + kb // BC_A, mask=m_ok, other=0.0)
        db = tl.load(db_ptr + (offs_n // BR_B) * CB + kb // BC_B, mask=n_ok, other=0.0)
        acc += part.to(tl.float32) * (da[:, None] * db[None, :])
    out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _blocks(d, shape, name):
    """MM-1: dequant factors (0-d or (R/br, C/bc)) -> (fp32 contiguous 2-D, br, bc)."""
    if not isinstance(d, torch.Tensor) or d.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{LAYER}: {name} must be a float32 tensor (MM-3: its fp32 value is "
                        f"what the product uses), got {getattr(d, 'dtype', type(d))}")
    d = d.reshape(1, 1) if d.dim() == 0 else d
    if d.dim() != 2 or any(n == 0 or s % n for s, n in zip(shape, d.shape)):
        raise ValueError(f"{LAYER}: {name} shape {tuple(d.shape)} does not tile operand shape "
                         f"{tuple(shape)} (MM-1: (R/br, C/bc) with br, bc dividing R, C)")
    return d.to(torch.float32).contiguous(), shape[0] // d.shape[0], shape[1] // d.shape[1]


def _check(a, b, out_dtype):
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, torch.Tensor) or p.dim() != 2:
            raise ValueError(f"{LAYER}: {name} must be a 2-D tensor, got "
                             f"{tuple(getattr(p, 'shape', ()))}")
        if p.dtype not in _FLOAT8 + (torch.int8,):
            raise TypeError(f"{LAYER}: {name} has dtype {p.dtype}; expected int8 or float8")
        if not p.is_contiguous():
            raise ValueError(f"{LAYER}: {name} of shape {tuple(p.shape)} must be row-major "
                             f"contiguous (NT form: both operands (rows, K)); call .contiguous()")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{LAYER}: a {tuple(a.shape)} and b {tuple(b.shape)} must share K, "
                         f"their last axis (NT form, MM-1)")
    if (a.dtype == torch.int8) != (b.dtype == torch.int8):
        raise TypeError(f"{LAYER}: cannot mix int8 and float8 operands ({a.dtype}, {b.dtype})")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"{LAYER}: out_dtype {out_dtype}; expected torch.float32 or bfloat16")
    if a.device != b.device:
        raise ValueError(f"{LAYER}: a on {a.device}, b on {b.device}")


def scaled_mm_nt_triton(a, a_dequant, b, b_dequant, out_dtype=torch.float32,
                        max_num_imprecise_acc=None):
    """The Triton path for any MM-1 block pattern. The k block sizes of the two operands must
    nest (the finer divides the coarser); the finer one is the promotion interval."""
    _check(a, b, out_dtype)
    (M, K), N = a.shape, b.shape[0]
    da, br_a, bc_a = _blocks(a_dequant, a.shape, "a_dequant")
    db, br_b, bc_b = _blocks(b_dequant, b.shape, "b_dequant")
    sk, coarse = min(bc_a, bc_b), max(bc_a, bc_b)
    if coarse % sk:
        raise ValueError(f"{LAYER}: k blocks {bc_a} (a) and {bc_b} (b) do not nest")
    is_int = a.dtype == torch.int8
    if sk == K:
        block_k = min(64, max(16, triton.next_power_of_2(K)))
    elif sk % 16 == 0:
        block_k = min(sk & -sk, 128)            # largest power of two dividing sk, capped
    else:
        raise ValueError(f"{LAYER}: k block {sk} must be a multiple of 16 (tensor-core dot)")
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    block_m = 64 if M > 32 else max(16, triton.next_power_of_2(M))
    block_n = 64 if N > 32 else max(16, triton.next_power_of_2(N))
    imprecise = block_k if max_num_imprecise_acc is None else max_num_imprecise_acc
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _block_scaled_mm_nt_kernel[grid](
        a, b, da, db, out, M, N, K, br_a, da.shape[1], bc_a, br_b, db.shape[1], bc_b, sk,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IS_INT=is_int,
        MAX_IMPRECISE=0 if is_int else imprecise)
    return out


def _outer_vectors(da, db, M, N):
    """Tensorwise / rowwise factors as contiguous (M, 1) and (1, N), or None if blockwise."""
    if da.shape[1] != 1 or db.shape[1] != 1 or da.shape[0] not in (1, M) or db.shape[0] not in (1, N):
        return None
    return da.expand(M, 1).contiguous(), db.reshape(1, -1).expand(1, N).contiguous()


def scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype=torch.float32, use_fast_accum=False):
    """Brief interface. Routing (all documented in fast/README.md):
    float8 tensorwise x tensorwise: torch._scaled_mm(a, b.t()) with scalar factors.
    float8 rowwise (either operand): bf16 out -> rowwise torch._scaled_mm with (M,1), (1,N);
      fp32 out -> torch._scaled_mm with unit scales and fp32 out, then out * dA * dB in fp32.
    int8 tensorwise/rowwise: torch._int_mm then fp32 scaling by dA (M,1) and dB (1,N).
    Otherwise, or when the torch kernel's rules fail (K % 16, N % 16, e5m2 x e5m2, fnuz on CUDA,
    _int_mm's M > 16, K % 8, N % 8): the Triton kernel."""
    _check(a, b, out_dtype)
    (M, K), N = a.shape, b.shape[0]
    da, _, _ = _blocks(a_dequant, a.shape, "a_dequant")
    db, _, _ = _blocks(b_dequant, b.shape, "b_dequant")
    vectors = _outer_vectors(da, db, M, N)
    if vectors is not None and a.dtype == torch.int8 and _int_mm_ok(a, M, N, K):
        acc = torch._int_mm(a, b.t())
        return (acc.to(torch.float32) * vectors[0] * vectors[1]).to(out_dtype)
    if vectors is not None and a.dtype != torch.int8 and _scaled_mm_ok(a, b, N, K):
        if da.numel() == 1 and db.numel() == 1:
            return torch._scaled_mm(a, b.t(), scale_a=da.reshape(()), scale_b=db.reshape(()),
                                    out_dtype=out_dtype, use_fast_accum=use_fast_accum)
        sa, sb = vectors
        if out_dtype == torch.bfloat16:
            return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype,
                                    use_fast_accum=use_fast_accum)
        one = torch.ones((), dtype=torch.float32, device=a.device)
        out = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                               use_fast_accum=use_fast_accum)
        return out.mul_(sa).mul_(sb)
    return scaled_mm_nt_triton(a, a_dequant, b, b_dequant, out_dtype)


def _scaled_mm_ok(a, b, N, K):
    if K % 16 or N % 16:
        return False
    if a.dtype == torch.float8_e5m2 and b.dtype == torch.float8_e5m2:
        return False
    if a.device.type == "cuda":
        fnuz = (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
        return torch.version.hip is not None or (a.dtype not in fnuz and b.dtype not in fnuz)
    return a.device.type == "cpu" and a.dtype == b.dtype == torch.float8_e4m3fn


def _int_mm_ok(a, M, N, K):
    return a.device.type in ("cuda", "cpu") and M > 16 and K % 8 == 0 and N % 8 == 0
