"""A 1-byte payload written transposed: x (R, C) row-major -> x.T (C, R) row-major, by tiles.

Tensorwise x and g (and a kept 128x128-block weight) are quantized once and read transposed
by one of their products (RC-4, RC-14, BW-5), which wants the transposed layout row-major.
torch's copy of a transposed view is an element-wise kernel whose reads or writes stride by a
whole row; here each program loads a (BLOCK_R, BLOCK_C) tile row by row and stores its
transpose row by row (Triton moves the tile through shared memory in between).
"""
import os

import torch
import triton
import triton.language as tl

from .common import cdiv, check_device

LAYER = "qtrain.fast.transpose"

# (BLOCK_R, BLOCK_C) of one program: a module setting, so gpu_fast_check can time others.
TILE = (128, 128)

# Which copy the fast backend makes of a payload read transposed: "tiles" (the kernel below,
# one Triton launch; H200, 2026-12-01: 40 us for 8192^2 bytes) or "torch" (x.t().contiguous(),
# one aten launch: 393 us there).
TRANSPOSE = os.environ.get("QTRAIN_FAST_TRANSPOSE", "tiles")
if TRANSPOSE not in ("torch", "tiles"):
    raise ValueError(f"QTRAIN_FAST_TRANSPOSE={TRANSPOSE!r}: expected 'torch' or 'tiles'")


@triton.jit
def _transpose_bytes_kernel(src_ptr, dst_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    tile = tl.load(src_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0)
    offs_t = cols[:, None].to(tl.int64) * R + rows[None, :]
    tl.store(dst_ptr + offs_t, tl.trans(tile), mask=tl.trans(mask))


def transpose_bytes(x: torch.Tensor) -> torch.Tensor:
    """x.T as a new row-major tensor, for a 2-D row-major x of 1-byte elements (float8 or int8
    payloads): the same bits as x.t().contiguous()."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{LAYER}: expected a torch.Tensor, got {type(x).__name__}")
    check_device(_transpose_bytes_kernel, x, LAYER)
    if x.dim() != 2 or x.element_size() != 1 or not x.is_contiguous():
        raise ValueError(f"{LAYER}: needs a 2-D row-major tensor of 1-byte elements, got shape "
                         f"{tuple(x.shape)}, dtype {x.dtype}, strides {x.stride()}")
    R, C = x.shape
    out = torch.empty((C, R), dtype=x.dtype, device=x.device)
    if x.numel():
        block_r, block_c = TILE
        _transpose_bytes_kernel[(cdiv(R, block_r), cdiv(C, block_c))](
            x.view(torch.uint8), out.view(torch.uint8), R, C, BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def transposed_copy(x: torch.Tensor) -> torch.Tensor:
    """x.T row-major for a 2-D row-major 1-byte payload, by the copy TRANSPOSE names."""
    if TRANSPOSE == "tiles":
        return transpose_bytes(x)
    return x.t().contiguous()

