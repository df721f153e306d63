"""MX values (spec/03-mx.md MX-10): the bf16 values of x's MX quantization (MX-1..MX-7, then
MX-8 into bf16), written in x's layout by one pass that never stores the 1-byte codes or the
scale bytes. This is the operand of an emulated MX product on a GPU without MX tensor cores
(RC-7's emulation: a bf16 GEMM of exact values, fast/scaled_mm.py), where the cast and then
the dequantization would read and write the operand twice: 2 + 1 and 1 + 2 bytes per element
against 2 + 2 here.

Blocks along the last axis (dim -1) or along axis 0 (dim 0, of x viewed (M, C)); the block
arithmetic is fast/cast_mx.py's own (_mx_exponent, _mx_scale_block). The codes are decoded by
the GPU's fp8 -> fp32 conversion (exact for e4m3fn and e5m2) or, under the interpreter and for
the fnuz formats, by the integer decode; the block factor 2^e is an exponent built from bits;
their fp32 product is exact (the smallest value is 2^-16 * 2^-127, above fp32's 2^-149), so the
one rounding is the final fp32 -> bf16 (rne; by integer arithmetic under the interpreter)."""
import torch
import triton
import triton.language as tl

from .cast_mx import _check_divides, _mx_exponent, _mx_params, _mx_scale_block, dim0_tiling
from .common import cdiv, is_interpreted, kernel_input, next_pow2
from .encode import decode_float8, loaded_abs_max_bits, soft_bf16_bits, widen_to_fp32

LAYER = "qtrain.fast.cast_mx_values"


@triton.jit
def _mx_block_values(x, e, nan, MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                     FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr, SOFT: tl.constexpr):
    """fp32 values of x's elements quantized with block exponents e (MX-6) and decoded (MX-8):
    code * 2^e, exact; NaN for a NaN block (byte 0xFF)."""
    code = _mx_scale_block(x, e, nan, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, SOFT)
    if SOFT:
        v = decode_float8(code, MBITS, BIAS, FNUZ)
    else:
        v = code.to(TL_DTYPE, bitcast=True).to(tl.float32)
    factor_bits = tl.where(e <= -127, 0x00400000, (e + 127) << 23)     # 2^-127 is subnormal
    v = v * factor_bits.to(tl.float32, bitcast=True)
    return tl.where(nan, float("nan"), v)


@triton.jit
def _store_bf16(out_ptr, offs, v, mask, SOFT_BF16: tl.constexpr):
    if SOFT_BF16:
        tl.store(out_ptr + offs, soft_bf16_bits(v), mask=mask)
    else:
        tl.store(out_ptr + offs, v.to(tl.bfloat16), mask=mask)


@triton.jit
def _mx_values_dim_last_kernel(x_ptr, out_ptr, n_blocks, BLOCK_B: tl.constexpr,
                               BLOCK_SIZE: tl.constexpr, RCEIL: tl.constexpr,
                               EMAX: tl.constexpr, RCP_MAX: tl.constexpr, MAX: tl.constexpr,
                               MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                               TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                               IS_BF16: tl.constexpr, SOFT_BF16: tl.constexpr):
    """x viewed as (n_blocks, BLOCK_SIZE) row-major: a tile of BLOCK_B consecutive blocks."""
    blocks = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = blocks < n_blocks
    offs = blocks[:, None].to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :]
    x_in = tl.load(x_ptr + offs, mask=ok[:, None], other=0)
    e, nan = _mx_exponent(loaded_abs_max_bits(x_in, 1, IS_BF16), RCEIL, EMAX, RCP_MAX)
    v = _mx_block_values(widen_to_fp32(x_in, IS_BF16), e[:, None], nan[:, None], MAX, MBITS,
                         BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    _store_bf16(out_ptr, offs, v, ok[:, None], SOFT_BF16)


@triton.jit
def _mx_values_dim0_kernel(x_ptr, out_ptr, M, C, GROUPS: tl.constexpr,
                           BLOCK_SIZE: tl.constexpr, BLOCK_C: tl.constexpr,
                           RCEIL: tl.constexpr, EMAX: tl.constexpr, RCP_MAX: tl.constexpr,
                           MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                           FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr,
                           EXACT_SOFT_CAST: tl.constexpr, IS_BF16: tl.constexpr,
                           SOFT_BF16: tl.constexpr):
    """x (M, C) row-major, blocks of BLOCK_SIZE rows per column, the tile loaded as (GROUPS,
    BLOCK_SIZE, BLOCK_C) so that each block's exponent is computed once per (group, column) and
    broadcast along the block's rows; out (M, C) in x's layout."""
    groups = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows3 = groups[:, None, None] * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :, None]
    cols3 = cols[None, None, :]
    mask3 = (rows3 < M) & (cols3 < C)
    offs = rows3.to(tl.int64) * C + cols3
    x_in = tl.load(x_ptr + offs, mask=mask3, other=0)
    e, nan = _mx_exponent(loaded_abs_max_bits(x_in, 1, IS_BF16), RCEIL, EMAX, RCP_MAX)
    v = _mx_block_values(widen_to_fp32(x_in, IS_BF16), e[:, None, :], nan[:, None, :], MAX,
                         MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    _store_bf16(out_ptr, offs, v, mask3, SOFT_BF16)


# Tiles, module settings so that benchmarks/mx_values.py --sweep can time others. dim -1:
# elements per program (BLOCK_B blocks). dim 0: (rows at most, columns at most, warps), as
# cast_mx.DIM0_TILE. H200, bf16 x, same bits at every setting (2026-12-03, twentieth session,
# 2026-12-03-s20-mx-values-block-ab-h200.log), of copy bandwidth at 8192x14336 / 14336x4096:
# dim -1 at 2048 elements 0.97 / 0.97, 1024 0.91 / 0.92, 4096 0.92 / 0.92, 8192 0.69 / 0.68;
# dim 0 at (64, 128, 2) 0.93 / 0.91, (128, 128, 4) 0.92 / 0.91, (64, 64, 1) 0.84 / 0.84,
# (128, 64, 2) 0.84 / 0.84, (64, 128, 4) 0.59 / 0.59.
DIM_LAST_ELEMS = 2048
DIM0_TILE = (64, 128, 2)


def quantize_mx_values(x, elem_fmt="float8_e4m3fn", block_size=32, axis=-1,
                       scale_mode="floor"):
    """bf16 tensor of x's shape and layout: MX-10 values of x quantized along `axis` (-1, or 0
    of x viewed (M, C)). x bf16, fp16 or fp32, row-major."""
    kernel = _mx_values_dim_last_kernel if axis in (-1, x.dim() - 1) else _mx_values_dim0_kernel
    params = _mx_params(kernel, x, elem_fmt, block_size, scale_mode)
    if axis not in (-1, 0, x.dim() - 1):
        raise ValueError(f"{LAYER}: axis {axis} of shape {tuple(x.shape)} not supported; use 0 "
                         f"or -1")
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    if x.numel() == 0:
        return out
    soft_bf16 = is_interpreted(kernel)
    out_arg = out.view(torch.int16) if soft_bf16 else out
    if kernel is _mx_values_dim_last_kernel:
        _check_divides(x, x.dim() - 1, block_size)
        n_blocks = x.numel() // block_size
        block_b = max(1, min(DIM_LAST_ELEMS // block_size, next_pow2(n_blocks)))
        kernel[(cdiv(n_blocks, block_b),)](kernel_input(x)[0], out_arg, n_blocks,
                                           BLOCK_B=block_b, BLOCK_SIZE=block_size,
                                           SOFT_BF16=soft_bf16, **params)
        return out
    _check_divides(x, 0, block_size)
    M = x.shape[0]
    C = x.numel() // M
    rows_cap, cols_cap, warps = DIM0_TILE
    groups, block_c = dim0_tiling(M, C, block_size, rows_cap, cols_cap)
    kernel[(cdiv(M, groups * block_size), cdiv(C, block_c))](
        kernel_input(x)[0], out_arg, M, C, GROUPS=groups, BLOCK_SIZE=block_size,
        BLOCK_C=block_c, SOFT_BF16=soft_bf16, **params, num_warps=warps)
    return out
