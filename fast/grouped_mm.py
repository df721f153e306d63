"""Grouped products for MoE layers, spec/06 MM-5 and spec/07 RC-13: the per-group float8
column casts (token groups for grad_weight, experts of a weight for grad_input; Triton) and
the grouped product routing.

Products (`scaled_grouped_mm`), all NT (MM-1):
- float8_e4m3fn 2d x 3d with per-row / per-expert factors, bf16 out, fast accumulation allowed
  (RC-3: the forward; RC-15: grad_input too, by default for grouped products), on sm90
  exactly: the Triton kernel of fast/grouped_mm_sm90.py (205 us against torch's 237 on the
  MoE forward shape; QTRAIN_FAST_GROUPED_GEMM: auto, the default; triton, also the promoted
  products; torch, never).
- otherwise float8 with per-row / per-group factors, bf16 out, on sm90+: torch._scaled_grouped_mm
  (use_fast_accum where the caller says RC-3 / RC-15 allow it, on sm90, where it was checked).
  Its layout facts: 2d x 3d takes A (M, K) row-major and B (E, K, N) column-major, which is
  `b.transpose(-2, -1)` of our row-major (E, N, K) payload (no copy); fp32 scales A (M,) and
  B (E, N); 2d x 2d takes A (M, T) row-major, B (T, N) column-major (= our (N, T) payload
  transposed) and scales (E*M,), (E*N,); offs int32 cumulative ends; out bf16 only. Only the
  2d x 2d form needs aligned groups (each group's first column on a 16-byte TMA address, so
  a multiple of 16 fp8 columns): the grouped layer's grad_weight cast writes that padded
  layout and says so (group_align=16); any other caller's operands are padded here by a
  device-side gather (no host sync). 2d x 3d groups (along M) may start anywhere: checked
  against the reference on the H200 with groups of 37, 0, 153 and 100 rows. Regions the
  kernel leaves unwritten (rows past offs[-1], empty groups) are zeroed by one small launch.
- anything else (MX factors, fp32 out, CPU/interpreter, older GPUs): EMULATED. The payloads
  are dequantized exactly (float8 code times a power-of-two factor is exact in fp32; with
  non-power-of-two factors this is MM-3's one fp32 rounding of the factor product), by one
  Triton pass per operand (fast/block_dequant.py: exact decode, fp32 product, one rounding
  to the operand dtype), and run through torch._grouped_mm with fp32 accumulation. For
  mxfp8 this is the only path here: real MX grouped kernels (torch._scaled_grouped_mm with
  e8m0 block scales) are Blackwell-only (sm100) today. On CUDA the dequantized operands are
  bf16 when out is bf16 and the caller promises power-of-two factors, as the grouped layer
  does (exact unless a value falls below bf16's 2^-133, i.e. an MX block amax under
  ~2^-117); fp32 otherwise.
"""
import functools
import logging
import os

import torch
import triton
import triton.language as tl

from qtrain.grouping import (gather_rows, group_bounds, pad_index, padded_offsets, padded_rows,
                             rows_in_groups)
from .common import (TORCH_FLOAT8, cdiv, check_device, check_format, check_input,
                     device_capability, float8_params, is_interpreted, kernel_input,
                     next_pow2, pow2_at_most, use_soft_cast)
from .amax import program_budget
from . import grouped_mm_sm90 as sm90
from .block_dequant import exact_values
from .encode import abs_bits, encode_float8, float8_quant_scale, widen_to_fp32

LAYER = "qtrain.fast.grouped_mm"
log = logging.getLogger("qtrain")
FLOAT8_ALIGN = 16
# which kernels run the rowwise float8 products on sm90 (see _sm90_triton_ok): auto | triton | torch
GROUPED_GEMM_ENV = "QTRAIN_FAST_GROUPED_GEMM"
GROUPED_GEMM = os.environ.get(GROUPED_GEMM_ENV, "auto")
if GROUPED_GEMM not in ("auto", "triton", "torch"):
    raise ValueError(f"{LAYER}: {GROUPED_GEMM_ENV}={GROUPED_GEMM!r} is not one of 'auto', "
                     f"'triton', 'torch'")


@triton.jit
def _float8_group_cols_t_kernel(x_ptr, offs_ptr, pends_ptr, data_t_ptr, qs_ptr, dq_ptr, C,
                                N_GROUPS, N_COL_TILES, GROUP_ROWS, G_STRIDE, C_STRIDE,
                                FROM_OFFS: tl.constexpr, ALIGN: tl.constexpr,
                                BLOCK_R: tl.constexpr,
                                AMAX_BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                                STAGES: tl.constexpr, T_FROM_X: tl.constexpr,
                                WITH_DQ: tl.constexpr, POW2: tl.constexpr, MAX: tl.constexpr,
                                MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                                TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                                IS_BF16: tl.constexpr):
    """Work item (g, column tile), items g * N_COL_TILES + t taken by program_id(0),
    program_id(0) + num_programs(0), ... (one item per program when the grid is every item):
    rows [start, end) of group g of row-major x (M, C); the groups come from offs and the
    padded starts from pends (FROM_OFFS), or are GROUP_ROWS rows each with no padding (the
    experts of a weight (E, N, K) seen as (E*N, K)).
    Loop 1 (AMAX_BLOCK_R rows a tile): column amax over the group's rows only (integer max of
    |x| bits, NaN on top, F8-1); qs = F8-2/F8-3/F8-5 per column. Loop 2 (BLOCK_R rows a tile):
    data = rne(clamp(x * qs)) (F8-4), stored transposed at
    data_t[g * G_STRIDE + c * C_STRIDE + pstart + (r - start)]: (C, Mp) for token groups
    (G_STRIDE 0, C_STRIDE Mp, padding columns written as zeros), (E, C, GROUP_ROWS) for
    experts. WITH_DQ: the dequant factors 1 / qs to dq_ptr, laid out like qs (torch.reciprocal's
    rounding), so the product needs no reciprocal kernel. The tiles and the grid change the
    order of reads only: the max is order-free, so the bits are the same for any of them.
    T_FROM_X: loop 2 transposes the loaded 16- or 32-bit tile and encodes it in x.T's
    orientation, instead of transposing the byte codes (same bits)."""
    for item in range(tl.program_id(0), N_GROUPS * N_COL_TILES, tl.num_programs(0)):
        g = item // N_COL_TILES
        cols = (item % N_COL_TILES) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        if FROM_OFFS:
            end = tl.load(offs_ptr + g)
            start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
            pstart = tl.load(pends_ptr + g - 1, mask=g > 0, other=0)
            pend = tl.load(pends_ptr + g)
            pend = tl.where(g == N_GROUPS - 1, C_STRIDE, pend)   # last: up to Mp
        else:
            start = g * GROUP_ROWS
            end = start + GROUP_ROWS
            pstart = 0
            pend = GROUP_ROWS
        # element-wise max over the group's tiles, one reduction along axis 0 at the end (it
        # crosses warps; per tile it halved the amax pass's bandwidth, fast/amax.py)
        acc = tl.zeros((AMAX_BLOCK_R, BLOCK_C), dtype=tl.int32)
        for r0 in tl.range(start, end, AMAX_BLOCK_R, num_stages=STAGES):
            rows = r0 + tl.arange(0, AMAX_BLOCK_R)
            mask = (rows < end)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask,
                        other=0)
            acc = tl.maximum(acc, abs_bits(widen_to_fp32(x, IS_BF16)))
        amax = tl.max(acc, axis=0)
        qs = float8_quant_scale(amax, MAX, POW2)          # amax 0 (empty group): F8-6 scale
        tl.store(qs_ptr + g * C + cols, qs, mask=col_ok)
        if WITH_DQ:
            tl.store(dq_ptr + g * C + cols, tl.div_rn(1.0, qs), mask=col_ok)
        # loop 2 also writes the zero padding after the group (up to the next padded start;
        # the last group up to Mp), so the output needs no memset. It counts output rows from
        # the group's padded start, a multiple of ALIGN (the padding alignment): the compiler
        # then sees aligned runs of output bytes and writes x.T with vector stores (counted
        # from `start`, a value it cannot see, Triton 3.6 wrote byte by byte)
        pstart = tl.multiple_of(pstart, ALIGN)
        n_out = tl.multiple_of(pend - pstart, ALIGN)
        base = g.to(tl.int64) * G_STRIDE + pstart
        for r0 in tl.range(0, n_out, BLOCK_R, num_stages=STAGES):
            rel = r0 + tl.arange(0, BLOCK_R)
            rows = start + rel
            mask = (rows < end)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask,
                        other=0)
            if T_FROM_X:
                # (BLOCK_C, BLOCK_R): x.T's orientation before the encode
                code = encode_float8(widen_to_fp32(tl.trans(x), IS_BF16) * qs[:, None], MAX,
                                     MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
                # padding rows are code 0 even where qs is NaN (0 * NaN would encode NaN)
                code = tl.where((rows < end)[None, :] & col_ok[:, None], code,
                                tl.zeros_like(code))
                dst = base + cols[:, None].to(tl.int64) * C_STRIDE + rel[None, :]
                keep = (rel < n_out)[None, :] & col_ok[:, None]
            else:
                code = encode_float8(widen_to_fp32(x, IS_BF16) * qs[None, :], MAX, MBITS,
                                     BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
                code = tl.where(mask, code, tl.zeros_like(code))
                dst = base + cols[None, :].to(tl.int64) * C_STRIDE + rel[:, None]
                keep = (rel < n_out)[:, None] & col_ok[None, :]
            tl.store(data_t_ptr + dst, code, mask=keep)


@triton.jit
def _padded_offsets_kernel(offs_ptr, pends_ptr, E, ALIGN: tl.constexpr, BLOCK_E: tl.constexpr):
    """qtrain.grouping.padded_offsets for a power-of-two ALIGN in one program (BLOCK_E >= E):
    each group's size offs[g] - offs[g-1] rounded up by (size + ALIGN - 1) & -ALIGN, as the
    torch ops round it (negative sizes of a malformed offs included), then the running sum."""
    idx = tl.arange(0, BLOCK_E)
    ok = idx < E
    end = tl.load(offs_ptr + idx, mask=ok, other=0)
    start = tl.load(offs_ptr + idx - 1, mask=ok & (idx > 0), other=0)
    padded = (end - start + (ALIGN - 1)) & -ALIGN
    tl.store(pends_ptr + idx, tl.cumsum(padded, 0), mask=ok)


PADDED_OFFSETS_MAX_GROUPS = 1 << 14     # one program holds every group's offset


def padded_offsets_one_launch(offs, align):
    """padded_offsets(offs, align) (int32, same values) in one launch instead of the torch ops'
    six, for the eager grouped layer (host time per launch counts there: benchmarks/NOTES.md,
    twelfth session). Power-of-two align and up to PADDED_OFFSETS_MAX_GROUPS groups on a
    device the kernels run on; anything else goes to the torch ops (same values)."""
    n = offs.shape[0]
    if (align & (align - 1) or not 0 < n <= PADDED_OFFSETS_MAX_GROUPS or offs.dim() != 1
            or offs.dtype != torch.int32
            or not (offs.device.type == "cuda" or is_interpreted(_padded_offsets_kernel))):
        return padded_offsets(offs, align)
    pends = torch.empty_like(offs)
    _padded_offsets_kernel[(1,)](offs.contiguous(), pends, n, ALIGN=align,
                                 BLOCK_E=max(16, next_pow2(n)), num_warps=4)
    return pends


# Settings of the per-group column cast, per use: BLOCK_R (loop 2's rows a tile), BLOCK_C,
# AMAX_BLOCK_R (loop 1's rows a tile), warps, and programs per SM (0: one program per
# (group, column tile) item; else about that many times the SM count, each looping over
# items). Timed as CUDA-graph replays on the H200 (benchmarks/group_cast_sweep.py, MoE shape
# E8 16384x4096 -> 2048, x (M, K) / g (M, N) / w (E, N, K); ninth session, 2026-12-01, with the
# vector stores of x.T): the 64-column tile of the experts is the fastest for w (103 us) and
# for x (104 us, 512 items: 3.9 waves of 132 SMs), but g has half x's columns, so 256 items
# (1.9 waves), and there the 32-column tile wins (58 us, against 63+ for the 64-column one;
# x with it: 114). Token groups therefore take the experts' wide tile when it gives at least
# WIDE_TILE_WAVES items per SM, else the narrow "tokens" one. The eighth session's one token
# setting (128, 32, 256, 8, 2) took 121 / 62 us. A two-pass cast (a grid-wide column-amax
# pass with atomics, then a tile cast finding each row's group) took 183 / 96 / 133 us and
# was removed. A one-read cast (eleventh session: a group's padded rows loaded once as one
# (rows, BLOCK_C) tile and held on chip for the amax and the codes; bits equal) lost at every
# shape and setting tried, best of 12 settings against these defaults: E8 x 139.0 us vs 103.8,
# g 74.3 vs 58.3, w 133.9 vs 102.8; E64 x 103.5 vs 100.4, g 57.2 vs 54.8, w 921 vs 781; E128
# x 148.2 vs 117.9, g 82.3 vs 68.1, w 1777 vs 1536: the held tile costs occupancy; it was
# removed. (The eleventh session read the loss as loop 2's second read hitting L2; with the
# amax given, the thirteenth session timed loop 2 alone at 74.5 us for x, so loop 1's read
# costs ~29 us, ~4.6 TB/s: both reads come from HBM.)
# Tiles of 128 and 256 rows (whole 128-byte lines of x.T per column; thirteenth session) did
# not beat these either: x 105.8 us for (128, 128, 128, 4, 0), g 57.1 for (128, 64, 128, 8, 0)
# against 58.4, w 103.3 against 102.6.
GROUP_CAST = {"tokens": (128, 32, 128, 4, 0), "experts": (64, 64, 64, 4, 0)}
# Software pipelining of both row loops (tl.range's num_stages: loads of later tiles issued
# while the current one is reduced or encoded); None leaves the loops as Triton builds a loop
# without a dot. Any value gives the same bits (order of reads only). Timed on the H200
# (thirteenth session, 2026-12-02, group_cast_sweep --stages / --grid-stages 3): no gain for
# token groups (x 104.0 us with None against 109.8 / 114.5 / 117.1 with 3 / 4 / 2; g 58.5
# against 67.9+; best of a 36-setting pipelined grid x 104.6, g 57.1), 4% for the experts
# (w 103.1 -> 98.9 with 3). The casts are not short of loads in flight: counting both reads
# of the bf16 input and the float8 write (5 bytes an element) they move ~3.2 TB/s, 77% of
# copy. So None. Making the second read unnecessary did not pay either: a rowwise cast that
# also folded each group's column amax, so that this cast read its input once, saved ~24 us
# of ~400 per step and was removed (numbers in benchmarks/NOTES.md, thirteenth session).
GROUP_CAST_STAGES = None
# Loop 2 encodes x.T from the transposed 16-bit tile (the kernel's T_FROM_X) instead of moving
# byte codes through shared memory (32 byte-wide shared stores per thread in its sm_90 PTX,
# Triton 3.9; the dense two-payload casts gained from the same change, NOTES nineteenth
# session). Off: timed on the H200 (twentieth session, group_cast_sweep --t-from-x, same bits)
# within noise of the default: x 111.4 against 113.5 us, g 57.8 against 58.4, w 105.8 against
# 102.8 (2026-12-03-s20-mx-values-tiles-gluon-tw-group-rowcopy-h200.log).
GROUP_CAST_T_FROM_X = False
WIDE_TILE_WAVES = 3


def _group_cast_setting(use, n_groups, c, device):
    """GROUP_CAST's setting for `use`; token groups take the experts' wider tile when its
    (group, column tile) items fill at least WIDE_TILE_WAVES waves of the GPU."""
    wide = GROUP_CAST["experts"]
    if use == "tokens" and n_groups * cdiv(c, pow2_at_most(c, wide[1])) >= (
            WIDE_TILE_WAVES * program_budget(device, 1)):
        return wide
    return GROUP_CAST[use]


def _launch_group_cols_t(x, offs, pends, data_t, qs, dq, n_groups, group_rows, g_stride,
                         c_stride, fmt, pow2_scale, use, align=1):
    """align: what the padded starts (pends) and c_stride are multiples of; its largest
    power-of-two factor is the kernel's ALIGN hint."""
    c = x.shape[-1]
    block_r, block_c, amax_block_r, warps, per_sm = _group_cast_setting(use, n_groups, c,
                                                                        x.device)
    block_c = pow2_at_most(c, block_c)
    n_col_tiles = cdiv(c, block_c)
    n_items = n_groups * n_col_tiles
    programs = n_items if not per_sm else max(1, min(n_items, program_budget(x.device, per_sm)))
    x_in, is_bf16 = kernel_input(x)
    _float8_group_cols_t_kernel[(programs,)](
        x_in, offs, pends, data_t.view(torch.uint8), qs, qs if dq is None else dq, c,
        n_groups, n_col_tiles, group_rows, g_stride, c_stride, FROM_OFFS=offs is not None,
        ALIGN=align & -align, BLOCK_R=block_r, AMAX_BLOCK_R=amax_block_r, BLOCK_C=block_c,
        STAGES=GROUP_CAST_STAGES, T_FROM_X=GROUP_CAST_T_FROM_X, WITH_DQ=dq is not None,
        POW2=pow2_scale, **float8_params(fmt),
        EXACT_SOFT_CAST=use_soft_cast(_float8_group_cols_t_kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=warps)


def quantize_float8_grouped_t(x, offs, align, fmt, pow2_scale=False, padded_offs=None,
                              with_dequant=False):
    """Backend interface (qtrain/grouped_ops.py): x (M, C) along axis 0 within each group ->
    (data_t (C, Mp) in the padded layout, quant_scale fp32 (E, C)). One launch, no host sync.
    with_dequant: also the dequant factors 1 / quant_scale (E, C), written by the kernel."""
    check_format(fmt, LAYER)
    check_input(x, LAYER)
    check_device(_float8_group_cols_t_kernel, x, LAYER)
    if x.dim() != 2 or offs.dtype != torch.int32 or offs.dim() != 1:
        raise ValueError(f"{LAYER}: x must be 2-D and offs int32 1-D, got x {tuple(x.shape)}, "
                         f"offs {tuple(offs.shape)} {offs.dtype}")
    (m, c), n_groups = x.shape, offs.shape[0]
    mp = padded_rows(m, n_groups, align)
    offs = offs.contiguous()
    pends = padded_offsets_one_launch(offs, align) if padded_offs is None else padded_offs
    qs = torch.empty((n_groups, c), dtype=torch.float32, device=x.device)
    dq = torch.empty_like(qs) if with_dequant else None
    if n_groups == 0:
        data_t = torch.zeros((c, mp), dtype=TORCH_FLOAT8[fmt], device=x.device)
    else:
        data_t = torch.empty((c, mp), dtype=TORCH_FLOAT8[fmt], device=x.device)
        _launch_group_cols_t(x, offs, pends, data_t, qs, dq, n_groups, 0, 0, mp, fmt,
                             pow2_scale, "tokens", align=int(align))
    return (data_t, qs, dq) if with_dequant else (data_t, qs)


def quantize_float8_experts_t(w, fmt, pow2_scale=False, with_dequant=False):
    """Backend interface (qtrain/grouped_ops.py): w (E, N, K) along N within each expert ->
    (data (E, K, N) row-major, quant_scale fp32 (E, K)), i.e. every w[e].T quantized rowwise,
    written straight from w (no transpose copy). One launch. with_dequant: also the dequant
    factors 1 / quant_scale (E, K), written by the kernel."""
    check_format(fmt, LAYER)
    check_input(w, LAYER)
    check_device(_float8_group_cols_t_kernel, w, LAYER)
    if w.dim() != 3:
        raise ValueError(f"{LAYER}: expert weights must be (E, N, K), got {tuple(w.shape)}")
    e, n, k = w.shape
    data = torch.empty((e, k, n), dtype=TORCH_FLOAT8[fmt], device=w.device)
    qs = torch.empty((e, k), dtype=torch.float32, device=w.device)
    dq = torch.empty_like(qs) if with_dequant else None
    _launch_group_cols_t(w.reshape(e * n, k), None, None, data, qs, dq, e, n, k * n, n, fmt,
                         pow2_scale, "experts")
    return (data, qs, dq) if with_dequant else (data, qs)


# ---- products ------------------------------------------------------------------------------
def _per_group_2d2d(d, shape, offs):
    """Per-group factors (E, R, 1) -> element-wise (R, T): column t of group g uses d[g]."""
    t = torch.arange(shape[1], device=d.device)
    g = torch.searchsorted(offs.to(torch.int64), t, right=True).clamp(max=d.shape[0] - 1)
    return d[:, :, 0].float().t().index_select(1, g)


def _dequant(p, d, offs, dtype):
    """Exact values of payload p with factors d, in `dtype` (see the module docstring)."""
    if p.dim() == 2 and d.dim() == 3:
        return (p.float() * _per_group_2d2d(d, p.shape, offs)).to(dtype)
    return exact_values(p, d, dtype)      # (E, N, K) with (E, N/br, K/bc), or 2-D (R/br, C/bc)


def _rowwise_2d3d(a, da, b, db):
    m, n = a.shape[0], b.shape[1]
    return (da.dim() == 2 and da.shape == (m, 1) and db.dim() == 3
            and db.shape == (b.shape[0], n, 1))


def _rowwise_2d2d(a, da, b, db, n_groups):
    return (da.dim() == 3 and da.shape == (n_groups, a.shape[0], 1)
            and db.dim() == 3 and db.shape == (n_groups, b.shape[0], 1))


def _torch_scaled_ok(a, b, out_dtype):
    if (a.device.type != "cuda" or out_dtype != torch.bfloat16
            or not hasattr(torch, "_scaled_grouped_mm")):
        return False
    if device_capability(a.device) < (9, 0):
        return False
    if not a.dtype == b.dtype == torch.float8_e4m3fn:
        return False
    # 2d x 3d: K and N multiples of 16; 2d x 2d: M and N (its contraction is padded if needed)
    dims = (a.shape[-1], b.shape[-2]) if b.dim() == 3 else (a.shape[0], b.shape[0])
    return all(d % 16 == 0 for d in dims)


@triton.jit
def _zero_rows_past_end_kernel(out_ptr, offs_ptr, n_groups, M, N, BLOCK_R: tl.constexpr,
                               BLOCK_N: tl.constexpr):
    """Rows r >= offs[-1] of out (M, N) set to +0; programs over earlier rows return at once."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    end = tl.load(offs_ptr + n_groups - 1, mask=n_groups > 0, other=0)
    if tl.program_id(0) * BLOCK_R + BLOCK_R <= end:
        return
    keep = (rows >= end) & (rows < M)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        mask = keep[:, None] & (cols < N)[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :],
                 tl.zeros((BLOCK_R, BLOCK_N), dtype=out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _zero_empty_groups_kernel(out_ptr, offs_ptr, SIZE, BLOCK: tl.constexpr):
    """out (E, R, C) contiguous: group g's slab set to +0 when group g is empty (offs[g] equals
    the previous end); programs of non-empty groups return at once."""
    g = tl.program_id(0)
    end = tl.load(offs_ptr + g)
    start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
    if end > start:
        return
    for i0 in range(tl.program_id(1) * BLOCK, SIZE, tl.num_programs(1) * BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        tl.store(out_ptr + g.to(tl.int64) * SIZE + idx,
                 tl.zeros((BLOCK,), dtype=out_ptr.dtype.element_ty), mask=idx < SIZE)


def _zero_outside(out, offs, is_3d):
    """MM-5: rows past offs[-1] are +0 (2d x 3d); empty groups give zeros (2d x 2d). The torch
    kernels leave those regions unwritten; one launch, no host sync, touching only them.
    (The kernels also run under the interpreter, so CI checks their indexing.)"""
    kernels_here = out.device.type == "cuda" or is_interpreted(_zero_rows_past_end_kernel)
    if out.numel() == 0 or not kernels_here or not out.is_contiguous():
        return _zero_outside_torch(out, offs, is_3d)
    if is_3d:
        m, n = out.shape
        _zero_rows_past_end_kernel[(cdiv(m, 32),)](out, offs, offs.shape[0], m, n,
                                                   BLOCK_R=32, BLOCK_N=128)
    elif offs.shape[0]:
        size = out[0].numel()
        _zero_empty_groups_kernel[(offs.shape[0], min(64, cdiv(size, 4096)))](
            out, offs, size, BLOCK=4096)
    return out


def _zero_outside_torch(out, offs, is_3d):
    """_zero_outside as whole-tensor torch.where (CPU, the interpreter, strided outputs)."""
    zero = torch.zeros((), dtype=out.dtype, device=out.device)
    if is_3d:
        return torch.where(rows_in_groups(offs, out.shape[0])[:, None], out, zero)
    _, sizes = group_bounds(offs)
    return torch.where((sizes > 0)[:, None, None], out, zero)


def _fp32(t):
    return t if t.dtype == torch.float32 else t.float()


def _pad_columns(a, b, offs, align):
    """2d x 2d operands (M, T), (N, T) grouped along the contraction T with groups that may
    start anywhere: copies in the padded layout (every group a multiple of `align` columns,
    zeros between), where the torch kernels' 16-byte TMA rule holds, and the padded offsets.
    Zero columns add nothing (MM-5); per-group factors are unchanged."""
    idx = pad_index(offs, a.shape[1], align)
    raw = torch.uint8 if a.element_size() == 1 else a.dtype
    pad = lambda t: gather_rows(t.t().view(raw), idx).view(t.dtype).t().contiguous()
    return pad(a), pad(b), padded_offsets(offs, align)


def _sm90_triton_ok(a, b, out_dtype, fast_accum):
    """Whether fast/grouped_mm_sm90.py runs this rowwise 2d x 3d product: QTRAIN_FAST_GROUPED_GEMM
    "auto" (default) on sm90 for the product with fast accumulation (where it is faster),
    "triton" also for the promoted one (and on CPU tensors under the interpreter, for the
    tests), "torch" never."""
    if GROUPED_GEMM == "torch" or (not fast_accum and GROUPED_GEMM != "triton"):
        return False
    if out_dtype != torch.bfloat16 or not a.dtype == b.dtype == torch.float8_e4m3fn:
        return False
    if not (a.is_contiguous() and b.is_contiguous()):
        return False
    if a.device.type == "cuda":
        if device_capability(a.device) != (9, 0):
            return False
    elif not (GROUPED_GEMM == "triton" and is_interpreted(sm90._grouped_2d3d_kernel)):
        return False
    if sm90.TensorDescriptor is None:
        _log_no_descriptors_once()
        return False
    # whole column tiles (b's rows of one expert never mix with the next's); TMA rows of a and
    # b start on 16-byte addresses
    return sm90.column_tile_2d3d(b.shape[1]) is not None and a.shape[1] % 16 == 0


def _fast_accum_tested(a):
    """torch._scaled_grouped_mm's use_fast_accum=True was checked (conformance, H200) on sm90
    only; elsewhere the product accumulates in fp32, which RC-3 always allows."""
    return a.device.type == "cuda" and device_capability(a.device) == (9, 0)


@functools.lru_cache(maxsize=None)
def _log_no_descriptors_once():
    log.info("%s: Triton %s has no triton.tools.tensor_descriptor; grouped float8 products run "
             "on torch._scaled_grouped_mm", LAYER, triton.__version__)


def scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype=torch.float32, group_align=1,
                      pow2_factors=False, use_fast_accum=False):
    """Backend interface (qtrain/grouped_ops.py): MM-5, routed as the module docstring says.
    group_align: the caller's promise that every group of a 2d x 2d product starts at a
    multiple of it (the grouped layer's padded layout); otherwise the operands are padded here.
    pow2_factors: the caller's promise that every factor is a power of two (see the emulated
    product). use_fast_accum: RC-3 allows this product fast accumulation (the output product)."""
    is_3d = b.dim() == 3
    n_groups = offs.shape[0]
    if (is_3d and n_groups and _rowwise_2d3d(a, a_dequant, b, b_dequant)
            and _sm90_triton_ok(a, b, out_dtype, use_fast_accum)):
        return sm90.grouped_2d3d(a, _fp32(a_dequant.reshape(-1)).contiguous(), b,
                                 _fp32(b_dequant.reshape(n_groups, -1)).contiguous(), offs,
                                 use_fast_accum)             # rows past offs[-1] zeroed too
    if _torch_scaled_ok(a, b, out_dtype) and n_groups:
        if is_3d and _rowwise_2d3d(a, a_dequant, b, b_dequant):
            # 2d x 3d: groups along M need no alignment (only K, N multiples of 16)
            out = torch._scaled_grouped_mm(a, b.transpose(-2, -1), _fp32(a_dequant.reshape(-1)),
                                           _fp32(b_dequant.reshape(n_groups, -1)), offs=offs,
                                           out_dtype=out_dtype,
                                           use_fast_accum=use_fast_accum and _fast_accum_tested(a))
            return _zero_outside(out, offs, True)
        if not is_3d and _rowwise_2d2d(a, a_dequant, b, b_dequant, n_groups):
            if group_align % FLOAT8_ALIGN:
                a, b, offs = _pad_columns(a, b, offs, FLOAT8_ALIGN)
            out = torch._scaled_grouped_mm(a, b.t(), _fp32(a_dequant.reshape(-1)),
                                           _fp32(b_dequant.reshape(-1)), offs=offs,
                                           out_dtype=out_dtype,
                                           use_fast_accum=use_fast_accum and _fast_accum_tested(a))
            return _zero_outside(out, offs, False)
    if a.dtype != torch.int8 and (_rowwise_2d3d(a, a_dequant, b, b_dequant) if is_3d
                                  else _rowwise_2d2d(a, a_dequant, b, b_dequant, n_groups)):
        _log_emulated_once(a, b, out_dtype)     # a float8 rowwise product that could not run
    return scaled_grouped_mm_emulated(a, a_dequant, b, b_dequant, offs, out_dtype, group_align,
                                      pow2_factors)


_EMULATED_LOGGED = set()


def _log_emulated_once(a, b, out_dtype):
    """No silent fallback: say once per (device, dtypes, out dtype) why torch._scaled_grouped_mm
    was not used (it needs CUDA sm90+, float8_e4m3fn operands, bf16 out, K/N multiples of 16)."""
    key = (a.device.type, a.dtype, b.dtype, out_dtype)
    if key not in _EMULATED_LOGGED:
        _EMULATED_LOGGED.add(key)
        log.warning("qtrain.fast.grouped_mm: float8 rowwise grouped product on %s with %s x %s -> "
                    "%s runs emulated (dequantize + torch._grouped_mm): torch._scaled_grouped_mm "
                    "needs CUDA sm90+, float8_e4m3fn operands, bfloat16 output and K, N multiples "
                    "of 16", a.device, a.dtype, b.dtype, out_dtype)


def _operand_dtype(a, out_dtype, pow2_factors):
    """The dtype the emulated product's operands are dequantized to. bf16 on CUDA when out is
    bf16 and the factors are powers of two: a float8 code times such a factor is exact in bf16
    (down to 2^-133), and torch._grouped_mm's bf16 kernel runs. Otherwise fp32, the exact
    values (MM-3's one rounding of code times factor); a torch whose CUDA _grouped_mm refuses
    fp32 gets bf16 operands with a warning (a second rounding: MM-4 may not hold under
    cancellation)."""
    if a.device.type != "cuda" or out_dtype == torch.float32:
        return torch.float32
    if pow2_factors:
        return out_dtype
    return torch.float32 if _FP32_GROUPED_OK.get(a.device.type, True) else out_dtype


_FP32_GROUPED_OK = {}      # device type -> False once torch._grouped_mm refused fp32 (logged)


def _grouped_mm_checked(a_hp, b_hp, offs, a, out_dtype):
    """torch._grouped_mm; fp32 operands on a torch that refuses them: logged once, retried in
    the output dtype."""
    try:
        return torch._grouped_mm(a_hp, b_hp, offs=offs)
    except RuntimeError as e:
        if a_hp.dtype != torch.float32 or a.device.type != "cuda" or out_dtype == torch.float32:
            raise
        _FP32_GROUPED_OK[a.device.type] = False
        log.warning("%s: torch._grouped_mm refuses float32 operands on %s (torch %s: %s); "
                    "emulated grouped products with factors not promised to be powers of two "
                    "run in %s, rounding each operand twice (MM-4 may not hold under "
                    "cancellation)", LAYER, a.device.type, torch.__version__,
                    str(e).splitlines()[0][:160], str(out_dtype)[6:])
        return torch._grouped_mm(a_hp.to(out_dtype), b_hp.to(out_dtype), offs=offs)


def scaled_grouped_mm_emulated(a, a_dequant, b, b_dequant, offs, out_dtype=torch.float32,
                               group_align=1, pow2_factors=False):
    """Dequantize exactly, then torch._grouped_mm (fp32 accumulation, one rounding). On CUDA
    a 2d x 2d product's groups are padded to 16 columns first (its 16-byte TMA rule) unless
    the caller promised that alignment."""
    dtype = _operand_dtype(a, out_dtype, pow2_factors)
    a_hp = _dequant(a, a_dequant, offs, dtype)
    b_hp = _dequant(b, b_dequant, offs, dtype)
    return _grouped_mm_of_values(a_hp, b_hp, offs, out_dtype, group_align).to(out_dtype)


def _grouped_mm_of_values(a_hp, b_hp, offs, out_dtype, group_align):
    """MM-5 of operands already in a high-precision dtype (NT form: a (M, K) with b (E, N, K),
    or a (M, T) with b (N, T) grouped along T) by torch._grouped_mm, the regions it leaves
    unwritten set to +0. On CUDA a 2d x 2d product's groups are padded to 16 columns first
    unless the caller promised that alignment."""
    if b_hp.dim() == 3:                    # A (M, K), B (E, K, N)
        out = _grouped_mm_of_views(a_hp, b_hp.transpose(-2, -1), offs, out_dtype)
    else:                                  # A (M, T), B (T, N)
        if a_hp.device.type == "cuda" and group_align % FLOAT8_ALIGN:
            a_hp, b_hp, offs = _pad_columns(a_hp, b_hp, offs, FLOAT8_ALIGN)
        out = _grouped_mm_of_views(a_hp, b_hp.t(), offs, out_dtype)
    return _zero_outside(out, offs, b_hp.dim() == 3)


_VIEWS_OK = {}             # device type -> False once torch._grouped_mm refused a view (logged)


def _grouped_mm_of_views(a, b, offs, out_dtype):
    """torch._grouped_mm(a, b) on a and b as _mm_layout gives them; if this torch refuses such
    an operand (logged once per device type), on copies in the layouts every torch takes (A
    row-major, B column-major) from then on."""
    if _VIEWS_OK.get(a.device.type, True):
        a_in, b_in = _mm_layout(a), _mm_layout(b)
        try:
            return _grouped_mm_checked(a_in, b_in, offs, a, out_dtype)
        except RuntimeError as e:
            if a_in.is_contiguous() and b_in.mT.is_contiguous():
                raise                      # already the layouts below: not a layout problem
            _VIEWS_OK[a.device.type] = False
            log.warning("%s: torch._grouped_mm refuses a transposed operand on %s (torch %s: "
                        "%s); grouped products of values copy their operands first", LAYER,
                        a.device.type, torch.__version__, str(e).splitlines()[0][:160])
    return _grouped_mm_checked(a.contiguous(), b.mT.contiguous().mT, offs, a, out_dtype)


def _mm_layout(t):
    """t as torch._grouped_mm takes a high-precision operand: row-major or column-major in its
    last two dims, the other stride a multiple of 16 bytes and the data 16-byte aligned (its
    stride rule, for either transpose); a copy only otherwise. The transposed views of NT-form
    values (w along N for grad_input, g along tokens for grad_weight) go as they are: the
    layouts torch's own _grouped_mm backward passes it (w row-major, grad_output.t())."""
    align = 16 // t.element_size()
    rows, cols = t.shape[-2], t.shape[-1]
    row_major = t.stride(-1) == 1 and t.stride(-2) >= max(cols, 1) and t.stride(-2) % align == 0
    col_major = t.stride(-2) == 1 and t.stride(-1) >= max(rows, 1) and t.stride(-1) % align == 0
    batch_ok = t.dim() == 2 or t.stride(0) % align == 0
    if (row_major or col_major) and batch_ok and t.data_ptr() % 16 == 0:
        return t
    return t.contiguous()


def mx_values_grouped_product(a, a_dequant, b, b_dequant, offs, group_align=1):
    """RC-7's emulated MX grouped product (grouped_ops.mm_mx_values_grouped): MM-5 in bf16 with
    fp32 sums (torch._grouped_mm), each operand given as its MX-10 values (dequant None: bf16,
    any strides) or as payload and block factors (dequantized exactly to bf16 first)."""
    for v, d, name in ((a, a_dequant, "a"), (b, b_dequant, "b")):
        if d is None and v.dtype != torch.bfloat16:
            raise TypeError(f"{LAYER}: mm_mx_values_grouped: {name} given as values has dtype "
                            f"{v.dtype}, expected torch.bfloat16")
    a16 = a if a_dequant is None else _dequant(a, a_dequant, offs, torch.bfloat16)
    b16 = b if b_dequant is None else _dequant(b, b_dequant, offs, torch.bfloat16)
    return _grouped_mm_of_values(a16, b16, offs, torch.bfloat16, group_align)
