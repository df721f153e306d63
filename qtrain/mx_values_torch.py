"""MX-10 values (spec/03-mx.md) written in torch ops, for torch.compile: inductor can fuse the
cast into the kernel that produces the tensor (the RMSNorm before q/k/v, the SiLU-mul before
w2, the backward's pointwise ops before g), where the fast backend's own pass reads the tensor
once more. The same arithmetic as fast/cast_mx.py's kernels, from the fp32 bits: block amax on
the |x| bits (NaN above Inf), the floor (MX-3) or rceil (MX-4) exponent, x * 2^-e, explicit
saturation then the float8 cast (FMT-2/FMT-3; torch's own cast saturates on some versions and
not on others), the decoded code times 2^e (exact), one rounding to bf16.

Used by qtrain/recipes.py quantize_values under torch.compile with QTRAIN_COMPILED_MX_VALUES=torch;
checked bit for bit against the reference in tests/test_mx_values_torch.py."""
import torch

from .formats import float8_format

_F8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def _fp32_of_bits(bits):
    return bits.to(torch.int32).view(torch.float32)


def _block_exponent(amax_bits, scale_mode, fmt):
    """(e, nan) per block from the amax bits (int32): MX-3 / MX-4, clamped, NaN flag (MX-2)."""
    finite = amax_bits < 0x7F800000
    if scale_mode == "rceil":
        rcp = torch.tensor(1.0 / fmt.max, dtype=torch.float32, device=amax_bits.device)
        d = (amax_bits.view(torch.float32) * rcp).view(torch.int32)
        d_exp, d_mant = d >> 23, d & 0x7FFFFF
        e = torch.where(d_exp == 0, torch.where(d_mant > 0x400000, -126, -127),
                        d_exp - 127 + (d_mant != 0).to(torch.int32))
        e = torch.clamp(e, min=-127)
        return e, ~finite | (e > 127)
    a_exp = amax_bits >> 23
    # a subnormal amax m * 2^-149: floor(log2(m)) from the exponent of fp32(m) (exact, m < 2^23)
    sub_log2 = ((amax_bits & 0x7FFFFF).to(torch.float32).view(torch.int32) >> 23) - 276
    e = torch.where(a_exp == 0, sub_log2, a_exp - 127) - fmt.emax
    return torch.clamp(e, -127, 127), ~finite


def quantize_mx_values_torch(x, elem_fmt, block_size=32, axis=-1, scale_mode="floor"):
    """bf16 MX-10 values of x along `axis` (-1, or 0 of x viewed (M, C)), in x's layout."""
    if elem_fmt not in _F8:
        raise ValueError(f"qtrain.mx_values_torch: element format {elem_fmt!r}; expected one "
                         f"of {sorted(_F8)}")
    if axis not in (-1, 0, x.dim() - 1):
        raise ValueError(f"qtrain.mx_values_torch: axis {axis} of shape {tuple(x.shape)}; use "
                         f"0 or -1")
    fmt = float8_format(elem_fmt)
    last = axis != 0 or x.dim() == 1
    n = x.shape[-1] if last else x.shape[0]
    if n % block_size:
        raise ValueError(f"qtrain.mx_values_torch: shape {tuple(x.shape)} has length {n} along "
                         f"axis {axis}, not a multiple of block_size {block_size}")
    xf = x.float()
    if last:                                     # (..., blocks, block): reduce the last dim
        blocks = xf.reshape(*x.shape[:-1], n // block_size, block_size)
        red = -1
    else:                                        # (blocks, block, C): reduce dim 1
        blocks = xf.reshape(n // block_size, block_size, -1)
        red = 1
    amax_bits = (blocks.view(torch.int32) & 0x7FFFFFFF).amax(dim=red, keepdim=True)
    e, nan = _block_exponent(amax_bits, scale_mode, fmt)
    e = torch.clamp(e, max=127)
    y = blocks * _fp32_of_bits(torch.where(e == 127, 0x00400000, (127 - e) << 23))   # MX-6
    y = torch.where(nan, float("nan"), y)
    y = torch.where(y > fmt.max, fmt.max, torch.where(y < -fmt.max, -fmt.max, y))   # NaN stays
    v = y.to(_F8[elem_fmt]).to(torch.float32)
    v = v * _fp32_of_bits(torch.where(e <= -127, 0x00400000, (e + 127) << 23))       # MX-8
    v = torch.where(nan, float("nan"), v)
    return v.to(torch.bfloat16).reshape(x.shape)
