"""The MX dim-0 cast written as x.T (MX-1..MX-7 along axis 0, data (C, M), scale bits (C, M/32)),
as a Gluon kernel: Triton's explicit-layout dialect, for GPUs only (a Gluon kernel does not run
under the CPU interpreter). fast.cast_mx takes this path when its DIM0_T_GLUON setting is on and
the call fits it (unsupported() says why not, and cast_mx logs it once); its Triton kernel stays
the CPU-tested path and the fallback.

The layouts: x's tile (32 rows, one MX block, by BLOCK_C columns) is loaded with 16-byte
vectors along the rows of x, then converted once, in x's own width, to a layout in which each
thread holds the 32 rows of one column. The block's maximum is then a reduction inside the
thread, and its 32 codes are contiguous in x.T, so they leave as two 16-byte stores. The
Triton kernel's TMA path, compiled for sm_90, spends 96 shuffles on the block maxima and writes
its code tile into shared memory one byte at a time (benchmarks/NOTES.md, nineteenth session).
The arithmetic is cast_mx's own (_mx_exponent, _mx_scale_block), called from Gluon."""
import torch
import triton

from .cast_mx import _mx_exponent, _mx_scale_block
from .common import TORCH_FLOAT8

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
except ImportError:                      # a Triton without Gluon: unsupported() says so
    gluon = gl = None

BLOCK = 32                               # the MX block (MX-1): one tile is one block tall
# (BLOCK_C, warps, lanes of a warp along the columns when loading): a module setting
TILE = (128, 4, 8)


if gluon is not None:
    @gluon.jit
    def _mx_dim0_t_kernel(x_ptr, data_ptr, scale_ptr, M, C, BLOCK_C: gl.constexpr,
                          WARPS: gl.constexpr, LOAD_LANES_C: gl.constexpr,
                          IS_BF16: gl.constexpr, RCEIL: gl.constexpr, EMAX: gl.constexpr,
                          RCP_MAX: gl.constexpr, MAX: gl.constexpr, MBITS: gl.constexpr,
                          BIAS: gl.constexpr, FNUZ: gl.constexpr, TL_DTYPE: gl.constexpr,
                          EXACT_SOFT_CAST: gl.constexpr):
        """Rows [program_id(0) * 32, +32) x columns [program_id(1) * BLOCK_C, +BLOCK_C) of x
        (M, C): bf16 as int16 bits (IS_BF16) or fp32 as int32 bits. M % 32 == 0."""
        load_l: gl.constexpr = gl.BlockedLayout([1, 8], [32 // LOAD_LANES_C, LOAD_LANES_C],
                                                [WARPS, 1], [1, 0])
        block_l: gl.constexpr = gl.BlockedLayout([32, 1], [1, 32], [1, WARPS], [0, 1])
        rows = gl.program_id(0) * 32 + gl.arange(0, 32, layout=gl.SliceLayout(1, load_l))
        cols = gl.program_id(1) * BLOCK_C + gl.arange(0, BLOCK_C,
                                                       layout=gl.SliceLayout(0, load_l))
        x = gl.load(x_ptr + rows[:, None].to(gl.int64) * C + cols[None, :],
                    mask=cols[None, :] < C, other=0)
        x = gl.convert_layout(x, block_l)                  # in x's width, via shared memory
        rows_b = gl.program_id(0) * 32 + gl.arange(0, 32, layout=gl.SliceLayout(1, block_l))
        cols_b = gl.program_id(1) * BLOCK_C + gl.arange(0, BLOCK_C,
                                                         layout=gl.SliceLayout(0, block_l))
        if IS_BF16:
            bits = x.to(gl.int32) << 16                    # the bf16 value's fp32 bits
        else:
            bits = x
        # |x| bits order like |x|, NaN above inf (F8-1's rule, as the Triton kernel reduces)
        e, nan = _mx_exponent(gl.max(bits & 0x7FFFFFFF, axis=0), RCEIL, EMAX, RCP_MAX)
        code = _mx_scale_block(bits.to(gl.float32, bitcast=True), e[None, :], nan[None, :],
                               MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
        col_ok = cols_b < C
        gl.store(data_ptr + cols_b[None, :].to(gl.int64) * M + rows_b[:, None], code,
                 mask=col_ok[None, :])
        byte = gl.where(nan, 0xFF, e + 127).to(gl.uint8)
        gl.store(scale_ptr + cols_b.to(gl.int64) * (M // 32) + gl.program_id(0), byte,
                 mask=col_ok)


def unsupported(x: torch.Tensor, block_size: int):
    """Why this path cannot take the call (a sentence), or None."""
    if gluon is None:
        return f"Triton {triton.__version__} has no Gluon (triton.experimental.gluon)"
    if x.dtype not in (torch.bfloat16, torch.float32):
        return f"x of {x.dtype}: the Gluon kernel takes bfloat16 or float32"
    if x.dim() != 2 or block_size != BLOCK:
        return f"x of shape {tuple(x.shape)}, block {block_size}: it takes 2-D x, 32-row blocks"
    if not x.is_cuda or torch.version.hip is not None:
        return f"x on {x.device}: the Gluon kernel runs on NVIDIA GPUs only"
    return None


def quantize_mx_dim0_t(x: torch.Tensor, elem_fmt: str, params: dict, tile=None):
    """(data (C, M), scale bits (C, M / 32)) of 2-D x (M, C), M % 32 == 0 (the caller checks),
    params as cast_mx._mx_params gives them; equal to cast_mx.quantize_mx_dim0(x, elem_fmt, 32,
    mode, transposed=True)."""
    M, C = x.shape
    block_c, warps, lanes = TILE if tile is None else tile
    data = torch.empty((C, M), dtype=TORCH_FLOAT8[elem_fmt], device=x.device)
    scale = torch.empty((C, M // BLOCK), dtype=torch.uint8, device=x.device)
    bits = x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32)
    _mx_dim0_t_kernel[(M // BLOCK, triton.cdiv(C, block_c))](
        bits, data.view(torch.uint8), scale, M, C, BLOCK_C=block_c, WARPS=warps,
        LOAD_LANES_C=lanes, **params, num_warps=warps)
    return data, scale
