"""RC-*: what autograd keeps for backward, in bytes, per recipe (the table in qtrain/qlinear.py
and spec/07-recipes.md). Parameters are not counted: they are alive anyway. RC-14: by default
no recipe keeps anything for w beyond the Parameter; keep_quantized_weight keeps the axis-free
quantized w (tensorwise, blockwise) and gives the same bits."""
import pytest
import torch

import qtrain

M, K, N = 128, 256, 128                      # every recipe's block divides these
SR_CALL = 8                                  # the int64 stochastic-rounding call index

# recipe -> (bytes kept for x, bytes kept for w beyond the Parameter), for fp32 x and w.
EXPECTED = {
    "tensorwise": (M * K + 4, 4),                              # fp8 x + its scalar scale;
    #                                          w's fp32 amax (RC-14: w.T's cast skips its pass)
    "rowwise": (M * K + 4 * K, 0),                             # fp8 x along M + (1,K) scale
    "rowwise_with_gw_hp": (4 * M * K, 0),                      # the hp x itself
    "mxfp8": (M * K + (M // 32) * K, 0),                       # fp8 x + e8m0 byte / 32 elems
    "int8": (M * K + 4 * K, 0),                                # int8 x along M + fp32 scales
    "blockwise": (M * K + 4 * K * (M // 128), 0),              # fp8 x 128x1 blocks
}
# RC-14 keep_quantized_weight=True: the forward's quantized w on top (payload + scales)
KEPT_W = {"tensorwise": N * K + 4, "blockwise": N * K + 4 * (N // 128) * (K // 128)}


def _saved_bytes(recipe, dtype=torch.float32, **options):
    q = qtrain.QuantizedLinear(K, N, bias=False, config=qtrain.recipe_config(recipe, **options),
                               dtype=dtype)
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    kept = []

    def pack(t):
        if t is not q.weight:
            kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = q(x)
    out.sum().backward()
    return sum(kept)


@pytest.mark.parametrize("recipe", qtrain.RECIPE_NAMES)
def test_RC_saved_for_backward_bytes(recipe):
    x_bytes, w_bytes = EXPECTED[recipe]
    assert _saved_bytes(recipe) == x_bytes + w_bytes + SR_CALL


@pytest.mark.parametrize("recipe", sorted(KEPT_W))
def test_RC_14_keep_quantized_weight_bytes(recipe):
    x_bytes, _ = EXPECTED[recipe]           # the kept w replaces whatever w kept without it
    kept = _saved_bytes(recipe, keep_quantized_weight=True)
    assert kept == x_bytes + KEPT_W[recipe] + SR_CALL


@pytest.mark.parametrize("recipe", sorted(KEPT_W))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_RC_14_keep_and_requantize_give_the_same_bits(recipe, dtype):
    gen = torch.Generator().manual_seed(14)
    x0 = torch.randn(M, K, generator=gen).to(dtype)
    w0 = (torch.randn(N, K, generator=gen) * K ** -0.5).to(dtype)
    g = torch.randn(M, N, generator=gen).to(dtype)
    got = []
    for keep in (False, True):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = qtrain.linear(x, w, config=qtrain.recipe_config(recipe, keep_quantized_weight=keep))
        out.backward(g)
        got.append((out.detach(), x.grad, w.grad))
    for a, b in zip(*got):
        assert torch.equal(a.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           b.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


@pytest.mark.parametrize("recipe", ["rowwise", "rowwise_with_gw_hp"])
def test_RC_14_keep_quantized_weight_raises_where_w_is_not_axis_free(recipe):
    with pytest.raises(ValueError, match="keep_quantized_weight.*tensorwise"):
        qtrain.recipe_config(recipe, keep_quantized_weight=True)


def test_RC_quantized_x_halves_bf16_activation_memory():
    # bf16 model: fp8 x (1 byte/elem) instead of the bf16 x (2 bytes/elem).
    hp = _saved_bytes("rowwise_with_gw_hp", torch.bfloat16) - SR_CALL
    q = _saved_bytes("rowwise", torch.bfloat16) - SR_CALL
    assert hp == 2 * M * K and q < 0.6 * hp


@pytest.mark.parametrize("recipe", [r for r in qtrain.RECIPE_NAMES if r != "rowwise_with_gw_hp"])
def test_grad_input_operands_are_freed_before_the_grad_weight_product(recipe, monkeypatch):
    """Backward's peak: when grad_weight's product runs, grad_input's quantized w is gone, and so
    is its quantized g unless one quantization serves both products (tensorwise g). On the MX-10
    values route both are bf16 copies the size of g and w. (rowwise_with_gw_hp's grad_weight is a
    high-precision product that does not pass through _scaled_mm.)"""
    import weakref
    from qtrain import qlinear
    real = qlinear._scaled_mm
    calls = []                                   # per product: (weakrefs to a's, to b's tensors)

    def refs(q):
        return [weakref.ref(t) for t in vars(q).values() if isinstance(t, torch.Tensor)]

    def spy(qa, qb, *args, **kwargs):
        if len(calls) == 2:                      # forward, grad_input, now grad_weight
            g_refs, w_refs = calls[1]
            assert all(r() is None for r in w_refs), "grad_input's quantized w is still alive"
            g_alive = any(r() is not None for r in g_refs)
            assert g_alive == (recipe == "tensorwise"), f"grad_input's quantized g alive: {g_alive}"
        calls.append((refs(qa), refs(qb)))
        return real(qa, qb, *args, **kwargs)

    monkeypatch.setattr(qlinear, "_scaled_mm", spy)
    x = torch.randn(M, K, requires_grad=True)
    w = torch.randn(N, K, requires_grad=True)
    qtrain.linear(x, w, config=qtrain.recipe_config(recipe)).sum().backward()
    assert len(calls) == 3
