"""The dual cast's rows+columns amax pass written in Gluon (explicit layouts), against the
shipped Triton pass: bits and CUDA-graph time. An experiment for issue 8's float8_dual gate.

Why (benchmarks/NOTES.md, eighteenth session, items 6-8): under Nsight Compute the shipped pass
spends its shared memory, nearly all bank-conflicted, on a layout conversion of each tile's row
maxima before their atomics (Triton inserts it; the TTGIR shows it). In Gluon the atomic can
take the row maxima in the reduction's own slice layout (ATOMIC_FROM_SLICE), or after an
explicit conversion (as Triton does), so the two can be timed side by side. bf16 x only; GPU
only (Gluon does not run under the CPU interpreter).

    python3 -m benchmarks.gluon_amax [--shapes 8192x8192,8192x14336,16384x4096]"""
import argparse
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from benchmarks.common import time_shapes_against_first
from qtrain.fast.amax import amax_bits_2d, program_budget


@gluon.jit
def _amax_rows_cols(x_ptr, R, C, row_ptr, col_ptr, N_ROW_TILES, BLOCK_R: gl.constexpr,
                    BLOCK_C: gl.constexpr, WARPS: gl.constexpr, LANES_C: gl.constexpr,
                    ATOMIC_FROM_SLICE: gl.constexpr):
    """Column block program_id(1), row tiles program_id(0) + k * num_programs(0), as the
    shipped pass: row maxima by one atomic per row per tile, column maxima once per program.
    x is bf16 as int16 bits; the maxima are fp32 bits of |x| (NaN above inf). LANES_C: a
    warp's lanes along the columns (32: a warp reads 512 bytes of one row, its row maxima held
    by all 32 lanes; 4: 64 bytes of each of 8 rows, row maxima mostly reduced in-thread and
    held by 4 lanes)."""
    tile: gl.constexpr = gl.BlockedLayout([1, 8], [32 // LANES_C, LANES_C], [WARPS, 1], [1, 0])
    rows_l: gl.constexpr = gl.SliceLayout(1, tile)
    cols_l: gl.constexpr = gl.SliceLayout(0, tile)
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    cols = gl.program_id(1) * BLOCK_C + gl.arange(0, BLOCK_C, layout=cols_l)
    col_ok = cols < C
    acc = gl.zeros([BLOCK_R, BLOCK_C], gl.int32, layout=tile)
    for rt in range(gl.program_id(0), N_ROW_TILES, gl.num_programs(0)):
        rows = rt * BLOCK_R + gl.arange(0, BLOCK_R, layout=rows_l)
        mask = (rows[:, None] < R) & col_ok[None, :]
        x = gl.load(x_ptr + rows[:, None].to(gl.int64) * C + cols[None, :], mask=mask, other=0)
        bits = (x.to(gl.int32) << 16) & 0x7FFFFFFF
        row_max = gl.max(bits, axis=1)
        if ATOMIC_FROM_SLICE:
            gl.atomic_max(row_ptr + rows, row_max, mask=rows < R, sem="relaxed")
        else:
            rows_f = rt * BLOCK_R + gl.arange(0, BLOCK_R, layout=flat)
            gl.atomic_max(row_ptr + rows_f, gl.convert_layout(row_max, flat), mask=rows_f < R,
                          sem="relaxed")
        acc = gl.maximum(acc, bits)
    gl.atomic_max(col_ptr + cols, gl.max(acc, axis=0), mask=col_ok, sem="relaxed")


def gluon_rows_cols(x, tile=(32, 256), per_sm=8, warps=4, from_slice=True, lanes_c=32):
    """(row bits (R,), column bits (C,)) as amax_bits_2d(x, rows=True, cols=True) gives them."""
    R, C = x.shape
    br, bc = tile
    n_row_tiles, n_col = triton.cdiv(R, br), triton.cdiv(C, bc)
    buf = torch.zeros(R + C, dtype=torch.int32, device=x.device)
    programs = max(1, min(n_row_tiles, triton.cdiv(program_budget(x.device, per_sm), n_col)))
    _amax_rows_cols[(programs, n_col)](x.view(torch.int16), R, C, buf[:R], buf[R:], n_row_tiles,
                                       BLOCK_R=br, BLOCK_C=bc, WARPS=warps, LANES_C=lanes_c,
                                       ATOMIC_FROM_SLICE=from_slice, num_warps=warps)
    return buf[:R], buf[R:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8192x8192,8192x14336,16384x4096")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gluon_amax: needs a CUDA GPU (Gluon kernels do not run under the CPU interpreter)")
        return 2
    variants = [("shipped Triton pass", lambda x: amax_bits_2d(x, rows=True, cols=True)[1:])]
    # 2026-12-03 (nineteenth session, first call): of the first sweep (atomic from the slice or
    # converted; 32 or 4 lanes along C; 32x256/8, 32x128/4, 64x256/8 (8 warps), 32x128/8) only
    # "from slice, 32x128, 4/SM, 4 warps, 4 lanes" beat the shipped pass (42.7 / 71.0 / 41.8
    # against 44.1 / 72.7 / 44.9 us; 2026-12-03-s19-gluon-amax-h200.log). This sweep is around it.
    settings = [((br, 128), p_, 4, lc) for br in (16, 32, 64) for p_ in (2, 3, 4, 6)
                for lc in (2, 4, 8) if br * 128 // (32 * 4) >= 8 and 8 * lc <= 128
                and (32 // lc) * 4 <= br]       # a layout taller than the tile would load twice
    variants += [(f"gluon, atomic from slice, {t[0]}x{t[1]}, {p_}/SM, {w} warps, "
                  f"{lc} lanes along C",
                  lambda x, t=t, p_=p_, w=w, lc=lc: gluon_rows_cols(x, t, p_, w, True, lc))
                 for t, p_, w, lc in settings]

    def make_x(r, c):
        x = torch.randn(r, c, device="cuda").to(torch.bfloat16)
        x[3, 5], x[r - 1, 0], x[r // 2, c - 1], x[1, 1] = 3.0e4, float("inf"), float("nan"), -1e5
        x[7] = 0
        return x

    return time_shapes_against_first(args.shapes, make_x, lambda x: [(x, variants, 2)])

if __name__ == "__main__":
    sys.exit(main())
