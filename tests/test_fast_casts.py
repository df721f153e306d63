"""qtrain.fast casts vs qtrain.reference, bit for bit (F8-*, MX-*, I8-*, BW-*), on small odd
shapes: indexing, masking, layouts and scales of every kernel. NaN payloads are free (FMT-2)."""
import itertools
import numpy as np
import pytest
import torch

from test_fast_common import (DEVICE, FORMATS, assert_same, edge_rows, fast_backend, from_numpy,
                              reference, seed, to_numpy)  # noqa: F401  (seed is a fixture)
import ml_dtypes

# the interpreter evaluates masked-out and NaN lanes too; its NumPy warnings are noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}  # FMT-5
SHAPES = [(1, 16), (17, 32), (33, 160), (6, 96), (8, 128)]   # (8, 128): tensorwise rows of 1024


def _input(shape, dtype, seed):
    return edge_rows(shape, DTYPES[dtype], seed)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [None, -1, 0], ids=["tensorwise", "rowwise", "columnwise"])
def test_float8_F8_1_to_7(shape, dtype, axis, seed):
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    for fmt in FORMATS:
        for pow2 in (False, True):
            data, qs = fast.quantize_float8(from_numpy(x), fmt, axis, pow2)
            ref_data, ref_qs = reference.quantize_float8(x, fmt, axis, pow2)
            what = f"{fmt} axis={axis} pow2={pow2} {dtype} {shape}"
            assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
            assert_same(to_numpy(data), ref_data, "data " + what, seed)


@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (33, 16), (96, 384)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_float8_dual_rowwise_and_transposed_columnwise(shape, dtype, seed):
    """The dual kernel equals the two axiswise casts; the column copy is the (K, M) NT operand.
    bf16 and fp32 x, and a shape of several whole tiles (it writes two layouts in one pass)."""
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    for fmt in ("float8_e4m3fn", "float8_e5m2fnuz"):
        _assert_float8_dual(fast, x, fmt, fmt, seed)


def _assert_float8_dual(fast, x, fmt, what, seed):
    """The dual cast (pow2 scales) is the rowwise cast of x and the columnwise one as x.T."""
    data, qs, data_t, qs_t, dq, dq_t = fast.quantize_float8_dual(from_numpy(x), fmt, True)
    assert_dequant_is_reciprocal(qs, dq, f"rows {what}", seed)
    assert_dequant_is_reciprocal(qs_t, dq_t, f"columns {what}", seed)
    row_data, row_qs = reference.quantize_float8(x, fmt, -1, True)
    col_data, col_qs = reference.quantize_float8(x, fmt, 0, True)
    assert_same(to_numpy(data), row_data, f"row data {what}", seed)
    assert_same(to_numpy(qs), row_qs, f"row quant_scale {what}", seed)
    assert_same(to_numpy(data_t), np.ascontiguousarray(col_data.T), f"col data.T {what}", seed)
    assert_same(to_numpy(qs_t), np.ascontiguousarray(col_qs.T), f"col quant_scale.T {what}", seed)


@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (33, 16), (1, 130)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float8_tensorwise_transposed_is_tensorwise_of_x_t(shape, dtype, seed):
    """RC-14's re-quantized w for grad_input: the cast pass writes x.T itself (no copy)."""
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    for fmt in FORMATS:
        for pow2 in (False, True):
            _assert_float8_tensorwise_t(fast, x, fmt, pow2, f"{fmt} pow2={pow2} {dtype} {shape}", seed)


def _assert_float8_tensorwise_t(fast, x, fmt, pow2, what, seed):
    """The tensorwise cast written as x.T is the tensorwise cast of x.T."""
    data, qs = fast.quantize_float8(from_numpy(x), fmt, None, pow2, transposed=True)
    ref_data, ref_qs = reference.quantize_float8(np.ascontiguousarray(x.T), fmt, None, pow2)
    what += " transposed"
    assert tuple(data.shape) == x.shape[::-1] and data.is_contiguous(), what
    assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
    assert_same(to_numpy(data), ref_data, "data " + what, seed)


def assert_dequant_is_reciprocal(qs, dq, what, seed):
    """The dequant factors a cast writes (tensorwise: shape (1,); dual: like its quant scales)
    have the bits of torch.reciprocal(quant_scale): the product gets the same factors as
    before, with no reciprocal launch."""
    assert dq.dtype == torch.float32 and dq.numel() == qs.numel(), (dq.shape, dq.dtype, what)
    if qs.dim() == 0:                        # tensorwise: one factor, shape (1,)
        assert tuple(dq.shape) == (1,), (dq.shape, what)
    else:
        assert dq.shape == qs.shape, (dq.shape, qs.shape, what)
    assert_same(to_numpy(dq), to_numpy(torch.reciprocal(qs).reshape(dq.shape)),
                "dequant " + what, seed)


@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (8, 128)])
@pytest.mark.parametrize("edge", [False, True], ids=["finite", "nan_inf_zero_rows"])
@pytest.mark.parametrize("transposed", [False, True])
def test_float8_tensorwise_given_amax_is_the_tensorwise_cast(shape, edge, transposed, seed):
    """The cast pass alone, its amax given as a torch reduction (max |x|: what a compiled graph
    computes, QTRAIN_COMPILED_AMAX=torch: recipes.torch_amax_rows_first), gives the reference's
    tensorwise bits: finite data, NaN anywhere (F8-5), and an all-zero tensor (F8-6). The
    kernel reads |amax| (it clears the sign bit itself), so a negated amax gives the same
    bits."""
    from qtrain.recipes import torch_amax_rows_first
    fast = fast_backend()
    x = edge_rows(shape, ml_dtypes.bfloat16, seed, edge=edge)
    cases = [x, np.zeros(shape, ml_dtypes.bfloat16)]
    for xi, sign in itertools.product(cases, (1, -1)):
        xt = from_numpy(xi)
        amax = sign * torch_amax_rows_first(xt)
        for fmt in ("float8_e4m3fn", "float8_e5m2"):
            for pow2 in (False, True):
                data, qs, dq = fast.quantize_float8_given_amax(xt, amax, fmt, pow2,
                                                               transposed=transposed)
                want = np.ascontiguousarray(xi.T) if transposed else xi
                ref_data, ref_qs = reference.quantize_float8(want, fmt, None, pow2)
                what = f"{fmt} pow2={pow2} {shape} transposed={transposed} edge={edge}"
                assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
                assert_same(to_numpy(data), ref_data, "data " + what, seed)
                assert_dequant_is_reciprocal(qs, dq, what, seed)


@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (40, 130), (256, 512)])
@pytest.mark.parametrize("edge", [False, True], ids=["finite", "nan_inf_zero_rows"])
@pytest.mark.parametrize("given_amax", [False, True], ids=["amax_pass", "amax_given"])
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32], ids=["bf16", "fp32"])
def test_float8_tensorwise_both_layouts_is_the_cast_and_its_transpose(shape, edge, given_amax,
                                                                      dtype, seed):
    """One cast pass writing x and x.T (QTRAIN_TENSORWISE_TRANSPOSE=cast): the reference's
    tensorwise bits of x, and the same payload transposed, on shapes that cut tiles and on
    whole tiles, bf16 and fp32 x, with NaN/Inf/zero rows, and for an all-zero tensor
    (F8-5, F8-6)."""
    fast = fast_backend()
    x = edge_rows(shape, dtype, seed, edge=edge)
    for xi in (x, np.zeros(shape, dtype)):
        xt = from_numpy(xi)
        amax = xt.abs().amax().to(torch.float32) if given_amax else None
        for fmt in ("float8_e4m3fn", "float8_e5m2"):
            for pow2 in (False, True):
                data, data_t, qs, dq = fast.quantize_float8_both_layouts(xt, fmt, pow2, amax)
                ref_data, ref_qs = reference.quantize_float8(xi, fmt, None, pow2)
                what = f"{fmt} pow2={pow2} {shape} edge={edge} amax given={given_amax}"
                assert tuple(data_t.shape) == shape[::-1] and data_t.is_contiguous(), what
                assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
                assert_same(to_numpy(data), ref_data, "data " + what, seed)
                assert_same(to_numpy(data_t), np.ascontiguousarray(ref_data.T), "data_t " + what,
                            seed)
                assert_dequant_is_reciprocal(qs, dq, what, seed)


def test_row_copy_runs_on_cuda_only_where_verified():
    """The one-pass both-layouts kernel runs on CUDA for the x dtypes and Triton versions
    checked on the H200 (bf16, Triton 3.6); fp32 x, and any other Triton (whose kernel may store
    the 8-bit codes through a layout conversion, triton-lang/triton#11111), take the cast plus
    the tiled transpose."""
    from qtrain.fast.cast_float8 import row_copy_verified
    assert row_copy_verified(torch.bfloat16, "3.6.0")
    assert not row_copy_verified(torch.float32, "3.6.0")
    assert not row_copy_verified(torch.bfloat16, "3.9.0")
    assert not row_copy_verified(torch.bfloat16, "3.10.1")


def test_float8_tensorwise_both_layouts_without_row_copy_same_bits(monkeypatch, caplog, seed):
    """x dtypes whose ROW_COPY cast is not verified on CUDA (fp32: wrong x.T codes on the H200,
    cast_float8.ROW_COPY_CUDA_DTYPES) take the cast plus the tiled transpose: the same bits as
    the one-pass cast, and one log line per dtype."""
    import logging
    from qtrain.fast import cast_float8
    fast = fast_backend()
    xt = from_numpy(edge_rows((40, 130), np.float32, seed))
    want = fast.quantize_float8_both_layouts(xt, "float8_e4m3fn")
    monkeypatch.setattr(cast_float8, "_row_copy_ok", lambda x: False)
    monkeypatch.setattr(cast_float8, "_ROW_COPY_LOGGED", set())
    with caplog.at_level(logging.INFO, logger="qtrain"):
        got = fast.quantize_float8_both_layouts(xt, "float8_e4m3fn")
        fast.quantize_float8_both_layouts(xt, "float8_e4m3fn")
    for a, b, what in zip(want, got, ("data", "data_t", "quant_scale")):    # bits: NaN rows
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), what
    assert sum("tiled copy writes x.T" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("shape,transposed", [
    *[(s, t) for s in ((17, 32), (6, 96), (40, 130), (9, 300)) for t in (False, True)],
    ((3, 5, 64), False)], ids=str)          # x.T casts are 2-D
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_float8_axiswise_with_dequant_is_the_cast_and_reciprocal(shape, transposed, dtype, seed):
    """ops.quantize_float8_axiswise on fast (what the axiswise recipes call): the reference's
    bits along the last axis of x (rows held whole, and rows past the tile: the two-loop path)
    or of x.T (transposed, 2-D), and dequant factors with torch.reciprocal's bits, NaN/Inf/zero
    rows included."""
    fast = fast_backend()
    x = edge_rows((int(np.prod(shape[:-1])), shape[-1]), dtype, seed).reshape(shape)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        for pow2 in (False, True):
            data, qs, dq = fast.quantize_float8_axiswise(from_numpy(x), fmt, pow2,
                                                         transposed=transposed)
            want = np.ascontiguousarray(x.T) if transposed else x
            ref_data, ref_qs = reference.quantize_float8(want, fmt, -1, pow2)
            what = f"{fmt} pow2={pow2} {shape} transposed={transposed} {dtype}"
            assert_same(to_numpy(data), ref_data, "data " + what, seed)
            assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
            assert_dequant_is_reciprocal(qs, dq, what, seed)


@pytest.mark.parametrize("block,transposed", [((1, 128), False), ((1, 128), True),
                                              ((128, 128), False), ((128, 128), True)], ids=str)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_blockwise_with_dequant_is_the_cast_and_reciprocal(block, transposed, dtype, seed):
    """ops.quantize_blockwise_with_dequant on fast (what the blockwise recipe calls): the
    reference's bits for x or x.T, and dequant factors with torch.reciprocal's bits, laid out
    like the quant scales, NaN/Inf/zero rows included."""
    fast = fast_backend()
    x = edge_rows((256, 384), dtype, seed)
    data, qs, dq = fast.quantize_blockwise_with_dequant(from_numpy(x), block, "float8_e4m3fn",
                                                        transposed=transposed)
    want = np.ascontiguousarray(x.T) if transposed else x
    ref_data, ref_qs = reference.quantize_blockwise(want, block, "float8_e4m3fn")
    what = f"{block} transposed={transposed} {dtype}"
    assert_same(to_numpy(data), ref_data, "data " + what, seed)
    assert_same(to_numpy(qs), ref_qs, "quant_scale " + what, seed)
    assert_dequant_is_reciprocal(qs, dq, what, seed)


def test_float8_given_amax_rejects_a_bad_amax():
    from qtrain.fast import cast_float8
    fast_backend()
    x = torch.randn(8, 32).to(DEVICE)
    for bad, says in ((torch.ones(2, device=DEVICE), "one-element"),
                      (torch.ones((), dtype=torch.int32, device=DEVICE), "one-element float"),
                      (1.0, "one-element")):
        with pytest.raises(ValueError, match=says):
            cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", amax=bad)


def _mx_input(shape, dtype, seed):
    x = edge_rows(shape, np.float32, seed)
    x[6 % shape[0], :] = np.float32(2.0 ** -133)              # MX-7: bf16 subnormal block
    x[7 % shape[0], :] = np.float32(480.0)                     # saturation (floor) / rceil edge
    x[8 % shape[0], 0] = np.uint32(0x40600001).view(np.float32)     # MX-7 rceil golden case
    x[0, :] = np.uint32(0x43FFFFFF).view(np.float32)           # MX-7 floor golden case
    return x.astype(DTYPES[dtype])


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 160)])
@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
def test_mx_MX_1_to_7(shape, dtype, scale_mode, seed):
    fast = fast_backend()
    x = _mx_input(shape, dtype, seed)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        for axis in (-1, 0):
            data, bits = fast.quantize_mx(from_numpy(x), fmt, 32, axis, scale_mode)
            ref_data, ref_bits = reference.quantize_mx(x, fmt, 32, axis, scale_mode)
            what = f"{fmt} {scale_mode} axis={axis} {dtype} {shape}"
            assert_same(to_numpy(bits), ref_bits, "scale_bits " + what, seed)
            assert_same(to_numpy(data), ref_data, "data " + what, seed)


@pytest.mark.parametrize("scale_mode", ["floor", "rceil"])
def test_mx_dim0_transposed_is_dim_last_of_x_t(scale_mode, seed):
    from qtrain.fast.cast_mx import quantize_mx_dim0
    fast_backend()
    x = _mx_input((64, 48), "bfloat16", seed)
    data, bits = quantize_mx_dim0(from_numpy(x), "float8_e4m3fn", 32, scale_mode, transposed=True)
    ref_data, ref_bits = reference.quantize_mx(np.ascontiguousarray(x.T), "float8_e4m3fn", 32, -1,
                                               scale_mode)
    assert_same(to_numpy(bits), ref_bits, "scale_bits", seed)
    assert_same(to_numpy(data), ref_data, "data", seed)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [None, -1, 0], ids=["tensorwise", "rowwise", "columnwise"])
def test_int8_rne_and_given_noise_I8_1_to_7(shape, dtype, axis, seed):
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    for u in (None, noise):
        data, ds = fast.quantize_int8(from_numpy(x), axis, None if u is None else from_numpy(u))
        ref_data, ref_ds = reference.quantize_int8(x, axis, u)
        what = f"axis={axis} noise={u is not None} {dtype} {shape}"
        assert_same(to_numpy(ds), ref_ds, "dequant_scale " + what, seed)
        assert_same(to_numpy(data), ref_data, "data " + what, seed)


@pytest.mark.parametrize("axis", [None, -1, 0], ids=["tensorwise", "rowwise", "columnwise"])
def test_int8_rne_ties_go_to_even_I8_4(axis, seed):
    """I8-4's round-half-to-even on exact ties: with amax 127 the scaled value is x itself, so
    every half-integer in [-127, 127] is a tie (the kernels round by adding 1.5 * 2^23), and
    values next to the ties round to nearest. The reference's bits, every axis."""
    fast = fast_backend()
    halves = np.arange(-127, 127, dtype=np.float32) + np.float32(0.5)
    near = np.concatenate([np.nextafter(halves, np.float32(np.inf)),
                           np.nextafter(halves, np.float32(-np.inf))])
    vals = np.concatenate([halves, near, [np.float32(-0.0), np.float32(0.0)]])
    vals = np.concatenate([vals, np.zeros(-len(vals) % 64, np.float32)])
    x = vals.reshape(-1, 64).copy()
    x[:, 0] = 127.0                              # every row and (axis 0) column 0 hits 127
    x[0, :] = 127.0
    data, ds = fast.quantize_int8(from_numpy(x), axis, None)
    ref_data, ref_ds = reference.quantize_int8(x, axis, None)
    assert_same(to_numpy(ds), ref_ds, f"dequant_scale axis={axis}", seed)
    assert_same(to_numpy(data), ref_data, f"data axis={axis}", seed)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (33, 16), (1, 130)])
def test_int8_transposed_is_rowwise_of_x_t(shape, dtype, seed):
    """The NT operand x.T quantized along its last axis, written by the column cast itself; given
    noise comes in x.T's layout (the recipe's grad_weight and grad_input operands)."""
    fast = fast_backend()
    _assert_int8_transposed(fast, _input(shape, dtype, seed), f"{dtype} {shape}", seed)


def _assert_int8_transposed(fast, x, what, seed):
    """The int8 column cast written as x.T is x.T quantized along its last axis, rne and with
    given noise in x.T's layout."""
    xt = np.ascontiguousarray(x.T)
    noise_t = np.random.default_rng(seed).random(xt.shape, dtype=np.float32)
    for u in (None, noise_t):
        data, ds = fast.quantize_int8(from_numpy(x), -1, None if u is None else from_numpy(u),
                                      transposed=True)
        ref_data, ref_ds = reference.quantize_int8(xt, -1, u)
        where = f"transposed noise={u is not None} {what}"
        assert tuple(data.shape) == xt.shape and data.is_contiguous(), where
        assert_same(to_numpy(ds), ref_ds, "dequant_scale " + where, seed)
        assert_same(to_numpy(data), ref_data, "data " + where, seed)


@pytest.mark.parametrize("axis", [-1, 0])
def test_int8_seeded_stochastic_is_reproducible_I8_5(axis, seed):
    fast = fast_backend()
    x = from_numpy(edge_rows((17, 64), np.float32, seed, edge=False))
    first, ds = fast.quantize_int8(x, axis, seed=seed)
    again, _ = fast.quantize_int8(x, axis, seed=seed)
    other, _ = fast.quantize_int8(x, axis, seed=seed + 1)
    assert torch.equal(first, again), f"seed {seed}: same seed, different data"
    assert not torch.equal(first, other), f"seed {seed}: different seeds, same data"
    # floor(v + u) is floor(v) or floor(v) + 1, and rne(v) is one of the two
    rne, _ = fast.quantize_int8(x, axis)
    assert (first.int() - rne.int()).abs().max() <= 1
    # unbiased (I8-5): v = 2.25 everywhere rounds up a quarter of the time (4-sigma band)
    v = torch.full((64, 64), 2.25, device=DEVICE)
    v[0, :] = v[:, 0] = 127.0            # every dequant_scale is 1: x * inv is exactly v
    up = (fast.quantize_int8(v, axis, seed=seed)[0][1:, 1:] == 3).float().mean().item()
    assert abs(up - 0.25) < 4 * (0.25 * 0.75 / 63 ** 2) ** 0.5, f"seed {seed}: {up}"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape,block", [((1, 128), (1, 128)), ((17, 256), (1, 128)),
                                         ((128, 128), (128, 128)), ((256, 384), (128, 128))])
def test_blockwise_BW_1_to_3(shape, block, dtype, seed):
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        data, qs = fast.quantize_blockwise(from_numpy(x), block, fmt)
        ref_data, ref_qs = reference.quantize_blockwise(x, block, fmt)
        assert_same(to_numpy(qs), ref_qs, f"quant_scale {fmt} {block} {shape}", seed)
        assert_same(to_numpy(data), ref_data, f"data {fmt} {block} {shape}", seed)


def test_errors_name_what_would_work():
    fast = fast_backend()
    x = torch.zeros(32, 64, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        fast.quantize_float8(x.t(), "float8_e4m3fn", -1)
    with pytest.raises(TypeError, match="float64"):
        fast.quantize_float8(x.double(), "float8_e4m3fn")
    with pytest.raises(ValueError, match="expected one of"):
        fast.quantize_float8(x, "float8_e4m3")
    with pytest.raises(ValueError, match="multiple of block_size 32"):
        fast.quantize_mx(x[:, :48].contiguous(), "float8_e4m3fn", 32, -1)
    with pytest.raises(ValueError, match="divisible by the block"):
        fast.quantize_blockwise(x, (1, 128))
    with pytest.raises(ValueError, match="axis 1 of shape"):
        fast.quantize_float8(torch.zeros(2, 3, 4, device=DEVICE), "float8_e4m3fn", 1)
    with pytest.raises(ValueError, match="noise shape"):
        fast.quantize_int8(x, -1, noise=torch.zeros(3, device=DEVICE))


@pytest.mark.parametrize("shape", [(1,), (17, 33), (3, 1025)])
def test_uniform_noise_I8_10_bitexact(shape, seed):
    """The Triton noise pass (call index read on the device) and qtrain's torch-ops generator
    give the reference's bits."""
    from qtrain.noise import uniform_noise as torch_noise
    fast = fast_backend()
    like = torch.empty(shape, device=DEVICE)
    for s, c in ((seed, 0), (seed, 2 ** 33 + 5), (2 ** 40 + seed, 7)):
        call = torch.tensor(c, dtype=torch.int64, device=DEVICE)
        want = reference.uniform_noise(shape, s, c)
        assert_same(to_numpy(fast.uniform_noise(like, s, call)), want, f"fast {s} {c}", seed)
        assert_same(to_numpy(torch_noise(shape, s, call)), want, f"torch {s} {c}", seed)


@pytest.mark.parametrize("shape", [(128, 33), (256, 96), (384, 5)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_blockwise_transposed_is_blockwise_of_x_t_BW_5(shape, dtype, seed):
    """The along-M operands of the blockwise grad_weight: (1, 128) blocks of x.T, written from
    x in one pass (no bf16 transpose copy), the reference's bits for x.T."""
    fast = fast_backend()
    x = _input(shape, dtype, seed)
    for fmt in ("float8_e4m3fn", "float8_e5m2"):
        data, qs = fast.quantize_blockwise(from_numpy(x), (1, 128), fmt, transposed=True)
        ref_data, ref_qs = reference.quantize_blockwise(np.ascontiguousarray(x.T), (1, 128), fmt)
        assert tuple(data.shape) == shape[::-1] and data.is_contiguous()
        assert_same(to_numpy(qs), ref_qs, f"quant_scale {fmt} {dtype} {shape}", seed)
        assert_same(to_numpy(data), ref_data, f"data {fmt} {dtype} {shape}", seed)


@pytest.mark.parametrize("tile", [(32, 1), (16, 1), (128, 4), (256, 8)], ids=str)
def test_blockwise_transposed_on_other_tiles(tile, monkeypatch, seed):
    """The tiles gpu_fast_check times for the (128, 1)-block cast that writes x.T
    (cast_blockwise.COLUMN_BLOCKS_T_TILE) give the reference's bits, on shapes that cut them."""
    from qtrain.fast import cast_blockwise
    monkeypatch.setattr(cast_blockwise, "COLUMN_BLOCKS_T_TILE", tile)
    fast = fast_backend()
    for shape in ((256, 40), (128, 300)):
        x = _input(shape, "bfloat16", seed)
        data, qs = fast.quantize_blockwise(from_numpy(x), (1, 128), "float8_e4m3fn", transposed=True)
        ref_data, ref_qs = reference.quantize_blockwise(np.ascontiguousarray(x.T), (1, 128),
                                                        "float8_e4m3fn")
        assert_same(to_numpy(qs), ref_qs, f"quant_scale {shape} {tile}", seed)
        assert_same(to_numpy(data), ref_data, f"data {shape} {tile}", seed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("tile", [(64, 64, 1), (32, 64, 1), (32, 128, 2), (32, 256, 4),
                                  (128, 64, 8), (64, 128, 2)], ids=str)
def test_mx_dim0_on_other_tiles(tile, dtype, monkeypatch, seed):
    """The tiles gpu_fast_check times for the MX dim-0 cast (cast_mx.DIM0_TILE, and
    DIM0_TILE_T for the transposed write) give the reference's bits, written transposed (x.T's
    dim -1 cast) and in x's layout, on shapes that cut them, floor and rceil, with NaN/Inf/zero rows, bf16 and fp32 x (a kernel that writes a
    transposed layout gets a bit test per input dtype: the one-pass tensorwise cast was right
    for bf16 and wrong for fp32 on the H200)."""
    from qtrain.fast import cast_mx
    monkeypatch.setattr(cast_mx, "DIM0_TILE", tile)
    monkeypatch.setattr(cast_mx, "DIM0_TILE_T", tile)
    fast_backend()
    for shape in ((96, 40), (64, 300)):
        x = _mx_input(shape, dtype, seed)
        x[5, :7] = np.nan
        x[40, 3] = np.inf
        x[64:, 9] = 0
        for mode in ("floor", "rceil"):
            what = f"{shape} {tile} {dtype} {mode}"
            _assert_mx_dim0_transposed(cast_mx, x, mode, what, seed)
            data, bits = cast_mx.quantize_mx_dim0(from_numpy(x), "float8_e4m3fn", 32, mode)
            ref_data, ref_bits = reference.quantize_mx(x, "float8_e4m3fn", 32, 0, mode)
            assert_same(to_numpy(bits), ref_bits, "scale_bits " + what, seed)
            assert_same(to_numpy(data), ref_data, "data " + what, seed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("tile", [(128, 32, 1), (64, 64, 1), (32, 128, 2)], ids=str)
def test_mx_dim0_transposed_by_tma_store(tile, dtype, monkeypatch, seed):
    """cast_mx.DIM0_T_TMA: the transposed write through a tensor descriptor (its edge tiles
    clipped by the copy engine: (96, 40) and (64, 300) cut rows and columns of the tile) gives
    the reference's bits of x.T's dim -1 cast, floor and rceil, with NaN/Inf/zero."""
    from qtrain.fast import cast_mx
    from qtrain.fast.common import tma_store_ok
    monkeypatch.setattr(cast_mx, "DIM0_T_TMA", True)
    monkeypatch.setattr(cast_mx, "DIM0_TMA_TILE_T", tile)
    fast_backend()
    assert not tma_store_ok(torch.device(DEVICE), 96, 40)           # a 40-byte row stride
    for shape in ((96, 40), (64, 300), (256, 64)):
        x = _mx_input(shape, dtype, seed)
        x[5, :7] = np.nan
        x[40, 3] = np.inf
        x[32:, 9] = 0
        for mode in ("floor", "rceil"):
            _assert_mx_dim0_transposed(cast_mx, x, mode, f"{shape} {tile} {dtype} {mode} tma",
                                       seed)


@pytest.mark.parametrize("hip,capability,ok", [(None, (9, 0), True), (None, (10, 0), True),
                                                (None, (8, 0), False), ("6.2", (9, 4), False)],
                         ids=["sm90", "sm100", "sm80", "rocm_mi300x"])
def test_tma_store_only_on_nvidia_hopper_and_later(hip, capability, ok, monkeypatch, caplog):
    """fast.common.tma_store_ok: TMA stores on NVIDIA GPUs of compute capability 9.0 and
    later; an older GPU and every ROCm GPU (MI300X reports 9.4 and has no TMA) store
    element-wise, with one log line per device; a row stride not a multiple of 16 bytes never
    takes TMA."""
    import logging
    from qtrain.fast import common
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(common, "_NO_TMA_LOGGED", set())
    dev = torch.device("cuda", 0)
    with caplog.at_level(logging.INFO, logger="qtrain"):
        assert common.tma_store_ok(dev, 8192, 4096) is ok
        assert common.tma_store_ok(dev, 8192, 4096) is ok
        assert common.tma_store_ok(dev, 8192, 4104) is False
    logged = [r.getMessage() for r in caplog.records if "has no TMA" in r.getMessage()]
    assert len(logged) == (0 if ok else 1), logged
    if hip:
        assert "ROCm" in logged[0]


def _assert_mx_dim0_transposed(cast_mx, x, mode, what, seed):
    """The MX dim-0 cast written as x.T is the reference's dim -1 cast of x.T."""
    data, bits = cast_mx.quantize_mx_dim0(from_numpy(x), "float8_e4m3fn", 32, mode,
                                          transposed=True)
    ref_data, ref_bits = reference.quantize_mx(np.ascontiguousarray(x.T), "float8_e4m3fn", 32,
                                               -1, mode)
    assert_same(to_numpy(bits), ref_bits, "scale_bits .T " + what, seed)
    assert_same(to_numpy(data), ref_data, "data .T " + what, seed)


@pytest.mark.parametrize("shape", [(256, 128), (128, 384)])
@pytest.mark.parametrize("copy", ["torch", "tiles"])
def test_blockwise_square_transposed_is_blockwise_of_x_t_BW_5(shape, copy, monkeypatch, seed):
    """RC-14's backward re-quantization of a 128x128-block weight, written as w.T (the payload
    copied transposed by either QTRAIN_FAST_TRANSPOSE copy): the reference's quantization of
    w.T, bit for bit (data and the transposed scale grid)."""
    from qtrain.fast import transpose
    monkeypatch.setattr(transpose, "TRANSPOSE", copy)
    fast = fast_backend()
    x = _input(shape, "bfloat16", seed)
    data, qs = fast.quantize_blockwise(from_numpy(x), (128, 128), "float8_e4m3fn", transposed=True)
    ref_data, ref_qs = reference.quantize_blockwise(np.ascontiguousarray(x.T), (128, 128),
                                                    "float8_e4m3fn")
    assert tuple(data.shape) == shape[::-1] and data.is_contiguous() and qs.is_contiguous()
    assert_same(to_numpy(qs), ref_qs, f"quant_scale {shape}", seed)
    assert_same(to_numpy(data), ref_data, f"data {shape}", seed)


@pytest.mark.parametrize("shape", [(17, 32), (6, 96), (33, 16), (1, 130)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_dual_is_rowwise_and_transposed_columnwise(shape, dtype, seed):
    """The one-read int8 kernel (cast_int8.quantize_int8_dual; kept for tuning, the recipe
    issues two casts): both int8 operands of x (or g), x along its last axis and x.T along its
    last axis, each the reference's bits; given noise serves both."""
    fast_backend()
    from qtrain.fast.cast_int8 import quantize_int8_dual
    x = _input(shape, dtype, seed)
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    for u in (None, noise):
        data, ds, data_t, ds_t = quantize_int8_dual(
            from_numpy(x), None if u is None else from_numpy(u))
        row_data, row_ds = reference.quantize_int8(x, -1, u)
        col_data, col_ds = reference.quantize_int8(np.ascontiguousarray(x.T), -1,
                                                   None if u is None else np.ascontiguousarray(u.T))
        what = f"noise={u is not None} {dtype} {shape}"
        assert_same(to_numpy(data), row_data, "row data " + what, seed)
        assert_same(to_numpy(ds), row_ds, "row dequant_scale " + what, seed)
        assert_same(to_numpy(data_t), col_data, "col data.T " + what, seed)
        assert_same(to_numpy(ds_t), col_ds, "col dequant_scale.T " + what, seed)


@pytest.mark.parametrize("axis,transposed", [(-1, False), (0, False), (None, False), (-1, True)],
                         ids=["rowwise", "columnwise", "tensorwise", "transposed"])
def test_int8_counter_noise_in_kernel_is_the_reference_draw_I8_10(axis, transposed, seed):
    """Stochastic rounding with I8-10 noise drawn inside the int8 kernels (no noise tensor):
    the bits of the reference quantizing with the materialized I8-10 noise of x's elements."""
    fast = fast_backend()
    shape = (17, 40)
    x = _input(shape, "float32", seed)
    call = torch.tensor(2 ** 32 + seed, dtype=torch.int64, device=DEVICE)
    data, ds = fast.quantize_int8(from_numpy(x), axis, None, transposed=transposed,
                                  counter_noise=(seed + 3, call))
    u = reference.uniform_noise(shape, seed + 3, 2 ** 32 + seed)
    xr, ur = (np.ascontiguousarray(x.T), np.ascontiguousarray(u.T)) if transposed else (x, u)
    ref_data, ref_ds = reference.quantize_int8(xr, axis, ur)
    what = f"axis={axis} transposed={transposed}"
    assert_same(to_numpy(ds), ref_ds, "dequant_scale " + what, seed)
    assert_same(to_numpy(data), ref_data, "data " + what, seed)
    if axis == -1 and not transposed:                   # the dual kernel draws the same noise
        from qtrain.fast.cast_int8 import quantize_int8_dual
        d, dd, dt, ddt = quantize_int8_dual(from_numpy(x), counter_noise=(seed + 3, call))
        col_data, col_ds = reference.quantize_int8(np.ascontiguousarray(x.T), -1,
                                                   np.ascontiguousarray(u.T))
        assert_same(to_numpy(d), ref_data, "dual row data", seed)
        assert_same(to_numpy(dt), col_data, "dual col data.T", seed)


@pytest.mark.parametrize("shape", [(300, 40), (1000, 8), (70, 300)])
@pytest.mark.parametrize("per_sm", [0, 8], ids=["tile_per_program", "looping_programs"])
@pytest.mark.parametrize("ask", ["all", "tensor", "rows", "cols"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_amax_pass_is_the_max_for_any_grid_F8_1(shape, per_sm, ask, dtype, monkeypatch, seed):
    """The amax pass's looping programs (several row tiles each, one atomic per column and per
    tensor at the end) give the same bits as one program per tile and as torch: the max of |x|
    bits per tensor, row and column, with NaN above inf (F8-1), wherever the specials sit;
    whichever maxima are asked for (the tensor amax alone reduces each tile along axis 1
    first, with columns asked it comes from the column maxima). bf16 x (its maxima taken on
    16-bit bits): the fp32 bits of the widened |x|, -0 and subnormals included."""
    from qtrain.fast import amax as fast_amax
    fast_backend()
    monkeypatch.setattr(fast_amax, "AMAX_PROGRAMS_PER_SM", per_sm)
    monkeypatch.setattr(fast_amax, "AMAX_ROWS_PROGRAMS_PER_SM", per_sm)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    x[shape[0] - 1, 0] = float("inf")                     # in the last row tile
    x[shape[0] // 2, shape[1] - 1] = float("nan")         # a middle tile, the last column
    x[1, 1] = -float("inf")
    x[2, :3] = torch.tensor([-0.0, 1e-39, -3e-39])        # -0 and (bf16) subnormals
    x[shape[0] - 2] = -0.0                                # a row of -0: its amax is +0
    x = x.to(dtype)
    want = {"tensor": ask in ("all", "tensor"), "rows": ask in ("all", "rows"),
            "cols": ask in ("all", "cols")}
    t, r, c = fast_amax.amax_bits_2d(x.to(DEVICE), tensor=want["tensor"], rows=want["rows"],
                                     cols=want["cols"])
    assert [t is not None, r is not None, c is not None] == list(want.values())
    wide = x.view(torch.int16).to(torch.int32) << 16 if dtype == torch.bfloat16 else x.view(torch.int32)
    bits = wide & 0x7FFFFFFF
    if t is not None:
        assert int(t.cpu()[0]) == int(bits.max())
    if r is not None:
        assert torch.equal(r.cpu(), bits.amax(dim=1))
    if c is not None:
        assert torch.equal(c.cpu(), bits.amax(dim=0))


@pytest.mark.parametrize("t_from_x", [True, False], ids=["t_from_x", "t_from_codes"])
@pytest.mark.parametrize("tile", [(64, 128), (128, 64), (128, 128), (32, 64)],
                         ids=lambda t: f"{t[0]}x{t[1]}")
def test_float8_transposed_writes_on_other_tiles(tile, t_from_x, monkeypatch, seed):
    """The tiles gpu_fast_check and transposed_cast_variants time for the passes that write x.T
    (cast_float8.TILE_T, TILE_DUAL, TILE_BOTH), with x.T encoded from the transposed tile of x
    or from x's codes (cast_float8.T_FROM_X), give the reference's bits: tensorwise of x.T, the
    dual cast and the tensorwise cast into both layouts, on shapes that cut tiles, for bf16,
    fp16 and fp32 x (the dual's x with NaN, inf, subnormals and -0 rows; the tensorwise x
    without, where one NaN would make every code NaN)."""
    from qtrain.fast import cast_float8
    for name in ("TILE_T", "TILE_DUAL", "TILE_BOTH"):
        monkeypatch.setattr(cast_float8, name, tile)
    monkeypatch.setattr(cast_float8, "T_FROM_X", t_from_x)
    fast = fast_backend()
    for shape, dtype in (((130, 70), ml_dtypes.bfloat16), ((33, 160), np.float16),
                         ((72, 48), np.float32)):
        x = edge_rows(shape, dtype, seed, edge=False)
        what = f"{shape} {dtype.__name__} {tile} t_from_x={t_from_x}"
        _assert_float8_tensorwise_t(fast, x, "float8_e4m3fn", False, what, seed)
        _assert_float8_dual(fast, edge_rows(shape, dtype, seed, edge=True), "float8_e4m3fn",
                            what, seed)
        data, data_t, qs, _ = fast.quantize_float8_both_layouts(from_numpy(x), "float8_e5m2")
        ref_data, ref_qs = reference.quantize_float8(x, "float8_e5m2", None, False)
        assert_same(to_numpy(data), ref_data, "data " + what, seed)
        assert_same(to_numpy(data_t), np.ascontiguousarray(ref_data.T), "data_t " + what, seed)


@pytest.mark.parametrize("tile,warps", [((32, 128), 4), ((128, 32), 1), ((64, 16), 1)],
                         ids=lambda v: str(v))
def test_float8_transposed_writes_by_tma_store(tile, warps, monkeypatch, seed):
    """cast_float8.TMA_STORE: the passes that write x.T alone store their code tiles through
    tensor descriptors where R and C divide by 16 ((48, 176) and (208, 80) cut the tiles: the
    copy engine clips them) and element-wise elsewhere ((40, 130)); every path gives the
    reference's bits: tensorwise of x.T and the dual cast. The one-pass cast into both layouts
    never takes TMA (wrong bits on the H200) and stays exact."""
    from qtrain.fast import cast_float8
    monkeypatch.setattr(cast_float8, "TMA_STORE", True)
    monkeypatch.setattr(cast_float8, "TILE_T", tile)
    monkeypatch.setattr(cast_float8, "TILE_T_WARPS", warps)
    monkeypatch.setattr(cast_float8, "TILE_DUAL", tile)
    monkeypatch.setattr(cast_float8, "TILE_DUAL_WARPS", warps)
    fast = fast_backend()
    for shape in ((48, 176), (208, 80), (40, 130)):
        x = edge_rows(shape, ml_dtypes.bfloat16, seed, edge=True)
        what = f"{shape} {tile} tma"
        _assert_float8_tensorwise_t(fast, x, "float8_e4m3fn", False, what, seed)
        _assert_float8_dual(fast, x, "float8_e5m2", what, seed)
        data, data_t, qs, _ = fast.quantize_float8_both_layouts(from_numpy(x), "float8_e4m3fn")
        ref_data, _ = reference.quantize_float8(x, "float8_e4m3fn", None, False)
        assert_same(to_numpy(data), ref_data, "data " + what, seed)
        assert_same(to_numpy(data_t), np.ascontiguousarray(ref_data.T), "data_t " + what, seed)


@pytest.mark.parametrize("tile", [(64, 128), (128, 64), (128, 128)], ids=lambda t: f"{t[0]}x{t[1]}")
def test_int8_transposed_column_cast_on_other_tiles(tile, monkeypatch, seed):
    """The tiles gpu_fast_check times for the int8 column cast written as x.T
    (cast_int8.TILE_T): the reference's bits of x.T along its last axis, rne and with I8-5
    noise (in x.T's layout), on shapes that cut tiles."""
    from qtrain.fast import cast_int8
    monkeypatch.setattr(cast_int8, "TILE_T", tile)
    fast = fast_backend()
    for shape in ((130, 70), (33, 160)):
        _assert_int8_transposed(fast, _input(shape, "bfloat16", seed), f"{shape} {tile}", seed)


@pytest.mark.parametrize("shape", [(1, 1), (63, 65), (130, 40), (64, 128)])
@pytest.mark.parametrize("tile", [(64, 64), (32, 128)], ids=lambda t: f"{t[0]}x{t[1]}")
def test_transpose_bytes_is_the_transposed_copy(shape, tile, monkeypatch, seed):
    """fast/transpose.py: x.T row-major, the same bits as torch's x.t().contiguous(), for the
    1-byte payload dtypes, on shapes that cut tiles."""
    from qtrain.fast import transpose
    monkeypatch.setattr(transpose, "TILE", tile)
    fast_backend()
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8):
        x = codes.view(dtype).to(DEVICE)
        got = transpose.transpose_bytes(x)
        assert got.dtype == dtype and got.shape == shape[::-1] and got.is_contiguous()
        assert torch.equal(got.view(torch.uint8).cpu(), codes.t().contiguous()), f"{dtype} {shape}"


def test_transpose_bytes_rejects_what_it_cannot_transpose():
    from qtrain.fast.transpose import transpose_bytes
    fast_backend()
    for bad in (torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(8, 4, dtype=torch.uint8).t(),
                torch.zeros(2, 3, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="2-D row-major tensor of 1-byte elements"):
            transpose_bytes(bad.to(DEVICE))

