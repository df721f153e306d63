"""Dequantize ops on torch tensors (spec: F8-8, MX-8, I8-8, BW-4, FMT-6): exact products in
float64, then ONE rounding to the output dtype. Plain torch (any device with float64); these
are not on the training path, they exist so the fast backend is judged on every op."""
import torch

LAYER = "qtrain.fast.dequantize"
_OUT = (torch.float32, torch.bfloat16)


def round_float64(v, out_dtype):
    """FMT-6: one rne rounding of float64 `v` to float32 or bfloat16 (overflow to +-Inf).
    bfloat16 goes through float32 with round-to-odd (truncate toward zero, set the last bit when
    inexact): 24 >= 8 + 2 bits, so the final float32 -> bfloat16 rne is the single rounding."""
    if out_dtype not in _OUT:
        raise TypeError(f"{LAYER}: out_dtype {out_dtype}; expected torch.float32 or torch.bfloat16")
    x32 = v.to(torch.float32)                                  # rne
    if out_dtype == torch.float32:
        return x32
    back = x32.to(torch.float64)
    finite = torch.isfinite(v)
    away = finite & (back.abs() > v.abs())                     # rne went away from zero
    x32 = torch.where(away, torch.nextafter(x32, torch.zeros_like(x32)), x32)
    inexact = finite & (x32.to(torch.float64) != v)
    odd = (x32.view(torch.int32) | inexact.to(torch.int32)).view(torch.float32)
    return odd.to(torch.bfloat16)


def dequantize_float8(data, quant_scale, out_dtype=torch.float32):
    """F8-8: fp64(data) / fp64(quant_scale) (scale () or keepdims), rounded once."""
    return round_float64(data.to(torch.float64) / quant_scale.to(torch.float64), out_dtype)


def e8m0_to_float64(scale_bits):
    """MX-8 / FMT-1: byte b -> 2^(b - 127) exactly, 0xFF -> NaN."""
    b = scale_bits.to(torch.float64)
    return torch.where(scale_bits == 0xFF, torch.full_like(b, float("nan")), torch.exp2(b - 127))


def dequantize_mx(data, scale_bits, block_size=32, axis=-1, out_dtype=torch.float32):
    """MX-8: fp64(data) * 2^(byte - 127) per block of `block_size` along `axis`, rounded once."""
    axis = axis % data.dim()
    if data.shape[axis] != scale_bits.shape[axis] * block_size:
        raise ValueError(f"{LAYER}: scale_bits shape {tuple(scale_bits.shape)} does not match data "
                         f"shape {tuple(data.shape)} with blocks of {block_size} along axis {axis}")
    factor = e8m0_to_float64(scale_bits).repeat_interleave(block_size, dim=axis)
    return round_float64(data.to(torch.float64) * factor, out_dtype)


def dequantize_int8(data, dequant_scale, out_dtype=torch.float32):
    """I8-8: fp64(data) * fp64(dequant_scale), rounded once (NaN scale -> NaN)."""
    return round_float64(data.to(torch.float64) * dequant_scale.to(torch.float64), out_dtype)


def dequantize_blockwise(data, quant_scale, block=(1, 128), out_dtype=torch.float32):
    """BW-4: fp64(data) / fp64(quant_scale[r // b0, c // b1]), rounded once."""
    rows, cols = data.shape
    if quant_scale.shape != (rows // block[0], cols // block[1]) or rows % block[0] or cols % block[1]:
        raise ValueError(f"{LAYER}: quant_scale shape {tuple(quant_scale.shape)} does not tile "
                         f"data shape {tuple(data.shape)} in blocks {tuple(block)}")
    scale = quant_scale.to(torch.float64).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return round_float64(data.to(torch.float64) / scale, out_dtype)
