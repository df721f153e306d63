"""fast/grouped_mm_sm90.py, the Triton float8 grouped products for Hopper, on small tiles so that
groups straddle tiles, end inside a K step and leave tiles partly outside the operands: the
interpreter on a CPU (CI), the real kernels on an sm90 GPU. Products within MM-4 with RC-3's
accumulation (fast for the output product, promotion every BK columns otherwise); the routing
of fast/grouped_mm.scaled_grouped_mm; the whole bf16 grouped layer against the reference."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend  # noqa: F401  (sets TRITON_INTERPRET first)
import qtrain
from qtrain import backend as qbackend
from qtrain.fast import grouped_mm as fast_grouped
from qtrain.fast import grouped_mm_sm90 as sm90
from qtrain.fast.backend import FastBackend
from qtrain.qgrouped_mm import _QuantizedGroupedMMFn

from linear_helpers import assert_mm4, to_np

SMALL = {"2d3d": (32, 32, 32, 2, 4), "2d2d": (32, 32, 32, 2, 4)}     # BM, BN, BK, stages, warps
F8 = torch.float8_e4m3fn


@pytest.fixture
def small_tiles(monkeypatch):
    fast_backend()
    if DEVICE == "cuda" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90 kernels run on compute capability 9.0 only")
    if sm90.tensor_descriptor_class() is None:
        pytest.skip("this Triton has no triton.tools.tensor_descriptor")
    monkeypatch.setattr(sm90, "SETTINGS", SMALL)
    monkeypatch.setattr(fast_grouped, "GROUPED_GEMM", "triton")


def _payload(shape, scale=40.0):
    return (torch.randn(shape) * scale).clamp(-448, 448).to(F8).to(DEVICE)


def _factors(shape):
    return (torch.rand(shape) * 2.0 ** -6 + 2.0 ** -9).to(DEVICE)


@pytest.mark.parametrize("fast_accum", [False, True], ids=["promoted", "fast"])
def test_2d3d_within_MM_4(fast_accum, small_tiles, seed):
    """Groups of 17, 0, 43 and 30 rows (tiles of 32 straddle them), rows 90..99 past the end,
    K = 80 (the last K step half outside: zeros from TMA)."""
    m, k, n, offs = 100, 80, 64, [17, 17, 60, 90]
    a, b = _payload((m, k)), _payload((4, n, k))
    da, db = _factors((m,)), _factors((4, n))
    offs_t = torch.tensor(offs, dtype=torch.int32, device=DEVICE)
    out = sm90.grouped_2d3d(a, da, b, db, offs_t, fast_accum)
    a64 = to_np(a.float()).astype(np.float64) * to_np(da).astype(np.float64)[:, None]
    start = 0
    for g, end in enumerate(offs):
        if end > start:
            b64 = to_np(b[g].float()).astype(np.float64) * to_np(db[g]).astype(np.float64)[:, None]
            assert_mm4(f"group {g}", out[start:end], a64[start:end], b64, torch.bfloat16,
                       promote_every=k if fast_accum else 32)
        start = end


def test_2d2d_within_MM_4_and_empty_groups_zero(small_tiles, seed):
    """Groups along T (starting on 16-byte addresses, as the padded layout makes them) of 16, 0,
    48 (one full K step and a 16-column tail), 16 (a tail only) and 32 columns; M = 48 and N = 40
    leave the second row and column tiles partly outside. The empty group's factors are NaN and
    its result is still +0 (MM-5)."""
    m, n, t, offs = 48, 40, 112, [16, 16, 64, 80, 112]
    a, b = _payload((m, t)), _payload((n, t))
    da, db = _factors((5, m)), _factors((5, n))
    da[1], db[1] = float("nan"), float("nan")
    offs_t = torch.tensor(offs, dtype=torch.int32, device=DEVICE)
    out = sm90.grouped_2d2d(a, da, b, db, offs_t)
    assert out.shape == (5, m, n) and out.dtype == torch.bfloat16
    assert torch.equal(out[1].cpu(), torch.zeros(m, n, dtype=torch.bfloat16))
    a_np, b_np = to_np(a.float()).astype(np.float64), to_np(b.float()).astype(np.float64)
    start = 0
    for g, end in enumerate(offs):
        if end > start:
            a64 = a_np[:, start:end] * to_np(da[g]).astype(np.float64)[:, None]
            b64 = b_np[:, start:end] * to_np(db[g]).astype(np.float64)[:, None]
            assert_mm4(f"group {g}", out[g], a64, b64, torch.bfloat16, promote_every=32)
        start = end


def test_routing(small_tiles, monkeypatch, seed):
    """fast/grouped_mm.scaled_grouped_mm sends the rowwise bf16-out products here ("triton");
    rows past offs[-1] of a 2d x 3d product come back +0; fp32 out and "torch" stay away."""
    calls = []
    for name in ("grouped_2d3d", "grouped_2d2d"):
        real = getattr(sm90, name)
        monkeypatch.setattr(sm90, name, lambda *args, _f=real, _n=name: calls.append(_n) or _f(*args))
    offs = torch.tensor([10, 10, 30], dtype=torch.int32, device=DEVICE)
    a, b = _payload((40, 32)), _payload((3, 64, 32))
    da, db = _factors((40, 1)), _factors((3, 64, 1))
    out = fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16, use_fast_accum=True)
    assert calls == ["grouped_2d3d"]
    assert torch.equal(out[30:].cpu(), torch.zeros(10, 64, dtype=torch.bfloat16))
    at, bt = _payload((48, 32)), _payload((40, 32))
    pends = torch.tensor([16, 16, 32], dtype=torch.int32, device=DEVICE)
    fast_grouped.scaled_grouped_mm(at, _factors((3, 48, 1)), bt, _factors((3, 40, 1)), pends,
                                   torch.bfloat16, 16)
    assert calls == ["grouped_2d3d", "grouped_2d2d"]
    fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.float32, use_fast_accum=True)
    monkeypatch.setattr(fast_grouped, "GROUPED_GEMM", "torch")
    fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16, use_fast_accum=True)
    assert calls == ["grouped_2d3d", "grouped_2d2d"]


def test_bf16_layer_matches_reference(small_tiles, seed):
    """The rowwise grouped layer in bf16 through these kernels (forward with fast accumulation,
    grad_weight promoted) against the reference backend: the same payloads, products within
    MM-4, so within a bf16 rounding or two. (The interpreter of Triton 3.9 converts fp32 to
    bf16 by truncation, not to nearest: up to one bf16 ulp, inside MM-4's 2 u_out.)"""
    qbackend.register_backend("fast-interpreter", lambda: FastBackend(allow_interpreter=True))
    plan = qtrain.Float8LinearConfig(recipe="rowwise").plan()
    offs = torch.tensor([5, 5, 23, 37], dtype=torch.int32, device=DEVICE)
    x, w, g = (t.to(DEVICE, torch.bfloat16) for t in
               (torch.randn(40, 64), torch.randn(4, 64, 64), torch.randn(40, 64)))
    results = {}
    for name in ("fast-interpreter" if DEVICE == "cpu" else "fast", "reference"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = _QuantizedGroupedMMFn.apply(xr, wr, offs, plan, name)
        y.backward(g)
        results[name] = (y.detach(), xr.grad, wr.grad)
    got_all, want_all = results.values()
    for got, want, what in zip(got_all, want_all, ("output", "grad_input", "grad_weight")):
        torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=2 ** -6,
                                   atol=1e-3, msg=what)
