"""torch.library custom ops ("qtrain::*") over the backend interface (brief: torch-level backend).

Each op takes the concrete backend name as a string, so one compiled graph holds opaque calls
and no Python dispatch; the fake (meta) kernels give exact shapes and dtypes so torch.compile
traces the quantized path without graph breaks.
"""
from typing import List, Optional

import torch

from . import backend as _backend
from ._dispatch import custom_op

FLOAT8_DTYPES = {name: getattr(torch, name) for name in
                 ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")}


def _impl(name):
    return _backend._instance(name)


def _keepdims_shape(shape, axis):
    shape = list(shape)
    shape[axis] = 1
    return shape


def dequant_of(quant_scale: torch.Tensor) -> torch.Tensor:
    """The product's dequant factors of float8 quant scales (MM-1): 1 / quant_scale as
    torch.reciprocal rounds it (fp32 division), shaped like quant_scale, (1,) for a tensorwise
    scale of shape (). For a backend whose cast does not write them."""
    return torch.reciprocal(quant_scale).reshape(quant_scale.shape or (1,))


def _with_dequant(out, n):
    """A cast's n outputs (the quant scale last) and its dequant factors: the backend's own
    when it returned n + 1 tensors, else dequant_of the quant scale."""
    return tuple(out) if len(out) == n + 1 else (*out, dequant_of(out[-1]))


# ---- quantize_float8 (F8-*) ----------------------------------------------------------------
@custom_op("qtrain::quantize_float8")
def quantize_float8(x: torch.Tensor, fmt: str, axis: Optional[int], pow2_scale: bool,
                    backend: str, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """transposed=True: the quantization of x.T (2-D x), written directly in that layout."""
    return _impl(backend).quantize_float8(x, fmt, axis, pow2_scale, transposed=transposed)


def _shape(x, transposed):
    return list(x.shape[::-1]) if transposed else list(x.shape)


@quantize_float8.register_fake
def _(x, fmt, axis, pow2_scale, backend, transposed=False):
    shape = _shape(x, transposed)
    scale_shape = [] if axis is None else _keepdims_shape(shape, axis)       # F8-7
    return (x.new_empty(shape, dtype=FLOAT8_DTYPES[fmt]),
            x.new_empty(scale_shape, dtype=torch.float32))


# ---- quantize_float8_axiswise: along the last axis, with the dequant factors (F8-7, MM-1) ---
@custom_op("qtrain::quantize_float8_axiswise")
def quantize_float8_axiswise(x: torch.Tensor, fmt: str, pow2_scale: bool, backend: str,
                             transposed: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, quant_scale, dequant): quantize_float8(x, fmt, axis=-1, ...) (transposed: of x.T,
    written from x) and the factors the product applies, 1 / quant_scale. A backend may write
    them from its cast kernel (fast does), saving a reciprocal launch per operand; else they
    are torch.reciprocal's. What the axiswise recipes call; a tensor subclass that intercepts
    quantize_float8 (FSDP's gathered float8 weight) is tensorwise and does not come here."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_float8_axiswise"):
        out = impl.quantize_float8_axiswise(x, fmt, pow2_scale, transposed=transposed)
    else:
        out = impl.quantize_float8(x, fmt, -1, pow2_scale, transposed=transposed)
    return _with_dequant(out, 2)


@quantize_float8_axiswise.register_fake
def _(x, fmt, pow2_scale, backend, transposed=False):
    shape = _shape(x, transposed)
    scale_shape = _keepdims_shape(shape, -1)
    return (x.new_empty(shape, dtype=FLOAT8_DTYPES[fmt]),
            x.new_empty(scale_shape, dtype=torch.float32),
            x.new_empty(scale_shape, dtype=torch.float32))


# ---- tensor_amax: x's F8-1 amax alone ---------------------------------------------------------
@custom_op("qtrain::tensor_amax")
def tensor_amax(x: torch.Tensor, backend: str) -> torch.Tensor:
    """max |x| as a one-element fp32 tensor, NaN when any element is NaN (F8-1): the amax that
    a tensorwise cast of x computes, for a caller that casts x more than once (a linear's
    weight: w for the output, w.T for grad_input) and hands it to quantize_float8_given_amax
    each time, so the amax pass runs once. A backend without the method uses torch's
    reduction (exact: a max, and torch's amax propagates NaN)."""
    impl = _impl(backend)
    if hasattr(impl, "tensor_amax"):
        return impl.tensor_amax(x)
    return x.detach().abs().amax().to(torch.float32).reshape(1)


@tensor_amax.register_fake
def _(x, backend):
    return x.new_empty([1], dtype=torch.float32)


# ---- quantize_float8_given_amax: the tensorwise cast, its amax computed by the caller (F8-1) -
@custom_op("qtrain::quantize_float8_given_amax")
def quantize_float8_given_amax(x: torch.Tensor, amax: torch.Tensor, fmt: str, pow2_scale: bool,
                               backend: str, transposed: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, quant_scale, dequant): quantize_float8(x, fmt, axis=None, ...) for a caller that
    already holds x's F8-1 amax (max |x|, NaN when any element is NaN) as a one-element fp32
    tensor: under torch.compile a torch reduction that inductor can fuse into the kernel
    producing x, so the backend runs the cast pass alone. Same bits as quantize_float8 when
    amax is that max. dequant (shape (1,)) is 1 / quant_scale, the factor the product applies
    (MM-1): a backend may write it from its cast kernel (fast does), saving a reciprocal
    launch per operand; else it is torch.reciprocal's. A backend without the method computes
    its own amax."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_float8_given_amax"):
        out = impl.quantize_float8_given_amax(x, amax, fmt, pow2_scale, transposed=transposed)
    else:
        out = impl.quantize_float8(x, fmt, None, pow2_scale, transposed=transposed)
    return _with_dequant(out, 2)


@quantize_float8_given_amax.register_fake
def _(x, amax, fmt, pow2_scale, backend, transposed=False):
    return (x.new_empty(_shape(x, transposed), dtype=FLOAT8_DTYPES[fmt]),
            x.new_empty([], dtype=torch.float32), x.new_empty([1], dtype=torch.float32))


# ---- quantize_float8_dual: both axiswise quantizations of a 2-D x from one read (F8-7) -------
@custom_op("qtrain::quantize_float8_dual")
def quantize_float8_dual(x: torch.Tensor, fmt: str, pow2_scale: bool, backend: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor]:
    """(data, quant_scale) of x along axis -1 and (data_t, quant_scale_t) of x.T along its last
    axis (= x along axis 0, in x.T's layout): what the rowwise recipes need of x and of g.
    Bit-identical to the two separate quantizations; a backend may fuse them (fast does). Then
    (dequant, dequant_t): 1 / each quant scale, the factors the products apply (MM-1), written
    by the backend's cast where it does (fast), else torch.reciprocal's."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_float8_dual"):
        out = impl.quantize_float8_dual(x, fmt, pow2_scale)
    else:
        out = (*impl.quantize_float8(x, fmt, -1, pow2_scale),
               *impl.quantize_float8(x, fmt, -1, pow2_scale, transposed=True))
    if len(out) == 6:
        return tuple(out)
    data, qs, data_t, qs_t = out
    return data, qs, data_t, qs_t, dequant_of(qs), dequant_of(qs_t)


@quantize_float8_dual.register_fake
def _(x, fmt, pow2_scale, backend):
    rows, cols = x.shape
    dt = FLOAT8_DTYPES[fmt]
    return (x.new_empty((rows, cols), dtype=dt), x.new_empty((rows, 1), dtype=torch.float32),
            x.new_empty((cols, rows), dtype=dt), x.new_empty((cols, 1), dtype=torch.float32),
            x.new_empty((rows, 1), dtype=torch.float32),
            x.new_empty((cols, 1), dtype=torch.float32))


# ---- quantize_float8_both_layouts: tensorwise x and x.T from one cast (F8-7, RC-4) ----------
@custom_op("qtrain::quantize_float8_both_layouts")
def quantize_float8_both_layouts(x: torch.Tensor, fmt: str, pow2_scale: bool, backend: str,
                                 amax: Optional[torch.Tensor] = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, data_t, quant_scale, dequant): the tensorwise quantization of 2-D x and the same
    payload transposed (x.T row-major), for an operand that one product reads along each axis
    (RC-4's x and g). Bit-identical to quantize_float8(x, axis=None) and its transposed copy; a
    backend may write both from one cast pass (fast does). amax: x's F8-1 amax when the caller
    has it (quantize_float8_given_amax). dequant as in quantize_float8_given_amax."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_float8_both_layouts"):
        return _with_dequant(impl.quantize_float8_both_layouts(x, fmt, pow2_scale, amax), 3)
    if amax is not None and hasattr(impl, "quantize_float8_given_amax"):
        data, qs = impl.quantize_float8_given_amax(x, amax, fmt, pow2_scale)[:2]
    else:
        data, qs = impl.quantize_float8(x, fmt, None, pow2_scale)
    return data, data.t().contiguous(), qs, dequant_of(qs)


@quantize_float8_both_layouts.register_fake
def _(x, fmt, pow2_scale, backend, amax=None):
    rows, cols = x.shape
    dt = FLOAT8_DTYPES[fmt]
    return (x.new_empty((rows, cols), dtype=dt), x.new_empty((cols, rows), dtype=dt),
            x.new_empty([], dtype=torch.float32), x.new_empty([1], dtype=torch.float32))


# ---- quantize_mx (MX-*) --------------------------------------------------------------------
@custom_op("qtrain::quantize_mx")
def quantize_mx(x: torch.Tensor, elem_fmt: str, block_size: int, axis: int, scale_mode: str,
                backend: str, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """transposed=True: the quantization of x.T (2-D x), written directly in that layout."""
    return _impl(backend).quantize_mx(x, elem_fmt, block_size, axis, scale_mode,
                                      transposed=transposed)


@quantize_mx.register_fake
def _(x, elem_fmt, block_size, axis, scale_mode, backend, transposed=False):
    shape = _shape(x, transposed)
    scale_shape = list(shape)
    scale_shape[axis] = scale_shape[axis] // block_size
    return (x.new_empty(shape, dtype=FLOAT8_DTYPES[elem_fmt]),
            x.new_empty(scale_shape, dtype=torch.uint8))


# ---- quantize_mx_values (MX-10) -------------------------------------------------------------
@custom_op("qtrain::quantize_mx_values")
def quantize_mx_values(x: torch.Tensor, elem_fmt: str, block_size: int, axis: int,
                       scale_mode: str, backend: str) -> torch.Tensor:
    """The bf16 values of x's MX quantization along `axis` (-1, or 0 of x viewed (M, C)), in
    x's layout: MX-8 of MX-1..MX-7 (an emulated product's operand, RC-7)."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_mx_values"):
        return impl.quantize_mx_values(x, elem_fmt, block_size, axis, scale_mode)
    data, bits = impl.quantize_mx(x, elem_fmt, block_size, axis, scale_mode)
    return impl.dequantize_mx(data, bits, block_size, axis, out_dtype=torch.bfloat16)


@quantize_mx_values.register_fake
def _(x, elem_fmt, block_size, axis, scale_mode, backend):
    return x.new_empty(x.shape, dtype=torch.bfloat16)


# ---- quantize_int8 (I8-*) ------------------------------------------------------------------
@custom_op("qtrain::quantize_int8")
def quantize_int8(x: torch.Tensor, axis: int, noise: Optional[torch.Tensor],
                  backend: str, transposed: bool = False, noise_seed: Optional[int] = None,
                  noise_call: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """transposed=True: the quantization of x.T (2-D x; noise given in x.T's layout too).
    noise_seed and noise_call instead of noise: I8-10 noise of x's elements (element i of x,
    flat row-major, whether or not transposed), drawn inside a backend that declares
    `draws_counter_noise`, else drawn here and handed over as a tensor. Same bits either way."""
    impl = _impl(backend)
    if noise_call is not None:
        if getattr(impl, "draws_counter_noise", False):
            return impl.quantize_int8(x, axis, None, transposed=transposed,
                                      counter_noise=(noise_seed, noise_call))
        noise = draw_noise(impl, x, noise_seed, noise_call)
        noise = noise.t() if transposed else noise
    return impl.quantize_int8(x, axis, noise, transposed=transposed)


@quantize_int8.register_fake
def _(x, axis, noise, backend, transposed=False, noise_seed=None, noise_call=None):
    shape = _shape(x, transposed)
    return (x.new_empty(shape, dtype=torch.int8),
            x.new_empty(_keepdims_shape(shape, axis), dtype=torch.float32))


# ---- quantize_int8_dual: both int8 axiswise quantizations of a 2-D x from one read (I8-*) -----
@custom_op("qtrain::quantize_int8_dual")
def quantize_int8_dual(x: torch.Tensor, noise: Optional[torch.Tensor], backend: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, dequant_scale) of x along axis -1 and (data_t, dequant_scale_t) of x.T along its
    last axis, noise (like x) shared: what the int8 recipe needs of x and of g. Bit-identical
    to the two separate quantizations, which run unless the backend fuses them (fast does not:
    its one-read kernel measured slower than the two casts)."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_int8_dual"):
        return impl.quantize_int8_dual(x, noise)
    data, ds = impl.quantize_int8(x, -1, noise)
    data_t, ds_t = impl.quantize_int8(x, -1, None if noise is None else noise.t(),
                                      transposed=True)
    return data, ds, data_t, ds_t


@quantize_int8_dual.register_fake
def _(x, noise, backend):
    m, k = x.shape
    return (x.new_empty((m, k), dtype=torch.int8), x.new_empty((m, 1), dtype=torch.float32),
            x.new_empty((k, m), dtype=torch.int8), x.new_empty((k, 1), dtype=torch.float32))


# ---- quantize_blockwise (BW-*) -------------------------------------------------------------
@custom_op("qtrain::quantize_blockwise")
def quantize_blockwise(x: torch.Tensor, block: List[int], fmt: str, backend: str,
                       transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """transposed=True: the quantization of x.T (2-D x) with `block` in x.T's orientation,
    written in that layout (a backend may write it straight from x; fast does for (1, b))."""
    if transposed:
        return _impl(backend).quantize_blockwise(x, tuple(block), fmt, transposed=True)
    return _impl(backend).quantize_blockwise(x, tuple(block), fmt)


@quantize_blockwise.register_fake
def _(x, block, fmt, backend, transposed=False):
    rows, cols = _shape(x, transposed)
    return (x.new_empty((rows, cols), dtype=FLOAT8_DTYPES[fmt]),          # BW-3
            x.new_empty((rows // block[0], cols // block[1]), dtype=torch.float32))


@custom_op("qtrain::quantize_blockwise_with_dequant")
def quantize_blockwise_with_dequant(x: torch.Tensor, block: List[int], fmt: str, backend: str,
                                    transposed: bool = False
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data, quant_scale, dequant): quantize_blockwise and the factors the product applies,
    1 / quant_scale (MM-1). A backend may write them from its cast kernels (fast does), saving
    a reciprocal launch per operand; else they are torch.reciprocal's. What the blockwise
    recipe calls."""
    impl = _impl(backend)
    if hasattr(impl, "quantize_blockwise_with_dequant"):
        out = impl.quantize_blockwise_with_dequant(x, tuple(block), fmt, transposed=transposed)
    elif transposed:
        out = impl.quantize_blockwise(x, tuple(block), fmt, transposed=True)
    else:
        out = impl.quantize_blockwise(x, tuple(block), fmt)
    return _with_dequant(out, 2)


@quantize_blockwise_with_dequant.register_fake
def _(x, block, fmt, backend, transposed=False):
    rows, cols = _shape(x, transposed)
    scale_shape = (rows // block[0], cols // block[1])
    return (x.new_empty((rows, cols), dtype=FLOAT8_DTYPES[fmt]),
            x.new_empty(scale_shape, dtype=torch.float32),
            x.new_empty(scale_shape, dtype=torch.float32))


# ---- scaled_mm_nt (MM-1, MM-2) -------------------------------------------------------------
@custom_op("qtrain::scaled_mm_nt")
def scaled_mm_nt(a: torch.Tensor, a_dequant: torch.Tensor, b: torch.Tensor,
                 b_dequant: torch.Tensor, out_dtype: torch.dtype, backend: str,
                 use_fast_accum: bool = False, pow2_factors: bool = False) -> torch.Tensor:
    """use_fast_accum: the product may accumulate in reduced precision where RC-3 allows it
    (MM-4 with u_acc = 2^-13); a backend without such a mode ignores it (MM-3: free).
    pow2_factors: the caller's promise that every dequant factor is a power of two (MX, pow2
    float8 scales), handed only to a backend that declares `takes_pow2_factors` (fast: it
    may then run the product on exactly dequantized bf16 operands)."""
    impl = _impl(backend)
    if pow2_factors and getattr(impl, "takes_pow2_factors", False):
        return impl.scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype,
                                 use_fast_accum=use_fast_accum, pow2_factors=True)
    return impl.scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=use_fast_accum)


@scaled_mm_nt.register_fake
def _(a, a_dequant, b, b_dequant, out_dtype, backend, use_fast_accum=False, pow2_factors=False):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# ---- mm_mx_values (RC-7 emulated: MM-2 of MX operands as bf16 values) ----------------------
@custom_op("qtrain::mm_mx_values")
def mm_mx_values(a: torch.Tensor, a_dequant: Optional[torch.Tensor], b: torch.Tensor,
                 b_dequant: Optional[torch.Tensor], backend: str) -> torch.Tensor:
    """a (M, K) @ b (N, K).T in bf16 for MX operands given each as its MX-10 values (dequant
    None: bf16, any strides) or as a row-major payload with its fp32 MM-1 factors (powers of
    two, (R, K / 32)): MM-2 with fp32 accumulation (MM-4, u_acc = 2^-23)."""
    return _impl(backend).mm_mx_values(a, a_dequant, b, b_dequant)


@mm_mx_values.register_fake
def _(a, a_dequant, b, b_dequant, backend):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.bfloat16)


# ---- stochastic-rounding noise (I8-5: the noise is an input, drawn by I8-10) -----------------
def draw_noise(impl, like, seed, call):
    """I8-10 noise in [0, 1), fp32, shaped like `like`, for a backend that does not draw it
    inside its int8 casts: its own `uniform_noise` if it has one, else qtrain/noise.py's torch
    ops (conformance judges this same function). The call index stays on the device (no host sync); every path gives the same bits."""
    if hasattr(impl, "uniform_noise"):
        return impl.uniform_noise(like, seed, call)
    from .noise import uniform_noise as torch_uniform_noise
    return torch_uniform_noise(like.shape, seed, call.to(like.device))
