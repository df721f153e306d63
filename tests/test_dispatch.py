"""qtrain/_dispatch.py: eager calls on plain tensors skip the dispatcher; fake tensors, tensor
subclasses and traced calls go through the registered op (DefinedOp); both give the same bits."""
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


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "op"])
def test_outputs_never_carry_autograd(monkeypatch, direct):
    monkeypatch.setattr(_dispatch, "DIRECT", direct)
    x = torch.randn(8, 32, requires_grad=True)
    data, qs = ops.quantize_float8(x, "float8_e4m3fn", -1, False, "reference")
    assert not data.requires_grad and not qs.requires_grad


def test_ops_are_defined_from_their_signatures():
    """DefinedOp: the schema inferred from the annotations (defaults kept), no autograd kernel
    of its own, the fake kernel registered."""
    schema = str(ops.quantize_float8._op._overload._schema)
    assert schema == ("qtrain::quantize_float8(Tensor x, str fmt, SymInt? axis, bool pow2_scale, "
                      "str backend, bool transposed=False) -> (Tensor, Tensor)")
    with FakeTensorMode():
        data, qs = torch.ops.qtrain.quantize_float8.default(torch.empty(4, 16), "float8_e5m2",
                                                            None, True, "reference")
    assert data.dtype == torch.float8_e5m2 and qs.shape == ()


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
