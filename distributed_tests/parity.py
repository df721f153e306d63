"""Parity harness for the distributed tests: bitwise and bounded comparisons that report the
first mismatch (value and bits) and how many there are; the tolerance table lives here.

Which parity holds where (the numbered claims the tests check; see README.md here):
  P-FSDP   FSDP2, replicated batch, any recipe: bit-identical to one process (gathers move bits;
           the reduce-scatter of identical gradients over 2 ranks is exact: g + g = 2g, /2 exact).
  P-F8AG   FSDP2 float8 all-gather (tensorwise): bit-identical to one process quantizing the full
           weight, because MAX all-reduce of the shard amaxes IS the global amax.
  P-DP     FSDP2, distinct micro-batch per rank: equals one process accumulating the same
           micro-batches, within the fp32 summation bound (only the order of the sum differs).
  P-COL    column-parallel (weight split along N): output, grad_weight bit-identical for
           axiswise recipes along K (rowwise, rowwise_with_gw_hp, mxfp8, int8) and any hp run.
  P-ROW    row-parallel (weight split along K) and anything whose quantization group spans the
           split axis (tensorwise amax per shard, rowwise groups along K): within the
           quantization bound QBOUND below, not bitwise (different scaling groups).
"""

import torch

# One table of tolerances, each with its reason. u: relative error of one quantized operand
# element (normal range, incl. saturation where the recipe can saturate); a: absolute error
# relative to the operand's amax (subnormal step or integer step); acc: the relative error per
# addition of the product's accumulation that ANY conforming backend may commit (spec MM-4 /
# MM-7 / RC-3), so that a bound holds on every device (CPU reference, GPU tensor cores) and
# not only on the one the table was first checked on.
ACC_FP32 = 2.0 ** -24      # fp32 rounding per addition (and int8's one fp32 rescale)
ACC_TENSOR_CORE = 2.0 ** -13   # Hopper float8 tensor cores / fast accumulation: ~14-bit sums
TOLERANCES = {
    "hp": dict(u=0.0, a=0.0, acc=ACC_FP32,
               reason="high precision: only the fp32 summation order differs (fp32 matmul, "
                      "TF32 off, which is torch's default)"),
    "e4m3": dict(u=2.0 ** -4, a=2.0 ** -9 / 448, acc=ACC_TENSOR_CORE,
                 reason="rne to 3 mantissa bits; subnormal step; float8 products may "
                        "accumulate in ~14 bits (MM-7, RC-3)"),
    "e5m2": dict(u=2.0 ** -3, a=2.0 ** -16 / 57344, acc=ACC_TENSOR_CORE,
                 reason="rne to 2 mantissa bits; float8 accumulation as e4m3"),
    "mx": dict(u=2.0 ** -3, a=2.0 ** -17, acc=ACC_TENSOR_CORE,
               reason="floor scale lets amax * 2^-e reach 512 > 448: saturation up to 1/8; "
                      "float8 accumulation as e4m3"),
    "int8": dict(u=0.0, a=1.0 / 254, acc=ACC_FP32,
                 reason="rne to a step of amax/127: half a step; int32 sums are exact, then "
                        "one fp32 rescale"),
    "sum_fp32": dict(u=ACC_FP32, a=0.0, reason="fp32 rounding per addition (order free)"),
    # Whole-model checks where per-layer bounds would need every intermediate activation:
    # relative to the reference's max |value|, per recipe family.
    "model_hp": dict(rel=1e-5, reason="fp32 model, only summation orders differ"),
    "model_quantized": dict(rel=0.25, reason="two layers of per-shard scaling groups compound; "
                                             "catches wiring errors (wrong shard, missing "
                                             "reduction), which give O(1) differences"),
    "model_loss": dict(rel=0.05, reason="loss of a quantized or bf16 model, shard-local scales"),
}

# The quantization kind of each product's operands, per recipe (spec/07-recipes.md).
RECIPE_KINDS = {
    None: dict(out="hp", grad_input="hp", grad_weight="hp"),
    "tensorwise": dict(out="e4m3", grad_input="e5m2", grad_weight="e5m2"),
    "rowwise": dict(out="e4m3", grad_input="e4m3", grad_weight="e4m3"),
    "rowwise_with_gw_hp": dict(out="e4m3", grad_input="e4m3", grad_weight="hp"),
    "mxfp8": dict(out="mx", grad_input="mx", grad_weight="mx"),
    "int8": dict(out="int8", grad_input="int8", grad_weight="int8"),
    "blockwise": dict(out="e4m3", grad_input="e4m3", grad_weight="e4m3"),
}


def product_bound(a, b, kind):
    """|run1 - run2| for two computations of a @ b.T that quantize a and b with DIFFERENT
    scaling groups and sum in different orders (P-ROW, P-DP): each is within
    (2u + u^2) |a| @ |b|.T + K (2 a_rel + a_rel^2) amax_a amax_b + (K + 1) acc |a| @ |b|.T of
    the exact product, so their difference within twice that. Computed in fp64 on the CPU from
    the operands alone: the same bound whichever device either run used."""
    t = TOLERANCES[kind]
    u, ar = t["u"], t["a"]
    a64, b64 = a.detach().cpu().double().abs(), b.detach().cpu().double().abs()
    mag = a64 @ b64.t()
    k = a.shape[-1]
    absolute = k * (2 * ar + ar * ar) * float(a64.max()) * float(b64.max())
    order = (k + 1) * t["acc"] * mag
    return 2 * ((2 * u + u * u) * mag + absolute + order) + 1e-30


def layer_bounds(recipe, x, w, g):
    """{out, grad_input, grad_weight} bounds for one linear x (M,K), w (N,K), g (M,N)."""
    kinds = RECIPE_KINDS[recipe]
    return {"out": product_bound(x, w, kinds["out"]),
            "grad_input": product_bound(g, w.t(), kinds["grad_input"]),
            "grad_weight": product_bound(g.t(), x.t(), kinds["grad_weight"])}


def _bits(t):
    t = t.detach().cpu().contiguous()
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(view)


def _describe(t, i):
    v = t.reshape(-1)[i]
    b = int(_bits(t).reshape(-1)[i]) & ((1 << (8 * t.element_size())) - 1)
    return f"{float(v)!r} (bits 0x{b:0{2 * t.element_size()}x}, {t.dtype})"


def assert_bitwise(name, got, want):
    """Same dtype, shape and bits (NaN payloads included)."""
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{name}: got {got.dtype}{tuple(got.shape)}, want {want.dtype}{tuple(want.shape)}"
    bad = (_bits(got) != _bits(want)).reshape(-1)
    n = int(bad.sum())
    if n:
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{name}: {n}/{bad.numel()} elements differ in bits; first at flat "
                             f"index {i}: got {_describe(got, i)}, want {_describe(want, i)}")


def assert_within(name, got, want, bound):
    """|got - want| <= bound elementwise (bound a tensor or a float), computed in fp64."""
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    b = bound.double().cpu() if torch.is_tensor(bound) else torch.full_like(w, float(bound))
    err = (g - w).abs()
    bad = (err > b) | (g.isnan() != w.isnan())
    n = int(bad.sum())
    if n:
        i = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{name}: {n}/{bad.numel()} elements outside the bound; first at flat index {i}: "
            f"got {_describe(got, i)}, want {_describe(want, i)}, |err| "
            f"{float(err.reshape(-1)[i]):.3e} > bound {float(b.reshape(-1)[i]):.3e}")


def sum_order_bound(terms):
    """Two fp32 orderings of sum(terms) differ by at most 2 (n - 1) 2^-24 sum|terms| (P-DP)."""
    mag = sum(t.detach().cpu().double().abs() for t in terms)
    return 2 * len(terms) * TOLERANCES["sum_fp32"]["u"] * mag + 1e-30
