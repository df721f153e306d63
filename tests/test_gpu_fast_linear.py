"""Each recipe's quantized linear on the fast backend (CUDA) against the same recipe applied by
hand through qtrain.reference, within MM-4 (spec/06, spec/07); eager and compiled.

Needs a CUDA GPU with float8 tensor cores: skipped elsewhere, with the reason shown.
"""
import dataclasses
import os

import pytest
import torch

import qtrain
from linear_helpers import TOLERANCES, check_recipe_by_hand, sqnr_db

SEED = int(os.environ.get("QTRAIN_TEST_SEED", torch.seed() % 2 ** 31))


def _fast_ok():
    if not torch.cuda.is_available():
        return False, "no CUDA device: the fast backend runs on GPUs (the CPU checks of its kernels are tests/test_fast_*.py)"
    ok, reason = qtrain.get_backend("fast").available()
    return ok, reason


_OK, _WHY = _fast_ok()
pytestmark = pytest.mark.skipif(not _OK, reason=_WHY or "fast backend unavailable")


def _config(recipe):
    return dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")


def _run(recipe, dtype, m=256, k=512, n=384, compile_=False):
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype).requires_grad_()
    w = (torch.randn(n, k, generator=gen, device="cuda") / k ** 0.5).to(dtype).requires_grad_()
    g = torch.randn(m, n, generator=gen, device="cuda").to(dtype)
    fn = lambda a, b: qtrain.linear(a, b, config=_config(recipe))
    if compile_:
        fn = torch.compile(fn, fullgraph=True)
    out = fn(x, w)
    out.backward(g)
    return x, w, g, out, x.grad, w.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise"])
def test_RC_fast_recipe_matches_hand_quantization(recipe, dtype):
    x, w, g, out, gx, gw = _run(recipe, dtype)
    assert out.device.type == "cuda" and out.dtype == dtype
    try:
        check_recipe_by_hand(recipe, x, w, g, out, gx, gw)
    except AssertionError as e:
        raise AssertionError(f"{e} (QTRAIN_TEST_SEED={SEED})") from None


@pytest.mark.parametrize("operands", ["values", "payload"])
def test_RC_7_emulated_mxfp8_operands_on_gpu(operands, monkeypatch):
    """bf16 mxfp8 on CUDA with its operands as MX-10 values (the default; fast/cast_mx_values.py
    casts) or as payload and scale bytes dequantized inside the product: each within MM-4 of the
    recipe by hand, K = 480 not a multiple of the 64-column tile, and the values route takes
    five value casts and one MX cast (x along M, kept for backward)."""
    from qtrain.fast import backend as fast_backend, scaled_mm
    monkeypatch.setattr(scaled_mm, "MX_OPERANDS", operands)
    calls = {"quantize_mx_values": 0, "quantize_mx": 0}
    for name in calls:
        real = getattr(fast_backend.FastBackend, name)
        def counted(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(fast_backend.FastBackend, name, counted)
    x, w, g, out, gx, gw = _run("mxfp8", torch.bfloat16, m=320, k=480, n=192)
    want = {"quantize_mx_values": 5, "quantize_mx": 1} if operands == "values" else \
        {"quantize_mx_values": 0, "quantize_mx": 6}
    assert calls == want
    try:
        check_recipe_by_hand("mxfp8", x, w, g, out, gx, gw)
    except AssertionError as e:
        raise AssertionError(f"{e} (QTRAIN_TEST_SEED={SEED})") from None


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "mxfp8"])
def test_RC_fast_compiled_equals_eager(recipe):
    eager = _run(recipe, torch.bfloat16)
    compiled = _run(recipe, torch.bfloat16, compile_=True)
    for name, a, b in zip(("out", "grad_input", "grad_weight"), eager[3:], compiled[3:]):
        assert torch.equal(a, b), f"{recipe} {name}: compiled differs from eager (QTRAIN_TEST_SEED={SEED})"


@pytest.mark.parametrize("recipe", ["tensorwise", "blockwise"])
def test_RC_14_kept_and_requantized_weight_same_bits_on_gpu(recipe):
    """RC-14 on the fast backend: the forward's float8 w kept for backward and w re-quantized
    there (written transposed by the cast itself) give the same bits."""
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    x0 = torch.randn(256, 512, generator=gen, device="cuda").to(torch.bfloat16)
    w0 = (torch.randn(384, 512, generator=gen, device="cuda") / 23).to(torch.bfloat16)
    g = torch.randn(256, 384, generator=gen, device="cuda").to(torch.bfloat16)
    got = []
    for keep in (False, True):
        config = dataclasses.replace(qtrain.recipe_config(recipe, keep_quantized_weight=keep),
                                     backend="fast")
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        out = qtrain.linear(x, w, config=config)
        out.backward(g)
        got.append((out, x.grad, w.grad))
    for name, a, b in zip(("out", "grad_input", "grad_weight"), *got):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), f"{recipe} {name}"


def test_RC_fast_sqnr_mx():
    x, w, g, out, gx, gw = _run("mxfp8", torch.float32)
    x_hp, w_hp = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out_hp = torch.nn.functional.linear(x_hp, w_hp)
    out_hp.backward(g)
    assert sqnr_db(out, out_hp) >= TOLERANCES["sqnr_mx_output_db"]
    assert sqnr_db(gx, x_hp.grad) >= TOLERANCES["sqnr_mx_grad_input_db"]
    assert sqnr_db(gw, w_hp.grad) >= TOLERANCES["sqnr_mx_grad_weight_db"]


def test_auto_backend_follows_the_model_between_cpu_and_gpu(monkeypatch):
    """QTRAIN_BACKEND=auto on a GPU machine: a model converted on the CPU runs there on the
    reference backend, and moved to the GPU its next call runs on fast (and back); an
    explicit fast backend refuses CPU tensors with a clear error."""
    monkeypatch.delenv("QTRAIN_BACKEND", raising=False)
    torch.manual_seed(0)
    m = qtrain.convert_to_quantized_training(torch.nn.Sequential(torch.nn.Linear(64, 32)),
                                             qtrain.recipe_config("rowwise"))
    x = torch.randn(16, 64)
    out_cpu = m(x)
    assert m[0].backend == "reference"
    m.cuda()
    out_gpu = m(x.cuda())
    assert m[0].backend == "fast"
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=0.05, atol=0.05)
    m.cpu()
    m(x)
    assert m[0].backend == "reference"
    explicit = qtrain.convert_to_quantized_training(
        torch.nn.Sequential(torch.nn.Linear(64, 32)), _config("rowwise"))
    with pytest.raises(RuntimeError, match="not supported"):
        explicit(x)
