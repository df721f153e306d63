"""Eager linears that read the same input tensor share its quantization (qtrain/qlinear.py
_SharedInput): q, k and v of one normed x cast it once and save one copy for backward, with
the same bits as three separate casts; an entry never outlives its input or an in-place
change of it."""
import gc
import weakref

import pytest
import torch
from torch import nn

import qtrain
from qtrain import qlinear
from qtrain.reference_backend import ReferenceBackend


class QKV(nn.Module):
    """Three linears on one input, as attention's q, k and v projections."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(96, n, bias=False) for n in (64, 32, 32))

    def forward(self, h):
        return self.q(h).sum() + self.k(h).square().sum() + self.v(h).abs().sum()


@pytest.fixture
def cast_shapes(monkeypatch):
    """Shapes of every tensor the reference backend quantizes (float8, int8, MX, blockwise)."""
    shapes = []
    for name in ("quantize_float8", "quantize_float8_dual", "quantize_int8", "quantize_mx",
                 "quantize_blockwise"):
        real = getattr(ReferenceBackend, name, None)
        if real is None:
            continue

        def counted(self, x, *args, _real=real, **kwargs):
            shapes.append(tuple(x.shape))
            return _real(self, x, *args, **kwargs)
        monkeypatch.setattr(ReferenceBackend, name, counted)
    return shapes


def _run(recipe, share, monkeypatch):
    monkeypatch.setattr(qlinear, "SHARE_INPUT", share)
    torch.manual_seed(0)
    m = qtrain.convert_to_quantized_training(QKV(), qtrain.recipe_config(recipe, backend="reference"))
    h = torch.randn(16, 96, requires_grad=True)
    out = m(h)
    out.backward()
    return out.detach(), h.grad, [p.grad for p in m.parameters()]


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "int8", "mxfp8"])
def test_shared_input_is_cast_once_with_the_same_bits(recipe, cast_shapes, monkeypatch):
    _run(recipe, False, monkeypatch)
    separate = [s for s in cast_shapes if s == (16, 96)]
    cast_shapes.clear()
    _run(recipe, True, monkeypatch)
    shared = [s for s in cast_shapes if s == (16, 96)]
    # every quantization of h (along K, and along M for grad_weight where the recipe keeps
    # one) happens once for the three linears instead of once per linear
    assert separate and len(separate) == 3 * len(shared), (separate, shared)
    want = _run(recipe, False, monkeypatch)
    got = _run(recipe, True, monkeypatch)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    for a, b in zip(want[2], got[2]):
        assert torch.equal(a, b)


def test_an_entry_goes_with_its_input(monkeypatch):
    monkeypatch.setattr(qlinear, "SHARE_INPUT", True)
    config = qtrain.recipe_config("tensorwise", backend="reference")
    w = torch.randn(32, 64)
    h = torch.randn(16, 64)
    qtrain.linear(h, w, config=config)
    key = id(h)
    entry = qlinear._SharedInput._live[key]
    held_refs = [weakref.ref(t) for value in entry.items.values() for t in value.tensors()]
    assert held_refs
    del entry, h
    gc.collect()
    assert key not in qlinear._SharedInput._live
    assert all(r() is None for r in held_refs)           # the cached payloads are freed too


def test_an_in_place_change_makes_a_new_quantization(cast_shapes, monkeypatch):
    monkeypatch.setattr(qlinear, "SHARE_INPUT", True)
    config = qtrain.recipe_config("tensorwise", backend="reference")
    w = torch.randn(32, 64)
    h = torch.randn(16, 64)
    first = qtrain.linear(h, w, config=config)
    h.mul_(2.0)                                          # version counter moves
    second = qtrain.linear(h, w, config=config)
    assert [s for s in cast_shapes if s == (16, 64)] == [(16, 64), (16, 64)]
    assert torch.equal(second, qtrain.linear(h.clone(), w, config=config))
    assert not torch.equal(first, second)


def test_no_sharing_for_subclasses_or_when_switched_off(monkeypatch):
    monkeypatch.setattr(qlinear, "SHARE_INPUT", True)

    class Sub(torch.Tensor):
        pass

    assert qlinear._shared_input(torch.randn(2, 2).as_subclass(Sub)) is None
    assert qlinear._shared_input(torch.randn(2, 2)) is not None
    monkeypatch.setattr(qlinear, "SHARE_INPUT", False)
    assert qlinear._shared_input(torch.randn(2, 2)) is None


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8",
                                    "int8", "blockwise"])
def test_inference_mode_runs_without_sharing(recipe, monkeypatch):
    """Inference tensors keep no version counter, so they are not shared (and do not raise)."""
    monkeypatch.setattr(qlinear, "SHARE_INPUT", True)
    torch.manual_seed(0)
    m = QKV() if recipe != "blockwise" else nn.Sequential(nn.Linear(128, 128, bias=False))
    m = qtrain.convert_to_quantized_training(m, qtrain.recipe_config(recipe, backend="reference"))
    h = torch.randn(16, 96 if recipe != "blockwise" else 128)
    want = m(h).detach()
    with torch.inference_mode():
        hi = h.clone()
        assert qlinear._shared_input(hi) is None
        got = m(hi)
    assert torch.equal(got, want)



@pytest.mark.parametrize("recipe", ["rowwise_with_gw_hp", "tensorwise"])
def test_one_entry_at_a_time_and_none_after_backward(recipe, monkeypatch):
    """The quantizations of an input kept for backward (rowwise_with_gw_hp keeps x itself) do
    not stay alive with it: an entry for a new input drops the old one, and a backward drops
    what is left. What a linear saved for backward (tensorwise's quantized x) stays alive."""
    monkeypatch.setattr(qlinear, "SHARE_INPUT", True)
    qlinear._SharedInput.drop_all()
    config = qtrain.recipe_config(recipe, backend="reference")
    w1, w2 = torch.randn(32, 64, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    h = torch.randn(8, 64, requires_grad=True)
    y = qtrain.linear(h, w1, config=config)
    # an entry is one quantized operand, or a pair (x and x.T, or x along K and along M)
    entries = [value for item in qlinear._SharedInput._live[id(h)].items.values()
               for value in (item if isinstance(item, tuple) else (item,))]
    held = [weakref.ref(t) for value in entries for t in value.tensors()]
    del entries                              # weak references only from here
    r = torch.relu(y)
    z = qtrain.linear(r, w2, config=config)
    assert list(qlinear._SharedInput._live) == [id(r)]          # h's entry went
    gc.collect()
    alive = [r() is not None for r in held]
    if recipe == "rowwise_with_gw_hp":       # nothing of h's quantization was saved
        assert not any(alive), alive
    else:                                    # the quantized x is what tensorwise saves
        assert any(alive), alive
    z.sum().backward()
    assert not qlinear._SharedInput._live
    assert h.grad is not None and w1.grad is not None
