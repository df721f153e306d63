"""qtrain/_dispatch.py: eager calls on plain tensors skip the dispatcher; fake tensors, tensor
subclasses and traced calls go through the registered custom op; both give the same bits."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from qtrain import _dispatch, ops


class _Refuse:
    def __call__(self, *args, **kwargs):
        raise AssertionError("the registered op was called")


def test_eager_plain_tensors_run_directly(monkeypatch):
    x = torch.randn(8, 32)
    want = ops.quantize_float8._op(x, "float8_e4m3fn", -1, False, "reference")
    monkeypatch.setattr(ops.quantize_float8, "_op", _Refuse())
    got = ops.quantize_float8(x, "float8_e4m3fn", -1, False, "reference")
    for a, b in zip(got, want):
        assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                           b.view(torch.uint8) if b.element_size() == 1 else b)


def test_outputs_never_carry_autograd():
    x = torch.randn(8, 32, requires_grad=True)
    data, qs = ops.quantize_float8(x, "float8_e4m3fn", -1, False, "reference")
    assert not data.requires_grad and not qs.requires_grad


def test_fake_tensors_go_through_the_op(monkeypatch):
    monkeypatch.setattr(ops.quantize_float8, "_fn", _Refuse())
    with FakeTensorMode():
        x = torch.empty(8, 32)
        data, qs = ops.quantize_float8(x, "float8_e4m3fn", -1, False, "reference")
    assert data.shape == (8, 32) and data.dtype == torch.float8_e4m3fn and qs.shape == (8, 1)


def test_env_switch_forces_the_op(monkeypatch):
    monkeypatch.setattr(_dispatch, "DIRECT", False)
    monkeypatch.setattr(ops.quantize_float8, "_fn", _Refuse())
    data, _ = ops.quantize_float8(torch.randn(4, 16), "float8_e4m3fn", -1, False, "reference")
    assert data.shape == (4, 16)


def test_compiled_calls_use_the_op(monkeypatch):
    monkeypatch.setattr(ops.quantize_float8, "_fn", _Refuse())
    fn = torch.compile(lambda t: ops.quantize_float8(t, "float8_e4m3fn", -1, False, "reference")[1],
                       backend="eager", fullgraph=True)
    assert fn(torch.ones(4, 16)).shape == (4, 1)
