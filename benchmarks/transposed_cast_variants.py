"""Do the single-pass casts that write x.T lose their bandwidth in the transposed store? Times
variants of three such casts beside the shipped kernels and torch's copy, and checks that every
variant writes the shipped kernel's bits. An experiment for issue 8 (cast kernels >= 85% of
copy; on 2026-12-01 the (128, 1)-block float8 cast written as x.T ran at 63% and the MX dim-0
cast written as x.T at 59%, against ~92% for the same casts along the last axis).

    python benchmarks/transposed_cast_variants.py [--shapes 8192x8192,8192x14336]
    TRITON_INTERPRET=1 python benchmarks/transposed_cast_variants.py --check-only   # CPU: bits

Both shipped kernels hold a tile of x as loaded (rows x columns, the columns contiguous),
reduce each block along the rows, and store every code at its x.T address, so a thread's codes
land a whole row of x.T apart. The variants reduce the same way and then hand the code tile to
tl.trans before the store: the store's addresses run along the tile's contiguous axis, and
Triton moves the tile through shared memory to store it in long runs (as fast/transpose.py's
payload transpose does, at 85% of copy). Tile widths and warps are swept. The TMA variants
(seventeenth session) store the code tile through a tensor descriptor instead: the tile is
staged in shared memory and leaves as bulk copies ("mx dim0.T kernel, TMA store" is the
shipped kernel under cast_mx.DIM0_T_TMA)."""
import argparse
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import format_table, graph_replay_us, module_settings  # noqa: E402
from qtrain.fast import cast_blockwise, cast_float8, cast_mx  # noqa: E402
from qtrain.fast.amax import amax_bits_2d  # noqa: E402
from qtrain.fast.cast_mx import _mx_exponent, _mx_params, _mx_scale_block  # noqa: E402
from qtrain.fast.common import (TORCH_FLOAT8, float8_params, kernel_input,  # noqa: E402
                                use_soft_cast)
from qtrain.fast.encode import (abs_bits, encode_float8, float8_quant_scale,  # noqa: E402
                                widen_to_fp32)


@triton.jit
def _column_blocks_t_trans(x_ptr, data_ptr, qs_ptr, R, C, B0: tl.constexpr,
                           BLOCK_C: tl.constexpr, TMA: tl.constexpr, MAX: tl.constexpr,
                           MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                           TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                           IS_BF16: tl.constexpr):
    """(B0, 1) blocks of x (R, C), written as x.T (C, R): the shipped kernel's arithmetic, the
    code tile transposed before its store (TMA: data_ptr is a tensor descriptor of x.T with a
    (BLOCK_C, B0) box, and the tile leaves by a TMA store)."""
    pid_r = tl.program_id(0)
    rows = pid_r * B0 + tl.arange(0, B0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    x = widen_to_fp32(tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :],
                              mask=col_ok[None, :], other=0), IS_BF16)
    qs = float8_quant_scale(tl.max(abs_bits(x), axis=0), MAX, False)
    tl.store(qs_ptr + cols.to(tl.int64) * tl.num_programs(0) + pid_r, qs, mask=col_ok)
    code = encode_float8(x * qs[None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    if TMA:
        data_ptr.store([tl.program_id(1) * BLOCK_C, pid_r * B0], tl.trans(code))
    else:
        tl.store(data_ptr + cols[:, None].to(tl.int64) * R + rows[None, :], tl.trans(code),
                 mask=col_ok[:, None])


def _launch_column_blocks_t(kernel, x, block_c, warps, b0=128, fmt="float8_e4m3fn", tma=None,
                            **extra):
    """One of the (b0, 1)-block x.T kernels above on x: (data (C, R), quant_scale). tma (True
    or False) for the kernel that takes it: data goes as a tensor descriptor or a pointer."""
    R, C = x.shape
    data = torch.empty((C, R), dtype=TORCH_FLOAT8[fmt], device=x.device)
    qs = torch.empty((C, R // b0), dtype=torch.float32, device=x.device)
    x_in, is_bf16 = kernel_input(x)
    out = data.view(torch.uint8)
    if tma is not None:
        extra["TMA"] = tma
        if tma:
            out = TensorDescriptor.from_tensor(out, [block_c, b0])
    kernel[(R // b0, triton.cdiv(C, block_c))](
        x_in, out, qs, R, C, B0=b0, BLOCK_C=block_c, **extra,
        **float8_params(fmt), EXACT_SOFT_CAST=use_soft_cast(kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=warps)
    return data, qs


def blockwise_t_trans(x, block_c, warps):
    return _launch_column_blocks_t(_column_blocks_t_trans, x, block_c, warps, tma=False)


@triton.jit
def _column_blocks_t_loop(x_ptr, data_ptr, qs_ptr, R, C, B0: tl.constexpr,
                          BLOCK_C: tl.constexpr, SUB: tl.constexpr, TRANS_STORE: tl.constexpr,
                          MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                          FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr,
                          EXACT_SOFT_CAST: tl.constexpr, IS_BF16: tl.constexpr):
    """(B0, 1) blocks of x (R, C) written as x.T, SUB rows at a time: wide column tiles (long
    contiguous loads) without holding the whole block in registers. First pass: an element-wise
    max over the sub-tiles, reduced along the rows once at the end (no cross-warp reduction per
    sub-tile); second pass: the same rows again (from L2), cast and stored (TRANS_STORE: the
    code sub-tile transposed before its store)."""
    pid_r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros((SUB, BLOCK_C), dtype=tl.int32)
    for r0 in tl.static_range(0, B0, SUB):
        rows = pid_r * B0 + r0 + tl.arange(0, SUB)
        x = widen_to_fp32(tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :],
                                  mask=col_ok[None, :], other=0), IS_BF16)
        acc = tl.maximum(acc, abs_bits(x))
    qs = float8_quant_scale(tl.max(acc, axis=0), MAX, False)
    tl.store(qs_ptr + cols.to(tl.int64) * tl.num_programs(0) + pid_r, qs, mask=col_ok)
    for r0 in tl.static_range(0, B0, SUB):
        rows = pid_r * B0 + r0 + tl.arange(0, SUB)
        x = widen_to_fp32(tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :],
                                  mask=col_ok[None, :], other=0), IS_BF16)
        code = encode_float8(x * qs[None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
        if TRANS_STORE:
            tl.store(data_ptr + cols[:, None].to(tl.int64) * R + rows[None, :], tl.trans(code),
                     mask=col_ok[:, None])
        else:
            tl.store(data_ptr + cols[None, :].to(tl.int64) * R + rows[:, None], code,
                     mask=col_ok[None, :])


def blockwise_t_loop(x, block_c, sub, warps, trans_store):
    return _launch_column_blocks_t(_column_blocks_t_loop, x, block_c, warps, SUB=sub,
                                   TRANS_STORE=trans_store)


@triton.jit
def _mx_dim0_t_trans(x_ptr, data_ptr, scale_ptr, M, C, GROUPS: tl.constexpr,
                     BLOCK_SIZE: tl.constexpr, BLOCK_C: tl.constexpr, RCEIL: tl.constexpr,
                     EMAX: tl.constexpr, RCP_MAX: tl.constexpr, MAX: tl.constexpr,
                     MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                     TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                     IS_BF16: tl.constexpr):
    """MX dim-0 blocks of x (M, C) written as x.T (C, M) with scales (C, M / BLOCK_SIZE): the
    shipped 3-D tile's arithmetic; the codes reshaped to (rows, columns) and transposed before
    their store. M divides by GROUPS * BLOCK_SIZE here (the sweep's shapes)."""
    groups = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows3 = groups[:, None, None] * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :, None]
    cols3 = cols[None, None, :]
    x = widen_to_fp32(tl.load(x_ptr + rows3.to(tl.int64) * C + cols3, mask=cols3 < C, other=0),
                      IS_BF16)
    e, nan = _mx_exponent(tl.max(abs_bits(x), axis=1), RCEIL, EMAX, RCP_MAX)
    code = _mx_scale_block(x, e[:, None, :], nan[:, None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                           EXACT_SOFT_CAST)
    code2 = tl.reshape(code, (GROUPS * BLOCK_SIZE, BLOCK_C))
    rows = tl.program_id(0) * GROUPS * BLOCK_SIZE + tl.arange(0, GROUPS * BLOCK_SIZE)
    tl.store(data_ptr + cols[:, None].to(tl.int64) * M + rows[None, :], tl.trans(code2),
             mask=cols[:, None] < C)
    byte = tl.where(nan, 0xFF, e + 127).to(tl.uint8)
    tl.store(scale_ptr + cols[None, :] * (M // BLOCK_SIZE) + groups[:, None], byte,
             mask=cols[None, :] < C)


def mx_dim0_t_trans(x, groups, block_c, warps, fmt="float8_e4m3fn", block=32, mode="rceil"):
    params = _mx_params(_mx_dim0_t_trans, x, fmt, block, mode)
    M, C = x.shape
    assert M % (groups * block) == 0, (M, groups, block)
    data = torch.empty((C, M), dtype=TORCH_FLOAT8[fmt], device=x.device)
    scale = torch.empty((C, M // block), dtype=torch.uint8, device=x.device)
    _mx_dim0_t_trans[(M // (groups * block), triton.cdiv(C, block_c))](
        kernel_input(x)[0], data.view(torch.uint8), scale, M, C, GROUPS=groups,
        BLOCK_SIZE=block, BLOCK_C=block_c, **params, num_warps=warps)
    return data, scale


# ---- TMA stores (tensor descriptors): the code tile goes registers -> shared memory -> one
# bulk copy per tile, so the x.T store is a hardware block copy, not one byte per thread.
# Hopper and later; host-side descriptors (triton.tools.tensor_descriptor), whose row strides
# must be multiples of 16 bytes (the sweep's shapes are).

def blockwise_t_tma(x, block_c, warps):
    return _launch_column_blocks_t(_column_blocks_t_trans, x, block_c, warps, tma=True)


# The dual's amax pass with its row maxima stored as per-(column block, row) partials and
# reduced by a second kernel (no row atomics) was slower at every tile: 50.3 against 44.3 us at
# 8192^2 at best, the dual 139.3 against 132.5 (2026-12-03-s17-dual-amax-partials-h200.log,
# -2-h200.log, 2026-12-03-s18-amax-settings-mx-tma-load-h200.log). Its code is in commit
# a612b23's tree.

# ---- diagnostics of the dual's amax pass (what its 44 us against the tensor amax's 37 us at
# 8192^2 go to): the columns alone at the rows setting and at the tensor setting. (A copy of
# the shipped pass with its row atomics as plain stores ran in commit 931b17f's tree: 48.4 us,
# slower; 2026-12-03-s18-dual-amax-diagnostics-h200.log.)

def amax_cols_at_row_settings(x):
    """DIAGNOSTIC: the shipped pass, columns only, at the tile and grid it runs with rows."""
    from qtrain.fast import amax as amax_mod
    with module_settings(amax_mod, AMAX_TILE=amax_mod.AMAX_ROWS_TILE,
                         AMAX_PROGRAMS_PER_SM=amax_mod.AMAX_ROWS_PROGRAMS_PER_SM):
        return amax_mod.amax_bits_2d(x, cols=True)[2:]


def amax_rows_cols_with(x, tile, per_sm, warps):
    """The shipped rows+columns amax pass under other settings (tile, programs per SM, warps)."""
    from qtrain.fast import amax as amax_mod
    with module_settings(amax_mod, AMAX_ROWS_TILE=tile, AMAX_ROWS_PROGRAMS_PER_SM=per_sm,
                         AMAX_WARPS=warps):
        return amax_mod.amax_bits_2d(x, rows=True, cols=True)[1:]


def dual_amax_with(x, tile, per_sm, warps):
    """The shipped dual cast with its amax pass under other settings."""
    from qtrain.fast import amax as amax_mod
    with module_settings(amax_mod, AMAX_ROWS_TILE=tile, AMAX_ROWS_PROGRAMS_PER_SM=per_sm,
                         AMAX_WARPS=warps):
        return cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True, True)


def amax_cols_at_tensor_settings(x):
    """DIAGNOSTIC: the shipped pass, columns only, at the tensor amax's tile and grid."""
    from qtrain.fast import amax as amax_mod
    return amax_mod.amax_bits_2d(x, cols=True)[2:]


def variants():
    """(name, family, fn(x) -> (data, scales)); family "bw" or "mx" (the shipped one first)."""
    out = [("blockwise 128x1.T shipped", "bw",
            lambda x: cast_blockwise.quantize_blockwise_t(x, (1, 128)))]
    out += [(f"blockwise 128x1.T trans, {c} cols, {w} warps", "bw",
             lambda x, c=c, w=w: blockwise_t_trans(x, c, w))
            for c in (32, 64, 128) for w in (1, 2, 4, 8) if c * 128 // (32 * w) >= 16]
    out += [(f"blockwise 128x1.T loop, {c} cols, {r} rows a step, {w} warps"
             f"{', trans store' if t else ''}", "bw",
             lambda x, c=c, r=r, w=w, t=t: blockwise_t_loop(x, c, r, w, t))
            for c in (64, 128, 256) for r in (16, 32) for w in (2, 4, 8) for t in (False, True)
            if c * r // (32 * w) >= 8]
    out += [("float8 dual row+col.T shipped", "dual",
             lambda x: cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True, True))]
    out += [(f"float8 dual row+col.T, tile {r}x{c}, {w} warps", "dual",
             lambda x, r=r, c=c, w=w: _dual_with(x, (r, c), w))
            for r, c in ((32, 128), (64, 64), (64, 128), (128, 64), (128, 128))
            for w in (2, 4, 8) if r * c // (32 * w) >= 16]
    out += [(f"float8 dual row+col.T TMA, tile {r}x{c}, {w} warps", "dual",
             lambda x, r=r, c=c, w=w: _dual_with(x, (r, c), w, tma=True))
            for r, c, w in ((128, 32, 1), (64, 32, 1), (128, 16, 1), (64, 64, 1), (32, 32, 1),
                            (256, 16, 1), (128, 32, 2), (64, 64, 2))]
    out += [(f"float8 dual row+col.T, x.T from {'x' if t else 'codes'}, tile {r}x{c}, {w} warps",
             "dual", lambda x, r=r, c=c, w=w, t=t: _t_from_x(x, "dual", (r, c), w, t))
            for r, c, w in T_FROM_X_TILES["dual"] for t in (False, True)]
    out += [("float8 tensorwise both layouts shipped", "twB",
             lambda x: cast_float8.quantize_float8_tensorwise_both(x, "float8_e4m3fn", False,
                                                                   None, True))]
    out += [(f"float8 tensorwise both layouts, x.T from {'x' if t else 'codes'}, tile {r}x{c}, "
             f"{w} warps", "twB", lambda x, r=r, c=c, w=w, t=t: _t_from_x(x, "twB", (r, c), w, t))
            for r, c, w in T_FROM_X_TILES["twB"] for t in (False, True)]
    out += [("float8 tensorwise shipped", "tw",
             lambda x: cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, False,
                                                              None, True))]
    out += [(f"float8 tensorwise, tile {r}x{c}, {w} warps", "tw",
             lambda x, r=r, c=c, w=w: _tensorwise_with(x, (r, c), w))
            for r, c, w in ((32, 128, 4), (64, 128, 4), (128, 64, 4), (128, 128, 4), (64, 256, 8),
                            (64, 128, 8))]
    out += [(f"float8 tensorwise.T, tile {r}x{c}, {w} warps", "twT",
             lambda x, r=r, c=c, w=w: _tensorwise_t_with(x, (r, c), w))
            for r, c, w in ((64, 128, 4), (128, 64, 4), (64, 64, 2))]
    out += [("amax pass, rows and columns, shipped (the dual's first pass)", "amax",
             lambda x: amax_bits_2d(x, rows=True, cols=True)[1:])]
    out += [("amax diagnostic columns only, at the rows settings", "amax",
             amax_cols_at_row_settings)]
    out += [("amax diagnostic columns only, at the tensor settings", "amax",
             amax_cols_at_tensor_settings)]
    out += [(f"amax pass, rows and columns, tile {t[0]}x{t[1]}, {p}/SM, {w} warps", "amax",
             lambda x, t=t, p=p, w=w: amax_rows_cols_with(x, t, p, w))
            for t in ((32, 128), (32, 256), (32, 512), (16, 256), (16, 512), (64, 256),
                      (64, 128), (8, 1024))
            for p in (4, 8, 16) for w in (4, 8) if t[0] * t[1] // (32 * w) >= 16]
    out += [(f"float8 dual row+col.T, amax tile {t[0]}x{t[1]}, {p}/SM, {w} warps", "dual",
             lambda x, t=t, p=p, w=w: dual_amax_with(x, t, p, w))
            for t, p, w in (((32, 128), 4, 4), ((32, 512), 8, 4), ((16, 512), 8, 4),
                            ((32, 256), 16, 4), ((64, 256), 8, 8), ((32, 256), 4, 4))]
    out += [("amax pass, tensor, shipped (tensorwise's first pass)", "amax",
             lambda x: amax_bits_2d(x, tensor=True)[:1])]
    out += [("float8 tensorwise.T shipped", "twT",
             lambda x: cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, True,
                                                              None, True))]
    out += [(f"float8 tensorwise.T TMA, tile {r}x{c}, {w} warps", "twT",
             lambda x, r=r, c=c, w=w: _tensorwise_t_with(x, (r, c), w, tma=True))
            for r, c, w in ((32, 128, 4), (128, 32, 1), (64, 32, 1), (128, 16, 1), (64, 64, 1),
                            (128, 32, 2))]
    out += [(f"blockwise 128x1.T TMA, {c} cols, {w} warps", "bw",
             lambda x, c=c, w=w: blockwise_t_tma(x, c, w))
            for c in (16, 32, 64, 128) for w in (1, 2, 4, 8) if c * 128 // (32 * w) >= 16]
    out += [("mx dim0.T shipped", "mx",
             lambda x: cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil", True))]
    out += [(f"mx dim0.T kernel, {'TMA' if t else 'trans'} store, {r} rows, {c} cols, {w} warps",
             "mx", lambda x, t=t, r=r, c=c, w=w: _mx_dim0_t_shipped(x, t, (r, c, w)))
            for t in (False, True) for r, c, w in ((64, 128, 2), (128, 32, 1), (256, 32, 1),
                                                   (256, 16, 1), (128, 16, 1), (128, 64, 1))]
    out += [(f"mx dim0.T trans, {g * 32} rows, {c} cols, {w} warps", "mx",
             lambda x, g=g, c=c, w=w: mx_dim0_t_trans(x, g, c, w))
            for g in (2, 4) for c in (32, 64, 128) for w in (1, 2, 4, 8)
            if g * 32 * c // (32 * w) >= 16]
    return out


# Tiles for the x.T-from-x variants. (A launch order walking 1-64 row tiles across every column
# before the next rows, a 1-D grid, was slower at every group size for dual, both layouts and
# x.T: +6 to +13 us, 2026-12-03-s19-launch-order-gluon-sweep-h200.log.)
# (2026-12-03, call 4, x.T from x only: dual best at (32, 64, 2 warps), both layouts at
# (64, 128, 4) and (128, 64, 4); 2026-12-03-s19-t-from-x-h200.log.)
T_FROM_X_TILES = {"dual": ((32, 128, 4), (32, 64, 2), (32, 64, 1), (16, 128, 2), (32, 32, 1),
                           (16, 64, 1)),
                  "twB": ((32, 128, 4), (64, 128, 4), (128, 64, 4), (128, 128, 4), (64, 128, 2),
                          (64, 256, 8), (128, 128, 8))}


def _t_from_x(x, family, tile, warps, from_x=True):
    """A shipped cast of `family` (dual; twB: tensorwise both layouts) with cast_float8.T_FROM_X:
    x.T encoded from the transposed loaded tile (from_x; else from x's codes, as shipped), at a
    tile of the x.T passes."""
    with module_settings(cast_float8, T_FROM_X=from_x, TILE_DUAL=tile, TILE_DUAL_WARPS=warps,
                         TILE_BOTH=tile, TILE_BOTH_WARPS=warps):
        if family == "dual":
            return cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True, True)
        return cast_float8.quantize_float8_tensorwise_both(x, "float8_e4m3fn", False, None, True)


def _dual_with(x, tile, warps, tma=False):
    """The shipped dual cast (amax pass + tile pass) under other x.T tile settings, and with
    cast_float8.TMA_STORE. (The tl.trans'd store was also timed for it on 2026-12-02: no
    difference, so it is not kept; 2026-12-02-s15-dual-tile-variants-h200.log. TMA at tiles of
    2-8 warps was slower on 2026-12-03: 2026-12-03-s17-tma-store-variants-h200.log.)"""
    with module_settings(cast_float8, TILE_DUAL=tile, TILE_DUAL_WARPS=warps, TMA_STORE=tma):
        return cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True, True)


def _tensorwise_with(x, tile, warps):
    """The shipped tensorwise cast in x's layout (amax pass + tile pass; w for the output
    product) at another tile of its cast pass (cast_float8.TILE, TILE_WARPS)."""
    with module_settings(cast_float8, TILE=tile, TILE_WARPS=warps):
        return cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, False, None,
                                                      True)


def _tensorwise_t_with(x, tile, warps, tma=False):
    """The shipped tensorwise cast written as x.T (amax pass + tile pass; RC-14's re-quantized
    w.T) under other x.T tile settings and cast_float8.TMA_STORE."""
    with module_settings(cast_float8, TILE_T=tile, TILE_T_WARPS=warps, TMA_STORE=tma):
        return cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, True, None,
                                                      True)


def _mx_dim0_t_shipped(x, tma, tile):
    """The shipped MX dim-0 cast written as x.T, with or without its TMA store, at a tile."""
    setting = dict(DIM0_T_TMA=tma, **({"DIM0_TMA_TILE_T": tile} if tma else {"DIM0_TILE_T": tile}))
    with module_settings(cast_mx, **setting):
        return cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil", True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help="comma list of RxC (default: 8192x8192,"
                   "8192x14336,16384x4096 on a GPU, 256x192 for --check-only on a CPU)")
    p.add_argument("--only", default="", help="variants whose name contains this (the shipped "
                   "kernel of each family always runs)")
    p.add_argument("--families", default="bw,mx,dual,twT",
                   help="comma list of families: bw ((128, 1) blocks), mx (MX dim 0), dual, "
                        "tw (float8 tensorwise in x's layout), twT (float8 tensorwise written as x.T), twB (float8 tensorwise into "
                        "both layouts), amax (the amax passes alone, each "
                        "checked against the shipped pass of its mode)")
    p.add_argument("--check-only", action="store_true",
                   help="bits of every variant against the shipped kernel, no timing (CPU ok)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shapes is None:
        args.shapes = ("256x192" if args.check_only and device == "cpu"
                       else "8192x8192,8192x14336,16384x4096")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    torch.manual_seed(0)
    rows, failures = [], 0
    for shape in shapes:
        x = torch.randn(shape, device=device).to(torch.bfloat16)
        x[3, 5] = 3.0e4                                          # a block with a large amax
        x[7] = 0                                                 # an all-zero row (zero blocks)
        # bytes actually moved per family: one read of x and one 1-byte payload (bw, mx; the
        # scales are a rounding error), or two reads and two payloads (dual: an amax pass, then
        # a pass writing x and x.T; twT: two reads, x.T; amax: one read), as the cast gate
        # counts them
        nbytes = {"bw": 3 * x.numel(), "mx": 3 * x.numel(), "dual": 6 * x.numel(),
                  "tw": 5 * x.numel(), "twT": 5 * x.numel(), "twB": 6 * x.numel(),
                  "amax": 2 * x.numel()}
        copy_us = None
        if not args.check_only:
            y = torch.empty_like(x)
            copy_us = graph_replay_us(lambda: y.copy_(x))
            rows.append([f"{shape[0]}x{shape[1]}", "torch copy_", f"{copy_us:.1f}", "1.00", ""])
        shipped = {}
        for name, family, fn in variants():
            if family not in args.families.split(",") or (args.only not in name
                                                           and "shipped" not in name):
                continue
            try:
                got = fn(x)
            except Exception as e:       # a variant that does not compile is a finding, not a stop
                rows.append([f"{shape[0]}x{shape[1]}", name, "-", "-", f"error {type(e).__name__}"])
                failures += 1
                continue
            key = family if family != "amax" else ",".join(name.split(",")[:2])   # its mode
            ref = shipped.setdefault(key, got)
            same = all(torch.equal(a.view(torch.uint8) if a.dtype != torch.float32 else a,
                                   b.view(torch.uint8) if b.dtype != torch.float32 else b)
                       for a, b in zip(got, ref))
            failures += not same
            if args.check_only:
                rows.append([f"{shape[0]}x{shape[1]}", name, "-", "-", "same bits" if same
                             else "DIFFERENT BITS"])
                continue
            us = graph_replay_us(lambda: fn(x))
            frac = (nbytes[family] / us) / (4 * x.numel() / copy_us)   # copy: 4 bytes/elem
            rows.append([f"{shape[0]}x{shape[1]}", name, f"{us:.1f}", f"{frac:.2f}",
                         "same bits" if same else "DIFFERENT BITS"])
    print(format_table(["shape", "variant", "us (graph)", "of copy", "bits vs shipped"], rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
