"""The one tolerance table of the harness (spec/06-scaled-mm.md MM-4, spec/07-recipes.md RC-2,
RC-8, RC-10); every entry says why."""
import numpy as np

# Distributed cases (conformance/distributed.py) take their bounds from distributed_tests/
# parity.py (TOLERANCES, product_bound, sum_order_bound: the table the distributed tests use,
# with its reasons); restating them here would give two tables that can drift apart.

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
    "tensor_core": 2.0 ** -23,  # MM-7: fp32 across promotion intervals, plus TENSOR_CORE_P terms
                                # at 2^-13 inside one interval (fp8 tensor cores, RC-3: P <= 128)
    "hp": 2.0 ** -23,        # RC-2: an hp product is torch matmul in the model dtype with fp32
                             # accumulation; outside MM-4, judged with MM-4's form on the unquantized
                             # operands (the scale-path term stays: it only loosens, by 2^-22 S)
}
TENSOR_CORE_P = 128          # RC-3: float8/mxfp8/blockwise products promote at least every 128 terms
TENSOR_CORE_U = 2.0 ** -13   # MM-7: the in-unit accumulation of Hopper fp8 tensor cores (~14 bits)
SCALE_PATH = 2.0 ** -22      # up to four fp32 roundings of the dequant factors per term (MM-3)
UNDERFLOW_PER_TERM = 2.0 ** -148   # scale-path roundings below 2^-126 are absolute, two per term

# RC-8 / I8-5: qtrain.linear draws the stochastic-rounding noise itself (its source is FREE), so
# the harness cannot rebuild those payloads. Each one is floor or ceil of the scaled value, within
# SR_STEPS quantization steps of the rne payload; the product then moves by at most
# SR_STEPS * sum_k dA(m,k) |B[n,k] dB(n,k)| from the rne product the harness computes.
SR_STEPS = 1.0


def g_k(u_acc: float, k):
    """(1 + u_acc)^K - 1, computed without cancellation (valid for every K; K may be an array)."""
    return np.expm1(np.asarray(k, dtype=np.float64) * np.log1p(u_acc))


def mm_bound_terms(out_dtype: str, accumulation: str, k):
    """(rel, coef, absolute) so that the bound is rel*|T64| + coef*S + absolute (K: int or array)."""
    if out_dtype not in U_OUT:
        raise ValueError(f"qtrain.conformance.tolerances: no u_out for out_dtype {out_dtype!r}; "
                         f"known {sorted(U_OUT)}")
    if accumulation not in U_ACC:
        raise ValueError(f"qtrain.conformance.tolerances: unknown accumulation {accumulation!r}; "
                         f"known {sorted(U_ACC)}")
    u_out = U_OUT[out_dtype]
    g = g_k(U_ACC[accumulation], k)
    if accumulation == "tensor_core":                                   # MM-7
        g = g + g_k(TENSOR_CORE_U, np.minimum(np.asarray(k, dtype=np.float64), TENSOR_CORE_P))
    coef = (1.0 + u_out) * (g + SCALE_PATH)
    return 2.0 * u_out, coef, ETA_OUT[out_dtype] + np.asarray(k, dtype=np.float64) * UNDERFLOW_PER_TERM


def bias_slack(out_dtype: str, t64, bias, product_limit):
    """RC-10: y = product + bias in the model dtype, the add inside or after the product (FREE).
    The harness expects round_out(T64 + bias). If the backend rounds the product p first (|p - T64|
    within the MM-4 limit L) and then p + bias, it commits u_out |p + bias| <= u_out (|T64| +
    |bias| + L), the expectation u_out |T64 + bias|, plus eta_out for both; so on top of L:
    u_out L + 2 u_out (|T64| + |bias|) + eta_out."""
    u_out = U_OUT[out_dtype]
    return (u_out * product_limit + 2.0 * u_out * (np.abs(t64) + np.abs(bias))
            + ETA_OUT[out_dtype])
