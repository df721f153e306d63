"""Scaled matrix products in NT form, spec/06-scaled-mm.md (MM-1..MM-4):
out[m, n] = sum_k A[m,k] dA[m,k] B[n,k] dB[n,k], a (M, K) and b (N, K) row-major payloads,
dequant factors with the MM-1 block rule. Float8 tensorwise/rowwise go to torch._scaled_mm,
int8 tensorwise/rowwise to torch._int_mm (or the Triton int8 GEMM when INT8_TRITON is set),
everything else (MX, blockwise, shapes or formats those reject) to the Triton kernel below,
which promotes partial sums to fp32 at every scale block. See fast/README.md."""
import contextlib
import logging
import os

import torch
import triton
import triton.language as tl

from .block_dequant import dequant_blocks, exact_values
from .common import TORCH_FLOAT8, cdiv, device_capability, is_interpreted, next_pow2

LAYER = "qtrain.fast.scaled_mm"
log = logging.getLogger("qtrain")
_FLOAT8 = tuple(TORCH_FLOAT8.values())
_OUT_DTYPES = (torch.float32, torch.bfloat16)
# Route int8 tensorwise/rowwise products to the Triton int8 GEMM instead of torch._int_mm.
# Flip from benchmarks/kernel_tuning.py's numbers (H200: _int_mm 606 TFLOP/s on 8192^3).
INT8_TRITON = os.environ.get("QTRAIN_FAST_INT8_TRITON", "1") == "1"   # H200: 825 vs 590 TFLOP/s (8192^3), benchmarks/results
# Autotune the Triton product over _CONFIGS on CUDA (0: always the first config of the table).
AUTOTUNE = os.environ.get("QTRAIN_FAST_AUTOTUNE", "1") == "1"
MIN_DOT_K = 32          # sm90 fp8 / int8 tensor-core dots need K >= 32 per tl.dot


@triton.jit
def _scaled_mm_nt_kernel(a_ptr, b_ptr, da_ptr, db_ptr, out_ptr, M, N, K,
                         sda_m, sda_k, BR_A, BC_A, sdb_n, sdb_k, BR_B, BC_B,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_K: tl.constexpr,
                         STEP_K: tl.constexpr, SPLIT: tl.constexpr, GROUP_M: tl.constexpr,
                         PROMOTE: tl.constexpr, EVEN_K: tl.constexpr, IS_INT: tl.constexpr):
    """Output tile (BLOCK_M, BLOCK_N), tiles visited in groups of GROUP_M row tiles (L2 reuse).
    The K loop advances STEP_K per tl.dot (SPLIT dots per iteration, unrolled); each dot loads
    SUB_K >= STEP_K, >= 32 columns (sm90 fp8/int8 dots need K >= 32), lanes past STEP_K or K
    masked to 0.
    PROMOTE (block-scaled, STEP_K = the finer k block): per step, a fresh dot
        part = A[:, step] @ B[:, step].T  (fp32, or exact int32 for int8)
        acc += part * (dA[m, blk] * dB[n, blk])          (promotion to fp32, MM-3)
    and max_num_imprecise_acc = STEP_K keeps Hopper's fast fp8 accumulation within one step.
    Else (one factor per row along all of K): acc = sum of dots (int32 for int8, exact), then
    out = fp32(acc) * dA[m] * dB[n] once at the end."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # wrap rows past the edge onto valid ones: loads need no row mask, the store is masked
    offs_m = rows_m % M
    offs_n = rows_n % N
    offs_k = tl.arange(0, SUB_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    da_rows = da_ptr + (offs_m // BR_A) * sda_m
    db_rows = db_ptr + (offs_n // BR_B) * sdb_n
    if IS_INT and not PROMOTE:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, STEP_K * SPLIT):
        for j in tl.static_range(SPLIT):
            kk = k0 + j * STEP_K
            if EVEN_K:
                a = tl.load(a_ptrs + kk)
                b = tl.load(b_ptrs + kk)
            else:
                k_ok = (offs_k < STEP_K) & (offs_k < K - kk)
                a = tl.load(a_ptrs + kk, mask=k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs + kk, mask=k_ok[None, :], other=0.0)
            if PROMOTE:
                if IS_INT:
                    part = tl.dot(a, tl.trans(b), out_dtype=tl.int32).to(tl.float32)
                else:
                    part = tl.dot(a, tl.trans(b), max_num_imprecise_acc=SUB_K)
                # SPLIT may step past K: read the last block's factors, add nothing
                k_in = kk < K
                kf = tl.minimum(kk, K - 1)
                da = tl.load(da_rows + (kf // BC_A) * sda_k)
                db = tl.load(db_rows + (kf // BC_B) * sdb_k)
                acc += tl.where(k_in, part * (da[:, None] * db[None, :]), 0.0)
            elif IS_INT:
                acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=SUB_K)
    if not PROMOTE:
        da = tl.load(da_rows)
        db = tl.load(db_rows)
        acc = acc.to(tl.float32) * da[:, None] * db[None, :]
    out = out_ptr + rows_m[:, None].to(tl.int64) * N + rows_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows_m < M)[:, None] & (rows_n < N)[None, :])


def _cfg(bm, bn, sub, split, warps, stages, group=8):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, SUB_K=sub, SPLIT=split, GROUP_M=group),
                         num_warps=warps, num_stages=stages)


# Hopper configs per kernel class (kept to 4-6 each so autotuning stays a few seconds). The
# first entry is the default when AUTOTUNE is off. SUB_K here is the load width wanted; the
# launcher raises it to the promotion step where that is larger.
_CONFIGS = {
    "promote128": [_cfg(128, 128, 128, 1, 8, 4), _cfg(128, 256, 128, 1, 8, 3),
                   _cfg(128, 128, 128, 1, 4, 4), _cfg(256, 128, 128, 1, 8, 3),
                   _cfg(64, 128, 128, 1, 4, 4)],
    "promote32": [_cfg(128, 128, 32, 4, 8, 3), _cfg(128, 256, 32, 4, 8, 3),
                  _cfg(128, 128, 32, 1, 8, 6), _cfg(128, 256, 32, 1, 8, 5),
                  _cfg(64, 128, 32, 4, 4, 4)],
    "full": [_cfg(128, 256, 128, 1, 8, 3), _cfg(128, 128, 128, 1, 8, 4),
             _cfg(256, 128, 128, 1, 8, 3), _cfg(128, 128, 128, 1, 4, 4),
             _cfg(64, 128, 128, 1, 4, 4)],
}
_KEY = ["M", "N", "K", "STEP_K", "PROMOTE", "EVEN_K", "IS_INT"]


def _prune(configs, named_args, **kwargs):
    """Drop tiles taller or wider than the (power-of-two rounded) problem: a 17-row product
    compiles and runs one 64-row config instead of timing five."""
    m = next_pow2(named_args["M"])
    n = next_pow2(named_args["N"])
    fit = [c for c in configs if c.kwargs["BLOCK_M"] <= max(m, 64) and c.kwargs["BLOCK_N"] <= max(n, 128)]
    return fit or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_TUNED = {name: triton.autotune(configs=cfgs, key=_KEY,
                                prune_configs_by=dict(early_config_prune=_prune))(
                                    _scaled_mm_nt_kernel)
          for name, cfgs in _CONFIGS.items()}


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


def _pow2_at_least(n, floor):
    return max(floor, next_pow2(int(n)))


_FELL_BACK = set()


def scaled_mm_nt_triton(a, a_dequant, b, b_dequant, out_dtype=torch.float32, variant="tuned",
                        config=None):
    """The Triton path for any MM-1 block pattern. The k blocks of the two operands must nest
    (the finer divides the coarser); the finer one is the promotion interval. variant "tuned"
    (autotuned on CUDA; one small config under the interpreter), or "v1" (the first kernel,
    kept for benchmarks/kernel_tuning.py and as the fallback if "tuned" fails to compile).
    config: a dict of the kernel's tile constants (BLOCK_M, BLOCK_N, SUB_K, SPLIT, GROUP_M,
    num_warps, num_stages) to bypass autotuning (tuning script)."""
    _check(a, b, out_dtype)
    (M, K), N = a.shape, b.shape[0]
    da, br_a, bc_a = _blocks(a_dequant, a.shape, "a_dequant")
    db, br_b, bc_b = _blocks(b_dequant, b.shape, "b_dequant")
    sk, coarse = min(bc_a, bc_b), max(bc_a, bc_b)
    if coarse % sk:
        raise ValueError(f"{LAYER}: k blocks {bc_a} (a) and {bc_b} (b) do not nest")
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if variant == "v1":
        _launch_v1(a, b, da, db, out, br_a, bc_a, br_b, bc_b, sk)
        return out
    try:
        _launch(a, b, da, db, out, br_a, bc_a, br_b, bc_b, sk, config)
    except Exception as e:     # noqa: BLE001 -- a compile failure of the new kernel
        key = (a.dtype, out_dtype, sk == K)
        if a.device.type != "cuda" or config is not None:
            raise
        if key not in _FELL_BACK:
            _FELL_BACK.add(key)
            log.warning("%s: tuned Triton product failed (%s: %s) for a %s x %s %s product; "
                        "falling back to the v1 kernel", LAYER, type(e).__name__,
                        str(e).splitlines()[0][:200], tuple(a.shape), tuple(b.shape), a.dtype)
        _launch_v1(a, b, da, db, out, br_a, bc_a, br_b, bc_b, sk)
    return out


def _steps(K, sk):
    """(STEP_K, SUB_K): the promotion step (the finer k block; blocks past 128 that 128
    divides are promoted every 128, which only refines the order, MM-3) or, without
    promotion, the K step of the full-K accumulation; and the dot width >= 32 covering it."""
    if sk < K:
        step = 128 if sk > 128 and sk % 128 == 0 else sk
    else:
        step = min(_pow2_at_least(K, MIN_DOT_K), 128)
    return step, _pow2_at_least(step, MIN_DOT_K)


def _launch(a, b, da, db, out, br_a, bc_a, br_b, bc_b, sk, config):
    (M, K), N = a.shape, b.shape[0]
    promote = sk < K
    is_int = a.dtype == torch.int8
    step, sub = _steps(K, sk)
    # factors passed k-major (transposed): the per-step load over rows is contiguous
    da_t, db_t = da.t().contiguous(), db.t().contiguous()
    args = (a, b, da_t, db_t, out, M, N, K, 1, da_t.shape[1], br_a, bc_a, 1, db_t.shape[1],
            br_b, bc_b)
    flags = dict(STEP_K=step, PROMOTE=promote, IS_INT=is_int)
    cls = "full" if not promote else ("promote32" if step <= 64 else "promote128")
    if config is None and (is_interpreted(_scaled_mm_nt_kernel) or a.device.type != "cuda"):
        config = dict(BLOCK_M=32, BLOCK_N=32, SUB_K=sub, SPLIT=2 if promote else 1, GROUP_M=2,
                      num_warps=4, num_stages=1)
    tuned_ok = all(c.kwargs["SUB_K"] == sub for c in _CONFIGS[cls])
    if config is None and AUTOTUNE and tuned_ok:
        # EVEN_K must hold for every config of the class (SPLIT 1 or 4)
        even = sub == step and all(K % (step * c.kwargs["SPLIT"]) == 0 for c in _CONFIGS[cls])
        grid = lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)
        _TUNED[cls][grid](*args, EVEN_K=even, **flags)
        return
    if config is None:
        c = _CONFIGS[cls][0]
        config = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
    meta = dict(config, SUB_K=sub)
    even = sub == step and K % (step * meta["SPLIT"]) == 0
    grid = (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)
    _scaled_mm_nt_kernel[grid](*args, EVEN_K=even, **flags, **meta)


def _outer_vectors(da, db, M, N):
    """Tensorwise / rowwise factors as contiguous (M, 1) and (1, N), or None if blockwise."""
    if da.shape[1] != 1 or db.shape[1] != 1 or da.shape[0] not in (1, M) or db.shape[0] not in (1, N):
        return None
    return da.expand(M, 1).contiguous(), db.reshape(1, -1).expand(1, N).contiguous()


_ROWWISE_FP32_OK = {}       # device type -> False once torch rejected it (logged once)


_FNUZ = (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
_FNUZ_LOGGED = []


@contextlib.contextmanager
def _matmul_flag(name, value):
    """torch.backends.cuda.matmul.<name> set to value for one product, restored after."""
    flags = torch.backends.cuda.matmul
    prev = getattr(flags, name)
    setattr(flags, name, value)
    try:
        yield
    finally:
        setattr(flags, name, prev)


def _fnuz_emulated(a, a_dequant, b, b_dequant, out_dtype):
    """fnuz payloads (MI300X formats) on NVIDIA: no tensor core takes them (Triton: "fp8e4b8 not
    supported in this architecture"), so the product runs in fp32 on the exactly upcast payloads
    with the MM-1 factors applied per element (one scale-path rounding, MM-3), logged once."""
    if not _FNUZ_LOGGED:
        log.warning("qtrain.fast.scaled_mm: fnuz float8 payloads have no NVIDIA tensor-core path; "
                    "computing the product in fp32 (correct, not fast)")
        _FNUZ_LOGGED.append(True)
    a32 = exact_values(a, _blocks(a_dequant, a.shape, "a_dequant")[0], torch.float32)
    b32 = exact_values(b, _blocks(b_dequant, b.shape, "b_dequant")[0], torch.float32)
    with _matmul_flag("allow_tf32", False):                # fp32 accumulation, not tf32
        return (a32 @ b32.t()).to(out_dtype)


# ---- blockwise (1x128 activations, 128x128 weights) on cuBLAS through torch -------------------
# torch.nn.functional.scaled_mm takes DeepSeek-style block scales on sm90 with cuBLASLt >= 12.9
# (BlockWise1x128 x BlockWise128x128 and BlockWise1x128 x BlockWise1x128), so the blockwise
# recipe's three products need not run on the Triton kernel. Its rules on the scale layouts
# (torch's ScaledBlas checks): for mat_a (M, K) with 1x128 blocks the scale is (M, K/128) stored
# M-major, strides (1, M); for mat_b (K, N) with 1x128 blocks along K, (N, K/128) with strides
# (1, N); with 128x128 blocks, (round_up(K/128, 4), N/128) with strides (1, round_up(K/128, 4)).
# The scales are the decoding (dequant) factors, as in MM-1. Switch off with
# QTRAIN_FAST_BLOCKWISE_CUBLAS=0; a torch that refuses it is logged once and the Triton kernel
# runs instead.
BLOCKWISE_CUBLAS = os.environ.get("QTRAIN_FAST_BLOCKWISE_CUBLAS", "1") == "1"
_CUBLAS_BLOCKWISE_REFUSED = {}      # (device type, out dtype, case) -> reason


def _round_up(n, m):
    return -(-n // m) * m


def blockwise_scale_layouts(da, br_a, db, br_b, M, N, K):
    """(scale_a, scale_b, case) laid out as torch.nn.functional.scaled_mm wants them for the NT
    product of a (M, K) and b (N, K) with 128-wide contraction blocks; case "1x128_128x128"
    (b in 128x128 blocks) or "1x128_1x128". None when the blocks are not one of those."""
    if br_a != 1 or br_b not in (1, 128) or K % 128:
        return None
    kb = K // 128
    scale_a = da.t().contiguous().t()                   # (M, K/128), strides (1, M)
    if br_b == 1:
        return scale_a, db.t().contiguous().t(), "1x128_1x128"
    kb4 = _round_up(kb, 4)
    if kb4 == kb:
        return scale_a, db.t(), "1x128_128x128"          # (K/128, N/128), strides (1, K/128)
    padded = db.new_zeros((db.shape[0], kb4))
    padded[:, :kb] = db
    return scale_a, padded.t(), "1x128_128x128"         # rows past K/128 are never read


def _cublas_blockwise(a, da, br_a, b, db, br_b, out_dtype):
    """The product on cuBLAS, or None where it cannot run (then the Triton kernel does)."""
    F = torch.nn.functional
    (M, K), N = a.shape, b.shape[0]
    if (not BLOCKWISE_CUBLAS or a.device.type != "cuda" or torch.version.hip is not None
            or not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType")
            or a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn
            or M % 4 or N % 16 or K % 128 or device_capability(a.device)[0] != 9):
        return None
    layouts = blockwise_scale_layouts(da, br_a, db, br_b, M, N, K)
    if layouts is None:
        return None
    scale_a, scale_b, case = layouts
    key = (a.device.type, out_dtype, case)
    if key in _CUBLAS_BLOCKWISE_REFUSED:
        return None
    recipe_b = F.ScalingType.BlockWise128x128 if br_b == 128 else F.ScalingType.BlockWise1x128
    try:
        return F.scaled_mm(a, b.t(), scale_a, F.ScalingType.BlockWise1x128, scale_b, recipe_b,
                           output_dtype=out_dtype)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        reason = str(e).splitlines()[0][:200]
        _CUBLAS_BLOCKWISE_REFUSED[key] = reason
        log.warning("%s: torch %s refuses the blockwise %s product with %s out (%s); using the "
                    "Triton block-scaled kernel", LAYER, torch.__version__, case,
                    str(out_dtype)[6:], reason)
        return None


# ---- MX (and other fine block) products on GPUs without MX tensor cores ---------------------
# Hopper has no block-scaled fp8 MMA, and the Triton block-scaled kernel, which must promote
# every 32 terms, measured 200 TFLOP/s on the H200 (NOTES). With power-of-two factors (the
# caller's pow2_factors promise: MX's e8m0) a float8 code times its factor is exact in bf16
# (down to bf16's 2^-133), so a bf16 GEMM of the dequantized operands runs at the bf16 rate
# (~700) with fp32 accumulation: the same MM-4 terms, a tighter bound than MM-7. Arbitrary
# factors would round twice, so without the promise the Triton kernel runs.
# QTRAIN_FAST_MX_PRODUCT=triton keeps the Triton kernel always.
MX_PRODUCT = os.environ.get("QTRAIN_FAST_MX_PRODUCT", "bf16")
# How the mxfp8 linear hands its operands to that bf16 GEMM (RC-7's emulation; qtrain/qlinear.py
# asks mx_values_route): "values" (the default) quantizes each operand straight to its bf16
# values (MX-10, fast/cast_mx_values.py: one pass, 2 + 2 bytes per element) except x along M,
# which autograd keeps as payload and scale bytes (RC-7's memory) and the product dequantizes;
# "payload" casts every operand to payload and scale bytes (2 + 1) and dequantizes it inside
# the product (1 + 2).
MX_OPERANDS_ENV = "QTRAIN_FAST_MX_OPERANDS"
MX_OPERANDS = os.environ.get(MX_OPERANDS_ENV, "values")
if MX_OPERANDS not in ("values", "payload"):
    raise ValueError(f"{MX_OPERANDS_ENV}={MX_OPERANDS!r}: expected 'values' or 'payload'")


def mx_values_route(t):
    """Whether the MX products (linear, grouped) on `t` run on MX-10 values: bf16 t on CUDA,
    with the bf16-GEMM product (MX_PRODUCT) and MX_OPERANDS = "values"."""
    return (t.is_cuda and t.dtype == torch.bfloat16 and MX_PRODUCT == "bf16"
            and MX_OPERANDS == "values")


def _fine_blocks_via_bf16(a, da, b, db, out_dtype):
    """The product of float8 operands with power-of-two factors and k blocks finer than 128 as
    a bf16 GEMM of their exact values (CUDA, bf16 out), or None."""
    if MX_PRODUCT != "bf16" or a.device.type != "cuda" or out_dtype != torch.bfloat16:
        return None
    with _matmul_flag("allow_bf16_reduced_precision_reduction", False):      # fp32 sums
        return bf16_product_in_chunks(a, da, b, db)


def bf16_product_in_chunks(a, da, b, db):
    """a (M, K) @ b (N, K).T as bf16 GEMMs of the operands' exact bf16 values, or None where
    dequant_blocks does not apply. The bf16 copies are transient, and the largest product of a
    training step makes them at its memory peak, so the larger operand is dequantized in row
    chunks about the size of the smaller one: at most ~2x the smaller operand's bf16 copy is
    alive at once (w2's grad_weight in the Llama3-8B block: 134 MB instead of 302 MB)."""
    if da.dim() != 2 or db.dim() != 2:
        return None
    if b.shape[0] > a.shape[0]:
        fixed16 = dequant_blocks(a, da, torch.bfloat16)
        return None if fixed16 is None else _values_times_chunks(fixed16, b, db, True)
    fixed16 = dequant_blocks(b, db, torch.bfloat16)
    return None if fixed16 is None else _values_times_chunks(fixed16, a, da, False)


def _values_times_chunks(fixed16, part, part_d, part_is_b):
    """fixed16 (bf16 values, any strides) against the payload `part` with its factors part_d,
    dequantized in row chunks about fixed16's size (whole factor blocks each): out = fixed16 @
    part16.T (part_is_b) or part16 @ fixed16.T. Each chunk's GEMM writes its slice of out
    (columns through out's row stride, or rows). None where dequant_blocks does not apply."""
    rows = part.shape[0]
    block_rows = max(1, rows // part_d.shape[0])
    step = max(block_rows, (fixed16.shape[0] // block_rows) * block_rows)
    shape = (fixed16.shape[0], rows) if part_is_b else (rows, fixed16.shape[0])
    out = torch.empty(shape, dtype=torch.bfloat16, device=part.device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        d0, d1 = r0 // block_rows, -(-r1 // block_rows)
        chunk16 = dequant_blocks(part[r0:r1], part_d[d0:d1], torch.bfloat16)
        if chunk16 is None:
            return None
        if part_is_b:                       # part's rows are out's columns
            torch.mm(fixed16, chunk16.t(), out=out[:, r0:r1])
        else:                               # part's rows are out's rows
            torch.mm(chunk16, fixed16.t(), out=out[r0:r1])
        del chunk16
    return out


def mx_values_product(a, da, b, db):
    """RC-7's emulated MX product (ops.mm_mx_values): a (M, K) @ b (N, K).T in bf16 with fp32
    sums, each operand given as its MX-10 values (d None: bf16, any strides) or as a row-major
    float8 payload with its fp32 power-of-two factors (dequantized exactly, in row chunks)."""
    for v, d, name in ((a, da, "a"), (b, db, "b")):
        if d is None and v.dtype != torch.bfloat16:
            raise TypeError(f"{LAYER}: mm_mx_values: {name} given as values has dtype {v.dtype}, "
                            f"expected torch.bfloat16")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{LAYER}: mm_mx_values: a {tuple(a.shape)} and b {tuple(b.shape)} do "
                         f"not share their contraction (last) axis")
    with _matmul_flag("allow_bf16_reduced_precision_reduction", False):      # fp32 sums
        if da is None and db is None:
            return torch.mm(a, b.t())
        if da is None:
            out = _values_times_chunks(a, b, db, True)
        elif db is None:
            out = _values_times_chunks(b, a, da, False)
        else:
            out = bf16_product_in_chunks(a, da, b, db)
    if out is None:
        raise ValueError(f"{LAYER}: mm_mx_values: payloads must be row-major float8 with 2-D "
                         f"block factors, got a {a.dtype} {tuple(a.shape)}, b {b.dtype} "
                         f"{tuple(b.shape)}")
    return out


def scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype=torch.float32, use_fast_accum=False,
                 pow2_factors=False):
    """Brief interface. Routing (all documented in fast/README.md):
    float8 tensorwise x tensorwise: torch._scaled_mm(a, b.t()) with scalar factors.
    float8 rowwise (either operand): rowwise torch._scaled_mm with (M,1), (1,N), bf16 or fp32
      out; if this torch rejects fp32 out there (logged once): unit scales, fp32 out, then
      out * dA * dB in fp32.
    int8 tensorwise/rowwise: torch._int_mm then fp32 scaling by dA (M,1) and dB (1,N), or the
      Triton int8 GEMM with the scaling fused when INT8_TRITON is set.
    float8 e4m3fn blockwise (a 1x128, b 1x128 or 128x128) on sm90: torch.nn.functional.scaled_mm
      on cuBLAS (see blockwise_scale_layouts; M % 4, N % 16).
    float8 with k blocks finer than 128 (MX) and pow2_factors, bf16 out, on CUDA: a bf16 GEMM of
      the exactly dequantized operands (QTRAIN_FAST_MX_PRODUCT=bf16, the default).
    Otherwise, or when the torch kernel's rules fail (K % 16, N % 16, e5m2 x e5m2, fnuz on CUDA,
    _int_mm's M > 16, K % 8, N % 8): the Triton kernel."""
    _check(a, b, out_dtype)
    if a.device.type == "cuda" and torch.version.hip is None and (a.dtype in _FNUZ or b.dtype in _FNUZ):
        return _fnuz_emulated(a, a_dequant, b, b_dequant, out_dtype)
    (M, K), N = a.shape, b.shape[0]
    da, br_a, bc_a = _blocks(a_dequant, a.shape, "a_dequant")
    db, br_b, bc_b = _blocks(b_dequant, b.shape, "b_dequant")
    if (da.numel() == 1 and db.numel() == 1 and a.dtype != torch.int8
            and _scaled_mm_ok(a, b, N, K)):              # tensorwise: scalar factors as they are
        return torch._scaled_mm(a, b.t(), scale_a=da.reshape(()), scale_b=db.reshape(()),
                                out_dtype=out_dtype, use_fast_accum=use_fast_accum)
    vectors = _outer_vectors(da, db, M, N)
    if vectors is not None and a.dtype == torch.int8:
        if INT8_TRITON and a.device.type == "cuda":
            return scaled_mm_nt_triton(a, a_dequant, b, b_dequant, out_dtype)
        if _int_mm_ok(a, M, N, K):
            acc = torch._int_mm(a, b.t())
            return (acc.to(torch.float32) * vectors[0] * vectors[1]).to(out_dtype)
    if vectors is not None and a.dtype != torch.int8 and _scaled_mm_ok(a, b, N, K):
        sa, sb = vectors
        if out_dtype == torch.bfloat16 or _ROWWISE_FP32_OK.get(a.device.type, True):
            try:
                return torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=out_dtype,
                                        use_fast_accum=use_fast_accum)
            except RuntimeError as e:
                if out_dtype == torch.bfloat16:
                    raise
                _ROWWISE_FP32_OK[a.device.type] = False
                log.warning("%s: torch._scaled_mm rejects rowwise scales with float32 out on "
                            "torch %s (%s); using unit scales + fp32 post-scaling",
                            LAYER, torch.__version__, str(e).splitlines()[0][:200])
        one = torch.ones((), dtype=torch.float32, device=a.device)
        out = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32,
                               use_fast_accum=use_fast_accum)
        return out.mul_(sa).mul_(sb)
    if bc_a == bc_b == 128 and a.dtype != torch.int8:
        out = _cublas_blockwise(a, da, br_a, b, db, br_b, out_dtype)
        if out is not None:
            return out
    if pow2_factors and max(bc_a, bc_b) < 128 and a.dtype != torch.int8:     # MX 1x32
        out = _fine_blocks_via_bf16(a, da, b, db, out_dtype)
        if out is not None:
            return out
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


# ---- v1: the first block-scaled kernel (64x64 tiles, no autotuning). Kept as the fallback
# when the tuned kernel fails to compile, and for benchmarks/kernel_tuning.py (variant="v1").

@triton.jit
def _block_scaled_mm_nt_kernel(a_ptr, b_ptr, da_ptr, db_ptr, out_ptr, M, N, K,
                               BR_A, CA, BC_A, BR_B, CB, BC_B, SK,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr, IS_INT: tl.constexpr,
                               MAX_IMPRECISE: tl.constexpr):
    """Tile (BLOCK_M, BLOCK_N) of out. For each scale block of SK contraction indices:
        part = sum over the block of A B   (tensor-core dot; int32 for int8)
        acc += fp32(part) * (dA[m, blk] * dB[n, blk])
    BLOCK_K >= 32 (sm90 dots); lanes past the block or K load as 0."""
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
            k_ok = (ks < K) & (ks < kb + SK)
            a = tl.load(a_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_rows + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            if IS_INT:
                part = tl.dot(a, tl.trans(b), part, out_dtype=tl.int32)
            else:
                part = tl.dot(a, tl.trans(b), part, max_num_imprecise_acc=MAX_IMPRECISE)
        da = tl.load(da_ptr + (offs_m // BR_A) * CA + kb // BC_A, mask=m_ok, other=0.0)
        db = tl.load(db_ptr + (offs_n // BR_B) * CB + kb // BC_B, mask=n_ok, other=0.0)
        acc += part.to(tl.float32) * (da[:, None] * db[None, :])
    out = out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _launch_v1(a, b, da, db, out, br_a, bc_a, br_b, bc_b, sk):
    (M, K), N = a.shape, b.shape[0]
    if sk == K:
        block_k = min(64, _pow2_at_least(K, MIN_DOT_K))
    else:
        block_k = min(_pow2_at_least(sk & -sk, MIN_DOT_K), 128)
    block_m = 64 if M > 32 else max(16, next_pow2(M))
    block_n = 64 if N > 32 else max(16, next_pow2(N))
    is_int = a.dtype == torch.int8
    grid = (cdiv(M, block_m), cdiv(N, block_n))
    _block_scaled_mm_nt_kernel[grid](
        a, b, da, db, out, M, N, K, br_a, da.shape[1], bc_a, br_b, db.shape[1], bc_b, sk,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IS_INT=is_int,
        MAX_IMPRECISE=0 if is_int else block_k)
