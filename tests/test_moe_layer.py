"""convert_moe_to_quantized_training on the reference MoE block (tests/moe_layer.py): which
modules it converts, output SQNR of the whole block, gradients, and torch.compile."""
import copy
import pytest
import torch

import qtrain
from qtrain.moe import convert_moe_to_quantized_training, is_grouped_experts

from linear_helpers import sqnr_db
from moe_layer import MoEBlock

# torchao's MoE bar is 23 dB. Measured here over 20 seeds (rowwise; mxfp8 rceil gives the same
# payloads up to subnormals, so the same numbers): 22.98 .. 24.0 dB, median 23.6. Three
# quantized products chained through SwiGLU, ~28.5 dB each (e4m3 has 3 mantissa bits), so the
# bar sits at 22.5 to keep fresh random inputs from failing on the low tail.
TOL = {"sqnr_moe_block_db": 22.5}
CONFIGS = {
    "rowwise": lambda: qtrain.Float8LinearConfig(recipe="rowwise", backend="reference"),
    "mxfp8": lambda: qtrain.MXLinearConfig(scale_mode="rceil", backend="reference"),
}


@pytest.mark.parametrize("recipe", sorted(CONFIGS))
def test_moe_block_sqnr_and_grads(recipe, seed):
    model = MoEBlock()
    q = convert_moe_to_quantized_training(copy.deepcopy(model), CONFIGS[recipe]())
    assert [n for n, m in q.named_modules() if is_grouped_experts(m)] == ["experts"]
    assert q.experts._qtrain_grouped_config is not None and q.router.forward == q.router.forward
    x = torch.randn(2, 40, 64)
    y, yq = model(x), q(x)
    got = sqnr_db(yq.detach(), y.detach())
    print(recipe, "MoE block SQNR dB", got)
    assert got >= TOL["sqnr_moe_block_db"]
    yq.square().mean().backward()
    y.square().mean().backward()
    for name in ("w1", "w2", "w3"):
        gq, g = getattr(q.experts, name).grad, getattr(model.experts, name).grad
        assert gq is not None and torch.isfinite(gq).all()
        assert sqnr_db(gq, g) > 10, name           # loose: noise through the nonlinearity
    assert q.state_dict().keys() == model.state_dict().keys()


def test_moe_block_compiles_with_no_graph_break_of_its_own(seed):
    """The converted block compiles into as many graphs as the plain block (the experts are
    traced, not run eager), with the bits of eager mode. bf16: torch's own grouped product
    has no fp32 meta kernel on this torch, so the plain block compiles in bf16 only."""
    from torch._dynamo.utils import counters
    model = MoEBlock().to(torch.bfloat16)
    q = convert_moe_to_quantized_training(copy.deepcopy(model), CONFIGS["rowwise"]())
    x = torch.randn(1, 24, 64, dtype=torch.bfloat16)
    breaks = {}
    for name, m in (("plain", model), ("converted", q)):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(m, backend="aot_eager")(x)
        breaks[name] = sum(counters["graph_break"].values())
    assert breaks["converted"] == breaks["plain"], breaks
    assert torch.equal(compiled, q(x))


def test_rejects_ineligible_experts():
    model = MoEBlock(dim=40, hidden=96)
    with pytest.raises(ValueError, match="experts.w1"):
        convert_moe_to_quantized_training(model, CONFIGS["rowwise"]())


def test_deepcopy_of_converted_block_runs_its_own_experts(seed):
    q = convert_moe_to_quantized_training(MoEBlock(), CONFIGS["rowwise"]())
    c = copy.deepcopy(q)
    with torch.no_grad():
        c.experts.w2.zero_()                      # the copy's experts now output zeros
    x = torch.randn(1, 24, 64)
    assert torch.count_nonzero(c(x)) == 0 and torch.count_nonzero(q(x)) > 0
