"""qtrain.reference: the bit-exact NumPy + ml_dtypes implementation of spec/ (written for clarity, not speed)."""
from .blockwise import dequantize_blockwise, quantize_blockwise
from .casts import (cast_to_float8, ceil_log2, exp2_int, float8_dtype, float8_to_float64, floor_log2,
                    pow2_floor, round_float64)
from .float8 import dequantize_float8, float8_dequant_factor, float8_quant_scale, quantize_float8
from .grouped import quantize_float8_experts_t, quantize_float8_grouped_t
from .int8 import dequantize_int8, int8_dequant_factor, quantize_int8
from .mx import (dequantize_mx, e8m0_to_float, float32_to_e8m0_rceil, mx_dequant_factor,
                 quantize_mx, quantize_mx_values)
from .noise import uniform_noise
from .scaled_mm import (expand_dequant, mm_mx_values, mm_mx_values_grouped, scaled_grouped_mm,
                        scaled_mm_nt)

__all__ = [
    "cast_to_float8", "ceil_log2", "exp2_int", "float8_dtype", "float8_to_float64", "floor_log2",
    "pow2_floor", "round_float64",
    "quantize_float8", "dequantize_float8", "float8_quant_scale", "float8_dequant_factor",
    "quantize_mx", "quantize_mx_values", "dequantize_mx", "e8m0_to_float", "float32_to_e8m0_rceil", "mx_dequant_factor",
    "quantize_int8", "dequantize_int8", "int8_dequant_factor", "uniform_noise",
    "quantize_blockwise", "dequantize_blockwise",
    "scaled_mm_nt", "mm_mx_values", "scaled_grouped_mm", "mm_mx_values_grouped", "expand_dequant",
    "quantize_float8_grouped_t", "quantize_float8_experts_t",
]
