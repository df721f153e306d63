"""Float8 casts, spec/02-float8-scaling.md (F8-1..F8-7): tensorwise, rowwise (axis -1),
columnwise (axis 0) and the dual row+column cast used by the rowwise recipes."""
import logging

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .amax import amax_bits_2d
from .common import (TORCH_FLOAT8, cdiv, check_device, check_format, check_input, flat_2d,
                     float8_params, kernel_input, normalize_axis, pow2_at_most, rowwise_tile,
                     tma_store_ok, use_soft_cast)
from .encode import abs_bits, encode_float8, float8_quant_scale, row_amax_bits, widen_to_fp32
from .transpose import transposed_copy

LAYER = "qtrain.fast.cast_float8"
log = logging.getLogger("qtrain")


@triton.jit
def _float8_rowwise_kernel(x_ptr, data_ptr, qs_ptr, dq_ptr, R, K,
                           BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, POW2: tl.constexpr,
                           WITH_DQ: tl.constexpr,
                           MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                           FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr,
                           EXACT_SOFT_CAST: tl.constexpr, IS_BF16: tl.constexpr):
    """Rows [BLOCK_R * pid, +BLOCK_R) of row-major x (R, K). BLOCK_K >= K: the rows are held
    in registers (one read); else an amax loop over K, then a cast loop (the second read of
    these rows is served by L2). data = rne(clamp(x * qs)) (F8-4). WITH_DQ: each row's dequant
    factor 1 / qs to dq_ptr, rounded as torch.reciprocal rounds (IEEE division)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    base = rows[:, None].to(tl.int64) * K
    if BLOCK_K >= K:        # the whole row in registers: one read
        cols = tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = widen_to_fp32(tl.load(x_ptr + base + cols[None, :], mask=mask, other=0), IS_BF16)
        qs = float8_quant_scale(tl.max(abs_bits(x), axis=1), MAX, POW2)
        tl.store(qs_ptr + rows, qs, mask=row_ok)
        if WITH_DQ:
            tl.store(dq_ptr + rows, tl.div_rn(1.0, qs), mask=row_ok)
        code = encode_float8(x * qs[:, None], MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
        tl.store(data_ptr + base + cols[None, :], code, mask=mask)
        return
    amax = row_amax_bits(x_ptr, base, row_ok, K, BLOCK_R, BLOCK_K, IS_BF16)
    qs = float8_quant_scale(amax, MAX, POW2)
    tl.store(qs_ptr + rows, qs, mask=row_ok)
    if WITH_DQ:
        tl.store(dq_ptr + rows, tl.div_rn(1.0, qs), mask=row_ok)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = widen_to_fp32(tl.load(x_ptr + base + cols[None, :], mask=mask, other=0), IS_BF16)
        code = encode_float8(x * qs[:, None], MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
        tl.store(data_ptr + base + cols[None, :], code, mask=mask)


@triton.jit
def _float8_tiles_kernel(x_ptr, R, C, amax_ptr, qs_ptr, dq_ptr, data_ptr,
                         row_amax_ptr, row_qs_ptr, row_dq_ptr, row_data_ptr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                         TENSORWISE: tl.constexpr, TRANSPOSED: tl.constexpr,
                         DUAL: tl.constexpr, ROW_COPY: tl.constexpr, WITH_DQ: tl.constexpr,
                         POW2: tl.constexpr, TMA: tl.constexpr, T_FROM_X: tl.constexpr,
                         MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                         FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr,
                         EXACT_SOFT_CAST: tl.constexpr, IS_BF16: tl.constexpr):
    """Cast pass over a (BLOCK_R, BLOCK_C) tile of row-major x (R, C), amax already known.
    TENSORWISE: one scale (amax_ptr[0]); else one scale per column (amax_ptr[c]). Data written
    (R, C) or, TRANSPOSED, (C, R) row-major. DUAL adds the row-scaled copy (row_amax_ptr[r])
    written (R, C): one read of x feeds both outputs. ROW_COPY (TENSORWISE and TRANSPOSED):
    the same codes are also written (R, C) to row_data_ptr, so one pass gives x and x.T.
    WITH_DQ: each scale's dequant factor 1 / quant_scale goes to dq_ptr (row_dq_ptr for DUAL's
    row scales), rounded as torch.reciprocal rounds (IEEE division), so the product needs no
    reciprocal kernel per operand. TMA (TRANSPOSED, not ROW_COPY): data_ptr is a tensor
    descriptor of (C, R) with a (BLOCK_C, BLOCK_R) box, and DUAL's row_data_ptr one of (R, C)
    with a (BLOCK_R, BLOCK_C) box; the code tiles leave by TMA bulk stores (the copy engine
    clips the edge tiles). T_FROM_X (TRANSPOSED, not TMA): x.T's codes are encoded from the
    loaded tile transposed (tl.trans of the 16- or 32-bit x), not from the codes of x, so the
    tile crosses shared memory before the encode, in x's width (the same bits)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < R
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x_raw = tl.load(x_ptr + offs, mask=mask, other=0)
    x = widen_to_fp32(x_raw, IS_BF16)
    if T_FROM_X:
        x_t = widen_to_fp32(tl.trans(x_raw), IS_BF16)         # (BLOCK_C, BLOCK_R)
    if TENSORWISE:
        # the sign bit cleared here, not by the caller: a given amax (a float the caller
        # computed) is read as |amax| without a torch abs kernel (a launch per cast)
        qs = float8_quant_scale(tl.load(amax_ptr) & 0x7FFFFFFF, MAX, POW2)
        if (pid_r == 0) & (pid_c == 0):
            tl.store(qs_ptr, qs)
            if WITH_DQ:
                tl.store(dq_ptr, tl.div_rn(1.0, qs))
        if T_FROM_X:
            code_t = encode_float8(x_t * qs, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
        if ROW_COPY or not T_FROM_X:
            code = encode_float8(x * qs, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    else:
        qs = float8_quant_scale(tl.load(amax_ptr + cols, mask=col_ok, other=0), MAX, POW2)
        if pid_r == 0:
            tl.store(qs_ptr + cols, qs, mask=col_ok)
            if WITH_DQ:
                tl.store(dq_ptr + cols, tl.div_rn(1.0, qs), mask=col_ok)
        if T_FROM_X:
            code_t = encode_float8(x_t * qs[:, None], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                                   EXACT_SOFT_CAST)
        else:
            code = encode_float8(x * qs[None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                                 EXACT_SOFT_CAST)
    if T_FROM_X:
        tl.store(data_ptr + cols[:, None].to(tl.int64) * R + rows[None, :], code_t,
                 mask=col_ok[:, None] & row_ok[None, :])
    elif TMA:
        data_ptr.store([pid_c * BLOCK_C, pid_r * BLOCK_R], tl.trans(code))
    elif TRANSPOSED:    # element-wise transposed store (measured faster on the H200 than
        # a tl.trans'd tile store: 143 us vs 210 us for an 8192^2 columnwise cast; for the
        # dual cast at 8192^2 and 8192x14336 within 2%, 2026-12-02-s15-dual-tile-variants-h200.log)
        offs_t = cols[None, :].to(tl.int64) * R + rows[:, None]
        tl.store(data_ptr + offs_t, code, mask=mask)
    else:
        tl.store(data_ptr + offs, code, mask=mask)
    if ROW_COPY:
        tl.store(row_data_ptr + offs, code, mask=mask)
    if DUAL:
        row_qs = float8_quant_scale(tl.load(row_amax_ptr + rows, mask=row_ok, other=0), MAX, POW2)
        if pid_c == 0:
            tl.store(row_qs_ptr + rows, row_qs, mask=row_ok)
            if WITH_DQ:
                tl.store(row_dq_ptr + rows, tl.div_rn(1.0, row_qs), mask=row_ok)
        code = encode_float8(x * row_qs[:, None], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                             EXACT_SOFT_CAST)
        if TMA:
            row_data_ptr.store([pid_r * BLOCK_R, pid_c * BLOCK_C], code)
        else:
            tl.store(row_data_ptr + offs, code, mask=mask)


# (BLOCK_R, BLOCK_C) of the tile cast pass, and of its passes that write x.T alone (TRANSPOSED):
# each output row of x.T is BLOCK_R bytes long per tile. Module settings so that
# gpu_fast_check can time other tiles; (32, 128) for both is what ran on the H200 so far.
TILE = (32, 128)
TILE_WARPS = 4
TILE_T = (32, 128)
# Warps of the passes that write x.T alone: a module setting, timed by
# benchmarks/transposed_cast_variants.py (2 warps with a (64, 128) tile: -4 to -5% at 8192^2
# and 8192x14336 but 95 against 26 us at 1000x3000, 2026-12-02; 4 stays).
TILE_T_WARPS = 4
# The passes that write two payloads, x.T and x: the dual cast (column scales for x.T, row
# scales for x) and the tensorwise cast into both layouts (ROW_COPY). With T_FROM_X they encode
# x.T from the loaded tile transposed (tl.trans of the 16-bit x: on sm_90 Triton moves it
# through shared memory with 128-bit stores and ldmatrix), not from x's byte codes (32 byte-wide
# shared-memory stores per thread; SASS of an offline sm_90 compile). H200, 2026-12-03, same
# bits, amax pass included, one call each (2026-12-03-s19-t-from-x-h200.log and
# 2026-12-03-s19-t-from-x-controls-gates-h200.log, which times both encodes at each tile):
# - both layouts: the (64, 128) tile is the gain, from either encode: 123.3 -> 113.6 us at
#   8192^2, 206.2 -> 188.9 at 8192x14336, 67.5 -> 61.3 at 8192x4096 (call 4); the encode from
#   x matters on ragged shapes (1000x3000 at (64, 128): 18.3 us from x, 24.7 from codes).
# - dual at (32, 64), 2 warps: from x 128.6 against 132.2 from codes and 133.0 for the former
#   (32, 128, 4 warps, from codes) at 8192^2; 73.8 / 75.3 / 76.4 at 8192x4096 (call 5).
T_FROM_X = True
TILE_DUAL, TILE_DUAL_WARPS = (32, 64), 2
TILE_BOTH, TILE_BOTH_WARPS = (64, 128), 4
# The passes that write x.T alone (tensorwise or columnwise x.T, the dual cast) may store their
# code tiles by TMA (tensor descriptors; fast.common.tma_store_ok). Not ROW_COPY: the same
# codes stored by TMA in both layouts gave wrong bits on the H200 (2026-12-03, the pattern of
# triton-lang/triton#11111). Off: TMA was slower at every tile timed on the H200 (2026-12-03,
# benchmarks/transposed_cast_variants.py): dual 132.5 us shipped against 135.5 at best (32x32,
# 1 warp; 150.9 at 2-8 warps), tensorwise x.T 90.0 against 102.2 (64x32, 1 warp) at 8192^2.
TMA_STORE = False
# x.T is stored one code per element: packing 4 rows' codes into 32-bit stores measured
# 1.9-2.3x slower on the H200 (2026-12-01: 8192^2 tensorwise.T 270 us against 139 us) and was
# removed.


def _tile_setting(transposed, dual, row_copy):
    """((BLOCK_R, BLOCK_C), warps) of a tile pass."""
    if dual:
        return TILE_DUAL, TILE_DUAL_WARPS
    if row_copy:
        return TILE_BOTH, TILE_BOTH_WARPS
    if transposed:
        return TILE_T, TILE_T_WARPS
    return TILE, TILE_WARPS


def _launch_tiles(x2d, fmt, pow2, tensorwise, transposed=False, dual=False, amax=None,
                  row_copy=False, with_dequant=False):
    """(data, qs, row_data, row_qs, dq, row_dq): dq and row_dq (the dequant factors of qs and
    row_qs) with_dequant only, else None."""
    R, C = x2d.shape
    dev = x2d.device
    if amax is None:
        t_bits, r_bits, c_bits = amax_bits_2d(x2d, tensor=tensorwise, rows=dual,
                                              cols=not tensorwise)
    else:                      # tensorwise, amax given by the caller: no amax pass
        t_bits, r_bits, c_bits = _amax_as_bits(amax, x2d), None, None
    (tile_r, tile_c), warps = _tile_setting(transposed, dual, row_copy)
    block_r, block_c = tile_r, pow2_at_most(C, tile_c)
    dtype = TORCH_FLOAT8[fmt]
    data = torch.empty((C, R) if transposed else (R, C), dtype=dtype, device=dev)
    qs = torch.empty(1 if tensorwise else C, dtype=torch.float32, device=dev)
    row_data = torch.empty((R, C), dtype=dtype, device=dev) if (dual or row_copy) else data
    row_qs = torch.empty(R, dtype=torch.float32, device=dev) if dual else qs
    dq = torch.empty_like(qs) if with_dequant else None
    row_dq = torch.empty_like(row_qs) if (with_dequant and dual) else None
    grid = (cdiv(R, block_r), cdiv(C, block_c))
    x_in, is_bf16 = kernel_input(x2d)
    out, row_out = data.view(torch.uint8), row_data.view(torch.uint8)
    tma = TMA_STORE and transposed and not row_copy and tma_store_ok(dev, R, C)
    if tma:
        out = TensorDescriptor.from_tensor(out, [block_c, block_r])
        if dual:
            row_out = TensorDescriptor.from_tensor(row_out, [block_r, block_c])
    _float8_tiles_kernel[grid](
        x_in, R, C, t_bits if tensorwise else c_bits, qs, qs if dq is None else dq,
        out, r_bits if dual else qs, row_qs, row_qs if row_dq is None else row_dq, row_out,
        BLOCK_R=block_r, BLOCK_C=block_c, TENSORWISE=tensorwise, TRANSPOSED=transposed,
        DUAL=dual, ROW_COPY=row_copy, WITH_DQ=with_dequant, POW2=pow2, TMA=tma,
        T_FROM_X=T_FROM_X and (dual or row_copy) and not tma,
        **float8_params(fmt), EXACT_SOFT_CAST=use_soft_cast(_float8_tiles_kernel, fmt, dev),
        IS_BF16=is_bf16, num_warps=warps)
    return data, qs, row_data, row_qs, dq, row_dq


def quantize_float8_tensorwise(x, fmt, pow2_scale=False, transposed=False, amax=None,
                               with_dequant=False):
    """F8-7 tensorwise: (data like x, quant_scale shape ()). Two passes: amax, then cast.
    transposed=True (2-D x only): data is x.T row-major, written by the cast pass itself.
    amax: the caller's F8-1 amax of x (max |x|, NaN when any element is NaN), one fp32 element
    on x's device; then only the cast pass runs. The bits are the same as without it when
    amax is that max (torch.compile computes it with a reduction it can fuse into x's
    producer); they are not checked against x, which would cost the pass it saves.
    with_dequant: also the product's dequant factor 1 / quant_scale (shape (1,), the bits of
    torch.reciprocal), which the cast kernel writes."""
    _check(x, fmt, _float8_tiles_kernel)
    if transposed:
        if x.dim() != 2:
            raise ValueError(f"{LAYER}: transposed tensorwise cast needs 2-D x, got "
                             f"{tuple(x.shape)}")
        data, qs, _, _, dq, _ = _launch_tiles(x, fmt, pow2_scale, tensorwise=True,
                                              transposed=True, amax=amax,
                                              with_dequant=with_dequant)
    else:
        data, qs, _, _, dq, _ = _launch_tiles(flat_2d(x), fmt, pow2_scale, tensorwise=True,
                                              amax=amax, with_dequant=with_dequant)
        data = data.view(x.shape)
    return (data, qs.reshape(()), dq) if with_dequant else (data, qs.reshape(()))


def quantize_float8_tensorwise_both(x, fmt, pow2_scale=False, amax=None, with_dequant=False):
    """F8-7 tensorwise of 2-D x in both layouts from one amax pass and one cast pass:
    (data (R, C), data_t (C, R) = data.T row-major, quant_scale shape ()). For an operand that
    one product reads along each axis (tensorwise x and g): no transposed copy of the payload
    afterwards. amax as in quantize_float8_tensorwise. with_dequant: also 1 / quant_scale, as
    there."""
    _check(x, fmt, _float8_tiles_kernel)
    if x.dim() != 2:
        raise ValueError(f"{LAYER}: tensorwise cast into both layouts needs 2-D x, got "
                         f"{tuple(x.shape)}")
    if not _row_copy_ok(x):
        if x.dtype not in _ROW_COPY_LOGGED:
            _ROW_COPY_LOGGED.add(x.dtype)
            log.info("%s: tensorwise both layouts of %s x on CUDA with Triton %s: the cast "
                     "writes x, the tiled copy writes x.T (the one-pass kernel is verified for "
                     "%s x on Triton %s only; triton-lang/triton#11111)", LAYER, x.dtype,
                     triton.__version__, [str(d) for d in ROW_COPY_CUDA_DTYPES],
                     ", ".join(ROW_COPY_TRITON))
        data, qs, _, _, dq, _ = _launch_tiles(x, fmt, pow2_scale, tensorwise=True, amax=amax,
                                              with_dequant=with_dequant)
        data_t = transposed_copy(data)
    else:
        data_t, qs, data, _, dq, _ = _launch_tiles(x, fmt, pow2_scale, tensorwise=True,
                                                   transposed=True, amax=amax, row_copy=True,
                                                   with_dequant=with_dequant)
    qs = qs.reshape(())
    return (data, data_t, qs, dq) if with_dequant else (data, data_t, qs)


# Where the ROW_COPY cast (x.T and x written by one pass) runs on CUDA: x dtypes and Triton
# versions whose bits were checked on the H200. fp32 x gave wrong x.T codes on Triton 3.6
# (seventh session: about half of x.T's bytes differed at (256, 512), (256, 384) and
# (8192, 4096); x's own bytes and every bf16 case exact; the interpreter exact for both). A
# barrier between the two stores, or x stored first, did not cure it (eighth session,
# 2026-12-01-s8-row-copy-fp32-h200.log). The kernels compiled for sm_90 on a CPU show why
# bf16 escapes: Triton 3.6 converts the bf16 x to the second layout and encodes it twice,
# while for fp32 it stores the same 8-bit codes once directly and once through a layout
# conversion. That is the pattern of triton-lang/triton#11111 (float8 codes stored in two
# layouts, the converted store corrupted on Hopper; reported as a bug of the bundled ptxas
# 12.9). Triton 3.9 converts the 8-bit codes for bf16 too, so other Triton versions are not
# trusted until checked. Elsewhere the cast plus the tiled transpose run: the same bits, one
# more pass over the 1-byte payload. With T_FROM_X (x.T encoded from the transposed 16-bit
# tile, nineteenth session) fp32 still gives wrong x.T codes on the H200: about half of the x.T
# bytes of (256, 512), (256, 384), (8192, 4096) and (8192, 8192) differed, e4m3 and e5m2 alike;
# (1000, 3000) and (40, 130) were exact
# (twentieth session, 2026-12-03-s20-mx-values-tiles-gluon-tw-group-rowcopy-h200.log).
ROW_COPY_CUDA_DTYPES = (torch.bfloat16,)
ROW_COPY_TRITON = ("3.6.",)
_ROW_COPY_LOGGED = set()


def row_copy_verified(dtype, triton_version):
    """Whether the one-pass both-layouts kernel's bits are checked on a GPU for x of `dtype`
    compiled by Triton `triton_version` (ROW_COPY_CUDA_DTYPES, ROW_COPY_TRITON)."""
    return dtype in ROW_COPY_CUDA_DTYPES and triton_version.startswith(ROW_COPY_TRITON)


def _row_copy_ok(x):
    return not x.is_cuda or row_copy_verified(x.dtype, triton.__version__)


def _amax_as_bits(amax, x):
    """The given tensorwise amax as fp32 int32 bits (the amax pass's buffer layout); the
    kernel clears the sign bit."""
    if not isinstance(amax, torch.Tensor) or amax.numel() != 1 or not amax.is_floating_point():
        raise ValueError(f"{LAYER}: amax must be a one-element float tensor (max |x|), got "
                         f"{type(amax).__name__} {getattr(amax, 'shape', '')} "
                         f"{getattr(amax, 'dtype', '')}")
    if amax.device != x.device:
        raise ValueError(f"{LAYER}: amax is on {amax.device}, x on {x.device}")
    return amax.reshape(1).to(torch.float32).view(torch.int32)


def quantize_float8_rowwise(x, fmt, pow2_scale=False, with_dequant=False):
    """F8-7 axiswise along the last axis: (data like x, quant_scale x.shape[:-1] + (1,)), and
    with_dequant the dequant factors 1 / quant_scale (same shape, torch.reciprocal's bits)
    written by the kernel."""
    _check(x, fmt, _float8_rowwise_kernel)
    if x.dim() < 1:
        raise ValueError(f"{LAYER}: rowwise cast needs at least 1 dim, got shape {tuple(x.shape)}")
    K = x.shape[-1]
    R = x.numel() // K
    data = torch.empty(x.shape, dtype=TORCH_FLOAT8[fmt], device=x.device)
    qs = torch.empty(x.shape[:-1] + (1,), dtype=torch.float32, device=x.device)
    dq = torch.empty_like(qs) if with_dequant else None
    block_r, block_k, warps = rowwise_tile(R, K, _float8_rowwise_kernel)
    x_in, is_bf16 = kernel_input(x)
    _float8_rowwise_kernel[(cdiv(R, block_r),)](
        x_in, data.view(torch.uint8), qs, qs if dq is None else dq, R, K, BLOCK_R=block_r,
        BLOCK_K=block_k, POW2=pow2_scale, WITH_DQ=with_dequant, **float8_params(fmt),
        EXACT_SOFT_CAST=use_soft_cast(_float8_rowwise_kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=warps)
    return (data, qs, dq) if with_dequant else (data, qs)


def quantize_float8_columnwise(x, fmt, pow2_scale=False, transposed=False, with_dequant=False):
    """F8-7 axiswise along axis 0 of x viewed (L, C): quant_scale (1,) + x.shape[1:].
    transposed=True (2-D x only) writes data as the row-major (C, L) NT operand x.T, its
    quant_scale (C, 1). with_dequant: also the dequant factors 1 / quant_scale (same shape,
    torch.reciprocal's bits) written by the kernel."""
    _check(x, fmt, _float8_tiles_kernel)
    if transposed and x.dim() != 2:
        raise ValueError(f"{LAYER}: transposed columnwise cast needs 2-D x, got {tuple(x.shape)}")
    x2d = x.reshape(x.shape[0], -1)
    data, qs, _, _, dq, _ = _launch_tiles(x2d, fmt, pow2_scale, tensorwise=False,
                                          transposed=transposed, with_dequant=with_dequant)
    scale_shape = (-1, 1) if transposed else (1,) + tuple(x.shape[1:])
    out = (data if transposed else data.view(x.shape), qs.view(scale_shape))
    return out + (dq.view(scale_shape),) if with_dequant else out


def quantize_float8_dual(x, fmt, pow2_scale=False, with_dequant=False):
    """Row- and column-scaled copies of 2-D x (M, K) from the same two passes over x:
    (data (M,K), quant_scale (M,1)) along axis -1 and (data_t (K,M), quant_scale_t (K,1)) along
    axis 0, written transposed so it is the row-major NT operand x.T (RC rowwise recipe).
    data_t == quantize_float8(x, axis=0).data.T and quant_scale_t == its quant_scale.T.
    with_dequant: then also (dequant (M,1), dequant_t (K,1)), 1 / each quant scale as
    torch.reciprocal rounds it, written by the kernel."""
    _check(x, fmt, _float8_tiles_kernel)
    if x.dim() != 2:
        raise ValueError(f"{LAYER}: dual cast needs 2-D x (M, K), got shape {tuple(x.shape)}")
    data_t, qs_t, data, qs, dq_t, dq = _launch_tiles(x, fmt, pow2_scale, tensorwise=False,
                                                     transposed=True, dual=True,
                                                     with_dequant=with_dequant)
    out = (data, qs.view(-1, 1), data_t, qs_t.view(-1, 1))
    return out + (dq.view(-1, 1), dq_t.view(-1, 1)) if with_dequant else out


def quantize_float8(x, fmt, axis=None, pow2_scale=False):
    """Brief interface: axis None (tensorwise), the last axis, or axis 0."""
    if axis is None:
        return quantize_float8_tensorwise(x, fmt, pow2_scale)
    axis = normalize_axis(axis, x.dim(), LAYER, x.shape)
    if axis == x.dim() - 1:
        return quantize_float8_rowwise(x, fmt, pow2_scale)
    if axis == 0:
        return quantize_float8_columnwise(x, fmt, pow2_scale)
    raise ValueError(f"{LAYER}: axis {axis} of shape {tuple(x.shape)} not supported; use axis "
                     f"None, 0 or -1 (move the axis first with .movedim(axis, -1).contiguous())")


def _check(x, fmt, kernel):
    check_input(x, LAYER)
    check_format(fmt, LAYER)
    check_device(kernel, x, LAYER)
