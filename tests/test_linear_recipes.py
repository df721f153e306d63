"""RC-*: every recipe's forward and backward against the recipe applied by hand (float64,
MM-4 bound), SQNR against high precision, stochastic rounding reproducibility (I8-5)."""
import os

import pytest
import torch

import qtrain
from linear_helpers import TOLERANCES, check_recipe_by_hand, sqnr_db

SEED = int(os.environ.get("QTRAIN_TEST_SEED", torch.seed() % 2 ** 31))
SHAPES = {"blockwise": (128, 256, 128)}      # (M, K, N): blockwise needs 128-multiples
DEFAULT_SHAPE = (32, 64, 96)


def _run(recipe, dtype, lead=(2,), seed=SEED):
    m, k, n = SHAPES.get(recipe, DEFAULT_SHAPE)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, m // lead[0], k, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype).requires_grad_()
    g = torch.randn(*lead, m // lead[0], n, generator=gen).to(dtype)
    out = qtrain.linear(x, w, config=qtrain.recipe_config(recipe))
    out.backward(g)
    return x, w, g, out, x.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("recipe", qtrain.RECIPE_NAMES)
def test_RC_recipe_matches_hand_quantization(recipe, dtype):
    x, w, g, out, gx, gw = _run(recipe, dtype)
    assert out.dtype == gx.dtype == gw.dtype == dtype
    assert out.shape == (*x.shape[:-1], w.shape[0])
    flat = lambda t: t.reshape(-1, t.shape[-1])
    try:
        check_recipe_by_hand(recipe, flat(x), w, flat(g), flat(out), flat(gx), gw)
    except AssertionError as e:
        raise AssertionError(f"{e} (QTRAIN_TEST_SEED={SEED})") from None


def _sqnrs(recipe, m=64, k=256, n=128):
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(m, k, generator=gen, requires_grad=True)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).requires_grad_()
    g = torch.randn(m, n, generator=gen)
    x_hp, w_hp = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    qtrain.linear(x, w, config=qtrain.recipe_config(recipe)).backward(g)
    torch.nn.functional.linear(x_hp, w_hp).backward(g)
    with torch.no_grad():
        out, out_hp = qtrain.linear(x, w, config=qtrain.recipe_config(recipe)), x_hp @ w_hp.t()
    return sqnr_db(out, out_hp), sqnr_db(x.grad, x_hp.grad), sqnr_db(w.grad, w_hp.grad)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_RC_float8_sqnr(recipe):
    out, _, gw = _sqnrs(recipe)
    assert out >= TOLERANCES["sqnr_float8_output_db"], (out, SEED)
    assert gw >= TOLERANCES["sqnr_float8_grad_weight_db"], (gw, SEED)


def test_RC_mx_sqnr():
    out, gi, gw = _sqnrs("mxfp8")
    assert out >= TOLERANCES["sqnr_mx_output_db"], (out, SEED)
    assert gi >= TOLERANCES["sqnr_mx_grad_input_db"], (gi, SEED)
    assert gw >= TOLERANCES["sqnr_mx_grad_weight_db"], (gw, SEED)


def test_RC_bias_is_high_precision():
    cfg = qtrain.recipe_config("rowwise")
    x, w = torch.randn(4, 64), torch.randn(32, 64)
    b = torch.randn(32, requires_grad=True)
    out = qtrain.linear(x, w, b, config=cfg)
    torch.testing.assert_close(out - b.detach(), qtrain.linear(x, w, config=cfg),
                               rtol=0, atol=1e-5)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(b.grad, torch.full((32,), 4.0))


def test_RC_ragged_tokens_pad_blocked_contraction():
    """MX/blockwise grad_weight contracts over M: any token count works (zero padding)."""
    for recipe in ("mxfp8", "blockwise"):
        q = qtrain.QuantizedLinear(128, 128, bias=False, config=qtrain.recipe_config(recipe))
        x, g = torch.randn(40, 128), torch.randn(40, 128)
        q(x).backward(g)
        gw40, q.weight.grad = q.weight.grad, None
        pad = torch.zeros(88, 128)
        q(torch.cat([x, pad])).backward(torch.cat([g, pad]))
        assert torch.equal(gw40, q.weight.grad), recipe


def _int8_sr_grads(seed, calls=1):
    cfg = qtrain.Int8LinearConfig(stochastic_grad_output=True, seed=seed)
    torch.manual_seed(0)
    q = qtrain.QuantizedLinear(64, 32, config=cfg)
    x, g = torch.randn(16, 64), torch.randn(16, 32)
    for _ in range(calls):
        q.weight.grad = None
        q(x).backward(g)
    return q.weight.grad


def test_I8_5_stochastic_rounding_reproducible():
    assert torch.equal(_int8_sr_grads(1), _int8_sr_grads(1))
    assert not torch.equal(_int8_sr_grads(1), _int8_sr_grads(2))
    assert not torch.equal(_int8_sr_grads(1, calls=1), _int8_sr_grads(1, calls=2))  # per call


def test_autocast_runs_in_autocast_dtype():
    q = qtrain.QuantizedLinear(64, 32, config=qtrain.recipe_config("rowwise"))
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and q.weight.grad.dtype == torch.float32


def test_MX_8_e8m0_scale_table_is_the_formula_for_every_byte():
    """The eager lookup table (qtrain/recipes.py) gives the formula's bits for all 256 codes:
    2^(b-127) with 0x00 -> 2^-127 (fp32 subnormal) and 0xFF -> NaN, in any shape."""
    from qtrain.recipes import e8m0_to_fp32, e8m0_to_fp32_bits
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(16, 16).t()
    got, want = e8m0_to_fp32(codes), e8m0_to_fp32_bits(codes)
    assert got.shape == (16, 16) and got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert want[0, 0].view(torch.int32) == 0x00400000 and torch.isnan(want[15, 15])
    assert float(want[0, 8]) == 2.0 ** (128 - 127)        # code 0x80 at [0, 8] of the transpose


@pytest.mark.parametrize("recipe,expected", [("mxfp8", True), ("rowwise", True),
                                             ("tensorwise", False), ("blockwise", False),
                                             ("int8", False)])
def test_pow2_factor_promise_only_where_every_factor_is_a_power_of_two(recipe, expected):
    """The product's pow2_factors hint (qtrain/ops.py) is given for MX (e8m0) and pow2 float8
    scales (F8-3) only: a backend may then dequantize to bf16 exactly. Any other factor would
    round twice there, so the hint must never be given for it."""
    from qtrain.backend import register_backend
    from qtrain.reference_backend import ReferenceBackend
    seen = []

    class Recording(ReferenceBackend):
        name = "pow2-recording"
        takes_pow2_factors = True

        def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=False,
                         pow2_factors=False):
            seen.append(pow2_factors)
            return super().scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype, use_fast_accum)

    register_backend("pow2-recording", Recording)
    x = torch.randn(128, 128, requires_grad=True)
    w = torch.randn(128, 128, requires_grad=True)
    qtrain.linear(x, w, config=qtrain.recipe_config(recipe, backend="pow2-recording")).sum().backward()
    assert seen == [expected] * 3, seen


@pytest.mark.parametrize("shared", [False, True], ids=["one_linear", "qkv_shared_input"])
def test_tensorwise_transpose_by_cast_or_copy_same_bits_reference(shared, monkeypatch):
    """QTRAIN_TENSORWISE_TRANSPOSE=cast on a backend without a both-layouts cast (the reference:
    qtrain.ops falls back to the cast and a copy): the same output and gradients as the default,
    for one linear and for three linears sharing one input (one both-layouts cast for the
    three)."""
    from qtrain import qlinear
    torch.manual_seed(3)
    x = torch.randn(32, 64)
    ws = [torch.randn(n, 64) / 8 for n in ((48, 16, 16) if shared else (48,))]
    config = qtrain.recipe_config("tensorwise", backend="reference")

    def run(mode):
        monkeypatch.setattr(qlinear, "TENSORWISE_TRANSPOSE", mode)
        xi = x.clone().requires_grad_()
        wi = [w.clone().requires_grad_() for w in ws]
        outs = [qtrain.linear(xi, w, config=config) for w in wi]
        sum((o * (k + 1)).sum() for k, o in enumerate(outs)).backward()
        return [o.detach() for o in outs] + [xi.grad] + [w.grad for w in wi]

    for a, b in zip(run("copy"), run("cast")):
        assert torch.equal(a, b)
