"""The one tolerance table of the harness (spec/06-scaled-mm.md, MM-4); every entry says why."""
import math

# Payloads, scales and scale bytes are compared bit for bit: no tolerance exists for them.
# The only freedom is NaN payload/sign bits (FMT-2): NaN is compared as "is NaN".

# MM-4, per element, with T64 the exact fp64 sum and S = sum_k |t_k|:
#   |out - ref| <= 2 u_out |T64| + (1 + u_out) (g_K + 2^-22) S + eta_out + K 2^-148
U_OUT = {
    "float32": 2.0 ** -24,   # fp32 rne: 24-bit significand. Counted twice: backend's and ref's rounding
    "bfloat16": 2.0 ** -8,   # bf16 rne: 8-bit significand
}
ETA_OUT = {
    "float32": 2.0 ** -149,  # smallest fp32 subnormal: absolute floor of the output rounding
    "bfloat16": 2.0 ** -133, # smallest bf16 subnormal
}
U_ACC = {
    "fp32": 2.0 ** -23,      # fp32 accumulator (nearest or truncating); int32 for int8 is exact and meets it
    "fast": 2.0 ** -13,      # Hopper float8 fast accumulation (~14-bit truncating), only where RC-3 allows
}
SCALE_PATH = 2.0 ** -22      # up to four fp32 roundings of the dequant factors per term (MM-3)
UNDERFLOW_PER_TERM = 2.0 ** -148   # scale-path roundings below 2^-126 are absolute, two per term


def g_k(u_acc: float, k: int) -> float:
    """(1 + u_acc)^K - 1, computed without cancellation (valid for every K)."""
    return math.expm1(k * math.log1p(u_acc))


def mm_bound_terms(out_dtype: str, accumulation: str, k: int):
    """(rel, coef, absolute) so that the bound is rel*|T64| + coef*S + absolute."""
    if out_dtype not in U_OUT:
        raise ValueError(f"qtrain.conformance.tolerances: no u_out for out_dtype {out_dtype!r}; "
                         f"known {sorted(U_OUT)}")
    if accumulation not in U_ACC:
        raise ValueError(f"qtrain.conformance.tolerances: unknown accumulation {accumulation!r}; "
                         f"known {sorted(U_ACC)}")
    u_out = U_OUT[out_dtype]
    coef = (1.0 + u_out) * (g_k(U_ACC[accumulation], k) + SCALE_PATH)
    return 2.0 * u_out, coef, ETA_OUT[out_dtype] + k * UNDERFLOW_PER_TERM
