"""Blockwise float8 casts, spec/05-blockwise.md (BW-1..BW-3): (1, 128) activation blocks and
(128, 128) weight blocks of a 2-D tensor, quant_scale shape (M / b0, K / b1)."""
import torch
import triton
import triton.language as tl

from .cast_float8 import quantize_float8_rowwise
from .common import (TORCH_FLOAT8, check_device, check_format, check_input, float8_params,
                     kernel_input, use_soft_cast)
from .encode import abs_bits, encode_float8, float8_quant_scale, widen_to_fp32
from .transpose import transposed_copy

LAYER = "qtrain.fast.cast_blockwise"


@triton.jit
def _float8_square_blocks_kernel(x_ptr, data_ptr, qs_ptr, dq_ptr, K,
                                 B0: tl.constexpr, B1: tl.constexpr, WITH_DQ: tl.constexpr,
                                 MAX: tl.constexpr,
                                 MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                                 TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                                 IS_BF16: tl.constexpr):
    """One (B0, B1) block of row-major x (M, K) per program, held in registers: amax (F8-1),
    quant_scale (F8-2, F8-5), cast (F8-4). One read, one write. Shapes divide (BW-1). WITH_DQ:
    the block's dequant factor 1 / quant_scale to dq_ptr (torch.reciprocal's rounding)."""
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * B0 + tl.arange(0, B0)
    cols = pid_c * B1 + tl.arange(0, B1)
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = widen_to_fp32(tl.load(x_ptr + offs), IS_BF16)
    amax = tl.max(tl.max(abs_bits(x), axis=1), axis=0)
    qs = float8_quant_scale(amax, MAX, False)                  # BW-2: no pow2
    tl.store(qs_ptr + pid_r * tl.num_programs(1) + pid_c, qs)
    if WITH_DQ:
        tl.store(dq_ptr + pid_r * tl.num_programs(1) + pid_c, tl.div_rn(1.0, qs))
    tl.store(data_ptr + offs, encode_float8(x * qs, MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                                            EXACT_SOFT_CAST))


@triton.jit
def _float8_column_blocks_t_kernel(x_ptr, data_ptr, qs_ptr, dq_ptr, R, C, B0: tl.constexpr,
                                   BLOCK_C: tl.constexpr, WITH_DQ: tl.constexpr,
                                   MAX: tl.constexpr,
                                   MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                                   TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                                   IS_BF16: tl.constexpr):
    """(B0, 1) blocks of row-major x (R, C), i.e. the (1, B0) blocks of x.T: a program holds B0
    rows x BLOCK_C columns, one block per column: amax (F8-1), quant_scale (F8-2, F8-5), cast
    (F8-4). data is written as x.T, (C, R) row-major; quant_scale (C, R / B0). One read of x,
    no transpose copy of it. R is a multiple of B0 (BW-1). WITH_DQ: the dequant factors
    1 / quant_scale to dq_ptr, laid out like quant_scale (torch.reciprocal's rounding)."""
    pid_r = tl.program_id(0)
    rows = pid_r * B0 + tl.arange(0, B0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = col_ok[None, :] & (rows[:, None] < R)
    x = widen_to_fp32(tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :],
                              mask=mask, other=0), IS_BF16)
    qs = float8_quant_scale(tl.max(abs_bits(x), axis=0), MAX, False)     # BW-2: no pow2
    tl.store(qs_ptr + cols.to(tl.int64) * tl.num_programs(0) + pid_r, qs, mask=col_ok)
    if WITH_DQ:
        tl.store(dq_ptr + cols.to(tl.int64) * tl.num_programs(0) + pid_r, tl.div_rn(1.0, qs),
                 mask=col_ok)
    code = encode_float8(x * qs[None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    tl.store(data_ptr + cols[None, :].to(tl.int64) * R + rows[:, None], code, mask=mask)


# (BLOCK_C, warps) of the (b, 1)-block cast that writes x.T. A module setting so that
# gpu_fast_check can time others: the block's amax is a reduction along axis 0 of the tile,
# across warps unless one warp holds the tile. H200, 8192^2 bf16 (2026-12-01): (32, 1) and
# (16, 1) 81 us, (64, 4) 83, (128, 4) 90, (64, 8) 123 (the earlier default), (256, 8) 118.
COLUMN_BLOCKS_T_TILE = (32, 1)


def quantize_blockwise_t(x, block=(1, 128), fmt="float8_e4m3fn", with_dequant=False):
    """The blockwise quantization of x.T with `block` in x.T's orientation, written from x
    directly: (data (C, R), quant_scale (C / b0, R / b1)). (1, b) blocks of x.T (the recipe's
    along-M operands for grad_weight) take one kernel; square blocks are x's quantization
    transposed (BW-5: the 1-byte payload is copied, not the input); other blocks quantize a
    copy of x.T. with_dequant: also the dequant factors 1 / quant_scale, laid out like it
    (torch.reciprocal's bits), written by the kernels."""
    check_input(x, LAYER)
    check_format(fmt, LAYER)
    check_device(_float8_column_blocks_t_kernel, x, LAYER)
    b0, b1 = (int(b) for b in block)
    if x.dim() != 2:
        raise ValueError(f"{LAYER}: transposed blockwise cast needs 2-D x, got {tuple(x.shape)}")
    if b0 == b1 and b0 > 1:                                                 # BW-5
        out = quantize_blockwise(x, block, fmt, with_dequant)
        return (transposed_copy(out[0]),) + tuple(scale.t().contiguous() for scale in out[1:])
    if b0 != 1 or b1 & (b1 - 1):
        return quantize_blockwise(x.t().contiguous(), block, fmt, with_dequant)
    R, C = x.shape
    if R % b1:                                                              # BW-1
        raise ValueError(f"{LAYER}: x.T of shape {(C, R)} must be divisible by the block "
                         f"{(b0, b1)}; pad x's rows to a multiple of {b1}")
    data = torch.empty((C, R), dtype=TORCH_FLOAT8[fmt], device=x.device)
    qs = torch.empty((C, R // b1), dtype=torch.float32, device=x.device)
    dq = torch.empty_like(qs) if with_dequant else None
    block_c, warps = COLUMN_BLOCKS_T_TILE
    x_in, is_bf16 = kernel_input(x)
    _float8_column_blocks_t_kernel[(R // b1, -(-C // block_c))](
        x_in, data.view(torch.uint8), qs, qs if dq is None else dq, R, C, B0=b1,
        BLOCK_C=block_c, WITH_DQ=with_dequant, **float8_params(fmt),
        EXACT_SOFT_CAST=use_soft_cast(_float8_column_blocks_t_kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=warps)
    return (data, qs, dq) if with_dequant else (data, qs)


def quantize_blockwise(x, block=(1, 128), fmt="float8_e4m3fn", with_dequant=False):
    """(data like x, quant_scale fp32 (M / b0, K / b1)). (1, b1) blocks are the rowwise cast of
    x viewed (M * K / b1, b1); (b0, b1) blocks with b0 > 1 take one tile per block.
    with_dequant: also the dequant factors 1 / quant_scale, shaped like it (torch.reciprocal's
    bits), written by the kernels."""
    check_input(x, LAYER)
    check_format(fmt, LAYER)
    check_device(_float8_square_blocks_kernel, x, LAYER)
    b0, b1 = (int(b) for b in block)
    if x.dim() != 2 or b0 < 1 or b1 < 1 or x.shape[0] % b0 or x.shape[1] % b1:   # BW-1
        raise ValueError(f"{LAYER}: shape {tuple(x.shape)} must be 2-D and divisible by the "
                         f"block {(b0, b1)}; pad it or pick a block that divides it")
    M, K = x.shape
    if b0 == 1:
        out = quantize_float8_rowwise(x.view(M * K // b1, b1), fmt, with_dequant=with_dequant)
        return (out[0].view(M, K),) + tuple(scale.view(M, K // b1) for scale in out[1:])
    if b0 & (b0 - 1) or b1 & (b1 - 1):
        raise ValueError(f"{LAYER}: block {(b0, b1)} must be powers of two (tile shape); the "
                         f"recipes use (1, 128) and (128, 128)")
    data = torch.empty(x.shape, dtype=TORCH_FLOAT8[fmt], device=x.device)
    qs = torch.empty((M // b0, K // b1), dtype=torch.float32, device=x.device)
    dq = torch.empty_like(qs) if with_dequant else None
    x_in, is_bf16 = kernel_input(x)
    _float8_square_blocks_kernel[(M // b0, K // b1)](
        x_in, data.view(torch.uint8), qs, qs if dq is None else dq, K, B0=b0, B1=b1,
        WITH_DQ=with_dequant, **float8_params(fmt),
        EXACT_SOFT_CAST=use_soft_cast(_float8_square_blocks_kernel, fmt, x.device),
        IS_BF16=is_bf16, num_warps=8)
    return (data, qs, dq) if with_dequant else (data, qs)
