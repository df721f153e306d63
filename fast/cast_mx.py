"""MX casts, spec/03-mx.md (MX-1..MX-7): blocks along the last axis (dim -1) or along axis 0
(dim 0, optionally written transposed as the row-major NT operand), floor and rceil scales,
e8m0 bytes out (uint8). One read of x, one write of data and scales."""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from qtrain.formats import MX_ELEM_FORMATS, MX_SCALE_MODES, float8_format
from .common import (TORCH_FLOAT8, cdiv, check_device, check_format, check_input, float8_params,
                     fp32, kernel_input, next_pow2, normalize_axis, pow2_at_most, tma_store_ok,
                     use_soft_cast)
from .encode import (abs_bits, encode_float8, is_finite_bits, loaded_abs_max_bits,
                     widen_to_fp32)

LAYER = "qtrain.fast.cast_mx"


@triton.jit
def _mx_exponent(amax_bits, RCEIL: tl.constexpr, EMAX: tl.constexpr, RCP_MAX: tl.constexpr):
    """Shared exponent e of each block and its NaN flag, exact from fp32 bits.
    floor (MX-3): floor(log2(amax)) - EMAX, clamped to [-127, 127]; a subnormal amax m * 2^-149
    takes floor(log2(m)) from the exponent of fp32(m) (exact, m < 2^23; m = 0 gives -276).
    rceil (MX-4): ceil(log2(fp32(amax * fp32(1/max)))), clamped below at -127; > 127 is NaN."""
    finite = is_finite_bits(amax_bits)
    if RCEIL:
        d_bits = (amax_bits.to(tl.float32, bitcast=True) * RCP_MAX).to(tl.int32, bitcast=True)
        d_exp = d_bits >> 23
        d_mant = d_bits & 0x7FFFFF
        e = tl.where(d_exp == 0, tl.where(d_mant > 0x400000, -126, -127),
                     d_exp - 127 + (d_mant != 0).to(tl.int32))
        e = tl.maximum(e, -127)
        nan = (~finite) | (e > 127)
    else:
        a_exp = amax_bits >> 23
        sub_log2 = ((amax_bits & 0x7FFFFF).to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 276
        e = tl.where(a_exp == 0, sub_log2, a_exp - 127) - EMAX
        e = tl.minimum(tl.maximum(e, -127), 127)
        nan = ~finite
    return e, nan


@triton.jit
def _mx_scale_block(x, e, nan, MAX: tl.constexpr, MBITS: tl.constexpr, BIAS: tl.constexpr,
                    FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr, SOFT: tl.constexpr):
    """MX-6: rne(clamp(x * 2^-e)); 2^-e built from bits (2^-127 is the fp32 subnormal 0x00400000).
    MX-2: a NaN block is all NaN."""
    e = tl.minimum(e, 127)
    mul_bits = tl.where(e == 127, 0x00400000, (127 - e) << 23)
    y = x * mul_bits.to(tl.float32, bitcast=True)
    y = tl.where(nan, float("nan"), y)
    return encode_float8(y, MAX, MBITS, BIAS, FNUZ, TL_DTYPE, SOFT)


@triton.jit
def _mx_dim_last_kernel(x_ptr, data_ptr, scale_ptr, n_blocks,
                        BLOCK_B: tl.constexpr, BLOCK_SIZE: tl.constexpr, RCEIL: tl.constexpr,
                        EMAX: tl.constexpr, RCP_MAX: tl.constexpr, MAX: tl.constexpr,
                        MBITS: tl.constexpr, BIAS: tl.constexpr, FNUZ: tl.constexpr,
                        TL_DTYPE: tl.constexpr, EXACT_SOFT_CAST: tl.constexpr,
                        IS_BF16: tl.constexpr):
    """x viewed as (n_blocks, BLOCK_SIZE) row-major: tile of BLOCK_B consecutive blocks."""
    blocks = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = blocks < n_blocks
    offs = blocks[:, None].to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :]
    x = widen_to_fp32(tl.load(x_ptr + offs, mask=ok[:, None], other=0), IS_BF16)
    e, nan = _mx_exponent(tl.max(abs_bits(x), axis=1), RCEIL, EMAX, RCP_MAX)
    code = _mx_scale_block(x, e[:, None], nan[:, None], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                           EXACT_SOFT_CAST)
    tl.store(data_ptr + offs, code, mask=ok[:, None])
    byte = tl.where(nan, 0xFF, e + 127).to(tl.uint8)
    tl.store(scale_ptr + blocks, byte, mask=ok)


@triton.jit
def _store_dim0_scales(scale_ptr, e, nan, groups, cols, n_groups, C, TRANSPOSED: tl.constexpr):
    """The e8m0 bytes of blocks (groups, cols) of a dim-0 cast (0xFF for a NaN block, MX-2):
    scales (n_groups, C), or TRANSPOSED (C, n_groups)."""
    byte = tl.where(nan, 0xFF, e + 127).to(tl.uint8)
    s_mask = (groups[:, None] < n_groups) & (cols[None, :] < C)
    if TRANSPOSED:
        tl.store(scale_ptr + cols[None, :] * n_groups + groups[:, None], byte, mask=s_mask)
    else:
        tl.store(scale_ptr + groups[:, None] * C + cols[None, :], byte, mask=s_mask)


@triton.jit
def _mx_dim0_kernel(x_ptr, data_ptr, scale_ptr, M, C,
                    GROUPS: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_C: tl.constexpr,
                    TRANSPOSED: tl.constexpr, TMA: tl.constexpr, RCEIL: tl.constexpr,
                    EMAX: tl.constexpr,
                    RCP_MAX: tl.constexpr, MAX: tl.constexpr, MBITS: tl.constexpr,
                    BIAS: tl.constexpr, FNUZ: tl.constexpr, TL_DTYPE: tl.constexpr,
                    EXACT_SOFT_CAST: tl.constexpr, IS_BF16: tl.constexpr):
    """x (M, C) row-major, blocks of BLOCK_SIZE rows per column, the tile loaded as (GROUPS,
    BLOCK_SIZE, BLOCK_C): each block's exponent and multiplier are computed once per (group,
    column) and broadcast along the block's rows, with no reshape of the tile or of a
    per-element exponent. Scales (M / BLOCK_SIZE, C), data (M, C); TRANSPOSED: data (C, M)
    and scales (C, M / BLOCK_SIZE), i.e. the MX dim -1 cast of x.T, ready as an NT operand.
    H200, 8192^2 bf16 transposed, one run (2026-12-01, seventh session, gpu_fast_check
    time_casts): 87 us, against 95 us for the earlier kernel that loaded a (ROWS, BLOCK_C)
    tile and broadcast the block exponents back to every element through reshapes; the
    transposed store below took it to 73 us (2026-12-02). TMA (with TRANSPOSED): data_ptr is a
    tensor descriptor of (C, M) with a (BLOCK_C, GROUPS * BLOCK_SIZE) box, and the transposed
    code tile leaves by a TMA bulk store (edge tiles clipped by the copy engine)."""
    groups = tl.program_id(0) * GROUPS + tl.arange(0, GROUPS)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows3 = groups[:, None, None] * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :, None]
    cols3 = cols[None, None, :]
    mask3 = (rows3 < M) & (cols3 < C)
    # bf16: the block maxima on the 16-bit bits, x widened after (registers 159 -> 128 on the
    # H200's Triton 3.6, ncu). 2026-12-03 at the TMA tile, before and after from two calls, not
    # one A/B run: 66.9 -> 64.1 us at 8192^2, 110.5 -> 108.3 at 8192x14336, 68.9 -> 66.3 at
    # 16384x4096 (2026-12-03-s18-int16-maxima-ncu-h200.log).
    x_in = tl.load(x_ptr + rows3.to(tl.int64) * C + cols3, mask=mask3, other=0)
    e, nan = _mx_exponent(loaded_abs_max_bits(x_in, 1, IS_BF16), RCEIL, EMAX,
                          RCP_MAX)                                             # (GROUPS, BLOCK_C)
    x = widen_to_fp32(x_in, IS_BF16)
    code = _mx_scale_block(x, e[:, None, :], nan[:, None, :], MAX, MBITS, BIAS, FNUZ, TL_DTYPE,
                           EXACT_SOFT_CAST)
    if TRANSPOSED:
        # the code tile as (rows, columns), transposed before its store: each program then
        # writes rows of x.T in runs along its contiguous axis (Triton moves the tile through
        # shared memory). H200, 2026-12-02 (benchmarks/transposed_cast_variants.py, same bits):
        # 73 us for an 8192^2 bf16 x at (64 rows, 128 columns, 2 warps), against 83 us for the
        # element-wise x.T store of the (64, 64, 1) tile.
        row0 = tl.program_id(0) * GROUPS * BLOCK_SIZE
        code_t = tl.trans(tl.reshape(code, (GROUPS * BLOCK_SIZE, BLOCK_C)))
        if TMA:
            data_ptr.store([tl.program_id(1) * BLOCK_C, row0], code_t)
        else:
            rows = row0 + tl.arange(0, GROUPS * BLOCK_SIZE)
            tl.store(data_ptr + cols[:, None].to(tl.int64) * M + rows[None, :], code_t,
                     mask=(cols[:, None] < C) & (rows[None, :] < M))
    else:
        tl.store(data_ptr + rows3.to(tl.int64) * C + cols3, code, mask=mask3)
    _store_dim0_scales(scale_ptr, e, nan, groups, cols, M // BLOCK_SIZE, C, TRANSPOSED)


def _mx_params(kernel, x, elem_fmt, block_size, scale_mode):
    check_input(x, LAYER)
    check_format(elem_fmt, LAYER, MX_ELEM_FORMATS)
    check_device(kernel, x, LAYER)
    if scale_mode not in MX_SCALE_MODES:
        raise ValueError(f"{LAYER}: scale_mode {scale_mode!r}; expected one of {MX_SCALE_MODES}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"{LAYER}: block_size {block_size} must be a power of two (tile "
                         f"width); 32 is the MX block")
    return mx_constexprs(elem_fmt, scale_mode, x.dtype == torch.bfloat16,
                         use_soft_cast(kernel, elem_fmt, x.device))


def mx_constexprs(elem_fmt, scale_mode, is_bf16, soft_cast):
    """The MX kernels' format constexprs (the Triton and the Gluon ones, and their sm_90
    compiles on a CPU in benchmarks/sass_counts.py and the codegen guard tests)."""
    f = float8_format(elem_fmt)
    return dict(IS_BF16=is_bf16, RCEIL=scale_mode == "rceil", EMAX=f.emax,
                RCP_MAX=fp32(1.0 / f.max), **float8_params(elem_fmt), EXACT_SOFT_CAST=soft_cast)


def dim0_tiling(M, C, block_size, rows_cap, cols_cap):
    """(groups, block_c) of a dim-0 tile of x viewed (M, C): `groups` whole blocks of
    block_size rows (a power of two of them, at most rows_cap rows, one block at least) by
    block_c columns (a power of two, at most cols_cap)."""
    groups = max(1, min(rows_cap // block_size, M // block_size)) if block_size <= rows_cap else 1
    return 1 << (groups.bit_length() - 1), pow2_at_most(C, cols_cap)


def _check_divides(x, axis, block_size):
    if x.shape[axis] % block_size:          # MX-1
        raise ValueError(f"{LAYER}: shape {tuple(x.shape)} has length {x.shape[axis]} along axis "
                         f"{axis}, not a multiple of block_size {block_size}; pad that axis")


def quantize_mx_dim_last(x, elem_fmt="float8_e4m3fn", block_size=32, scale_mode="floor"):
    """Blocks along the last axis: (data like x, scale_bits x.shape[:-1] + (K / block_size,))."""
    params = _mx_params(_mx_dim_last_kernel, x, elem_fmt, block_size, scale_mode)
    _check_divides(x, x.dim() - 1, block_size)
    n_blocks = x.numel() // block_size
    data = torch.empty(x.shape, dtype=TORCH_FLOAT8[elem_fmt], device=x.device)
    scale = torch.empty(x.shape[:-1] + (x.shape[-1] // block_size,), dtype=torch.uint8,
                        device=x.device)
    block_b = max(1, min(4096 // block_size, next_pow2(n_blocks)))
    _mx_dim_last_kernel[(cdiv(n_blocks, block_b),)](
        kernel_input(x)[0], data.view(torch.uint8), scale, n_blocks, BLOCK_B=block_b, BLOCK_SIZE=block_size,
        **params)
    return data, scale


# The dim-0 cast's tile: (rows at most, columns at most, warps). A module setting so that
# gpu_fast_check can time others: its reduction runs along axis 0 of the tile, across warps
# unless one warp holds the tile. H200, 8192^2 bf16 transposed (2026-12-01): (64, 64, 1) 94 us,
# (32, 128, 2) 96, (64, 64, 2) 99, (64, 64, 4) 132 (the earlier default), (128, 64, 8) 261.
DIM0_TILE = (64, 64, 1)
# The same for the cast written transposed (x.T, the grad_weight operand), whose code tile is
# transposed before its store. H200, 2026-12-02, 8192^2 / 8192x14336 bf16 (the sweep in
# benchmarks/transposed_cast_variants.py): (64, 128, 2) 73 / 122 us, (128, 64, 1) 81 / 135,
# (64, 64, 2) 79 / 134, (128, 128, 4) 89 / 151; 8 warps 138-213 / 236-366.
DIM0_TILE_T = (64, 128, 2)
# The cast written transposed, stored by TMA where tma_store_ok (Hopper and later, M % 16 == 0;
# see _mx_dim0_kernel), and its tile. H200, 2026-12-03 (seventeenth session,
# transposed_cast_variants.py --families mx --only kernel, same bits): this kernel's TMA store
# at (128 rows, 32 columns, 1 warp) 67.0 / 110.7 / 69.5 us at 8192^2 / 8192x14336 /
# 16384x4096 against 73.1 / 123.3 / 73.6 for DIM0_TILE_T's transposed-tile store
# (2026-12-03-s17-mx-tma-checks-gates-h200.log).
# Loading x's tile by TMA as well (a (rows, columns) box of x) was slower at every tile:
# 92.7 / 157.5 / 91.4 us at (128, 32, 1) against 66.9 / 110.5 / 68.9 with the plain loads
# (H200, 2026-12-03, 2026-12-03-s18-amax-settings-mx-tma-load-h200.log; same bits); removed.
DIM0_T_TMA = True
DIM0_TMA_TILE_T = (128, 32, 1)
# A Gluon form of the x.T cast (one 32-row block of one column per thread: 48 registers, no
# shuffles, no byte-wide shared-memory stores in its sm_90 code) gave the same bits and ran
# 1.7x slower on the H200: 116 against 68 us at 16384x4096, 199 against 111 at 8192x14336
# (2026-12-03, twentieth session, 2026-12-03-s20-mx-values-tiles-gluon-tw-group-rowcopy-h200.log);
# removed.


def quantize_mx_dim0(x, elem_fmt="float8_e4m3fn", block_size=32, scale_mode="floor",
                     transposed=False):
    """Blocks along axis 0 of x viewed (M, C). transposed=False: data like x, scale_bits
    (M / block_size,) + x.shape[1:]. transposed=True (2-D x): data (C, M) and scale_bits
    (C, M / block_size), equal to quantize_mx_dim_last(x.T) (the grad_weight NT operand)."""
    params = _mx_params(_mx_dim0_kernel, x, elem_fmt, block_size, scale_mode)
    _check_divides(x, 0, block_size)
    if transposed and x.dim() != 2:
        raise ValueError(f"{LAYER}: transposed dim0 cast needs 2-D x, got {tuple(x.shape)}")
    M = x.shape[0]
    C = x.numel() // M
    dev = x.device
    if transposed:
        data = torch.empty((C, M), dtype=TORCH_FLOAT8[elem_fmt], device=dev)
        scale = torch.empty((C, M // block_size), dtype=torch.uint8, device=dev)
    else:
        data = torch.empty(x.shape, dtype=TORCH_FLOAT8[elem_fmt], device=dev)
        scale = torch.empty((M // block_size,) + tuple(x.shape[1:]), dtype=torch.uint8, device=dev)
    tma = transposed and DIM0_T_TMA and tma_store_ok(dev, M)
    rows_cap, cols_cap, warps = (DIM0_TMA_TILE_T if tma else DIM0_TILE_T if transposed
                                 else DIM0_TILE)
    groups, block_c = dim0_tiling(M, C, block_size, rows_cap, cols_cap)
    grid = (cdiv(M, groups * block_size), cdiv(C, block_c))
    out = data.view(torch.uint8)
    if tma:
        out = TensorDescriptor.from_tensor(out, [block_c, groups * block_size])
    _mx_dim0_kernel[grid](kernel_input(x)[0], out, scale, M, C,
                          GROUPS=groups, BLOCK_SIZE=block_size, BLOCK_C=block_c,
                          TRANSPOSED=transposed, TMA=tma, **params, num_warps=warps)
    return data, scale


def quantize_mx(x, elem_fmt="float8_e4m3fn", block_size=32, axis=-1, scale_mode="floor"):
    """Brief interface: axis -1 (last) or 0, data in x's layout."""
    axis = normalize_axis(axis, x.dim(), LAYER, x.shape)
    if axis == x.dim() - 1:
        return quantize_mx_dim_last(x, elem_fmt, block_size, scale_mode)
    if axis == 0:
        return quantize_mx_dim0(x, elem_fmt, block_size, scale_mode)
    raise ValueError(f"{LAYER}: axis {axis} of shape {tuple(x.shape)} not supported; use 0 or "
                     f"-1 (or move the axis last with .movedim(axis, -1).contiguous())")
