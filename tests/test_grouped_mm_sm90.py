"""fast/grouped_mm_sm90.py, the Triton float8 2d x 3d grouped product for Hopper, on small tiles
so that groups straddle row tiles and the last K step lies partly outside the operands: the
interpreter on a CPU (CI), the real kernel on an sm90 GPU. Products within MM-4 with RC-3's
accumulation (fast, or promotion every BK columns); the routing of
fast/grouped_mm.scaled_grouped_mm; the whole bf16 grouped layer against the reference."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend  # noqa: F401
import qtrain
from qtrain import backend as qbackend
from qtrain.fast import grouped_mm as fast_grouped
from qtrain.fast import grouped_mm_sm90 as sm90
from qtrain.fast.backend import FastBackend
from qtrain.qgrouped_mm import _QuantizedGroupedMMFn

from linear_helpers import assert_mm4, to_np

SMALL = {"2d3d": (32, 32, 32, 2, 4)}                 # BM, BN, BK, stages, warps
F8 = torch.float8_e4m3fn


@pytest.fixture
def small_tiles(monkeypatch):
    fast_backend()
    if DEVICE == "cuda" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the sm90 kernels run on compute capability 9.0 only")
    if sm90.TensorDescriptor is None:
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


@pytest.mark.parametrize("offs", [[17, 17, 60, 90], [5, 5, 30, 30], [0, 0, 0, 0]],
                         ids=["tail_in_one_tile", "tail_over_three_tiles", "all_empty"])
def test_2d3d_rows_past_the_end_are_zero(offs, small_tiles, monkeypatch, seed):
    """MM-5: the kernel itself writes +0 to rows [offs[-1], M), over memory that held NaN (the
    output is allocated uninitialized); the groups' rows are the products."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.dtype == torch.bfloat16 else t
    monkeypatch.setattr(sm90.torch, "empty", nan_empty)
    m, k, n = 100, 64, 64
    a, b = _payload((m, k)), _payload((4, n, k))
    offs_t = torch.tensor(offs, dtype=torch.int32, device=DEVICE)
    out = sm90.grouped_2d3d(a, _factors((m,)), b, _factors((4, n)), offs_t, True).cpu()
    assert torch.equal(out[offs[-1]:], torch.zeros(m - offs[-1], n, dtype=torch.bfloat16))
    assert not out[:offs[-1]].isnan().any()


def test_routing(small_tiles, monkeypatch, seed):
    """fast/grouped_mm.scaled_grouped_mm sends rowwise bf16-out 2d x 3d products here: with
    fast accumulation under "auto" (on sm90; the CPU interpreter only under "triton"), the
    promoted ones too under "triton"; rows past offs[-1] come back +0; fp32 out, 2d x 2d and
    "torch" stay away."""
    calls = []
    real = sm90.grouped_2d3d
    monkeypatch.setattr(sm90, "grouped_2d3d", lambda *args: calls.append(args[-1]) or real(*args))
    offs = torch.tensor([10, 10, 30], dtype=torch.int32, device=DEVICE)
    a, b = _payload((40, 32)), _payload((3, 64, 32))
    da, db = _factors((40, 1)), _factors((3, 64, 1))
    out = fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16, use_fast_accum=True)
    assert calls == [True]
    assert torch.equal(out[30:].cpu(), torch.zeros(10, 64, dtype=torch.bfloat16))
    fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16)
    assert calls == [True, False]
    at, bt = _payload((48, 32)), _payload((40, 32))
    pends = torch.tensor([16, 16, 32], dtype=torch.int32, device=DEVICE)
    fast_grouped.scaled_grouped_mm(at, _factors((3, 48, 1)), bt, _factors((3, 40, 1)), pends,
                                   torch.bfloat16, 16)
    fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.float32, use_fast_accum=True)
    monkeypatch.setattr(fast_grouped, "GROUPED_GEMM", "torch")
    fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16, use_fast_accum=True)
    if DEVICE == "cuda":
        monkeypatch.setattr(fast_grouped, "GROUPED_GEMM", "auto")
        fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16)
        fast_grouped.scaled_grouped_mm(a, da, b, db, offs, torch.bfloat16, use_fast_accum=True)
        assert calls == [True, False, True]
    assert calls[:2] == [True, False] and len(calls) == (3 if DEVICE == "cuda" else 2)


def test_bf16_layer_matches_reference(small_tiles, seed):
    """The rowwise grouped layer in bf16 through this kernel (forward with fast accumulation,
    grad_input promoted) against the reference backend: the same payloads, products within
    MM-4, so within a bf16 rounding or two. (The interpreter of Triton 3.9 converts fp32 to
    bf16 by truncation, not to nearest: up to one bf16 ulp, inside MM-4's 2 u_out.)"""
    qbackend.register_backend("fast-interpreter", lambda: FastBackend(allow_interpreter=True))
    plan = qtrain.Float8LinearConfig(recipe="rowwise").plan(grouped=True)
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


def test_route_setting_is_checked():
    """A misspelt QTRAIN_FAST_GROUPED_GEMM stops the import with the variable's name, rather
    than running some route silently."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, QTRAIN_FAST_GROUPED_GEMM="tritn")
    proc = subprocess.run([sys.executable, "-c", "import qtrain.fast.grouped_mm"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "QTRAIN_FAST_GROUPED_GEMM='tritn' is not one of" in proc.stderr
