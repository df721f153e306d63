"""Per-group float8 column casts (F8-7 along axis 0 within each group, RC-13) as two grid-wide
passes, the layout of fast/grouped_mm.py's one-kernel cast (GROUP_CAST_KERNEL picks):

1. column amax per group: programs own CHUNK_R rows of x and a column tile, fold the rows of
   each group that meets the chunk into one integer max of |x| bits, and atomic-max it into
   amax (G, C) (zero-initialised; NaN bits win, F8-1);
2. cast: programs own a tile of the output rows (the padded token rows, or the rows of the
   expert weights) and a column tile, find each row's group and source row, scale by that
   group's column scale (F8-2/F8-3/F8-5) and store the codes transposed (F8-4), zero codes in
   the padding. The first row of programs also writes quant_scale (G, C) and, WITH_DQ, the
   dequant factors 1 / quant_scale (torch.reciprocal's rounding).

Every program does a fixed amount of work, so the grid fills the GPU whatever the group
sizes; the one-kernel cast gives each (group, column tile) to one program, which walks the
group's rows twice in sequence.
"""
import torch
import triton
import triton.language as tl

from .common import cdiv, float8_params, kernel_input, next_pow2, pow2_at_most, use_soft_cast
from .encode import abs_bits, encode_float8, float8_quant_scale, widen_to_fp32

_NO_END = 2 ** 31 - 1


@triton.jit
def _group_of(bounds_ptr, n_groups, p, BLOCK_G: tl.constexpr):
    """Number of cumulative bounds[0:n_groups] <= p: the group holding row p (empty groups
    are skipped over), n_groups when p is past every bound."""
    gs = tl.arange(0, BLOCK_G)
    bounds = tl.load(bounds_ptr + gs, mask=gs < n_groups, other=_NO_END)
    return tl.sum((bounds <= p).to(tl.int32), axis=0)


@triton.jit
def _group_col_amax_kernel(x_ptr, offs_ptr, amax_ptr, M, C, N_GROUPS, GROUP_ROWS,
                           FROM_OFFS: tl.constexpr, CHUNK_R: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_G: tl.constexpr, IS_BF16: tl.constexpr):
    """Rows [r0, r0 + CHUNK_R) of row-major x (M, C), column tile program_id(1): for each
    group g meeting those rows (groups from offs, FROM_OFFS, else GROUP_ROWS rows each),
    amax[g, cols] = max(amax[g, cols], max |x| over the group's rows in the chunk). Rows past
    the last group are read by no one. The max is order-free: any grid, same bits. Relaxed
    atomics: the cast pass reads amax in a later launch on the same stream."""
    r0 = tl.program_id(0) * CHUNK_R
    r1 = tl.minimum(r0 + CHUNK_R, M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    if FROM_OFFS:
        g0 = _group_of(offs_ptr, N_GROUPS, r0, BLOCK_G)
        g1 = tl.minimum(_group_of(offs_ptr, N_GROUPS, r1 - 1, BLOCK_G), N_GROUPS - 1)
    else:
        g0 = r0 // GROUP_ROWS
        g1 = (r1 - 1) // GROUP_ROWS
    for g in range(g0, g1 + 1):
        if FROM_OFFS:
            start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
            end = tl.load(offs_ptr + g)
        else:
            start = g * GROUP_ROWS
            end = start + GROUP_ROWS
        lo = tl.maximum(start, r0)
        hi = tl.minimum(end, r1)
        acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
        for r in range(lo, hi, BLOCK_R):
            rows = r + tl.arange(0, BLOCK_R)
            mask = (rows < hi)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask,
                        other=0)
            acc = tl.maximum(acc, abs_bits(widen_to_fp32(x, IS_BF16)))
        if hi > lo:
            tl.atomic_max(amax_ptr + g * C + cols, tl.max(acc, axis=0), mask=col_ok,
                          sem="relaxed")


@triton.jit
def _group_cols_t_cast_kernel(x_ptr, offs_ptr, pends_ptr, amax_ptr, data_t_ptr, qs_ptr,
                              dq_ptr, P, C, N_GROUPS, GROUP_ROWS, G_STRIDE, C_STRIDE,
                              FROM_OFFS: tl.constexpr, BLOCK_R: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
                              WITH_DQ: tl.constexpr, POW2: tl.constexpr, MAX: tl.constexpr,
                              MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                              TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                              IS_BF16: tl.constexpr):
    """Output rows p of tile program_id(0) (P of them), columns of tile program_id(1).
    FROM_OFFS (token groups): p is a padded row; its group g has padded start pends[g-1] (the
    last group runs to P), its source row is offs[g-1] + (p - pends[g-1]) while that is inside
    the group (else a padding row: code 0), and its code goes to data_t[c * C_STRIDE + p],
    the (C, P) padded layout. Else (expert weights, GROUP_ROWS rows each): p is row p of x,
    its code goes to data_t[g * G_STRIDE + c * C_STRIDE + (p - g * GROUP_ROWS)], (E, C, N)."""
    pid_p = tl.program_id(0)
    p0 = pid_p * BLOCK_R
    p = p0 + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P
    col_ok = cols < C
    if FROM_OFFS:
        g0 = tl.minimum(_group_of(pends_ptr, N_GROUPS, p0, BLOCK_G), N_GROUPS - 1)
        g1 = tl.minimum(_group_of(pends_ptr, N_GROUPS, p0 + BLOCK_R - 1, BLOCK_G),
                        N_GROUPS - 1)
        gid = tl.zeros((BLOCK_R,), dtype=tl.int32) + g0
        for gg in range(g0 + 1, g1 + 1):        # a tile across group boundaries
            gid += (p >= tl.load(pends_ptr + gg - 1)).to(tl.int32)
        pstart = tl.load(pends_ptr + gid - 1, mask=gid > 0, other=0)
        start = tl.load(offs_ptr + gid - 1, mask=gid > 0, other=0)
        end = tl.load(offs_ptr + gid)
        src = start + (p - pstart)
        valid = p_ok & (src < end)
        dst = cols[None, :].to(tl.int64) * C_STRIDE + p[:, None]
    else:
        g0 = p0 // GROUP_ROWS
        g1 = tl.minimum(p0 + BLOCK_R - 1, P - 1) // GROUP_ROWS
        gid = p // GROUP_ROWS
        src = p
        valid = p_ok
        dst = (gid[:, None].to(tl.int64) * G_STRIDE + cols[None, :].to(tl.int64) * C_STRIDE
               + (p - gid * GROUP_ROWS)[:, None])
    mask = valid[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + src[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0)
    if g0 == g1:       # one group: one scale per column
        qs = float8_quant_scale(tl.load(amax_ptr + g0 * C + cols, mask=col_ok, other=0), MAX,
                                POW2)
        y = widen_to_fp32(x, IS_BF16) * qs[None, :]
    else:
        a = tl.load(amax_ptr + gid[:, None] * C + cols[None, :],
                    mask=p_ok[:, None] & col_ok[None, :], other=0)
        y = widen_to_fp32(x, IS_BF16) * float8_quant_scale(a, MAX, POW2)
    code = encode_float8(y, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    code = tl.where(mask, code, tl.zeros_like(code))    # padding: 0, even where qs is NaN
    tl.store(data_t_ptr + dst, code, mask=p_ok[:, None] & col_ok[None, :])
    if pid_p == 0:     # every group's scales (empty groups too: amax 0, the F8-6 scale)
        for g in range(0, N_GROUPS):
            qs_g = float8_quant_scale(tl.load(amax_ptr + g * C + cols, mask=col_ok, other=0),
                                      MAX, POW2)
            tl.store(qs_ptr + g * C + cols, qs_g, mask=col_ok)
            if WITH_DQ:
                tl.store(dq_ptr + g * C + cols, tl.div_rn(1.0, qs_g), mask=col_ok)


# (CHUNK_R, BLOCK_R, BLOCK_C, warps) of the amax pass, (BLOCK_R, BLOCK_C, warps) of the cast
# pass. The cast tile is the one the plain transposed casts use (cast_float8.TILE_T).
AMAX_SETTING = (256, 32, 128, 4)
CAST_SETTING = (32, 128, 4)


def group_cols_t_two_pass(x, offs, pends, data_t, qs, dq, n_groups, group_rows, g_stride,
                          c_stride, out_rows, fmt, pow2_scale):
    """x (M, C) -> data_t, qs (G, C) and dq (G, C, or None) as fast/grouped_mm.py's
    one-kernel cast writes them: token groups (offs, pends given; out_rows = the padded
    length) or experts (offs None, group_rows rows each; out_rows = M)."""
    m, c = x.shape
    from_offs = offs is not None
    block_g = next_pow2(max(n_groups, 1)) if from_offs else 1
    x_in, is_bf16 = kernel_input(x)
    amax = torch.zeros((n_groups, c), dtype=torch.int32, device=x.device)
    chunk_r, amax_r, amax_c, amax_warps = AMAX_SETTING
    amax_c = pow2_at_most(c, amax_c)
    if m:
        _group_col_amax_kernel[(cdiv(m, chunk_r), cdiv(c, amax_c))](
            x_in, offs if from_offs else amax, amax, m, c, n_groups, group_rows,
            FROM_OFFS=from_offs, CHUNK_R=chunk_r, BLOCK_R=amax_r, BLOCK_C=amax_c,
            BLOCK_G=block_g, IS_BF16=is_bf16, num_warps=amax_warps)
    cast_r, cast_c, cast_warps = CAST_SETTING
    cast_c = pow2_at_most(c, cast_c)
    _group_cols_t_cast_kernel[(max(1, cdiv(out_rows, cast_r)), cdiv(c, cast_c))](
        x_in, offs if from_offs else amax, pends if from_offs else amax, amax,
        data_t.view(torch.uint8), qs, qs if dq is None else dq, out_rows, c, n_groups,
        group_rows, g_stride, c_stride, FROM_OFFS=from_offs, BLOCK_R=cast_r, BLOCK_C=cast_c,
        BLOCK_G=block_g, WITH_DQ=dq is not None, POW2=pow2_scale, **float8_params(fmt),
        EXACT_SOFT_CAST=use_soft_cast(_group_cols_t_cast_kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=cast_warps)
