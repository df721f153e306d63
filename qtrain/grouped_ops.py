"""torch.library custom ops for grouped products (spec/06 MM-5, spec/07 RC-13), in the style of
qtrain/ops.py: the concrete backend name travels as a string and fake kernels give exact
shapes, so torch.compile traces the grouped layer with opaque calls and no graph breaks.

Backend interface (three methods, same names and signatures in every backend, and one optional):
- quantize_float8_grouped_t(x, offs, align, fmt, pow2_scale, padded_offs=None)
  -> (data_t, quant_scale):
  x (M, C) quantized along axis 0 WITHIN each token group (F8-7 applied to every slice
  x[offs[g-1]:offs[g]] on its own; an empty group has amax 0, F8-6). data_t is (C, Mp), the
  transposed payload in the padded layout of qtrain.grouping (group g at columns
  [padded_offs[g-1], padded_offs[g]), zeros elsewhere), Mp = padded_rows(M, E, align);
  quant_scale is fp32 (E, C). padded_offs, when given, is padded_offsets(offs, align) already
  computed by the caller (a backend may use it instead of computing it again).
- quantize_float8_experts_t(w, fmt, pow2_scale) -> (data, quant_scale): expert weights
  w (E, N, K) quantized along N within each expert, i.e. w[e].T (K, N) rowwise (F8-7) for
  every e: data (E, K, N) row-major, quant_scale fp32 (E, K). (grad_input's B operand.)
- scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1) -> out: MM-5
  exactly as qtrain.reference.scaled_grouped_mm (2d x 3d, or 2d x 2d grouped along the
  contraction, with per-group (E, R, 1) or block-form factors). group_align is a layout
  promise only (every 2d x 2d group starts at a multiple of it); it never changes the result.
  Optional hints, passed only to a backend that declares it takes them: pow2_factors=True
  (`takes_pow2_factors`) and use_fast_accum=True (`takes_fast_accum`: RC-3 / RC-15 allow this
  product fast accumulation; the result stays within MM-4 with that accumulation's bound).
- optional: padded_offsets(offs, align) -> qtrain.grouping.padded_offsets(offs, align) (the same
  int32 values) in fewer launches, for eager calls (`padded_offsets` below).
- optional: pad_groups(x, offs, align, pends) -> qtrain.grouping.pad_groups(x, offs, align)[0]
  (the same bits) given pends = padded_offsets(offs, align), in fewer launches, for eager
  calls (`pad_groups` below).
"""
from typing import Optional

import torch

from . import backend as _backend
from . import grouping
from ._dispatch import custom_op, plain_eager
from .grouping import padded_rows
from .ops import FLOAT8_DTYPES, dequant_of


def grouped_impl(name):
    """The object serving the grouped ops for backend `name`."""
    impl = _backend._instance(name)
    if hasattr(impl, "scaled_grouped_mm"):
        return impl
    raise NotImplementedError(
        f"qtrain.grouped_ops: backend {name!r} has no grouped products (scaled_grouped_mm); "
        f"use 'reference' or 'fast'")


def _with_dequant(impl, method, *args):
    """(data, quant_scale, dequant) of a grouped cast: dequant = 1 / quant_scale, written by
    the backend's kernel where it says it can (grouped_casts_write_dequant), else
    torch.reciprocal's (the same bits)."""
    if getattr(impl, "grouped_casts_write_dequant", False):
        return getattr(impl, method)(*args, with_dequant=True)
    data, qs = getattr(impl, method)(*args)
    return data, qs, dequant_of(qs)


def padded_offsets(offs, align, backend):
    """grouping.padded_offsets(offs, align): the backend's own (one launch on fast) for an eager
    call on a plain tensor, else the torch ops (under torch.compile inductor fuses them)."""
    impl = grouped_impl(backend)
    if hasattr(impl, "padded_offsets") and plain_eager((offs,)):
        return impl.padded_offsets(offs, align)
    return grouping.padded_offsets(offs, align)


def pad_groups(t, offs, align, pends, backend):
    """grouping.pad_groups(t, offs, align)[0], the rows of t in the padded layout whose group
    ends are pends (= padded_offsets(offs, align)): the backend's own (one launch on fast) for
    an eager call on plain tensors, else the torch ops (under torch.compile inductor fuses
    them)."""
    impl = grouped_impl(backend)
    if hasattr(impl, "pad_groups") and plain_eager((t, offs, pends)):
        return impl.pad_groups(t, offs, align, pends)
    return grouping.pad_groups(t, offs, align)[0]


@custom_op("qtrain::quantize_float8_grouped_t")
def quantize_float8_grouped_t(x: torch.Tensor, offs: torch.Tensor, align: int, fmt: str,
                              pow2_scale: bool, backend: str,
                              padded_offs: Optional[torch.Tensor] = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data_t (C, Mp), quant_scale (E, C), dequant (E, C)): x along tokens within each group
    (RC-13), in the padded layout, and the product's factors 1 / quant_scale."""
    return _with_dequant(grouped_impl(backend), "quantize_float8_grouped_t", x, offs, align,
                         fmt, pow2_scale, padded_offs)


@quantize_float8_grouped_t.register_fake
def _(x, offs, align, fmt, pow2_scale, backend, padded_offs=None):
    m, c = x.shape
    n_groups = offs.shape[0]
    return (x.new_empty((c, padded_rows(m, n_groups, align)), dtype=FLOAT8_DTYPES[fmt]),
            x.new_empty((n_groups, c), dtype=torch.float32),
            x.new_empty((n_groups, c), dtype=torch.float32))


@custom_op("qtrain::quantize_float8_experts_t")
def quantize_float8_experts_t(w: torch.Tensor, fmt: str, pow2_scale: bool, backend: str
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(data (E, K, N), quant_scale (E, K), dequant (E, K)): every w[e].T along N, and the
    product's factors 1 / quant_scale."""
    return _with_dequant(grouped_impl(backend), "quantize_float8_experts_t", w, fmt,
                         pow2_scale)


@quantize_float8_experts_t.register_fake
def _(w, fmt, pow2_scale, backend):
    e, n, k = w.shape
    return (w.new_empty((e, k, n), dtype=FLOAT8_DTYPES[fmt]),
            w.new_empty((e, k), dtype=torch.float32), w.new_empty((e, k), dtype=torch.float32))


@custom_op("qtrain::scaled_grouped_mm")
def scaled_grouped_mm(a: torch.Tensor, a_dequant: torch.Tensor, b: torch.Tensor,
                      b_dequant: torch.Tensor, offs: torch.Tensor, out_dtype: torch.dtype,
                      backend: str, group_align: int = 1,
                      pow2_factors: bool = False, use_fast_accum: bool = False) -> torch.Tensor:
    """pow2_factors: the caller's promise that every factor is a power of two (rowwise pow2,
    MX), handed to a backend that declares `takes_pow2_factors` (see qtrain/ops.py).
    use_fast_accum: RC-3 / RC-15 allow this product fast accumulation (the output product of
    the float8 recipes; the gradient products where the config says so), handed to a backend
    that declares `takes_fast_accum`; the others accumulate in fp32, which is always allowed."""
    impl = grouped_impl(backend)
    hints = {}
    if pow2_factors and getattr(impl, "takes_pow2_factors", False):
        hints["pow2_factors"] = True
    if use_fast_accum and getattr(impl, "takes_fast_accum", False):
        hints["use_fast_accum"] = True
    return impl.scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype, group_align,
                                  **hints)


@scaled_grouped_mm.register_fake
def _(a, a_dequant, b, b_dequant, offs, out_dtype, backend, group_align=1, pow2_factors=False,
      use_fast_accum=False):
    if b.dim() == 3:                                   # 2d x 3d: (M, N)
        return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)
    return a.new_empty((offs.shape[0], a.shape[0], b.shape[0]), dtype=out_dtype)   # (E, M, N)


@custom_op("qtrain::mm_mx_values_grouped")
def mm_mx_values_grouped(a: torch.Tensor, a_dequant: Optional[torch.Tensor], b: torch.Tensor,
                         b_dequant: Optional[torch.Tensor], offs: torch.Tensor, backend: str,
                         group_align: int = 1) -> torch.Tensor:
    """RC-7's emulated MM-5 (bf16 out) for MX operands given each as its MX-10 values (dequant
    None: bf16, any strides) or as payload and block factors: the forms and zero rules of
    scaled_grouped_mm. group_align as there."""
    return grouped_impl(backend).mm_mx_values_grouped(a, a_dequant, b, b_dequant, offs,
                                                      group_align)


@mm_mx_values_grouped.register_fake
def _(a, a_dequant, b, b_dequant, offs, backend, group_align=1):
    if b.dim() == 3:
        return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)
    return a.new_empty((offs.shape[0], a.shape[0], b.shape[0]), dtype=torch.bfloat16)
