"""Per-group float8 casts for MoE layers, spec/02 F8-7 within groups and spec/07 RC-13: x or g
cast along tokens within each token group, written as data_t (C, Mp) in the padded layout that
grad_weight's 2d x 2d product reads (quantize_float8_grouped_t), and every expert's w[e].T cast
rowwise for grad_input (quantize_float8_experts_t); both by one Triton launch
(_float8_group_cols_t_kernel), no host sync. Also the padded layout of token groups: the
padded group ends (padded_offsets_one_launch) and a tensor's rows copied into it
(pad_groups_one_launch), one launch each. The products are in fast/grouped_mm.py.
"""
import torch
import triton
import triton.language as tl

from qtrain.grouping import padded_offsets, padded_rows
from .common import (TORCH_FLOAT8, cdiv, check_device, check_format, check_input,
                     float8_params, is_interpreted, kernel_input, next_pow2, pow2_at_most,
                     use_soft_cast)
from .amax import program_budget
from .encode import abs_bits, encode_float8, float8_quant_scale, widen_to_fp32

LAYER = "qtrain.fast.cast_grouped"


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


@triton.jit
def _pad_groups_kernel(x_ptr, offs_ptr, pends_ptr, out_ptr, C, MP, E, SEARCH: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Padded row p of out is row offs[g-1] + (p - pends[g-1]) of x when that lies inside group
    g (the group whose padded range [pends[g-1], pends[g]) holds p), else zeros. g counts the
    padded ends <= p: a binary search over pends in SEARCH steps (empty groups included)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo = tl.zeros((BLOCK_R,), dtype=tl.int32)
    hi = tl.zeros((BLOCK_R,), dtype=tl.int32) + E
    for _ in tl.static_range(SEARCH):
        mid = (lo + hi) // 2
        ends_le = tl.load(pends_ptr + mid, mask=mid < hi, other=0) <= rows
        go_up = (mid < hi) & ends_le
        lo = tl.where(go_up, mid + 1, lo)
        hi = tl.where(go_up | (mid >= hi), hi, mid)
    g = lo
    first = g == 0
    inside = g < E
    pstart = tl.load(pends_ptr + (g - 1), mask=inside & ~first, other=0)
    start = tl.load(offs_ptr + (g - 1), mask=inside & ~first, other=0)
    end = tl.load(offs_ptr + g, mask=inside, other=0)
    local = rows - pstart
    valid = inside & (local < end - start) & (rows < MP)
    src = (start + local).to(tl.int64)
    col_ok = cols[None, :] < C
    vals = tl.load(x_ptr + src[:, None] * C + cols[None, :], mask=valid[:, None] & col_ok,
                   other=0)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], vals,
             mask=(rows[:, None] < MP) & col_ok)


PAD_TILE = (16, 256, 4)        # padded rows, columns, warps a program (a copy: not swept)
_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _check_token_groups(x, offs, kernel):
    """x (M, C) of a dtype and on a device `kernel` runs on, offs int32 (E,) group ends."""
    check_input(x, LAYER)
    check_device(kernel, x, LAYER)
    if x.dim() != 2 or offs.dtype != torch.int32 or offs.dim() != 1:
        raise ValueError(f"{LAYER}: x must be 2-D and offs int32 1-D, got x {tuple(x.shape)}, "
                         f"offs {tuple(offs.shape)} {offs.dtype}")


def pad_groups_one_launch(x, offs, align, pends=None):
    """qtrain.grouping.pad_groups(x, offs, align)[0] (the same bits: rows copied, zeros between
    and after) in one launch on the padded ends `pends` (padded_offsets(offs, align); made here
    in one more launch when not given), instead of the torch ops' index arithmetic, concatenation
    and gather. x (M, C); the result is (padded_rows(M, E, align), C), contiguous."""
    _check_token_groups(x, offs, _pad_groups_kernel)
    (m, c), n = x.shape, offs.shape[0]
    offs = offs.contiguous()
    pends = padded_offsets_one_launch(offs, align) if pends is None else pends.contiguous()
    mp = padded_rows(m, n, align)
    out = torch.empty((mp, c), dtype=x.dtype, device=x.device)
    if out.numel():
        raw = _RAW[x.element_size()]
        block_r, block_c, warps = PAD_TILE
        _pad_groups_kernel[(cdiv(mp, block_r), cdiv(c, block_c))](
            x.contiguous().view(raw), offs, pends, out.view(raw), c, mp, n,
            SEARCH=max(1, n).bit_length(), BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    return out


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
    _check_token_groups(x, offs, _float8_group_cols_t_kernel)
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
