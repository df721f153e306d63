"""Every recipe's quantized linear on the fast backend's Triton kernels under the CPU interpreter
(the same integration the GPU runs: transposed operands, dual casts, routing), against the recipe
applied by hand through qtrain.reference within MM-4 (spec/06, spec/07). Small shapes only.
"""
import contextlib
import dataclasses
import os

import pytest
import torch

import qtrain
from qtrain.backend import register_backend
from qtrain.fast.backend import InterpretedFastBackend
from linear_helpers import check_recipe_by_hand

SEED = int(os.environ.get("QTRAIN_TEST_SEED", torch.seed() % 2 ** 31))
NAME = "fast-interpret-linear"


class _FastOnCpu(InterpretedFastBackend):
    """FastBackend on CPU tensors through the interpreter; products the CPU has no kernel for
    (torch._scaled_mm / _int_mm refuse or are missing there) go to the Triton product kernel."""

    def __init__(self):
        super().__init__(NAME)

    def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=False,
                     pow2_factors=False):
        from qtrain.fast.scaled_mm import scaled_mm_nt_triton
        return scaled_mm_nt_triton(a, a_dequant, b, b_dequant, out_dtype)


register_backend(NAME, _FastOnCpu)
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="interpreter path for CPU-only machines (on a GPU, tests/test_gpu_fast_linear.py runs)")


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise"])
def test_RC_fast_kernels_linear_matches_hand_quantization(recipe):
    gen = torch.Generator().manual_seed(SEED)
    m, k, n = 128, 128, 128
    x = torch.randn(m, k, generator=gen).requires_grad_()
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).requires_grad_()
    g = torch.randn(m, n, generator=gen)
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend=NAME)
    out = qtrain.linear(x, w, config=config)
    out.backward(g)
    try:
        check_recipe_by_hand(recipe, x, w, g, out, x.grad, w.grad)
    except AssertionError as e:
        raise AssertionError(f"{e} (QTRAIN_TEST_SEED={SEED})") from None


def _inputs(m, k, n):
    """x (m, k), w (n, k), grad_output (m, n) from SEED."""
    gen = torch.Generator().manual_seed(SEED)
    return (torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) / k ** 0.5,
            torch.randn(m, n, generator=gen))


def _tensorwise_linear(compiled=False):
    """qtrain.linear with the tensorwise recipe on the interpreted fast backend, compiled
    (fullgraph, after a dynamo reset) or eager."""
    config = dataclasses.replace(qtrain.recipe_config("tensorwise"), backend=NAME)
    fn = lambda a, b: qtrain.linear(a, b, config=config)          # noqa: E731
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True)
    return fn


def _fwd_bwd(fn, x, w, g, forward_context=contextlib.nullcontext):
    """(output, grad_input, grad_weight) of fn(x, w) with grad_output g, on fresh leaves; the
    forward runs inside forward_context()."""
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    with forward_context():
        out = fn(xi, wi)
    out.backward(g)
    return out.detach(), xi.grad, wi.grad


@pytest.mark.parametrize("transpose_mode", ["copy", "cast"])
def test_compiled_tensorwise_with_torch_amax_gives_the_eager_bits(transpose_mode, monkeypatch):
    """QTRAIN_COMPILED_AMAX=torch: a compiled graph computes each tensorwise amax as a torch
    reduction (which inductor may fuse into x's producer) and runs the cast pass alone, for
    either QTRAIN_TENSORWISE_TRANSPOSE (x and g through the given-amax cast, or through the
    both-layouts cast with the amax given). Same output and gradients, bit for bit, as eager's
    own amax pass; no graph break."""
    from qtrain import qlinear, recipes
    from qtrain.fast.backend import FastBackend
    monkeypatch.setattr(qlinear, "TENSORWISE_TRANSPOSE", transpose_mode)
    calls = []          # (cast, whether its amax came from the caller)
    real_given = FastBackend.quantize_float8_given_amax
    real_both = FastBackend.quantize_float8_both_layouts

    def given_amax(self, x, amax, *args, **kwargs):
        calls.append(("given_amax", amax is not None))
        return real_given(self, x, amax, *args, **kwargs)

    def both_layouts(self, x, fmt, pow2_scale=False, amax=None):
        calls.append(("both_layouts", amax is not None))
        return real_both(self, x, fmt, pow2_scale, amax)

    monkeypatch.setattr(FastBackend, "quantize_float8_given_amax", given_amax)
    monkeypatch.setattr(FastBackend, "quantize_float8_both_layouts", both_layouts)
    x, w, g = _inputs(64, 128, 128)
    eager = _fwd_bwd(_tensorwise_linear(), x, w, g)
    # eager: x and g keep the cast's own amax pass; w's amax is computed once
    # (ops.tensor_amax) and given to its two casts, w and w.T
    given = [c for c in calls if c[1]]
    assert len(given) == 2 and all(n == "given_amax" for n, _ in given), calls
    calls.clear()
    monkeypatch.setattr(recipes, "COMPILED_AMAX", "torch")
    compiled = _fwd_bwd(_tensorwise_linear(compiled=True), x, w, g)
    torch._dynamo.reset()
    # x and w forward; g, and w re-quantized for grad_input (RC-14), backward: all four casts
    # get their amax from the graph
    assert len(calls) == 4 and all(given for _, given in calls), calls
    both = sum(n == "both_layouts" for n, _ in calls)
    assert both == (2 if transpose_mode == "cast" else 0), calls
    for want, got, what in zip(eager, compiled, ("output", "grad_input", "grad_weight")):
        assert torch.equal(want, got), f"{what} (QTRAIN_TEST_SEED={SEED})"


def test_eager_tensorwise_transposes_reused_payloads_by_tiles(monkeypatch):
    """Eager tensorwise reuses x's and g's float8 payloads transposed for grad_weight; with
    QTRAIN_FAST_TRANSPOSE=tiles the fast backend writes those transposes with its tiled kernel
    (two per fwd+bwd), the same bits as torch's copy of the transposed view."""
    from qtrain import qlinear
    from qtrain.fast import transpose
    monkeypatch.setattr(qlinear, "TENSORWISE_TRANSPOSE", "copy")     # the payload copy path
    monkeypatch.setattr(transpose, "TRANSPOSE", "tiles")
    calls = []
    real = transpose.transpose_bytes

    def counted(x):
        calls.append(tuple(x.shape))
        out = real(x)
        assert torch.equal(out.view(torch.uint8), x.t().contiguous().view(torch.uint8))
        return out

    monkeypatch.setattr(transpose, "transpose_bytes", counted)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(64, 128, generator=gen).requires_grad_()
    w = (torch.randn(96, 128, generator=gen) / 128 ** 0.5).requires_grad_()
    config = dataclasses.replace(qtrain.recipe_config("tensorwise"), backend=NAME)
    qtrain.linear(x, w, config=config).backward(torch.randn(64, 96, generator=gen))
    assert sorted(calls) == [(64, 96), (64, 128)], calls        # g (M, N) and x (M, K)



@pytest.mark.parametrize("transpose_mode", ["copy", "cast"])
@pytest.mark.parametrize("compiled", [False, "kernel", "torch"],
                         ids=["eager", "compiled-amax_kernel", "compiled-amax_torch"])
def test_tensorwise_weight_amax_runs_once_per_step(compiled, transpose_mode, monkeypatch):
    """A tensorwise linear's weight is cast twice per step (w for the output, w.T for
    grad_input, RC-14). Its amax pass runs once, in the forward; the backward cast of w.T gets
    the saved amax and runs its cast pass alone. Amax passes per fwd+bwd: x, w, g (three, not
    four); compiled with QTRAIN_COMPILED_AMAX=torch (the default) x's and g's amax are torch
    reductions in the graph, so w's pass is the only one. Same bits as casting w.T with its
    own amax pass (the path of weights that are tensor subclasses)."""
    from qtrain import qlinear, recipes
    from qtrain.fast import amax as fast_amax
    monkeypatch.setattr(qlinear, "TENSORWISE_TRANSPOSE", transpose_mode)
    if compiled:
        monkeypatch.setattr(recipes, "COMPILED_AMAX", compiled)
    passes = []
    real = fast_amax.amax_bits_2d

    def counted(x2d, **kw):
        passes.append(tuple(x2d.shape))
        return real(x2d, **kw)

    monkeypatch.setattr(fast_amax, "amax_bits_2d", counted)
    import qtrain.fast.cast_float8 as cf
    monkeypatch.setattr(cf, "amax_bits_2d", counted)
    x, w, g = _inputs(64, 96, 160)
    got = _fwd_bwd(_tensorwise_linear(bool(compiled)), x, w, g)
    torch._dynamo.reset()
    # x, w and g: one amax pass apiece. w is viewed as rows of 1024 (fast.common.flat_2d); x
    # and g too when cast alone (QTRAIN_TENSORWISE_TRANSPOSE=copy), 2-D when cast into both
    # layouts (=cast, the default)
    x_g = [(6, 1024), (10, 1024)] if transpose_mode == "copy" else [(64, 96), (64, 160)]
    if compiled == "torch":
        x_g = []
    assert sorted(passes) == sorted([(15, 1024)] + x_g), passes
    passes.clear()
    monkeypatch.setattr(qlinear, "_PLAIN_TENSORS", ())
    want = _fwd_bwd(_tensorwise_linear(bool(compiled)), x, w, g)
    torch._dynamo.reset()
    assert len(passes) == (0 if compiled == "torch" else 4), passes
    for a, b, what in zip(want, got, ("output", "grad_input", "grad_weight")):
        assert torch.equal(a, b), f"{what} (QTRAIN_TEST_SEED={SEED})"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_tensorwise_both_layouts_cast_gives_the_copy_bits(compiled, monkeypatch):
    """QTRAIN_TENSORWISE_TRANSPOSE=cast: x and g of a tensorwise linear are cast into both
    layouts by one pass, so no float8 payload is copied transposed (eager: no transpose_payload
    call; 2 with the default copy). Output and both gradients are the copy path's bits, eager
    and compiled; what backward keeps for x is the same size (x.T's payload instead of x's)."""
    from qtrain import qlinear
    from qtrain.fast.backend import FastBackend
    copies = []
    real = FastBackend.transpose_payload

    def counted(self, p):
        copies.append(tuple(p.shape))
        return real(self, p)

    monkeypatch.setattr(FastBackend, "transpose_payload", counted)
    x, w, g = _inputs(64, 96, 160)

    def step(mode):
        monkeypatch.setattr(qlinear, "TENSORWISE_TRANSPOSE", mode)
        kept = []

        def saved_bytes():
            return torch.autograd.graph.saved_tensors_hooks(
                lambda t: kept.append(t.numel() * t.element_size()) or t, lambda t: t)

        result = _fwd_bwd(_tensorwise_linear(compiled), x, w, g, saved_bytes)
        torch._dynamo.reset()
        return result, sum(kept)

    want, kept_copy = step("copy")
    n_copy = len(copies)
    copies.clear()
    got, kept_cast = step("cast")
    if not compiled:
        assert n_copy == 2 and not copies, (n_copy, copies)
        assert kept_cast == kept_copy, (kept_cast, kept_copy)
    for a, b, what in zip(want, got, ("output", "grad_input", "grad_weight")):
        assert torch.equal(a, b), f"{what} (QTRAIN_TEST_SEED={SEED})"


# reciprocals left per fwd+bwd with the casts writing their factors: rowwise_with_gw_hp's
# tensorwise w for grad_input goes through the generic tensorwise op (the one FSDP's gathered
# float8 weight intercepts), which returns the quant scale only
RECIPROCALS_LEFT = {"tensorwise": 0, "rowwise": 0, "rowwise_with_gw_hp": 1, "blockwise": 0}


@pytest.mark.parametrize("recipe", sorted(RECIPROCALS_LEFT))
def test_cast_dequant_factors_same_bits_no_reciprocal(recipe, monkeypatch):
    """QTRAIN_FAST_CAST_DEQUANT: with the float8 casts writing their dequant factors (the
    default) a linear's fwd+bwd runs no torch.reciprocal but RECIPROCALS_LEFT's; with it off,
    the caller computes every factor. Output and both gradients are the same bits either
    way."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from qtrain.fast import backend as fast_backend_module

    class CountReciprocal(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.reciprocal:
                CountReciprocal.n += 1
            return func(*args, **(kwargs or {}))

    x, w, g = _inputs(128, 128, 256)
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend=NAME)
    linear = lambda a, b: qtrain.linear(a, b, config=config)          # noqa: E731
    got = {}
    for written in (True, False):
        monkeypatch.setattr(fast_backend_module, "CAST_DEQUANT", written)
        CountReciprocal.n = 0
        with CountReciprocal():
            got[written] = _fwd_bwd(linear, x, w, g)
        if written:
            assert CountReciprocal.n == RECIPROCALS_LEFT[recipe], (recipe, CountReciprocal.n)
        else:
            assert CountReciprocal.n > RECIPROCALS_LEFT[recipe], (recipe, CountReciprocal.n)
    for a, b, what in zip(got[True], got[False], ("output", "grad_input", "grad_weight")):
        assert torch.equal(a, b), f"{recipe} {what} (QTRAIN_TEST_SEED={SEED})"


class _FastValuesOnCpu(_FastOnCpu):
    """_FastOnCpu with RC-7's emulated MX route on for bf16 CPU tensors (on CUDA the fast
    backend takes it for bf16 by default): the MX products run on MX-10 values."""
    NAME = "fast-interpret-mx-values"

    def __init__(self):
        InterpretedFastBackend.__init__(self, self.NAME)
        self.calls = {"quantize_mx_values": 0, "quantize_mx": 0, "mm_mx_values": 0}

    def mx_values_route(self, t):
        return t.dtype == torch.bfloat16

    def __getattr__(self, attr):
        calls = self.__dict__.get("calls", {})
        if attr in calls:
            def counted(*args, **kwargs):
                calls[attr] += 1
                return getattr(self._fast, attr)(*args, **kwargs)
            return counted
        return getattr(self._fast, attr)


register_backend(_FastValuesOnCpu.NAME, _FastValuesOnCpu)


@pytest.mark.parametrize("m", [160, 150])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
def test_RC_7_emulated_mxfp8_on_values_matches_hand_quantization(scale_mode, compiled, m):
    """mxfp8 with bf16 x on the emulated route: x along K, w along K and N, g along N and M
    quantized straight to MX-10 values (five value casts), x along M kept as payload and scale
    bytes (one MX cast) and dequantized by the grad_weight product; every product within MM-4
    of the recipe applied by hand. K = 96 is not a multiple of the 64-column tile; M = 150 is
    padded to whole blocks along M for grad_weight (x's payload and g's values alike)."""
    from qtrain.backend import _instance
    impl = _instance(_FastValuesOnCpu.NAME)
    for k in impl.calls:
        impl.calls[k] = 0
    x, w, g = (t.to(torch.bfloat16) for t in _inputs(m, 96, 64))
    config = dataclasses.replace(qtrain.recipe_config("mxfp8"), backend=_FastValuesOnCpu.NAME,
                                 scale_mode=scale_mode)
    fn = lambda a, b: qtrain.linear(a, b, config=config)          # noqa: E731
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, fullgraph=True)
    out, grad_x, grad_w = _fwd_bwd(fn, x, w, g)
    assert impl.calls == {"quantize_mx_values": 5, "quantize_mx": 1, "mm_mx_values": 3}, impl.calls
    by_hand = "mxfp8" if scale_mode == "floor" else "mxfp8_rceil"
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, -m % 32))     # noqa: E731
    try:   # zero rows past M: zero blocks along M (MX-5), zero rows of out and grad_x
        check_recipe_by_hand(by_hand, pad(x), w, pad(g), pad(out), pad(grad_x), grad_w)
    except AssertionError as e:
        raise AssertionError(f"{e} (QTRAIN_TEST_SEED={SEED})") from None
