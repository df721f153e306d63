"""Triton amax pass (F8-1, I8-1): one read of a 2-D tensor, per-tile maxima folded into tensor,
row and/or column amax buffers with integer atomic max on the fp32 bits of |x|."""
import torch
import triton
import triton.language as tl

from .common import cdiv, kernel_input
from .encode import abs_bits, widen_to_fp32


@triton.jit
def _amax_tiles_kernel(x_ptr, R, C, tensor_ptr, row_ptr, col_ptr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                       TENSOR: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                       IS_BF16: tl.constexpr):
    """Tile (BLOCK_R, BLOCK_C) of row-major x (R, C). Buffers hold int32 bits, zero-initialised;
    masked-out elements load as 0 and never win the max. NaN bits win over inf (F8-1)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0)
    bits = abs_bits(widen_to_fp32(x, IS_BF16))
    if ROWS:
        tl.atomic_max(row_ptr + rows, tl.max(bits, axis=1), mask=rows < R)
    if COLS:
        tl.atomic_max(col_ptr + cols, tl.max(bits, axis=0), mask=cols < C)
    if TENSOR:
        tl.atomic_max(tensor_ptr, tl.max(tl.max(bits, axis=1), axis=0))


def amax_bits_2d(x2d: torch.Tensor, tensor: bool = False, rows: bool = False, cols: bool = False,
                 block_r: int = 32, block_c: int = 128):
    """Launch the amax pass; returns (tensor_bits (1,), row_bits (R,), col_bits (C,)) int32,
    None for the ones not asked for."""
    R, C = x2d.shape
    # one zeroed buffer holds every requested amax (one allocation and one fill per call:
    # host time counts in launch-bound layers); the kernel ignores the pointers not asked for
    sizes = (1 if tensor else 0, R if rows else 0, C if cols else 0)
    buf = torch.zeros(max(1, sum(sizes)), dtype=torch.int32, device=x2d.device)
    t, r, c = (buf[start:start + n] if n else None
               for start, n in zip((0, sizes[0], sizes[0] + sizes[1]), sizes))
    grid = (cdiv(R, block_r), cdiv(C, block_c))
    x_in, is_bf16 = kernel_input(x2d)
    _amax_tiles_kernel[grid](x_in, R, C, buf if t is None else t, buf if r is None else r,
                             buf if c is None else c, BLOCK_R=block_r, BLOCK_C=block_c,
                             TENSOR=tensor, ROWS=rows, COLS=cols, IS_BF16=is_bf16)
    return t, r, c
