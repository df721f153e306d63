"""Triton amax pass (F8-1, I8-1): one read of a 2-D tensor, per-tile maxima folded into tensor,
row and/or column amax buffers with integer atomic max on the fp32 bits of |x|."""
import functools

import torch
import triton
import triton.language as tl

from .common import cdiv, kernel_input, pow2_at_most
from .encode import abs_bits, widen_to_fp32


@triton.jit
def _amax_tiles_kernel(x_ptr, R, C, tensor_ptr, row_ptr, col_ptr, N_ROW_TILES,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                       TENSOR: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                       IS_BF16: tl.constexpr):
    """Column block program_id(1) of row-major x (R, C), row tiles program_id(0),
    program_id(0) + num_programs(0), ... (BLOCK_R x BLOCK_C each). Row maxima go to row_ptr per
    tile (a reduction along axis 1, within a warp). The column and tensor maxima are an
    element-wise max over the program's tiles, reduced once at the end: a reduction along
    axis 0 crosses warps through shared memory, and doing it per tile made this pass take 88 us
    for an (8192, 8192) bf16 x on the H200 against 47 us with axis 1 first (2026-12-01,
    benchmarks/amax_variants.py). Buffers hold int32 bits, zero-initialised; masked-out
    elements load as 0 and never win the max. NaN bits win over inf (F8-1). The max is
    order-free: any grid, same bits. The atomics are relaxed: the buffers are read by a later
    launch on the same stream, which orders them."""
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    for rt in range(tl.program_id(0), N_ROW_TILES, tl.num_programs(0)):
        rows = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        mask = (rows[:, None] < R) & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0)
        bits = abs_bits(widen_to_fp32(x, IS_BF16))
        if ROWS:
            tl.atomic_max(row_ptr + rows, tl.max(bits, axis=1), mask=rows < R, sem="relaxed")
        acc = tl.maximum(acc, bits)
    if COLS:
        col_max = tl.max(acc, axis=0)
        tl.atomic_max(col_ptr + cols, col_max, mask=col_ok, sem="relaxed")
        if TENSOR:
            tl.atomic_max(tensor_ptr, tl.max(col_max, axis=0), sem="relaxed")
    elif TENSOR:
        tl.atomic_max(tensor_ptr, tl.max(tl.max(acc, axis=1), axis=0), sem="relaxed")


# The maxima stay on fp32 bits for bf16 too: taken on the 16-bit bits (registers 61 -> 42 for
# the tensor pass, 116 -> 80 with rows) the passes were slower on the H200 (2026-12-03, before
# and after from two calls, not one A/B run: tensor 36.5 -> 42.0 us at 8192^2, 60.4 -> 70.6
# at 8192x14336; rows+columns 44.3 -> 45.8 and 72.9 -> 69.0;
# 2026-12-03-s18-int16-maxima-ncu-h200.log). The MX dim-0 cast keeps that form.

# Settings of the amax pass (module settings so that benchmarks/amax_variants.py can time
# others): the tile (BLOCK_R, BLOCK_C), the warps per program, and the programs per SM (its
# grid: about that many times the SM count, each program looping over row tiles; 0: one program
# per tile).
AMAX_TILE = (32, 128)
AMAX_WARPS = 4
AMAX_PROGRAMS_PER_SM = 4
# with row maxima asked for (the dual casts): each tile issues one atomic per row, and wider
# tiles with more programs measured faster (H200, 2026-12-01, rows+columns: 51.9 against
# 55.9 us at 8192^2, 82.1 against 87.3 at (8192, 14336); benchmarks/amax_variants.py)
# (2026-12-03, CUDA-graph timing over 3 shapes, 33 settings: no setting beats this one at
# 8192^2, and the dual cast is fastest with it at 8192^2; 2026-12-03-s18-amax-settings-mx-tma-load-h200.log)
AMAX_ROWS_TILE = (32, 256)
AMAX_ROWS_PROGRAMS_PER_SM = 8
_INTERPRETER_PROGRAMS = 4        # CPU: a small grid, so the tests run the loop


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def program_budget(device: torch.device, per_sm: int) -> int:
    if device.type != "cuda":
        return _INTERPRETER_PROGRAMS
    return per_sm * _sm_count(device)


def amax_bits_2d(x2d: torch.Tensor, tensor: bool = False, rows: bool = False, cols: bool = False):
    """Launch the amax pass; returns (tensor_bits (1,), row_bits (R,), col_bits (C,)) int32,
    None for the ones not asked for."""
    R, C = x2d.shape
    # one zeroed buffer holds every requested amax (one allocation and one fill per call:
    # host time counts in launch-bound layers); the kernel ignores the pointers not asked for
    sizes = (1 if tensor else 0, R if rows else 0, C if cols else 0)
    buf = torch.zeros(max(1, sum(sizes)), dtype=torch.int32, device=x2d.device)
    t, r, c = (buf[start:start + n] if n else None
               for start, n in zip((0, sizes[0], sizes[0] + sizes[1]), sizes))
    (block_r, block_c), per_sm = ((AMAX_ROWS_TILE, AMAX_ROWS_PROGRAMS_PER_SM) if rows
                                  else (AMAX_TILE, AMAX_PROGRAMS_PER_SM))
    block_c = pow2_at_most(C, block_c)
    n_row_tiles, n_col_tiles = cdiv(R, block_r), cdiv(C, block_c)
    row_programs = n_row_tiles
    if per_sm:
        row_programs = max(1, min(n_row_tiles, cdiv(program_budget(x2d.device, per_sm),
                                                     n_col_tiles)))
    x_in, is_bf16 = kernel_input(x2d)
    _amax_tiles_kernel[(row_programs, n_col_tiles)](
        x_in, R, C, buf if t is None else t, buf if r is None else r, buf if c is None else c,
        n_row_tiles, BLOCK_R=block_r, BLOCK_C=block_c, TENSOR=tensor, ROWS=rows, COLS=cols,
        IS_BF16=is_bf16, num_warps=AMAX_WARPS)
    return t, r, c
