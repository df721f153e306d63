"""Shared helpers for the API/linear tests: the tolerance table, the MM-4 bound check, SQNR,
and each recipe applied BY HAND through qtrain.reference in float64 (independent of
qtrain/recipes.py, so the tests are not circular)."""
import ml_dtypes
import numpy as np
import torch

import qtrain.reference as ref

# Every tolerance, with its reason (STYLE: one table, no literals in tests).
TOLERANCES = {
    # torchao's own bars (test_float8 / test_mx_linear), spec/07-recipes.md
    "sqnr_float8_output_db": 18.0,
    "sqnr_float8_grad_weight_db": 17.0,
    "sqnr_mx_output_db": 27.0,
    "sqnr_mx_grad_input_db": 25.0,
    "sqnr_mx_grad_weight_db": 24.0,
    # 50-step training: final loss (mean of the last 5 steps) within this fraction of the
    # fp32 run's (measured: <1% for every recipe; ~30 dB SQNR noise barely moves the MSE).
    "train_loss_rel_margin": 0.05,
    # fast vs reference backend on the same quantized operands (same payloads and scales): the
    # products differ only by accumulation order (MM-7, promotion every <= 128 terms) and one
    # bf16 rounding of the output, far below 2^-6 of the largest output.
    "fast_vs_reference_max_rel": 2.0 ** -6,
    # promotion interval of Hopper fp8 tensor-core products without fast accumulation (RC-3)
    "tensor_core_promote_every": 128,
}
U_OUT = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8}


def to_np(t):
    """Exact NumPy copy of a float32/bf16 torch tensor (bf16 -> ml_dtypes.bfloat16)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def sqnr_db(approx, exact):
    approx, exact = approx.double(), exact.double()
    return float(10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum()))


def _g(u, k):
    """(1 + u)^k - 1 without cancellation (the exact form of gamma_k, MM-4)."""
    return np.expm1(k * np.log1p(u))


def assert_mm4(name, got, a, b, out_dtype, promote_every=0):
    """MM-4 with MM-7: |got - ref| <= 2 u_out |ref| + (g_P(2^-13) + g_K(2^-23) + 2^-22) S (+ the
    subnormal terms), S = sum_k |A B|, with `a` (M,K) and `b` (N,K) the DEQUANTIZED float64
    operands (ref = a @ b.T) and P = promote_every (0: plain fp32/int32 accumulation; K: fast
    accumulation). Reports the first violation."""
    exact = a @ b.T
    mag = np.abs(a) @ np.abs(b).T
    k = a.shape[1]
    u_out = U_OUT[out_dtype]
    acc = _g(2.0 ** -13, min(promote_every, k)) + _g(2.0 ** -23, k) + 2.0 ** -22
    eta = 2.0 ** -133 if out_dtype == torch.bfloat16 else 2.0 ** -149
    bound = 2 * u_out * np.abs(exact) + (1 + u_out) * acc * mag + eta + k * 2.0 ** -148
    got64 = got.detach().double().cpu().numpy()
    err = np.abs(got64 - exact)
    bad = ~(err <= bound)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.size} elements outside the MM-4 bound; first at "
            f"{i}: got {got64[i]!r}, ref {exact[i]!r}, |err| {err[i]:.3e} > bound {bound[i]:.3e}")


# ---- each operand dequantized by hand (float64), in its ORIGINAL orientation -------------
def f8(t, fmt, axis, pow2=False):
    data, qs = ref.quantize_float8(to_np(t), fmt, axis=axis, pow2_scale=pow2)
    return data.astype(np.float64) / qs.astype(np.float64)                 # F8-8


def mx(t, axis, fmt="float8_e4m3fn", block=32, mode="floor"):
    data, bits = ref.quantize_mx(to_np(t), fmt, block_size=block, axis=axis, scale_mode=mode)
    return data.astype(np.float64) * np.repeat(ref.e8m0_to_float(bits), block, axis=axis)


def i8(t, axis):
    data, ds = ref.quantize_int8(to_np(t), axis)
    return data.astype(np.float64) * ds.astype(np.float64)                 # I8-8


def bw(t, block):
    data, qs = ref.quantize_blockwise(to_np(t), block=block)
    scale = np.repeat(np.repeat(qs.astype(np.float64), block[0], 0), block[1], 1)
    return data.astype(np.float64) / scale


def hp(t, axis=None):
    return t.detach().double().cpu().numpy()


E4, E5 = "float8_e4m3fn", "float8_e5m2"

# recipe -> (x for output, w for output, g for grad_input, w for grad_input,
#            g for grad_weight, x for grad_weight), each f(tensor) -> float64 dequantized.
BY_HAND = {
    "tensorwise": (lambda x: f8(x, E4, None), lambda w: f8(w, E4, None),
                   lambda g: f8(g, E5, None), lambda w: f8(w, E4, None),
                   lambda g: f8(g, E5, None), lambda x: f8(x, E4, None)),
    "rowwise": (lambda x: f8(x, E4, 1, True), lambda w: f8(w, E4, 1, True),
                lambda g: f8(g, E4, 1, True), lambda w: f8(w, E4, 0, True),
                lambda g: f8(g, E4, 0, True), lambda x: f8(x, E4, 0, True)),
    "rowwise_with_gw_hp": (lambda x: f8(x, E4, 1, True), lambda w: f8(w, E4, 1, True),
                           lambda g: f8(g, E4, 1, True), lambda w: f8(w, E4, None, True),
                           hp, hp),
    "mxfp8": (lambda x: mx(x, 1), lambda w: mx(w, 1), lambda g: mx(g, 1), lambda w: mx(w, 0),
              lambda g: mx(g, 0), lambda x: mx(x, 0)),
    "mxfp8_rceil": (lambda x: mx(x, 1, mode="rceil"), lambda w: mx(w, 1, mode="rceil"),
                    lambda g: mx(g, 1, mode="rceil"), lambda w: mx(w, 0, mode="rceil"),
                    lambda g: mx(g, 0, mode="rceil"), lambda x: mx(x, 0, mode="rceil")),
    "int8": (lambda x: i8(x, 1), lambda w: i8(w, 1), lambda g: i8(g, 1), lambda w: i8(w, 0),
             lambda g: i8(g, 0), lambda x: i8(x, 0)),
    "blockwise": (lambda x: bw(x, (1, 128)), lambda w: bw(w, (128, 128)),
                  lambda g: bw(g, (1, 128)), lambda w: bw(w, (128, 128)),
                  lambda g: bw(g.t().contiguous(), (1, 128)).T,
                  lambda x: bw(x.t().contiguous(), (1, 128)).T),
}


# RC-3 / MM-7: the promotion interval P each product may use (K: fast accumulation).
TENSOR_CORE_P = 128
FAST = "K"


def _promote_every(recipe, product, k):
    if recipe == "int8":
        return 0                                              # exact int32 accumulation
    if product == "output" and recipe in ("tensorwise", "rowwise", "rowwise_with_gw_hp"):
        return k                                              # fast accumulation allowed
    return TENSOR_CORE_P


def check_recipe_by_hand(recipe, x, w, g, out, grad_x, grad_w):
    """Output and both grads of a quantized linear (no bias) against BY_HAND in float64, each
    product within MM-4/MM-7 at the promotion interval RC-3 allows it."""
    qx, qw, qg_i, qw_i, qg_w, qx_w = BY_HAND[recipe]
    assert_mm4(f"{recipe} output", out, qx(x), qw(w), out.dtype,
               _promote_every(recipe, "output", x.shape[1]))
    assert_mm4(f"{recipe} grad_input", grad_x, qg_i(g), qw_i(w).T, grad_x.dtype,
               _promote_every(recipe, "grad_input", g.shape[1]))
    assert_mm4(f"{recipe} grad_weight", grad_w, qg_w(g).T, qx_w(x).T, grad_w.dtype,
               _promote_every(recipe, "grad_weight", g.shape[0]))
