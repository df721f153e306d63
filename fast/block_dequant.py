"""Exact dequantization of block-scaled float8 payloads for the emulated products (spec/06 MM-1,
MM-3; FMT-1): one Triton pass reads the 1-byte codes and the fp32 block factors and writes the
operand in the product's input dtype (`exact_values`: that pass, or the same bits by torch ops
where it does not apply). Used by the emulated grouped product, by the MX dense product on GPUs
without MX tensor cores and by the fnuz product on NVIDIA (fast/scaled_mm.py)."""
import torch
import triton
import triton.language as tl

from .common import CUDA_HARDWARE_FLOAT8, TORCH_FLOAT8, cdiv, float8_params, is_interpreted
from .encode import decode_float8, soft_bf16_bits

_FORMAT_OF = {v: k for k, v in TORCH_FLOAT8.items()}
# Tile of the row-block kernel: _ROW_TILE_R rows x _ROW_TILE_C columns (NB blocks of BC).
_ROW_TILE_R, _ROW_TILE_C = 32, 128


@triton.jit
def _dequant_blocks_kernel(p_ptr, d_ptr, out_ptr, R, C, BR, BC, DC,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, MBITS: tl.constexpr,
                           BIAS: tl.constexpr, FNUZ: tl.constexpr, SOFT_BF16: tl.constexpr):
    """out[r, c] = out_dtype(fp32(p[r, c]) * d[r // BR, c // BC]) for float8 codes p (R, C)
    and fp32 block factors d (R / BR, DC) with DC = C / BC: one exact decode (FMT-1), one fp32
    product (MM-3), one rne rounding to out's dtype (SOFT_BF16: by integer arithmetic into the
    int16 bits of a bf16 out). One read of the 1-byte payload, one write."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    v = decode_float8(tl.load(p_ptr + offs, mask=mask, other=0), MBITS, BIAS, FNUZ)
    d = tl.load(d_ptr + (rows // BR)[:, None].to(tl.int64) * DC + (cols // BC)[None, :],
                mask=mask, other=1.0)
    if SOFT_BF16:
        tl.store(out_ptr + offs, soft_bf16_bits(v * d), mask=mask)
    else:
        tl.store(out_ptr + offs, (v * d).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_row_blocks_kernel(p_ptr, d_ptr, out_ptr, R, C, DC,
                               BC: tl.constexpr, NB: tl.constexpr, BLOCK_R: tl.constexpr,
                               MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                               HW_DECODE: tl.constexpr, SOFT_BF16: tl.constexpr):
    """The same values as _dequant_blocks_kernel for factor blocks one row tall and BC (a power
    of two) wide, MX's (1, 32): the tile is (BLOCK_R, NB, BC), so each factor is loaded once
    and broadcast along its block instead of once per element. HW_DECODE: the GPU's fp8 -> fp32
    conversion, exact for every e4m3fn and e5m2 code (NaN and Inf included); otherwise the
    integer decode (the interpreter misreads NaN and Inf)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    blks = tl.program_id(1) * NB + tl.arange(0, NB)
    cols = blks[:, None] * BC + tl.arange(0, BC)[None, :]                      # (NB, BC)
    mask = (rows[:, None, None] < R) & (cols[None, :, :] < C)
    offs = rows[:, None, None].to(tl.int64) * C + cols[None, :, :]
    if HW_DECODE:
        v = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = decode_float8(tl.load(p_ptr + offs, mask=mask, other=0), MBITS, BIAS, FNUZ)
    d = tl.load(d_ptr + rows[:, None].to(tl.int64) * DC + blks[None, :],
                mask=(rows[:, None] < R) & (blks[None, :] < DC), other=1.0)
    y = v * d[:, :, None]
    if SOFT_BF16:
        tl.store(out_ptr + offs, soft_bf16_bits(y), mask=mask)
    else:
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def dequant_blocks(p, d, dtype):
    """p's exact values times its MM-1 block factors d (d of p's rank), in `dtype` (fp32 or
    bf16), in one Triton pass on CUDA or under the interpreter. None where it does not apply
    (not float8, 0-d or per-group factors, strided p, another device): the caller's torch ops
    run then."""
    if p.dtype not in _FORMAT_OF or d.dim() != p.dim() or not p.is_contiguous():
        return None
    if not (p.device.type == "cuda" or is_interpreted(_dequant_blocks_kernel)) or p.numel() == 0:
        return None
    p2 = p.reshape(-1, p.shape[-1])                       # (E, N, K) -> (E * N, K)
    d2 = d.to(torch.float32).reshape(-1, d.shape[-1]).contiguous()
    R, C = p2.shape
    out = torch.empty(p.shape, dtype=dtype, device=p.device)
    fmt = _FORMAT_OF[p.dtype]
    params = float8_params(fmt)
    br, bc = R // d2.shape[0], C // d2.shape[1]
    if br == 1 and bc & (bc - 1) == 0 and bc <= _ROW_TILE_C and d2.shape[1] * bc == C:
        interpreted = is_interpreted(_dequant_row_blocks_kernel)
        hw = not interpreted and fmt in CUDA_HARDWARE_FLOAT8
        soft_bf16 = dtype == torch.bfloat16 and interpreted
        nb = _ROW_TILE_C // bc
        _dequant_row_blocks_kernel[(cdiv(R, _ROW_TILE_R), cdiv(d2.shape[1], nb))](
            p2 if hw else p2.view(torch.uint8), d2, out.view(torch.int16) if soft_bf16 else out,
            R, C, d2.shape[1], BC=bc, NB=nb, BLOCK_R=_ROW_TILE_R, MBITS=params["MBITS"],
            BIAS=params["BIAS"], FNUZ=params["FNUZ"], HW_DECODE=hw, SOFT_BF16=soft_bf16)
        return out
    soft_bf16 = dtype == torch.bfloat16 and is_interpreted(_dequant_blocks_kernel)
    _dequant_blocks_kernel[(cdiv(R, 32), cdiv(C, 128))](
        p2.view(torch.uint8), d2, out.view(torch.int16) if soft_bf16 else out, R, C,
        R // d2.shape[0], C // d2.shape[1], d2.shape[1], BLOCK_R=32, BLOCK_C=128,
        MBITS=params["MBITS"], BIAS=params["BIAS"], FNUZ=params["FNUZ"], SOFT_BF16=soft_bf16)
    return out


def times_block_factors(p, d):
    """fp32 p (any rank) times MM-1 block factors d (same rank, each dim dividing p's, or 0-d),
    every element by the factor of its block: broadcast over a split view, nothing expanded."""
    if d.dim() == 0:
        return p * d.float()
    split, dims = [], []
    for n, nd in zip(p.shape, d.shape):
        split += [nd, n // nd]
        dims += [nd, 1]
    return (p.reshape(split) * d.float().reshape(dims)).reshape(p.shape)


def exact_values(p, d, dtype):
    """p's exact values times its MM-1 block factors d (same rank, or 0-d), rounded once to
    `dtype`: the one Triton pass where it applies, else the same bits by torch ops."""
    out = dequant_blocks(p, d, dtype)
    return out if out is not None else times_block_factors(p.float(), d).to(dtype)
