"""Symmetric int8 casts, spec/04-int8.md (I8-1..I8-7): rowwise (last axis), columnwise (axis 0)
and tensorwise, rounding rne or stochastic. Stochastic noise is given as a tensor, or drawn in
the kernel: I8-10's hash of (seed, call index read on the device, element index), the same bits
as the reference draws, or Philox (tl.rand(seed, element index), reproducible for a seed)."""
import torch
import triton
import triton.language as tl

from qtrain.formats import EPS_AMAX, INT8_MAX
from .amax import amax_bits_2d
from .common import (cast_tile, cdiv, check_device, check_input, flat_2d, fp32, kernel_input,
                     normalize_axis, pow2_at_most, rowwise_tile)
from .encode import abs_bits, is_finite_bits, row_amax_bits, widen_to_fp32
from .noise import call_index, counter_uniform

LAYER = "qtrain.fast.cast_int8"
# (BLOCK_R, BLOCK_C) of the column cast that writes x.T (each output row of x.T is BLOCK_R bytes
# per tile); None: cast_tile's (32, 256), what ran on the H200 so far. gpu_fast_check times others.
TILE_T = None

NOISE_NONE, NOISE_TENSOR, NOISE_SEED, NOISE_COUNTER = 0, 1, 2, 3


@triton.jit
def _int8_scales(amax_bits, EPS32: tl.constexpr):
    """I8-2: dequant_scale = max(fp32(amax / 127), EPS32) (I8-7: a zero group gets EPS32);
    I8-3: inv = fp32(1 / dequant_scale). The fp32 divisions are done in fp64 and rounded once:
    for division, rounding to 53 bits then to 24 gives the correctly rounded fp32 quotient
    (53 >= 2 * 24 + 2), and fp64 division is IEEE on the GPU where fp32 `/` is not.
    I8-6: NaN dequant_scale for a non-finite group."""
    amax = amax_bits.to(tl.float32, bitcast=True)
    ds = tl.maximum((amax.to(tl.float64) / 127.0).to(tl.float32), EPS32)
    inv = (1.0 / ds.to(tl.float64)).to(tl.float32)
    finite = is_finite_bits(amax_bits)
    return tl.where(finite, ds, float("nan")), inv, finite


@triton.jit
def _int8_round(x, inv, finite, noise, STOCHASTIC: tl.constexpr):
    """I8-4 rne: clamp(rne(fp32(x * inv))); I8-5 stochastic: clamp(floor(fp32(fp32(x * inv) + u))).
    Clamping first gives the same result and keeps the float -> int conversion in range.
    Integer rounding from truncation plus an exact fraction test (no libdevice, same on CPU).
    Launch with enable_fp_fusion=False so x * inv + u is not contracted into one fma."""
    v = x * inv
    if STOCHASTIC:
        v = v + noise
    v = tl.where(v > 127.0, 127.0, v)
    v = tl.where(v < -127.0, -127.0, v)
    if STOCHASTIC:
        t = v.to(tl.int32)                   # toward zero
        frac = v - t.to(tl.float32)          # exact, in (-1, 1)
        t = t - (frac < 0).to(tl.int32)      # floor
    else:
        # rne to an integer: adding 1.5 * 2^23 leaves no fraction bits in fp32 (|v| <= 127),
        # so the add rounds v to nearest-even and the subtraction is exact; two fp32 ops
        # instead of a fraction test (2026-12-01; int8 rowwise ran at 73% of copy)
        t = ((v + 12582912.0) - 12582912.0).to(tl.int32)
    return tl.where(finite, t, 0).to(tl.int8)     # I8-6: data 0 for a non-finite group


@triton.jit
def _noise(noise_ptr, seed, offs, mask, rows, cols, C, NOISE: tl.constexpr):
    """Noise for the tile offs = rows[:, None] * C + cols[None, :] (cols a run of consecutive
    columns, a multiple of 4 long): given (NOISE 1), or NOISE 2: Philox, 4 uniforms per call
    (tl.rand4x) for counter rows * ceil(C / 4) + cols // 4, unique per group of 4 columns of
    a row (wraps past 2^31), interleaved back to element order."""
    if NOISE == 1:
        u = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    elif NOISE == 3:        # I8-10: noise_ptr holds the int64 call index, offs the flat index
        u = counter_uniform(noise_ptr, seed, offs.to(tl.int64))
    elif NOISE == 2:
        G: tl.constexpr = cols.shape[0] // 4
        groups = tl.reshape(cols, (G, 4)) // 4
        groups = tl.max(groups, axis=1)
        counter = rows[:, None] * ((C + 3) // 4) + groups[None, :]
        u0, u1, u2, u3 = tl.rand4x(seed, counter.to(tl.int32))
        u = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (rows.shape[0], cols.shape[0]))
    else:
        u = tl.zeros(offs.shape, dtype=tl.float32)
    return u


@triton.jit
def _int8_rowwise_kernel(x_ptr, data_ptr, ds_ptr, noise_ptr, seed, R, K,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, NOISE: tl.constexpr,
                         EPS32: tl.constexpr, IS_BF16: tl.constexpr):
    """Rows [BLOCK_R * pid, +BLOCK_R) of row-major x (R, K): held in registers when
    BLOCK_K >= K (one read), else an amax loop, then a cast loop."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    base = rows[:, None].to(tl.int64) * K
    if BLOCK_K >= K:        # the whole row in registers: one read
        cols = tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        offs = base + cols[None, :]
        x = widen_to_fp32(tl.load(x_ptr + offs, mask=mask, other=0), IS_BF16)
        ds, inv, finite = _int8_scales(tl.max(abs_bits(x), axis=1), EPS32)
        tl.store(ds_ptr + rows, ds, mask=row_ok)
        u = _noise(noise_ptr, seed, offs, mask, rows, cols, K, NOISE)
        tl.store(data_ptr + offs, _int8_round(x, inv[:, None], finite[:, None], u, NOISE != 0),
                 mask=mask)
        return
    amax = row_amax_bits(x_ptr, base, row_ok, K, BLOCK_R, BLOCK_K, IS_BF16)
    ds, inv, finite = _int8_scales(amax, EPS32)
    tl.store(ds_ptr + rows, ds, mask=row_ok)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols[None, :] < K)
        offs = base + cols[None, :]
        x = widen_to_fp32(tl.load(x_ptr + offs, mask=mask, other=0), IS_BF16)
        u = _noise(noise_ptr, seed, offs, mask, rows, cols, K, NOISE)
        q = _int8_round(x, inv[:, None], finite[:, None], u, NOISE != 0)
        tl.store(data_ptr + offs, q, mask=mask)


@triton.jit
def _int8_tiles_kernel(x_ptr, data_ptr, ds_ptr, amax_ptr, noise_ptr, seed, R, C,
                       row_amax_ptr, row_ds_ptr, row_data_ptr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, TENSORWISE: tl.constexpr,
                       TRANSPOSED: tl.constexpr, DUAL: tl.constexpr, NOISE: tl.constexpr,
                       EPS32: tl.constexpr, IS_BF16: tl.constexpr):
    """Cast pass over a tile of row-major x (R, C); amax known per column or (TENSORWISE) once.
    TRANSPOSED: data written (C, R) row-major (given noise is read in x's layout either way;
    seeded noise is not combined with TRANSPOSED). DUAL adds the row-scaled copy (row amax
    known, row_amax_ptr[r]) written (R, C): one read of x feeds both, the same noise too."""
    pid_r = tl.program_id(0)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = (rows[:, None] < R) & col_ok[None, :]
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    x = widen_to_fp32(tl.load(x_ptr + offs, mask=mask, other=0), IS_BF16)
    u = _noise(noise_ptr, seed, offs, mask, rows, cols, C, NOISE)
    if TENSORWISE:
        ds, inv, finite = _int8_scales(tl.load(amax_ptr), EPS32)
        if (pid_r == 0) & (tl.program_id(1) == 0):
            tl.store(ds_ptr, ds)
        q = _int8_round(x, inv, finite, u, NOISE != 0)
    else:
        ds, inv, finite = _int8_scales(tl.load(amax_ptr + cols, mask=col_ok, other=0), EPS32)
        if pid_r == 0:
            tl.store(ds_ptr + cols, ds, mask=col_ok)
        q = _int8_round(x, inv[None, :], finite[None, :], u, NOISE != 0)
    if TRANSPOSED:
        tl.store(data_ptr + cols[None, :].to(tl.int64) * R + rows[:, None], q, mask=mask)
    else:
        tl.store(data_ptr + offs, q, mask=mask)
    if DUAL:
        row_ok = rows < R
        row_ds, row_inv, row_finite = _int8_scales(
            tl.load(row_amax_ptr + rows, mask=row_ok, other=0), EPS32)
        if tl.program_id(1) == 0:
            tl.store(row_ds_ptr + rows, row_ds, mask=row_ok)
        tl.store(row_data_ptr + offs, _int8_round(x, row_inv[:, None], row_finite[:, None], u,
                                                  NOISE != 0), mask=mask)


def _noise_args(x, noise, seed, counter_noise=None):
    if sum(v is not None for v in (noise, seed, counter_noise)) > 1:
        raise ValueError(f"{LAYER}: pass one of noise, seed and counter_noise")
    if counter_noise is not None:
        c_seed, call = counter_noise
        return call_index(call, x.device, LAYER), int(c_seed) % 2 ** 32, NOISE_COUNTER
    if noise is not None:
        check_input(noise, LAYER + " (noise)", (torch.float32,))
        if noise.shape != x.shape or noise.device != x.device:
            raise ValueError(f"{LAYER}: noise shape {tuple(noise.shape)} on {noise.device} must "
                             f"match x shape {tuple(x.shape)} on {x.device}")
        return noise, 0, NOISE_TENSOR
    if seed is not None:
        return x, int(seed), NOISE_SEED       # x is a placeholder pointer, never read as noise
    return x, 0, NOISE_NONE


def quantize_int8(x, axis, noise=None, seed=None, transposed=False, counter_noise=None):
    """(data int8 like x, dequant_scale fp32 keepdims along axis; shape () for axis None).
    noise: fp32 tensor in [0, 1) like x (I8-5, bit-checkable); or counter_noise: (seed, call
    index tensor) for I8-10 noise drawn in the kernel (the reference's bits, no noise tensor);
    or seed: int for Philox noise; none of them: rne (I8-4).
    transposed=True (2-D x, axis 0, no seed): quantize x along axis 0 and write the payload as
    x.T row-major (C, R) with dequant_scale (C, 1): the NT operand of a product contracted
    over x's rows, with no copy. noise, if given, is like x either way."""
    check_input(x, LAYER)
    check_device(_int8_rowwise_kernel, x, LAYER)
    if transposed and (x.dim() != 2 or axis not in (0, -2) or seed is not None):
        raise ValueError(f"{LAYER}: transposed int8 cast needs 2-D x, axis 0 and no seed; got "
                         f"shape {tuple(x.shape)}, axis {axis}, seed {seed}")
    noise_t, seed_v, mode = _noise_args(x, noise, seed, counter_noise)
    x_in, is_bf16 = kernel_input(x)
    eps32 = fp32(EPS_AMAX)
    # transposed: x.T's layout (C, R), written by the tile kernel
    data = torch.empty(x.shape[::-1] if transposed else x.shape, dtype=torch.int8, device=x.device)
    launch = dict(NOISE=mode, EPS32=eps32, IS_BF16=is_bf16, enable_fp_fusion=False)
    if axis is not None:
        axis = normalize_axis(axis, x.dim(), LAYER, x.shape)
    if axis is not None and axis == x.dim() - 1:
        K = x.shape[-1]
        R = x.numel() // K
        ds = torch.empty(x.shape[:-1] + (1,), dtype=torch.float32, device=x.device)
        block_r, block_k, warps = rowwise_tile(R, K, _int8_rowwise_kernel)
        block_k = max(block_k, 4)                 # rand4x groups of 4 columns
        _int8_rowwise_kernel[(cdiv(R, block_r),)](
            x_in, data, ds, noise_t, seed_v, R, K, BLOCK_R=block_r, BLOCK_K=block_k,
            num_warps=warps, **launch)
        return data, ds
    if axis is not None and axis != 0:
        raise ValueError(f"{LAYER}: axis {axis} of shape {tuple(x.shape)} not supported; use "
                         f"None, 0 or -1")
    tensorwise = axis is None
    x2d = flat_2d(x) if tensorwise else x.reshape(x.shape[0], -1)
    R, C = x2d.shape
    t_bits, _, c_bits = amax_bits_2d(x2d, tensor=tensorwise, cols=not tensorwise)
    ds = torch.empty(1 if tensorwise else C, dtype=torch.float32, device=x.device)
    block_r, block_c, warps = cast_tile(R, C, False)
    if transposed and TILE_T is not None:
        block_r, block_c = TILE_T[0], pow2_at_most(C, TILE_T[1])
    block_c = max(block_c, 4)                     # rand4x groups of 4 columns
    grid = (cdiv(R, block_r), cdiv(C, block_c))
    _int8_tiles_kernel[grid](kernel_input(x2d)[0], data, ds, t_bits if tensorwise else c_bits,
                             noise_t, seed_v, R, C, ds, ds, data,
                             BLOCK_R=block_r, BLOCK_C=block_c, TENSORWISE=tensorwise,
                             TRANSPOSED=transposed, DUAL=False, num_warps=warps, **launch)
    if transposed:
        return data, ds.view(C, 1)
    return data, ds.reshape(()) if tensorwise else ds.view((1,) + tuple(x.shape[1:]))


def quantize_int8_dual(x, noise=None, counter_noise=None):
    """Both int8 axiswise quantizations of 2-D x (M, K) from one amax pass and one cast pass:
    (data (M, K), dequant_scale (M, 1)) along the last axis and (data_t (K, M), dequant_scale_t
    (K, 1)) = x along axis 0 written as x.T, what the int8 recipe needs of x and of g.
    noise (I8-5): like x, used by both. Bit-identical to the two separate casts."""
    check_input(x, LAYER)
    check_device(_int8_rowwise_kernel, x, LAYER)
    if x.dim() != 2:
        raise ValueError(f"{LAYER}: dual cast needs 2-D x (M, K), got shape {tuple(x.shape)}")
    noise_t, seed_v, mode = _noise_args(x, noise, None, counter_noise)
    R, C = x.shape
    _, r_bits, c_bits = amax_bits_2d(x, rows=True, cols=True)
    data = torch.empty((R, C), dtype=torch.int8, device=x.device)
    data_t = torch.empty((C, R), dtype=torch.int8, device=x.device)
    ds = torch.empty(R, dtype=torch.float32, device=x.device)
    ds_t = torch.empty(C, dtype=torch.float32, device=x.device)
    block_r, block_c, warps = cast_tile(R, C, False)
    block_c = max(block_c, 4)
    x_in, is_bf16 = kernel_input(x)
    _int8_tiles_kernel[(cdiv(R, block_r), cdiv(C, block_c))](
        x_in, data_t, ds_t, c_bits, noise_t, seed_v, R, C, r_bits, ds, data,
        BLOCK_R=block_r, BLOCK_C=block_c, TENSORWISE=False, TRANSPOSED=True, DUAL=True,
        num_warps=warps, NOISE=mode, EPS32=fp32(EPS_AMAX), IS_BF16=is_bf16,
        enable_fp_fusion=False)
    return data, ds.view(R, 1), data_t, ds_t.view(C, 1)


# symmetric range used (FMT-1): -128 is never produced
assert INT8_MAX == 127
