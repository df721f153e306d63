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
