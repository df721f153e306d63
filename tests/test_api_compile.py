"""torch.compile (CPU inductor, fullgraph: no graph breaks in the quantized path) and
activation checkpointing."""
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import qtrain


def _model(recipe):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    return qtrain.convert_to_quantized_training(m, qtrain.recipe_config(recipe))


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_compile_fullgraph_matches_eager(recipe):
    m = _model(recipe)
    x = torch.randn(2, 16, 64)
    explain = torch._dynamo.explain(m)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    cm = torch.compile(m, fullgraph=True, backend="inductor")
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_c = cm(xc)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    out_e = m(xe)
    out_e.square().sum().backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-5)
    for gc, p in zip(grads_c, m.parameters()):
        torch.testing.assert_close(gc, p.grad, rtol=1e-5, atol=1e-5)


def test_compile_stochastic_int8_no_graph_break():
    m = _model("int8")
    for mod in m.modules():
        if isinstance(mod, qtrain.QuantizedLinear):
            mod.config = qtrain.Int8LinearConfig(stochastic_grad_output=True)
    explain = torch._dynamo.explain(m)(torch.randn(8, 64, requires_grad=True))
    assert explain.graph_break_count == 0, explain.break_reasons


@pytest.mark.parametrize("recipe", ["tensorwise", "blockwise"])
def test_activation_checkpointing_same_grads(recipe):
    if recipe == "blockwise":
        torch.manual_seed(0)
        m = qtrain.convert_to_quantized_training(
            nn.Sequential(nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 128)),
            qtrain.recipe_config(recipe))
    else:
        m = _model(recipe)
    x = torch.randn(32, m[0].in_features)
    m(x).sum().backward()
    want = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    checkpoint(m, x, use_reentrant=False).sum().backward()
    for w, p in zip(want, m.parameters()):
        assert torch.equal(w, p.grad)
