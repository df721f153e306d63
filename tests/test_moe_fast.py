"""qtrain.fast grouped products (fast/grouped_mm.py) against the reference backend, under the
Triton interpreter on CPU: the per-group float8 cast bit for bit, the (emulated) grouped product
within MM-4, and the whole quantized grouped layer."""
import numpy as np
import pytest
import torch

from test_fast_common import DEVICE, fast_backend  # noqa: F401
import qtrain
from qtrain import backend as qbackend
from qtrain.fast import cast_grouped
from qtrain.fast import grouped_mm as fast_grouped
from qtrain.fast.backend import FastBackend
from qtrain.qgrouped_mm import _QuantizedGroupedMMFn
from qtrain.reference_backend import ReferenceBackend

from linear_helpers import assert_mm4, to_np

OFFS = {"uneven": [5, 5, 23, 37], "empty_ends": [0, 17, 24, 24], "single": [0, 0, 30, 30]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grouping", sorted(OFFS))
def test_grouped_cast_bitexact_F8_7(grouping, dtype, seed):
    fast_backend()
    offs = torch.tensor(OFFS[grouping], dtype=torch.int32, device=DEVICE)
    x = (torch.randn(40, 48) * 5).to(dtype).to(DEVICE)
    x[3, 7] = 0.0
    got = cast_grouped.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn", True)
    want = ReferenceBackend().quantize_float8_grouped_t(x.cpu(), offs.cpu(), 16, "float8_e4m3fn", True)
    for a, b, what in zip(got, want, ("data_t", "quant_scale")):
        assert torch.equal(a.cpu().view(torch.uint8) if a.element_size() == 1 else a.cpu(),
                           b.view(torch.uint8) if b.element_size() == 1 else b), what


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_cast_bitexact_F8_7(dtype, seed):
    """grad_input's B: every w[e].T rowwise, written by one launch straight from w (E, N, K)."""
    fast_backend()
    w = (torch.randn(3, 40, 24) * 3).to(dtype).to(DEVICE)
    w[1] = 0.0                                              # an all-zero expert: F8-6 scale
    w[2, 5, 7] = float("nan")
    got = cast_grouped.quantize_float8_experts_t(w, "float8_e4m3fn", False)
    want = ReferenceBackend().quantize_float8_experts_t(w.cpu(), "float8_e4m3fn", False)
    assert got[0].shape == (3, 24, 40) and got[1].shape == (3, 24)
    assert torch.equal(got[0].cpu().view(torch.uint8), want[0].view(torch.uint8))
    assert torch.equal(got[1].cpu().view(torch.int32), want[1].view(torch.int32))   # NaN bits too
    assert got[1][2, 7].isnan()


# settings of the per-group column cast other than the defaults (fast/cast_grouped.py
# GROUP_CAST: BLOCK_R, BLOCK_C, AMAX_BLOCK_R, warps, programs per SM): a looping grid (4
# programs under the interpreter, fewer than the items), loop 1 on taller or shorter tiles
# than loop 2, one item per program
GROUP_CAST_VARIANTS = {"looping": (16, 16, 32, 4, 1), "tall_amax": (8, 32, 64, 4, 0),
                       "looping_short_amax": (32, 16, 8, 4, 2), "one_item_each": (8, 16, 8, 4, 0)}


@pytest.mark.parametrize("variant", sorted(GROUP_CAST_VARIANTS))
def test_group_cast_settings_same_bits(variant, monkeypatch, seed):
    """Tiles and grid change only the order of reads: token groups (uneven, empty,
    a tail past the last group) and expert weights (a tile across two experts) give the
    reference's bits, NaN and inf columns and the dequant factors included."""
    fast_backend()
    for use in ("tokens", "experts"):
        monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS[variant])
    _assert_group_casts_as_reference()


def test_group_cast_pipelined_loops_same_bits(monkeypatch, seed):
    """GROUP_CAST_STAGES (the row loops software-pipelined on a GPU; the interpreter runs the
    same loops) with a looping grid: the reference's bits."""
    fast_backend()
    monkeypatch.setattr(cast_grouped, "GROUP_CAST_STAGES", 3)
    for use in ("tokens", "experts"):
        monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS["looping"])
    _assert_group_casts_as_reference()


@pytest.mark.parametrize("variant", ["default", "looping", "tall_amax"])
def test_group_cast_t_from_x_same_bits(variant, monkeypatch, seed):
    """GROUP_CAST_T_FROM_X (loop 2 encodes the transposed 16-bit tile): the reference's bits,
    padding zeros, NaN and inf columns and empty groups included, at the default tiles and
    at two others."""
    fast_backend()
    monkeypatch.setattr(cast_grouped, "GROUP_CAST_T_FROM_X", True)
    if variant != "default":
        for use in ("tokens", "experts"):
            monkeypatch.setitem(cast_grouped.GROUP_CAST, use, GROUP_CAST_VARIANTS[variant])
    _assert_group_casts_as_reference()


def _assert_group_casts_as_reference():
    ref = ReferenceBackend()
    for grouping in ("uneven", "empty_ends", "single"):
        offs = torch.tensor(OFFS[grouping], dtype=torch.int32, device=DEVICE)
        x = (torch.randn(40, 48) * 5).to(torch.bfloat16).to(DEVICE)
        x[11, 3] = float("nan")
        x[26, 40] = float("-inf")
        got = cast_grouped.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn", True,
                                                     with_dequant=True)
        want = ref.quantize_float8_grouped_t(x.cpu(), offs.cpu(), 16, "float8_e4m3fn", True)
        assert torch.equal(got[0].cpu().view(torch.uint8), want[0].view(torch.uint8)), grouping
        assert torch.equal(got[1].cpu().view(torch.int32), want[1].view(torch.int32)), grouping
        # torch.reciprocal on the kernel's device: a NaN's payload bits are the device's
        # (0x7fffffff on the H200, 0x7fc00000 on the CPU)
        assert torch.equal(got[2].view(torch.int32),
                           torch.reciprocal(want[1].to(DEVICE)).view(torch.int32)), grouping
    w = (torch.randn(3, 40, 24) * 3).to(torch.bfloat16).to(DEVICE)
    w[1] = 0.0
    w[2, 5, 7] = float("nan")
    got = cast_grouped.quantize_float8_experts_t(w, "float8_e4m3fn", False)
    want = ref.quantize_float8_experts_t(w.cpu(), "float8_e4m3fn", False)
    assert torch.equal(got[0].cpu().view(torch.uint8), want[0].view(torch.uint8))
    assert torch.equal(got[1].cpu().view(torch.int32), want[1].view(torch.int32))


def test_token_groups_take_the_wide_tile_when_it_fills_the_gpu(seed):
    """fast/cast_grouped._group_cast_setting: token groups take the experts' wider tile once its
    (group, column tile) items fill WIDE_TILE_WAVES waves of the device's programs (the
    interpreter counts 4), the narrow one below that; the wide tile gives the reference's bits
    on token groups too."""
    fast_backend()
    dev = torch.device(DEVICE)
    wide, narrow = cast_grouped.GROUP_CAST["experts"], cast_grouped.GROUP_CAST["tokens"]
    need = cast_grouped.WIDE_TILE_WAVES * cast_grouped.program_budget(dev, 1)
    tiles = -(-need // 4)                                   # 4 groups
    c_wide, c_narrow = wide[1] * tiles, wide[1] * (tiles - 1)
    assert cast_grouped._group_cast_setting("tokens", 4, c_wide, dev) == wide
    assert cast_grouped._group_cast_setting("tokens", 4, c_narrow, dev) == narrow
    assert cast_grouped._group_cast_setting("experts", 1, 16, dev) == wide
    offs = torch.tensor(OFFS["uneven"], dtype=torch.int32, device=DEVICE)
    x = (torch.randn(40, c_wide) * 5).to(torch.bfloat16).to(DEVICE)
    x[11, 3] = float("nan")
    got = cast_grouped.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn", True)
    want = ReferenceBackend().quantize_float8_grouped_t(x.cpu(), offs.cpu(), 16, "float8_e4m3fn",
                                                        True)
    assert torch.equal(got[0].cpu().view(torch.uint8), want[0].view(torch.uint8))
    assert torch.equal(got[1].cpu().view(torch.int32), want[1].view(torch.int32))


@pytest.mark.parametrize("grouping", sorted(OFFS) + ["no_groups"])
def test_grouped_casts_with_dequant_write_reciprocals(grouping, seed):
    """The grouped ops (what grouped_mm calls) on fast: the same payloads and scales as the
    casts alone, and dequant factors written by the kernel with torch.reciprocal's bits
    (empty groups, zero rows, NaN, and no groups at all included)."""
    from qtrain import grouped_ops
    fast_backend()
    name = "fast-interpreter"
    qbackend.register_backend(name, lambda: FastBackend(allow_interpreter=True))
    offs = torch.tensor(OFFS.get(grouping, []), dtype=torch.int32, device=DEVICE)
    x = (torch.randn(40, 48) * 5).to(torch.bfloat16).to(DEVICE)
    x[5:17] = 0.0
    x[30, 3] = float("nan")
    w = (torch.randn(3, 40, 24) * 3).to(torch.bfloat16).to(DEVICE)
    w[2, 5, 7] = float("nan")
    cases = (("grouped_t", grouped_ops.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn",
                                                                 True, name),
              cast_grouped.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn", True)),
             ("experts_t", grouped_ops.quantize_float8_experts_t(w, "float8_e4m3fn", False, name),
              cast_grouped.quantize_float8_experts_t(w, "float8_e4m3fn", False)))
    for what, (data, qs, dq), (want_data, want_qs) in cases:
        assert torch.equal(data.view(torch.uint8), want_data.view(torch.uint8)), what
        assert torch.equal(qs.view(torch.int32), want_qs.view(torch.int32)), what
        assert dq.shape == qs.shape, (what, dq.shape, qs.shape)
        assert torch.equal(dq.view(torch.int32), torch.reciprocal(qs).view(torch.int32)), what


def test_experts_cast_is_rowwise_of_each_transpose(seed):
    """The reference's meaning: expert e's payload is quantize_float8(w[e].T, axis=-1)."""
    ref = ReferenceBackend()
    w = torch.randn(2, 16, 32)
    data, qs = ref.quantize_float8_experts_t(w, "float8_e5m2", True)
    for e in range(2):
        d, q = ref.quantize_float8(w[e].t().contiguous(), "float8_e5m2", -1, True)
        assert torch.equal(data[e].view(torch.uint8), d.view(torch.uint8))
        assert torch.equal(qs[e], q.reshape(-1))


def test_emulated_products_within_MM_4(seed):
    fast_backend()
    offs = torch.tensor([5, 5, 23, 37], dtype=torch.int32, device=DEVICE)
    x, w = torch.randn(40, 64).to(DEVICE), torch.randn(4, 32, 64).to(DEVICE)
    fb = FastBackend(allow_interpreter=True)
    a, qa = fb.quantize_float8(x, "float8_e4m3fn", -1, False)
    b, qb = fb.quantize_float8(w.reshape(-1, 64), "float8_e4m3fn", -1, False)
    da, db = 1 / qa, (1 / qb).reshape(4, 32, 1)
    out = fast_grouped.scaled_grouped_mm(a, da, b.reshape(4, 32, 64), db, offs, torch.float32)
    a64 = to_np(a.float()).astype(np.float64) * to_np(da).astype(np.float64)
    b64 = to_np(b.float()).astype(np.float64) * to_np(1 / qb).astype(np.float64)
    start = 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            assert_mm4(f"group {g}", out[start:end], a64[start:end], b64[g * 32:(g + 1) * 32],
                       torch.float32)
        start = end
    assert not out[37:].any()


def _fast_and_reference(x, w, g, offs, config):
    """{backend: (output, grad_input, grad_weight)} of the grouped layer's forward and backward
    on the fast path (interpreter on a CPU) and on the reference backend."""
    results = {}
    for name in ("fast-interpreter", "reference"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = _QuantizedGroupedMMFn.apply(xr, wr, offs, config.plan(grouped=True), name)
        y.backward(g)
        results[name] = (y.detach(), xr.grad, wr.grad)
    return results


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8", "mxfp8_gw_hp"])
def test_fast_layer_matches_reference(recipe, seed):
    """Whole forward + backward on the fast path (interpreter on a CPU) vs the reference backend:
    same payloads, products within MM-4, so results agree to a few fp32 ulps. mxfp8_gw_hp: the
    high-precision grad_weight over the padded token layout (the fast backend's one-launch
    padding)."""
    fast_backend()
    qbackend.register_backend("fast-interpreter", lambda: FastBackend(allow_interpreter=True))
    config = {"rowwise": lambda: qtrain.Float8LinearConfig(recipe="rowwise"),
              "mxfp8": lambda: qtrain.MXLinearConfig(scale_mode="rceil"),
              "mxfp8_gw_hp": lambda: qtrain.MXLinearConfig(scale_mode="rceil",
                                                           grad_weight_hp=True)}[recipe]()
    offs = torch.tensor([5, 5, 23, 37], dtype=torch.int32, device=DEVICE)
    x, w, g = (t.to(DEVICE) for t in (torch.randn(40, 64), torch.randn(4, 32, 64), torch.randn(40, 32)))
    results = _fast_and_reference(x, w, g, offs, config)
    for got, want, what in zip(results["fast-interpreter"], results["reference"],
                               ("output", "grad_input", "grad_weight")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=what)


def test_zeroing_kernels_touch_only_unwritten_regions_MM_5():
    """The two launches that replace torch.where on CUDA (rows past offs[-1]; empty groups),
    run under the interpreter on a CPU: they zero exactly those regions and nothing else."""
    fast_backend()
    out = torch.full((40, 24), 7.0, dtype=torch.bfloat16, device=DEVICE)
    offs = torch.tensor([5, 5, 23, 37], dtype=torch.int32, device=DEVICE)
    fast_grouped._zero_rows_past_end_kernel[(2,)](out, offs, 4, 40, 24, BLOCK_R=32, BLOCK_N=16)
    assert not out[37:].any() and bool((out[:37] == 7).all())
    slabs = torch.full((4, 6, 10), 3.0, device=DEVICE)
    fast_grouped._zero_empty_groups_kernel[(4, 2)](slabs, offs, 60, BLOCK=16)
    assert not slabs[1].any()
    assert bool((slabs[[0, 2, 3]] == 3).all())


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"])
@pytest.mark.parametrize("shape,block", [((40, 96), (1, 32)), ((3, 16, 64), (1, 1, 32)),
                                         ((33, 256), (1, 128)), ((17, 40), (1, 40))])
def test_emulated_dequant_kernel_is_exact_FMT_1(fmt, shape, block, seed):
    """The emulated products' one-pass dequantization (fast/block_dequant.py): every float8 code
    (NaN and Inf included) decoded exactly, times its block factor in fp32, rounded once to
    fp32 or bf16: the same bits as torch's (p.float() * factors).to(dtype)."""
    fast_backend()
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    p = codes.view(getattr(torch, fmt)).to(DEVICE)
    dshape = tuple(n // b for n, b in zip(shape, block))
    d = torch.randn(dshape, generator=gen).to(DEVICE) * 3
    d.view(-1)[0] = 2.0 ** -20                                     # a power-of-two (MX) factor
    from qtrain.fast.block_dequant import dequant_blocks, times_block_factors
    for dtype, bits in ((torch.float32, torch.int32), (torch.bfloat16, torch.int16)):
        got = dequant_blocks(p, d, dtype)
        want = times_block_factors(p.float(), d).to(dtype)   # torch: rne
        assert got is not None and got.shape == want.shape and got.dtype == dtype
        same = (got.view(bits) == want.view(bits)) | (got.isnan() & want.isnan())
        assert bool(same.all()), f"{fmt} {shape} {dtype}: {int((~same).sum())} differ (seed {seed})"


def test_emulated_operand_dtype_needs_the_pow2_promise_for_bf16():
    """bf16 operands only under the power-of-two promise (exact there); arbitrary factors get
    fp32 operands (their exact values after MM-3's one rounding), unless this torch's CUDA
    _grouped_mm has refused fp32 (then logged, bf16)."""
    from types import SimpleNamespace
    cuda, cpu = (SimpleNamespace(device=SimpleNamespace(type=t)) for t in ("cuda", "cpu"))
    pick = fast_grouped._operand_dtype
    assert pick(cuda, torch.bfloat16, True) == torch.bfloat16
    assert pick(cuda, torch.bfloat16, False) == torch.float32
    assert pick(cuda, torch.float32, True) == torch.float32
    assert pick(cpu, torch.bfloat16, True) == torch.float32


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_grouped_layer_promises_pow2_factors(recipe):
    """The grouped layer's three products carry the pow2_factors promise (rowwise pow2 scales,
    MX e8m0) to a backend that takes it."""
    from qtrain.reference_backend import ReferenceBackend
    seen = []

    class Recording(ReferenceBackend):
        takes_pow2_factors = True

        def scaled_grouped_mm(self, a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1,
                              pow2_factors=False):
            seen.append(pow2_factors)
            return super().scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype,
                                             group_align)

    qbackend.register_backend("pow2-grouped-recording", Recording)
    config = (qtrain.Float8LinearConfig(recipe="rowwise", backend="pow2-grouped-recording")
              if recipe == "rowwise"
              else qtrain.MXLinearConfig(backend="pow2-grouped-recording"))
    x = torch.randn(64, 64, requires_grad=True)
    w = torch.randn(2, 32, 64, requires_grad=True)
    offs = torch.tensor([20, 64], dtype=torch.int32)
    qtrain.grouped_mm(x, w, offs, config).sum().backward()
    assert seen == [True, True, True], seen


@pytest.mark.parametrize("align", [1, 8, 16, 32, 12])
def test_padded_offsets_in_one_launch_RC_13(align, seed):
    """fast's padded_offsets (one Triton program; what the eager grouped layer calls through
    grouped_ops.padded_offsets) gives qtrain.grouping's int32 values: empty groups, groups of
    exact multiples, a malformed decreasing offs (the torch ops' rounding of negative sizes),
    up to 300 groups (several tiles of the cumsum); align 12 takes the torch ops."""
    from qtrain import grouped_ops
    from qtrain.grouping import padded_offsets
    fast_backend()
    backend = "fast-interpreter"
    qbackend.register_backend(backend, lambda: FastBackend(allow_interpreter=True))
    gen = torch.Generator().manual_seed(align)
    cases = [torch.tensor([10, 5, 40, 3])]
    for n_groups in (1, 3, 8, 300):
        sizes = torch.tensor([0, 1, 15, 16, 17, 33, 100])[
            torch.randint(0, 7, (n_groups,), generator=gen)]
        cases.append(torch.cumsum(sizes, 0))
    for offs in cases:
        offs = offs.to(torch.int32).to(DEVICE)
        want = padded_offsets(offs.cpu(), align)
        for got in (cast_grouped.padded_offsets_one_launch(offs, align),
                    grouped_ops.padded_offsets(offs, align, backend)):
            assert got.dtype == torch.int32 and torch.equal(got.cpu(), want), (align, offs)


def test_padded_offsets_launches_once(monkeypatch):
    """The eager layer's padded offsets: one launch of the kernel for a power-of-two align,
    none for another align (the torch ops)."""
    from qtrain import grouped_ops
    fast_backend()
    backend = "fast-interpreter"
    qbackend.register_backend(backend, lambda: FastBackend(allow_interpreter=True))
    launches = []
    kernel = cast_grouped._padded_offsets_kernel
    real_run = type(kernel).run

    def counted_run(self, *args, grid, **kwargs):
        if self is kernel:
            launches.append(grid)
        return real_run(self, *args, grid=grid, **kwargs)
    monkeypatch.setattr(type(kernel), "run", counted_run)
    offs = torch.tensor([3, 3, 40], dtype=torch.int32, device=DEVICE)
    grouped_ops.padded_offsets(offs, 16, backend)
    assert launches == [(1,)]
    grouped_ops.padded_offsets(offs, 12, backend)
    assert launches == [(1,)]


@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
@pytest.mark.parametrize("grouping", ["uneven", "empty_ends"])
def test_grouped_layer_on_mx_values_matches_reference(grouping, scale_mode, monkeypatch, seed):
    """qgrouped_mm.MX_VALUES (RC-7's emulation on MX-10 values, as the dense linear takes it):
    x along K, w along K and N, g along N and along tokens cast straight to bf16 values (five
    value casts), x along tokens kept as payload (one MX cast), three value products; forward
    and backward in bf16 against the reference backend's payload products, within one bf16
    bf16 rounding (the same exact terms, summed in fp32 or exactly, each rounded once)."""
    from qtrain import qgrouped_mm
    fast_backend()
    calls = {"quantize_mx_values": 0, "quantize_mx": 0, "mm_mx_values_grouped": 0}
    for name in calls:
        real = getattr(FastBackend, name)
        def counted(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(FastBackend, name, counted)
    monkeypatch.setattr(FastBackend, "mx_values_route", lambda self, t: t.dtype == torch.bfloat16,
                        raising=False)
    monkeypatch.setattr(qgrouped_mm, "MX_VALUES", True)
    qbackend.register_backend("fast-interpreter", lambda: FastBackend(allow_interpreter=True))
    config = qtrain.MXLinearConfig(scale_mode=scale_mode)
    offs = torch.tensor(OFFS[grouping], dtype=torch.int32, device=DEVICE)
    gen = torch.Generator().manual_seed(seed)

    def varied(*shape):       # magnitudes that vary along both axes: blocks along one axis and
        t = torch.randn(*shape, generator=gen)           # along the other get other exponents
        t = t * torch.exp2(torch.randint(-6, 7, shape[:-1] + (1,), generator=gen).float())
        t = t * torch.exp2(torch.randint(-6, 7, shape[-1:], generator=gen).float())
        return t.to(DEVICE, torch.bfloat16)
    x, w, g = varied(40, 64), varied(4, 32, 64), varied(40, 32)
    results = _fast_and_reference(x, w, g, offs, config)
    assert calls == {"quantize_mx_values": 5, "quantize_mx": 1, "mm_mx_values_grouped": 3}, calls
    for got, want, what in zip(results["fast-interpreter"], results["reference"],
                               ("output", "grad_input", "grad_weight")):
        assert got.dtype == torch.bfloat16
        atol = 2.0 ** -16 * float(want.float().abs().max())
        torch.testing.assert_close(got.float(), want.float(), rtol=2.0 ** -7, atol=atol,
                                   msg=f"{what} (seed {seed})")
    assert not results["fast-interpreter"][0][OFFS[grouping][-1]:].any()       # MM-5


def test_grouped_layer_on_mx_values_compiled_gives_the_eager_bits(monkeypatch):
    """The MX_VALUES route under torch.compile (fullgraph): the ops' fake kernels trace it, and
    output and both grads equal the eager run's bits."""
    import dataclasses
    from qtrain import qgrouped_mm
    from qtrain.fast.backend import InterpretedFastBackend
    if DEVICE != "cpu":
        pytest.skip("the interpreter's CPU path; on a GPU test_gpu_fast_moe runs the route")
    fast_backend()
    monkeypatch.setattr(FastBackend, "mx_values_route", lambda self, t: t.dtype == torch.bfloat16,
                        raising=False)
    monkeypatch.setattr(qgrouped_mm, "MX_VALUES", True)
    qbackend.register_backend("fast-interpret-moe", lambda: InterpretedFastBackend("fast-interpret-moe"))
    config = dataclasses.replace(qtrain.MXLinearConfig(), backend="fast-interpret-moe")
    offs = torch.tensor(OFFS["uneven"], dtype=torch.int32)
    gen = torch.Generator().manual_seed(0)
    x0, w0 = torch.randn(40, 64, generator=gen), torch.randn(4, 32, 64, generator=gen)
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        fn = lambda a, b: qtrain.grouped_mm(a, b, offs, config)        # noqa: E731
        fn = torch.compile(fn, fullgraph=True) if compiled else fn
        x, w = (t.bfloat16().requires_grad_() for t in (x0, w0))
        y = fn(x, w)
        y.backward(torch.ones_like(y))
        runs.append((y.detach(), x.grad, w.grad))
    for eager, compiled, what in zip(*runs, ("output", "grad_input", "grad_weight")):
        assert torch.equal(eager.view(torch.int16), compiled.view(torch.int16)), what


def test_grouped_product_of_values_takes_transposed_views_without_a_copy(monkeypatch):
    """The values products hand torch._grouped_mm the NT-form views as they are where its stride
    rule takes them (w along N as a row-major (E, N, K) B, g along tokens as a column-major A)
    and copy only operands it would refuse (a stride that is not a multiple of 16 bytes)."""
    seen = []
    real = torch._grouped_mm

    def spy(a, b, offs=None, **kw):
        seen.append((a.data_ptr(), a.stride(), b.data_ptr(), b.stride()))
        return real(a, b, offs=offs, **kw)
    monkeypatch.setattr(torch, "_grouped_mm", spy)
    gen = torch.Generator().manual_seed(5)
    offs = torch.tensor([16, 16, 48, 64], dtype=torch.int32)
    g_store = torch.randn(64, 32, generator=gen).bfloat16()        # (tokens, N)
    w_store = torch.randn(4, 32, 48, generator=gen).bfloat16()     # (E, N, K)
    x = torch.randn(64, 48, generator=gen).bfloat16()

    # grad_input: g (M, N) @ w[e] (N, K); w along N in NT form is the (E, K, N) view
    out = fast_grouped._grouped_mm_of_values(g_store, w_store.transpose(1, 2), offs,
                                             torch.bfloat16, 16)
    assert seen[-1][2] == w_store.data_ptr() and seen[-1][3] == w_store.stride()
    want = torch.cat([g_store[s:e].float() @ w_store[i].float()
                      for i, (s, e) in enumerate(zip([0] + offs.tolist()[:-1], offs.tolist()))])
    torch.testing.assert_close(out.float(), want, rtol=2 ** -7, atol=1e-2)

    # grad_weight: g[group].T @ x[group]; g along tokens in NT form is the (N, tokens) view
    out = fast_grouped._grouped_mm_of_values(g_store.t(), x.t(), offs, torch.bfloat16, 16)
    assert seen[-1][0] == g_store.data_ptr() and seen[-1][1] == g_store.t().stride()
    torch.testing.assert_close(out[2].float(), g_store[16:48].float().t() @ x[16:48].float(),
                               rtol=2 ** -7, atol=1e-2)
    assert not out[1].any()                                        # empty group: zeros (MM-5)

    # a row stride of 36 bytes is not a multiple of 16: that operand is copied
    odd = torch.randn(64, 18, generator=gen).bfloat16()[:, :16]
    assert fast_grouped._mm_layout(odd) is not odd and fast_grouped._mm_layout(odd).is_contiguous()
    assert fast_grouped._mm_layout(g_store.t()).data_ptr() == g_store.data_ptr()


def test_grouped_product_of_values_copies_once_a_torch_refuses_views(monkeypatch, caplog):
    """A torch._grouped_mm that takes only A row-major and B column-major: the row-major B (w
    along N) is refused once, with one log line; the same product then runs on copies in those
    layouts, and so does every later one (no second attempt on views)."""
    real = torch._grouped_mm
    calls = []

    def strict(a, b, offs=None, **kw):                 # A row-major, B column-major only
        calls.append(a.is_contiguous() and b.mT.is_contiguous())
        if not calls[-1]:
            raise RuntimeError("strict test torch: A row-major and B column-major only")
        return real(a, b, offs=offs, **kw)
    monkeypatch.setattr(torch, "_grouped_mm", strict)
    monkeypatch.setattr(fast_grouped, "_VIEWS_OK", {})
    gen = torch.Generator().manual_seed(6)
    offs = torch.tensor([16, 32], dtype=torch.int32)
    g = torch.randn(32, 16, generator=gen).bfloat16()
    w = torch.randn(2, 16, 32, generator=gen).bfloat16()
    with caplog.at_level("WARNING", logger="qtrain"):
        first = fast_grouped._grouped_mm_of_values(g, w.transpose(1, 2), offs, torch.bfloat16, 16)
        second = fast_grouped._grouped_mm_of_values(g, w.transpose(1, 2), offs, torch.bfloat16, 16)
    assert calls == [False, True, True]
    assert sum("refuses a transposed operand" in r.message for r in caplog.records) == 1
    want = torch.cat([g[:16].float() @ w[0].float(), g[16:].float() @ w[1].float()])
    for out in (first, second):
        torch.testing.assert_close(out.float(), want, rtol=2 ** -7, atol=1e-2)


PAD_OFFS = {**OFFS, "tail_rows": [3, 9, 9, 20], "one_group": [40], "many": list(range(1, 41))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grouping", sorted(PAD_OFFS))
@pytest.mark.parametrize("align", [32, 16, 1])
def test_pad_groups_one_launch_gives_the_torch_layout(grouping, dtype, align, seed):
    """fast/cast_grouped.pad_groups_one_launch: the bits of qtrain.grouping.pad_groups (rows
    copied into the padded layout, zeros between groups and after the last; rows of x past
    offs[-1] dropped), for uneven, empty, single and forty one-row groups, with pends given or made."""
    from qtrain import grouping as torch_layout
    fast_backend()
    offs = torch.tensor(PAD_OFFS[grouping], dtype=torch.int32, device=DEVICE)
    x = (torch.randn(40, 300) * 3).to(dtype).to(DEVICE)
    want = torch_layout.pad_groups(x.cpu(), offs.cpu(), align)[0]
    pends = torch_layout.padded_offsets(offs, align)
    for got in (cast_grouped.pad_groups_one_launch(x, offs, align),
                cast_grouped.pad_groups_one_launch(x, offs, align, pends)):
        assert got.shape == want.shape and got.dtype == dtype
        assert torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8)), grouping


def test_pad_groups_one_launch_refuses_what_it_cannot_copy():
    fast_backend()
    with pytest.raises(ValueError, match="x must be 2-D and offs int32"):
        cast_grouped.pad_groups_one_launch(torch.ones(4, 5, 6, device=DEVICE),
                                           torch.tensor([4], dtype=torch.int32, device=DEVICE), 8)
    with pytest.raises(ValueError, match="offs int32"):
        cast_grouped.pad_groups_one_launch(torch.ones(4, 6, device=DEVICE),
                                           torch.tensor([4], dtype=torch.int64, device=DEVICE), 8)
