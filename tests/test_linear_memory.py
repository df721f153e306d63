"""RC-*: what autograd keeps for backward, in bytes, per recipe (the table in qtrain/qlinear.py
and spec/07-recipes.md). Parameters are not counted: they are alive anyway."""
import pytest
import torch

import qtrain

M, K, N = 128, 256, 128                      # every recipe's block divides these
SR_CALL = 8                                  # the int64 stochastic-rounding call index

# recipe -> (bytes kept for x, bytes kept for w beyond the Parameter), for fp32 x and w.
EXPECTED = {
    "tensorwise": (M * K + 4, N * K + 4),                      # fp8 x, fp8 w + scalar scales
    "rowwise": (M * K + 4 * K, 0),                             # fp8 x along M + (1,K) scale
    "rowwise_with_gw_hp": (4 * M * K, 0),                      # the hp x itself
    "mxfp8": (M * K + (M // 32) * K, 0),                       # fp8 x + e8m0 byte / 32 elems
    "int8": (M * K + 4 * K, 0),                                # int8 x along M + fp32 scales
    "blockwise": (M * K + 4 * K * (M // 128),                  # fp8 x 128x1 blocks
                  N * K + 4 * (N // 128) * (K // 128)),        # fp8 w 128x128, reused
}


def _saved_bytes(recipe, dtype=torch.float32):
    q = qtrain.QuantizedLinear(K, N, bias=False, config=qtrain.recipe_config(recipe),
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


def test_RC_quantized_x_halves_bf16_activation_memory():
    # bf16 model: fp8 x (1 byte/elem) instead of the bf16 x (2 bytes/elem).
    hp = _saved_bytes("rowwise_with_gw_hp", torch.bfloat16) - SR_CALL
    q = _saved_bytes("rowwise", torch.bfloat16) - SR_CALL
    assert hp == 2 * M * K and q < 0.6 * hp
