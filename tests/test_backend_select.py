"""QTRAIN_BACKEND selection: one registry, auto falls back with one log line, an explicit
backend that cannot serve raises naming the others, a config's backend beats the variable."""
import logging

import pytest
import torch

import qtrain
from qtrain import backend as qb


class _Broken:
    name = "broken"

    def available(self):
        return False, "no such hardware here"


@pytest.fixture
def registry():
    saved = dict(qb._FACTORIES), dict(qb._INSTANCES), set(qb._AUTO_LOGGED)
    yield
    qb._FACTORIES.clear(), qb._FACTORIES.update(saved[0])
    qb._INSTANCES.clear(), qb._INSTANCES.update(saved[1])
    qb._AUTO_LOGGED.clear(), qb._AUTO_LOGGED.update(saved[2])


def test_reference_explicit(monkeypatch):
    monkeypatch.setenv("QTRAIN_BACKEND", "reference")
    assert qtrain.get_backend().name == "reference"


def test_unknown_backend_raises(monkeypatch):
    monkeypatch.setenv("QTRAIN_BACKEND", "cuda-magic")
    with pytest.raises(RuntimeError, match="cuda-magic.*reference"):
        qtrain.get_backend()


def test_explicit_unavailable_raises_naming_others(monkeypatch, registry):
    qtrain.register_backend("fast", _Broken)
    monkeypatch.setenv("QTRAIN_BACKEND", "fast")
    with pytest.raises(RuntimeError, match=r"'fast' cannot serve: no such hardware.*reference"):
        qtrain.get_backend()
    with pytest.raises(RuntimeError, match="cannot serve"):
        qtrain.QuantizedLinear(16, 16, config=qtrain.recipe_config("int8"))
    # a config's backend beats the variable
    q = qtrain.QuantizedLinear(16, 16, config=qtrain.Int8LinearConfig(backend="reference"))
    assert q.backend == "reference"


def test_auto_falls_back_and_logs_once(monkeypatch, registry, caplog):
    qtrain.register_backend("fast", _Broken)
    qb._AUTO_LOGGED.clear()
    monkeypatch.delenv("QTRAIN_BACKEND", raising=False)
    with caplog.at_level(logging.INFO, logger="qtrain"):
        for _ in range(3):
            assert qtrain.get_backend().name == "reference"
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "no such hardware here" in msgs[0]


def test_config_backend_override_runs(monkeypatch, registry):
    calls = []

    class Spy(type(qb._instance("reference"))):
        name = "spy"

        def scaled_mm_nt(self, *args, **kwargs):
            calls.append(1)
            return super().scaled_mm_nt(*args, **kwargs)

    qtrain.register_backend("spy", Spy)
    monkeypatch.setenv("QTRAIN_BACKEND", "reference")
    x, w = torch.randn(4, 32, requires_grad=True), torch.randn(16, 32, requires_grad=True)
    qtrain.linear(x, w, config=qtrain.Float8LinearConfig(backend="spy")).sum().backward()
    assert len(calls) == 3                       # output, grad_input, grad_weight
    assert set(qtrain.list_backends()) >= {"reference", "fast", "spy"}


class _DeviceBoundFast(type(qb._instance("reference"))):
    """A "fast" stand-in that serves (available) but runs only the device types in RUNS; its
    products run the reference arithmetic and are counted."""
    name = "fast"
    RUNS = set()
    calls = []

    def runnable_on(self, device):
        device = torch.device(device)
        if device.type in self.RUNS:
            return True, ""
        return False, f"stand-in: device {device} not supported"

    def scaled_mm_nt(self, *args, **kwargs):
        self.calls.append(1)
        return super().scaled_mm_nt(*args, **kwargs)


@pytest.fixture
def device_bound_fast(monkeypatch, registry):
    _DeviceBoundFast.RUNS, _DeviceBoundFast.calls = set(), []
    qtrain.register_backend("fast", _DeviceBoundFast)
    qb._AUTO_LOGGED.clear()
    monkeypatch.delenv("QTRAIN_BACKEND", raising=False)
    return _DeviceBoundFast


def _layer_and_input(device="cpu", config=None):
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16, device=device)
    q = qtrain.QuantizedLinear.from_float(lin, config or qtrain.recipe_config("rowwise"))
    return q, torch.randn(4, 32, device=device)


def test_auto_answers_for_the_tensors_device(device_bound_fast, caplog):
    """A GPU machine (fast serves) with the model on the CPU: auto runs it on the reference
    backend, with one log line naming the device and fast's reason, instead of fast's error."""
    with caplog.at_level(logging.INFO, logger="qtrain"):
        q, x = _layer_and_input()
        assert q.backend == "reference"
        out = q(x)
        out.sum().backward()
        y = qtrain.linear(x, q.weight, q.bias, config=qtrain.recipe_config("rowwise"))
    assert device_bound_fast.calls == []
    assert torch.equal(out, y)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1, msgs
    assert "'reference' backend for cpu tensors" in msgs[0] and "stand-in" in msgs[0]
    # where fast runs the device, auto takes fast, as before
    device_bound_fast.RUNS.add("cpu")
    q2, x2 = _layer_and_input()
    assert q2.backend == "fast"
    q2(x2)
    assert len(device_bound_fast.calls) == 1


def test_auto_layer_follows_its_input_to_another_device_type(device_bound_fast):
    """Built on the meta device (nothing known yet: "auto"), then materialized on the CPU: the
    move answers for the CPU and the layer keeps that answer."""
    q = qtrain.QuantizedLinear(32, 16, device="meta", config=qtrain.recipe_config("int8"))
    assert q.backend == "auto"
    q = q.to_empty(device="cpu")          # a move answers at once, outside any traced call
    assert q.backend == "reference"
    torch.nn.init.normal_(q.weight), torch.nn.init.zeros_(q.bias)
    q(torch.randn(4, 32))
    assert q.backend == "reference" and device_bound_fast.calls == []
    # an input on another device type than the layer's is answered at the call
    q._backend_device = "meta"
    q(torch.randn(4, 32))
    assert q._backend_device == "cpu" and q.backend == "reference"
    # an explicit backend is never re-resolved: it stays (the real fast backend then refuses
    # CPU tensors with its own error; test_gpu_fast_linear.py)
    qe, x = _layer_and_input(config=qtrain.Float8LinearConfig(recipe="rowwise", backend="fast"))
    assert qe.backend == "fast"
    qe(x)
    assert qe.backend == "fast" and len(device_bound_fast.calls) == 1


def test_auto_grouped_and_inference_answer_for_the_device(device_bound_fast):
    x = torch.randn(24, 32)
    w = torch.randn(3, 16, 32)
    offs = torch.tensor([8, 8, 24], dtype=torch.int32)
    out = qtrain.grouped_mm(x, w, offs, qtrain.Float8LinearConfig(recipe="rowwise"))
    assert out.shape == (24, 16) and device_bound_fast.calls == []
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    qtrain.to_inference(model, "rowwise")
    assert model[0].backend == "reference"
    model(x)
    assert device_bound_fast.calls == []


class _UntraceableChecks:
    """The reference backend behind an available() that torch.compile cannot trace (as the
    fast backend's CUDA queries and Triton version checks on a GPU machine)."""
    name = "untraceable-checks"

    def __init__(self):
        self._ref = qb._instance("reference")

    def available(self):
        torch._dynamo.graph_break()
        return True, ""

    def __getattr__(self, attr):
        return getattr(self._ref, attr)


@pytest.mark.parametrize("op", ["grouped_mm", "linear"])
def test_backend_resolution_never_breaks_a_compiled_graph(registry, op):
    """qtrain.grouped_mm and qtrain.linear resolve their backend per call; under torch.compile
    that resolution runs at trace time and the graph holds its answer (on the H200 the fast
    backend's checks broke the graph of every qtrain.grouped_mm call)."""
    qtrain.register_backend("untraceable-checks", _UntraceableChecks)
    config = qtrain.Float8LinearConfig(recipe="rowwise", backend="untraceable-checks")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=gen).to(torch.bfloat16)
    if op == "grouped_mm":
        w = torch.randn(4, 32, 32, generator=gen).to(torch.bfloat16)
        offs = torch.tensor([16, 16, 40, 64], dtype=torch.int32)
        fn = lambda x, w: qtrain.grouped_mm(x, w, offs, config)   # noqa: E731
    else:
        w = torch.randn(48, 32, generator=gen).to(torch.bfloat16)
        fn = lambda x, w: qtrain.linear(x, w, config=config)      # noqa: E731
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(x, w)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert torch.equal(torch.compile(fn, backend="aot_eager", fullgraph=True)(x, w), fn(x, w))
