"""CUDA graph capture of the quantized layers on the fast backend. A captured forward+backward
replays to the same bits as the eager step. This is the way around host time for small,
launch-bound layers (benchmarks/NOTES.md). Autotuning is switched off (it benchmarks kernels,
which a capture forbids). int8 with stochastic_grad_output=True is captured too: its noise
(spec I8-10) hashes the layer's call index on the device, the counter's increment is part of
the graph, so each replay draws the next call's noise, and a replay from the same counter value
gives the eager step's bits.

Needs a CUDA GPU with float8 tensor cores: skipped elsewhere, with the reason shown.
"""
import dataclasses

import pytest
import torch

import qtrain
from benchmarks.common import capture_cuda_graph
from benchmarks.moe_graphed import GroupedExperts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available()
                                or not qtrain.get_backend("fast").available()[0],
                                reason="needs CUDA with float8 tensor cores (fast backend)")
CAPTURABLE = ["tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise"]


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    from qtrain.fast import scaled_mm
    monkeypatch.setattr(scaled_mm, "AUTOTUNE", False)


def _graphed_vs_eager(step, inputs, params):
    """Run `step` eagerly, then capture it once and replay; return (eager, replayed) results
    as lists of tensors: the step's outputs followed by the gradients of `params`."""
    def run():
        for p in params:
            p.grad = None
        outs = step(*inputs)
        return [o.detach().clone() for o in outs] + [p.grad.detach().clone() for p in params]

    eager = run()
    graph, static = capture_cuda_graph(lambda: step(*inputs), params)   # side-stream warm-up
    graph.replay()
    torch.cuda.synchronize()
    return eager, [o.detach().clone() for o in static] + [p.grad.detach().clone() for p in params]


def _assert_same(eager, replayed):
    for i, (a, b) in enumerate(zip(eager, replayed)):
        assert torch.equal(a.view(torch.int16) if a.dtype == torch.bfloat16 else a,
                           b.view(torch.int16) if b.dtype == torch.bfloat16 else b), f"tensor {i}"


@pytest.mark.parametrize("recipe", CAPTURABLE)
def test_linear_step_replays_bit_identical(recipe):
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 512, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
    w = torch.nn.Parameter((torch.randn(384, 512, generator=gen, device="cuda") / 23).to(torch.bfloat16))
    g = torch.randn(256, 384, generator=gen, device="cuda").to(torch.bfloat16)

    def step(x, g):
        y = qtrain.linear(x, w, config=config)
        y.backward(g)
        return (y,)

    eager, replayed = _graphed_vs_eager(step, (x, g), [w, x])
    _assert_same(eager, replayed)


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_grouped_step_replays_bit_identical(recipe):
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    gen = torch.Generator(device="cuda").manual_seed(0)
    offs = torch.tensor([37, 37, 190, 300], dtype=torch.int32, device="cuda")
    x = torch.randn(300, 256, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
    w = torch.nn.Parameter((torch.randn(4, 128, 256, generator=gen, device="cuda") / 16).to(torch.bfloat16))
    g = torch.randn(300, 128, generator=gen, device="cuda").to(torch.bfloat16)

    def step(x, g):
        y = qtrain.grouped_mm(x, w, offs, config)
        y.backward(g)
        return (y,)

    eager, replayed = _graphed_vs_eager(step, (x, g), [w, x])
    _assert_same(eager, replayed)


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_converted_experts_under_make_graphed_callables(recipe):
    """The README's eager MoE route: a converted experts module wrapped by
    torch.cuda.make_graphed_callables gives the eager module's output and gradients, bit for
    bit, for inputs other than the sample it was captured with (uneven and empty groups)."""
    import copy
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(4, 128, 256, generator=gen, device="cuda") / 16).to(torch.bfloat16)
    eager = qtrain.convert_moe_to_quantized_training(GroupedExperts(w), config)
    sample = torch.randn(320, 256, generator=gen, device="cuda").to(torch.bfloat16)
    graphed = torch.cuda.make_graphed_callables(
        copy.deepcopy(eager), (sample.requires_grad_(),
                               torch.tensor([80, 160, 240, 320], dtype=torch.int32, device="cuda")))
    x = torch.randn(320, 256, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.tensor([37, 37, 190, 300], dtype=torch.int32, device="cuda")
    g = torch.randn(320, 128, generator=gen, device="cuda").to(torch.bfloat16)
    got = []
    for layer in (eager, graphed):
        xi = x.clone().requires_grad_()
        y = layer(xi, offs)
        y.backward(g)
        got.append([y.detach(), xi.grad, layer.w.grad])
    _assert_same(*got)


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_converted_experts_under_compile_reduce_overhead(recipe):
    """A converted experts module under torch.compile(mode="reduce-overhead", fullgraph=True):
    traced whole (no graph break), replayed from CUDA graphs, the eager module's output and
    gradients bit for bit on inputs with uneven and empty groups."""
    import copy
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(4, 128, 256, generator=gen, device="cuda") / 16).to(torch.bfloat16)
    eager = qtrain.convert_moe_to_quantized_training(GroupedExperts(w), config)
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(twin, mode="reduce-overhead", fullgraph=True)
    offs = torch.tensor([37, 37, 190, 300], dtype=torch.int32, device="cuda")
    g = torch.randn(320, 128, generator=gen, device="cuda").to(torch.bfloat16)
    x = torch.randn(320, 256, generator=gen, device="cuda").to(torch.bfloat16)
    got = []
    for layer, module, calls in ((eager, eager, 1), (compiled, twin, 3)):
        for _ in range(calls):                   # cudagraph trees record on a later call
            module.w.grad = None
            xi = x.clone().requires_grad_()
            y = layer(xi, offs)
            y.backward(g)
        got.append([y.detach().clone(), xi.grad, module.w.grad])
    _assert_same(*got)


def _frozen_experts():
    """Rowwise experts frozen by qtrain.to_inference (fast backend), tokens in uneven and
    empty groups: (experts, x, offs)."""
    config = dataclasses.replace(qtrain.recipe_config("rowwise"), backend="fast")
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(4, 128, 256, generator=gen, device="cuda") / 16).to(torch.bfloat16)
    experts = qtrain.convert_moe_to_quantized_training(GroupedExperts(w), config)
    qtrain.to_inference(experts)
    x = torch.randn(320, 256, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.tensor([37, 37, 190, 300], dtype=torch.int32, device="cuda")
    return experts, x, offs


def test_frozen_experts_captured_read_the_weight_at_each_replay():
    """Serving experts frozen by qtrain.to_inference, forward captured in a CUDA graph after
    eager warm-up calls (which make the kept quantized weights): a replay after an in-place
    write of the weight gives the eager output of the written weight (the write refreshes
    the kept copy in place, and the graph reads it)."""
    experts, x, offs = _frozen_experts()
    with torch.no_grad():
        graph, static = capture_cuda_graph(lambda: experts(x, offs), [])
        experts.w.mul_(-2)
        want = experts(x, offs)                # eager, frozen: quantizes the written weight
        graph.replay()
        torch.cuda.synchronize()
    assert torch.count_nonzero(want) > 0
    _assert_same([want], [static])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_frozen_experts_follow_in_place_writes(mode):
    """Frozen experts under torch.compile (fullgraph): the kept quantized weights are inputs
    of the graph; after an in-place write of a weight the compiled module (CUDA-graph replays
    under reduce-overhead) gives the eager frozen module's output of the written weight."""
    experts, x, offs = _frozen_experts()
    torch._dynamo.reset()
    compiled = torch.compile(experts, mode=None if mode == "default" else mode, fullgraph=True)
    with torch.no_grad():
        for write in (False, True):
            if write:
                experts.w.mul_(-2)
            want = experts(x, offs)
            for _ in range(3):                     # cudagraph trees record on a later call
                got = compiled(x, offs).clone()
            _assert_same([want], [got])


def test_int8_stochastic_step_replays_with_the_same_call_index():
    config = qtrain.Int8LinearConfig(stochastic_grad_output=True, seed=3, backend="fast")
    layer = qtrain.QuantizedLinear(512, 384, bias=False, dtype=torch.bfloat16, device="cuda",
                                   config=config)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 512, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
    g = torch.randn(256, 384, generator=gen, device="cuda").to(torch.bfloat16)

    def step(x, g):
        layer.sr_calls.fill_(0)                  # every run draws the noise of call 1
        y = layer(x)
        y.backward(g)
        return (y,)

    eager, replayed = _graphed_vs_eager(step, (x, g), [layer.weight, x])
    _assert_same(eager, replayed)
    assert int(layer.sr_calls) == 1
