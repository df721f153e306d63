"""The grouped (MoE) products on the fast backend (CUDA) against the reference backend: the
float8 column casts bit for bit, torch._scaled_grouped_mm's routes (2d x 3d with groups that
start anywhere, 2d x 2d with unaligned groups padded inside) within MM-4, the regions it leaves
unwritten set to zero (MM-5), and the whole grouped layer's output and gradients.

Needs a CUDA GPU with float8 tensor cores: skipped elsewhere, with the reason shown (the CPU
checks of the same kernels under the Triton interpreter are tests/test_moe_fast.py).
"""
import dataclasses
import os

import numpy as np
import pytest
import torch

import qtrain
from qtrain.fast import cast_grouped
from qtrain.reference_backend import ReferenceBackend

from linear_helpers import TOLERANCES, assert_mm4, to_np

SEED = int(os.environ.get("QTRAIN_TEST_SEED", torch.seed() % 2 ** 31))


def _fast_ok():
    if not torch.cuda.is_available():
        return False, "no CUDA device: the fast backend runs on GPUs"
    return qtrain.get_backend("fast").available()


_OK, _WHY = _fast_ok()
pytestmark = pytest.mark.skipif(not _OK, reason=_WHY or "fast backend unavailable")
OFFS = [37, 37, 190, 290]          # uneven, one empty group, not 16-aligned, 10 tail rows
M, E, K, N = 300, 4, 256, 128


def _gen():
    return torch.Generator(device="cuda").manual_seed(SEED)


def _bits(t):
    return t.cpu().view(torch.uint8 if t.element_size() == 1 else torch.int32)


# settings other than the defaults (fast/cast_grouped.py GROUP_CAST), as
# benchmarks/group_cast_sweep.py times them
GROUP_CAST_VARIANTS = {"looping": (32, 64, 128, 8, 1), "tall_amax": (32, 32, 256, 4, 0),
                       "looping_wide": (64, 128, 64, 8, 2), "earlier_default": (32, 64, 32, 4, 0)}


def _assert_group_casts_bitexact(nan=False, align=16):
    """Token groups (uneven, one empty, a tail; padded to `align`) and expert weights: the
    reference's bits."""
    gen = _gen()
    x = (torch.randn(M, K, generator=gen, device="cuda") * 4).to(torch.bfloat16)
    if nan:
        x[40, 9] = float("nan")
    w = torch.randn(E, N, K, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.tensor(OFFS, dtype=torch.int32, device="cuda")
    ref = ReferenceBackend()
    got = cast_grouped.quantize_float8_grouped_t(x, offs, align, "float8_e4m3fn", True)
    want = ref.quantize_float8_grouped_t(x.cpu(), offs.cpu(), align, "float8_e4m3fn", True)
    for a, b in zip(got, want):
        assert torch.equal(_bits(a), _bits(b))
    got = cast_grouped.quantize_float8_experts_t(w, "float8_e4m3fn", False)
    want = ref.quantize_float8_experts_t(w.cpu(), "float8_e4m3fn", False)
    for a, b in zip(got, want):
        assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("variant", sorted(GROUP_CAST_VARIANTS))
def test_group_cast_settings_same_bits(variant, monkeypatch):
    """Every setting the sweep may pick gives the reference's bits, NaN column included."""
    for use in ("tokens", "experts"):
        monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS[variant])
    _assert_group_casts_bitexact(nan=True)


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_group_cast_pipelined_loops_same_bits(stages, monkeypatch):
    """GROUP_CAST_STAGES (both row loops software-pipelined: cp.async loads) with the defaults
    and a looping grid: the reference's bits, NaN column included."""
    monkeypatch.setattr(cast_grouped, "GROUP_CAST_STAGES", stages)
    _assert_group_casts_bitexact(nan=True)
    for use in ("tokens", "experts"):
        monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS["looping"])
    _assert_group_casts_bitexact(nan=True, align=48)


@pytest.mark.parametrize("align", [16, 1, 48])
def test_group_cast_t_from_x_same_bits(align, monkeypatch):
    """GROUP_CAST_T_FROM_X (x.T encoded from the transposed 16-bit tile) at the defaults and a
    looping grid, every padding alignment: the reference's bits, NaN column included."""
    monkeypatch.setattr(cast_grouped, "GROUP_CAST_T_FROM_X", True)
    _assert_group_casts_bitexact(nan=True, align=align)
    for use in ("tokens", "experts"):
        monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS["looping"])
    _assert_group_casts_bitexact(nan=True, align=align)


@pytest.mark.parametrize("align", [16, 1, 48])
def test_casts_bitexact_F8_7(align):
    """Every padding alignment: the kernel's ALIGN hint (the largest power of two dividing
    align) lets it store x.T in vectors only where the padded starts allow."""
    _assert_group_casts_bitexact(align=align)
    _assert_group_casts_bitexact(nan=True, align=align)


@pytest.mark.parametrize("form", ["2d3d", "2d2d"])
def test_scaled_grouped_mm_routes_MM_4_MM_5(form):
    """torch._scaled_grouped_mm with groups as given (2d x 3d) or padded inside (2d x 2d,
    group_align=1): each group within MM-4; rows past the end and empty groups exactly 0."""
    gen = _gen()
    fb = qtrain.get_backend("fast")
    offs = torch.tensor(OFFS, dtype=torch.int32, device="cuda")
    x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16)
    if form == "2d3d":
        w = torch.randn(E, N, K, generator=gen, device="cuda").to(torch.bfloat16)
        a, qa = fb.quantize_float8(x, "float8_e4m3fn", -1, True)
        b, qb = fb.quantize_float8(w.reshape(-1, K), "float8_e4m3fn", -1, True)
        da, db = 1 / qa, (1 / qb).reshape(E, N, 1)
        b = b.reshape(E, N, K)
    else:                                    # x.T (K, M) @ g (M, N) per token group
        g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
        ref = ReferenceBackend()
        qa = ref.quantize_float8_grouped_t(x.cpu(), offs.cpu(), 1, "float8_e4m3fn", True)
        qb = ref.quantize_float8_grouped_t(g.cpu(), offs.cpu(), 1, "float8_e4m3fn", True)
        a, da = qa[0].cuda(), (1 / qa[1]).unsqueeze(-1).cuda()
        b, db = qb[0].cuda(), (1 / qb[1]).unsqueeze(-1).cuda()
    out = fb.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16)
    assert not out.isnan().any()
    a64 = to_np(a.float()).astype(np.float64)
    b64 = to_np(b.float()).astype(np.float64)
    start = 0
    for gi, end in enumerate(OFFS):
        if form == "2d3d":
            if end > start:
                assert_mm4(f"group {gi}", out[start:end],
                           a64[start:end] * to_np(da[start:end]).astype(np.float64),
                           b64[gi] * to_np(db[gi]).astype(np.float64), torch.bfloat16,
                           TOLERANCES["tensor_core_promote_every"])
        elif end > start:
            assert_mm4(f"group {gi}", out[gi],
                       a64[:, start:end] * to_np(da[gi]).astype(np.float64),
                       b64[:, start:end] * to_np(db[gi]).astype(np.float64), torch.bfloat16,
                       TOLERANCES["tensor_core_promote_every"])
        else:
            assert not out[gi].any(), f"empty group {gi} must be zeros (MM-5)"
        start = end
    if form == "2d3d":
        assert not out[OFFS[-1]:].any(), "rows past offs[-1] must be zeros (MM-5)"


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8", "mxfp8-payload"])
def test_layer_matches_reference(recipe, monkeypatch):
    """recipe mxfp8: the MX products on MX-10 values (qgrouped_mm.MX_VALUES, the default);
    mxfp8-payload: MX_VALUES off, the products on payload and scale bytes."""
    if recipe == "mxfp8-payload":
        from qtrain import qgrouped_mm
        monkeypatch.setattr(qgrouped_mm, "MX_VALUES", False)
        recipe = "mxfp8"
    gen = _gen()
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    ref_config = dataclasses.replace(config, backend="reference")
    offs = torch.tensor(OFFS, dtype=torch.int32, device="cuda")
    x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16)
    w = (torch.randn(E, N, K, generator=gen, device="cuda") * 0.05).to(torch.bfloat16)
    g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
    results = []
    for cfg, dev in ((config, "cuda"), (ref_config, "cpu")):
        xr = x.to(dev).clone().requires_grad_()
        wr = w.to(dev).clone().requires_grad_()
        y = qtrain.grouped_mm(xr, wr, offs.to(dev), cfg)
        y.backward(g.to(dev))
        results.append([t.detach().float().cpu() for t in (y, xr.grad, wr.grad)])
    for what, a, b in zip(("output", "grad_input", "grad_weight"), *results):
        # same payloads and scales; products differ by accumulation order and one bf16 rounding
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        assert rel < TOLERANCES["fast_vs_reference_max_rel"], \
            f"{recipe} {what}: max relative difference {rel:.2e}"
    assert not results[0][0][OFFS[-1]:].any()


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_compiled_layer_gives_eager_bits(recipe):
    """qtrain.grouped_mm under torch.compile (fullgraph, inductor) on the fast backend: output
    and both gradients are eager's bits (torch 2.11 once gave them zero: qgrouped_mm._as_dtype)."""
    config = dataclasses.replace(qtrain.recipe_config(recipe), backend="fast")
    gen = _gen()
    x0 = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16)
    w = torch.nn.Parameter((torch.randn(E, N, K, generator=gen, device="cuda") / 16).to(torch.bfloat16))
    g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.tensor(OFFS, dtype=torch.int32, device="cuda")

    def layer(x):
        return qtrain.grouped_mm(x, w, offs, config)
    torch._dynamo.reset()
    got = []
    for fn in (layer, torch.compile(layer, fullgraph=True)):
        x = x0.clone().requires_grad_()
        w.grad = None
        out = fn(x)
        out.backward(g)
        got.append([out.detach(), x.grad, w.grad])
    for i, (a, b) in enumerate(zip(*got)):
        assert torch.count_nonzero(a) > 0 and torch.equal(a, b), f"tensor {i} of (out, grad_x, grad_w)"


def test_compiled_layer_is_one_graph():
    """qtrain.grouped_mm traced by torch.compile on CUDA: one graph, no break (the fast
    backend's checks broke it at every call on the H200 before they were resolved at trace
    time, qtrain/backend.py resolve_backend_for_call)."""
    config = dataclasses.replace(qtrain.recipe_config("rowwise"), backend="fast")
    gen = _gen()
    x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
    w = torch.nn.Parameter((torch.randn(E, N, K, generator=gen, device="cuda") / 16).to(torch.bfloat16))
    offs = torch.tensor(OFFS, dtype=torch.int32, device="cuda")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda a: qtrain.grouped_mm(a, w, offs, config))(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
        [str(b.reason) for b in explained.break_reasons]
