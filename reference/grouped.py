"""Grouped float8 casts for MoE layers (spec/07 RC-13 over spec/03 F8-7): a scale never crosses
a group boundary.

- quantize_float8_grouped_t: tokens x (M, C) sorted by group, offs the int cumulative group ends
  (MM-5). Each group's rows are quantized along axis 0 on their own (one scale per (group,
  column); an empty group has amax 0, the F8-6 scale). The payload is written transposed,
  (C, Mp), in the padded layout: group g starts at column P[g-1] (P[-1] = 0) where
  P[g] = P[g-1] + ceil(size_g / align) * align, and every other column is +0.
  Mp = max(align, ceil((M + E (align - 1)) / align) * align): a bound that depends on
  (M, E, align) only, so a kernel knows the shape without reading offs.
- quantize_float8_experts_t: expert weights w (E, N, K) quantized along N within each expert
  (one scale per (expert, k)), the payload written as (E, K, N): w[e].T quantized rowwise.
"""
import numpy as np

from ._checks import as_float32
from .casts import float8_dtype
from .float8 import float8_quant_scale, quantize_float8


def padded_width(m, n_groups, align):
    """Mp of the padded layout (module docstring)."""
    bound = m + n_groups * (align - 1)
    return max(align, -(-bound // align) * align)


def quantize_float8_grouped_t(x, offs, align, fmt, pow2_scale=False):
    """(data_t (C, Mp) float8, quant_scale float32 (E, C)); see the module docstring."""
    x32 = as_float32(x, "grouped.quantize_float8_grouped_t")
    ends = np.asarray(offs, dtype=np.int64).reshape(-1)
    if x32.ndim != 2 or align < 1:
        raise ValueError(f"qtrain.reference.grouped.quantize_float8_grouped_t: x must be 2-D "
                         f"and align >= 1, got x {x32.shape}, align {align}")
    m, c = x32.shape
    data_t = np.zeros((c, padded_width(m, len(ends), align)), dtype=float8_dtype(fmt))
    quant_scale = np.empty((len(ends), c), dtype=np.float32)
    quant_scale[:] = float8_quant_scale(np.float32(0), fmt, pow2_scale)    # empty group: F8-6
    start = pstart = 0
    for g, end in enumerate(ends.tolist()):
        if end > start:
            data, qs = quantize_float8(x32[start:end], fmt, axis=0, pow2_scale=pow2_scale)
            data_t[:, pstart:pstart + end - start] = data.T
            quant_scale[g] = qs[0]
        pstart += -(-(end - start) // align) * align
        start = end
    return data_t, quant_scale


def quantize_float8_experts_t(w, fmt, pow2_scale=False):
    """(data (E, K, N) float8, quant_scale float32 (E, K)); see the module docstring."""
    w32 = as_float32(w, "grouped.quantize_float8_experts_t")
    if w32.ndim != 3:
        raise ValueError(f"qtrain.reference.grouped.quantize_float8_experts_t: w must be "
                         f"(E, N, K), got {w32.shape}")
    data, qs = quantize_float8(w32, fmt, axis=1, pow2_scale=pow2_scale)
    return np.ascontiguousarray(data.transpose(0, 2, 1)), qs.reshape(w32.shape[0], w32.shape[2])
