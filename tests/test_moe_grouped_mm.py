"""Grouped products for MoE (spec/06 MM-5, spec/07 RC-13) on the reference backend: the
reference product by hand, the device-side group padding, qtrain.grouped_mm against the linear
recipe applied per group, SQNR against high precision, and torch.compile."""
import numpy as np
import pytest
import torch

import qtrain
import qtrain.reference as ref
from qtrain.qgrouped_mm import grouped_mm
from qtrain.grouping import pad_groups

from linear_helpers import sqnr_db

# Tolerances, one table (STYLE). SQNR bars are torchao's (MX linear and MoE tests); measured
# here on the shapes below (fp32, Gaussian): rowwise and mxfp8 rceil both ~28.5 dB for
# output, grad_input and grad_weight.
TOL = {
    "sqnr_output_db": 27.0,
    "sqnr_grad_input_db": 25.0,
    "sqnr_grad_weight_db": 24.0,
    "sqnr_moe_block_db": 23.0,
    "by_hand_rtol": 1e-6,        # fp32 output of an fp64 sum taken in another order
}
GROUPINGS = {                    # name -> (M, offs): uneven, empty, single, tail rows ignored
    "uneven": (40, [5, 5, 23, 37]),
    "empty_first_last": (24, [0, 17, 24, 24]),
    "single": (19, [0, 19, 19, 19]),
}
CONFIGS = {
    "rowwise": lambda: qtrain.Float8LinearConfig(recipe="rowwise", backend="reference"),
    "mxfp8": lambda: qtrain.MXLinearConfig(scale_mode="rceil", backend="reference"),
    "mxfp8_gw_hp": lambda: qtrain.MXLinearConfig(grad_weight_hp=True, backend="reference"),
}


def _offs(values):
    return torch.tensor(values, dtype=torch.int32)


def test_reference_grouped_by_hand_MM_5(seed):
    rng = np.random.default_rng(seed)
    a32 = rng.standard_normal((9, 32)).astype(np.float32)
    b32 = rng.standard_normal((3, 16, 32)).astype(np.float32)
    a, qa = ref.quantize_float8(a32, "float8_e4m3fn", axis=-1)
    b, qb = ref.quantize_float8(b32, "float8_e4m3fn", axis=-1)
    offs = np.array([2, 2, 7], dtype=np.int32)
    out = ref.scaled_grouped_mm(a, 1.0 / qa.astype(np.float64), b, 1.0 / qb.astype(np.float64), offs)
    A = a.astype(np.float64) / qa
    B = b.astype(np.float64) / qb
    expect = np.zeros((9, 16))
    expect[0:2] = A[0:2] @ B[0].T
    expect[2:7] = A[2:7] @ B[2].T                       # group 1 empty, rows 7-8 stay +0
    np.testing.assert_allclose(out, expect, rtol=TOL["by_hand_rtol"])
    assert np.all(out[7:] == 0) and not np.signbit(out[7:]).any()
    # 2d x 2d along the contraction with per-group factors (E, R, 1)
    t32 = rng.standard_normal((4, 10)).astype(np.float32)
    u32 = rng.standard_normal((6, 10)).astype(np.float32)
    offs = np.array([3, 3, 8], dtype=np.int32)
    da, du = [], []
    groups = [(0, 3), (3, 3), (3, 8)]
    t8 = np.zeros((4, 10), dtype=ref.float8_dtype("float8_e4m3fn"))
    u8 = np.zeros((6, 10), dtype=t8.dtype)
    for s, e in groups:
        if e > s:
            d1, q1 = ref.quantize_float8(t32[:, s:e], "float8_e4m3fn", axis=1)
            d2, q2 = ref.quantize_float8(u32[:, s:e], "float8_e4m3fn", axis=1)
            t8[:, s:e], u8[:, s:e] = d1, d2
        else:
            q1, q2 = np.ones((4, 1), np.float32), np.ones((6, 1), np.float32)
        da.append(1.0 / q1.astype(np.float64))
        du.append(1.0 / q2.astype(np.float64))
    out = ref.scaled_grouped_mm(t8, np.stack(da), u8, np.stack(du), offs)
    for g, (s, e) in enumerate(groups):
        expect = (t8[:, s:e].astype(np.float64) * da[g]) @ (u8[:, s:e].astype(np.float64) * du[g]).T
        np.testing.assert_allclose(out[g], expect, rtol=TOL["by_hand_rtol"])


@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
@pytest.mark.parametrize("align", [16, 32])
def test_group_padding_round_trip_RC_13(grouping, align):
    m, offs = GROUPINGS[grouping]
    offs = _offs(offs)
    x = torch.arange(1, m + 1, dtype=torch.float32)[:, None]
    xp, pends = pad_groups(x, offs, align)
    assert xp.shape[0] % align == 0 and bool((pends % align == 0).all())
    starts = torch.cat([pends.new_zeros(1), pends[:-1]])
    for g in range(len(offs)):                       # each group starts aligned, in order
        s, e = (0 if g == 0 else int(offs[g - 1])), int(offs[g])
        assert torch.equal(xp[int(starts[g]):int(starts[g]) + e - s, 0], x[s:e, 0])
    assert float(xp.sum()) == float(x[:int(offs[-1])].sum())     # the rest is zero rows


def _hp_grouped(x, w, offs):
    out = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    return torch.where(torch.arange(x.shape[0])[:, None] < offs[-1], out, 0)


def _run(fn, x, w, offs, g):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w, offs)
    y.backward(g)
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize("recipe", sorted(CONFIGS))
@pytest.mark.parametrize("grouping", sorted(GROUPINGS))
def test_matches_linear_recipe_per_group_RC_13(recipe, grouping, seed):
    """Every product of the grouped layer is the linear recipe applied to each group's slice
    (same reference ops, fp64 products): equal bit for bit."""
    config = CONFIGS[recipe]()
    m, offs = GROUPINGS[grouping]
    e, n, k = len(offs), 32, 64
    x, w = torch.randn(m, k) * 3, torch.randn(e, n, k)
    g = torch.randn(m, n)
    offs_t = _offs(offs)
    y, gx, gw = _run(lambda a, b, o: grouped_mm(a, b, o, config), x, w, offs_t, g)
    start = 0
    for i, end in enumerate(offs):
        if end > start:
            ly, lgx, lgw = _run(lambda a, b, o: qtrain.linear(a, b, config=config),
                                x[start:end], w[i], None, g[start:end])
            assert torch.equal(y[start:end], ly), f"output rows of group {i}"
            assert torch.equal(gx[start:end], lgx), f"grad_input rows of group {i}"
            assert torch.equal(gw[i], lgw), f"grad_weight of group {i}"
        else:
            assert not gw[i].any(), f"empty group {i} has a nonzero grad_weight"
        start = end
    assert not y[offs[-1]:].any() and not gx[offs[-1]:].any()


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_sqnr_vs_high_precision(recipe, seed):
    config = CONFIGS[recipe]()
    m, k, n = 160, 128, 64
    offs = _offs([37, 37, 101, 160])
    x, w, g = torch.randn(m, k), torch.randn(4, n, k) * 0.1, torch.randn(m, n)
    y, gx, gw = _run(lambda a, b, o: grouped_mm(a, b, o, config), x, w, offs, g)
    ry, rgx, rgw = _run(_hp_grouped, x, w, offs, g)
    got = (sqnr_db(y, ry), sqnr_db(gx, rgx), sqnr_db(gw, rgw))
    print(recipe, "SQNR out/gi/gw dB", got)
    assert got[0] >= TOL["sqnr_output_db"]
    assert got[1] >= TOL["sqnr_grad_input_db"]
    assert got[2] >= TOL["sqnr_grad_weight_db"]


def test_bf16_and_compile(seed):
    config = CONFIGS["rowwise"]()
    x = torch.randn(40, 64, dtype=torch.bfloat16)
    w = torch.randn(4, 32, 64, dtype=torch.bfloat16)
    offs, g = _offs([5, 5, 23, 37]), torch.randn(40, 32, dtype=torch.bfloat16)
    eager = _run(lambda a, b, o: grouped_mm(a, b, o, config), x, w, offs, g)
    compiled_fn = torch.compile(grouped_mm, fullgraph=True)
    compiled = _run(lambda a, b, o: compiled_fn(a, b, o, config), x, w, offs, g)
    for a, b in zip(eager, compiled):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_errors_name_the_layer():
    config = CONFIGS["rowwise"]()
    x, w = torch.randn(8, 64), torch.randn(2, 32, 64)
    with pytest.raises(ValueError, match="qtrain.grouped_mm.*int32"):
        grouped_mm(x, w, torch.tensor([4, 8]), config)
    with pytest.raises(ValueError, match="multiples of 16"):
        grouped_mm(torch.randn(8, 40), torch.randn(2, 32, 40), _offs([4, 8]), config)
    with pytest.raises(NotImplementedError, match="rowwise"):
        grouped_mm(x, w, _offs([4, 8]), qtrain.Float8LinearConfig(recipe="tensorwise"))
    with pytest.raises(ValueError, match="one device.*offs on meta"):
        grouped_mm(x, w, _offs([4, 8]).to("meta"), config)
    with pytest.raises(ValueError, match="one device.*w on meta"):
        grouped_mm(x, w.to("meta"), _offs([4, 8]), config)


def test_padded_width_agrees_with_reference_RC_13():
    """The torch layer's static padded length is the reference's (one layout, two codes)."""
    from qtrain.grouping import padded_rows
    from qtrain.reference.grouped import padded_width
    for m in (0, 1, 15, 16, 17, 300, 4097):
        for e in (1, 3, 8):
            for align in (1, 16, 32, 128):
                assert padded_rows(m, e, align) == padded_width(m, e, align)


@pytest.mark.parametrize("align", [1, 8, 16, 32, 12])
def test_padded_offsets_match_the_padded_layout_RC_13(align):
    """The short power-of-two path of padded_offsets equals the general layout: every group
    (empty ones too) padded up to a multiple of align, ends cumulated, int32."""
    from qtrain.grouping import _padded_layout, padded_offsets
    gen = torch.Generator().manual_seed(align)
    for n_groups in (1, 3, 8):
        sizes = torch.tensor([0, 1, 15, 16, 17, 33, 100])[
            torch.randint(0, 7, (n_groups,), generator=gen)]
        offs = torch.cumsum(sizes, 0).to(torch.int32)
        got = padded_offsets(offs, align)
        want = _padded_layout(offs, align)[3].to(torch.int32)
        assert got.dtype == torch.int32 and torch.equal(got, want), (align, sizes.tolist())
        assert not (torch.diff(got, prepend=got.new_zeros(1)) % align).any()
