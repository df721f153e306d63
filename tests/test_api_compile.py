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


def _compiled_saved_for_backward(model, x):
    """(dtype, shape) of every tensor the compiled forward hands to the backward (the forward
    graph's outputs after the model's own output)."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    saved = []

    def forward_compiler(gm, example_inputs):
        outputs = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
        saved.extend((o.meta["val"].dtype, tuple(o.meta["val"].shape)) for o in outputs[1:]
                     if isinstance(o.meta.get("val"), torch.Tensor))
        return make_boxed_func(gm)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: make_boxed_func(gm),
                           partition_fn=min_cut_rematerialization_partition)
    torch._dynamo.reset()
    torch.compile(model, backend=backend, fullgraph=True)(x).sum().backward()
    torch._dynamo.reset()
    return saved


@pytest.mark.parametrize("keep", [False, True])
def test_compiled_blockwise_keeps_the_quantized_weight_only_when_asked_RC_14(keep):
    """RC-14 under torch.compile: the backward's re-quantization of a 128x128-block weight is a
    call of its own (w.T's layout), so the compiled graph does not merge it into the forward's
    cast and keep that float8 copy of w alive until the backward, unless keep_quantized_weight
    asks for exactly that."""
    import dataclasses
    torch.manual_seed(0)
    config = dataclasses.replace(qtrain.recipe_config("blockwise"), keep_quantized_weight=keep)
    m = qtrain.convert_to_quantized_training(nn.Sequential(nn.Linear(256, 384, bias=False)), config)
    x = torch.randn(128, 256, requires_grad=True)
    saved = _compiled_saved_for_backward(m, x)
    kept_w = [s for s in saved if s[0] == torch.float8_e4m3fn and sorted(s[1]) == [256, 384]]
    assert len(kept_w) == (1 if keep else 0), saved
