"""Grouped products for MoE layers, spec/06 MM-5 and spec/07 RC-13: the routing of each grouped
product to a kernel. The per-group float8 casts that feed them are in fast/cast_grouped.py.

Products (`scaled_grouped_mm`), all NT (MM-1):
- float8_e4m3fn 2d x 3d with per-row / per-expert factors, bf16 out, fast accumulation allowed
  (RC-3: the forward; RC-15: grad_input too, by default for grouped products), on sm90
  exactly: the Triton kernel of fast/grouped_mm_sm90.py (205 us against torch's 237 on the
  MoE forward shape; QTRAIN_FAST_GROUPED_GEMM: auto, the default; triton, also the promoted
  products; torch, never).
- otherwise float8 with per-row / per-group factors, bf16 out, on sm90+: torch._scaled_grouped_mm
  (use_fast_accum where the caller says RC-3 / RC-15 allow it, on sm90, where it was checked).
  Its layout facts: 2d x 3d takes A (M, K) row-major and B (E, K, N) column-major, which is
  `b.transpose(-2, -1)` of our row-major (E, N, K) payload (no copy); fp32 scales A (M,) and
  B (E, N); 2d x 2d takes A (M, T) row-major, B (T, N) column-major (= our (N, T) payload
  transposed) and scales (E*M,), (E*N,); offs int32 cumulative ends; out bf16 only. Only the
  2d x 2d form needs aligned groups (each group's first column on a 16-byte TMA address, so
  a multiple of 16 fp8 columns): the grouped layer's grad_weight cast writes that padded
  layout and says so (group_align=16); any other caller's operands are padded here by a
  device-side gather (no host sync). 2d x 3d groups (along M) may start anywhere: checked
  against the reference on the H200 with groups of 37, 0, 153 and 100 rows. Regions the
  kernel leaves unwritten (rows past offs[-1], empty groups) are zeroed by one small launch.
- anything else (MX factors, fp32 out, CPU/interpreter, older GPUs): EMULATED. The payloads
  are dequantized exactly (float8 code times a power-of-two factor is exact in fp32; with
  non-power-of-two factors this is MM-3's one fp32 rounding of the factor product), by one
  Triton pass per operand (fast/block_dequant.py: exact decode, fp32 product, one rounding
  to the operand dtype), and run through torch._grouped_mm with fp32 accumulation. For
  mxfp8 this is the only path here: real MX grouped kernels (torch._scaled_grouped_mm with
  e8m0 block scales) are Blackwell-only (sm100) today. On CUDA the dequantized operands are
  bf16 when out is bf16 and the caller promises power-of-two factors, as the grouped layer
  does (exact unless a value falls below bf16's 2^-133, i.e. an MX block amax under
  ~2^-117); fp32 otherwise.
"""
import functools
import logging
import os

import torch
import triton
import triton.language as tl

from qtrain.grouping import gather_rows, group_bounds, pad_index, padded_offsets, rows_in_groups
from .common import cdiv, device_capability, is_interpreted
from . import grouped_mm_sm90 as sm90
from .block_dequant import exact_values

LAYER = "qtrain.fast.grouped_mm"
log = logging.getLogger("qtrain")
FLOAT8_ALIGN = 16
# which kernels run the rowwise float8 products on sm90 (see _sm90_triton_ok): auto | triton | torch
GROUPED_GEMM_ENV = "QTRAIN_FAST_GROUPED_GEMM"
GROUPED_GEMM = os.environ.get(GROUPED_GEMM_ENV, "auto")
if GROUPED_GEMM not in ("auto", "triton", "torch"):
    raise ValueError(f"{LAYER}: {GROUPED_GEMM_ENV}={GROUPED_GEMM!r} is not one of 'auto', "
                     f"'triton', 'torch'")


def _per_group_2d2d(d, shape, offs):
    """Per-group factors (E, R, 1) -> element-wise (R, T): column t of group g uses d[g]."""
    t = torch.arange(shape[1], device=d.device)
    g = torch.searchsorted(offs.to(torch.int64), t, right=True).clamp(max=d.shape[0] - 1)
    return d[:, :, 0].float().t().index_select(1, g)


def _dequant(p, d, offs, dtype):
    """Exact values of payload p with factors d, in `dtype` (see the module docstring)."""
    if p.dim() == 2 and d.dim() == 3:
        return (p.float() * _per_group_2d2d(d, p.shape, offs)).to(dtype)
    return exact_values(p, d, dtype)      # (E, N, K) with (E, N/br, K/bc), or 2-D (R/br, C/bc)


def _rowwise_2d3d(a, da, b, db):
    m, n = a.shape[0], b.shape[1]
    return (da.dim() == 2 and da.shape == (m, 1) and db.dim() == 3
            and db.shape == (b.shape[0], n, 1))


def _rowwise_2d2d(a, da, b, db, n_groups):
    return (da.dim() == 3 and da.shape == (n_groups, a.shape[0], 1)
            and db.dim() == 3 and db.shape == (n_groups, b.shape[0], 1))


def _torch_scaled_ok(a, b, out_dtype):
    if (a.device.type != "cuda" or out_dtype != torch.bfloat16
            or not hasattr(torch, "_scaled_grouped_mm")):
        return False
    if device_capability(a.device) < (9, 0):
        return False
    if not a.dtype == b.dtype == torch.float8_e4m3fn:
        return False
    # 2d x 3d: K and N multiples of 16; 2d x 2d: M and N (its contraction is padded if needed)
    dims = (a.shape[-1], b.shape[-2]) if b.dim() == 3 else (a.shape[0], b.shape[0])
    return all(d % 16 == 0 for d in dims)


@triton.jit
def _zero_rows_past_end_kernel(out_ptr, offs_ptr, n_groups, M, N, BLOCK_R: tl.constexpr,
                               BLOCK_N: tl.constexpr):
    """Rows r >= offs[-1] of out (M, N) set to +0; programs over earlier rows return at once."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    end = tl.load(offs_ptr + n_groups - 1, mask=n_groups > 0, other=0)
    if tl.program_id(0) * BLOCK_R + BLOCK_R <= end:
        return
    keep = (rows >= end) & (rows < M)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        mask = keep[:, None] & (cols < N)[None, :]
        tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :],
                 tl.zeros((BLOCK_R, BLOCK_N), dtype=out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _zero_empty_groups_kernel(out_ptr, offs_ptr, SIZE, BLOCK: tl.constexpr):
    """out (E, R, C) contiguous: group g's slab set to +0 when group g is empty (offs[g] equals
    the previous end); programs of non-empty groups return at once."""
    g = tl.program_id(0)
    end = tl.load(offs_ptr + g)
    start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
    if end > start:
        return
    for i0 in range(tl.program_id(1) * BLOCK, SIZE, tl.num_programs(1) * BLOCK):
        idx = i0 + tl.arange(0, BLOCK)
        tl.store(out_ptr + g.to(tl.int64) * SIZE + idx,
                 tl.zeros((BLOCK,), dtype=out_ptr.dtype.element_ty), mask=idx < SIZE)


def _zero_outside(out, offs, is_3d):
    """MM-5: rows past offs[-1] are +0 (2d x 3d); empty groups give zeros (2d x 2d). The torch
    kernels leave those regions unwritten; one launch, no host sync, touching only them.
    (The kernels also run under the interpreter, so CI checks their indexing.)"""
    kernels_here = out.device.type == "cuda" or is_interpreted(_zero_rows_past_end_kernel)
    if out.numel() == 0 or not kernels_here or not out.is_contiguous():
        return _zero_outside_torch(out, offs, is_3d)
    if is_3d:
        m, n = out.shape
        _zero_rows_past_end_kernel[(cdiv(m, 32),)](out, offs, offs.shape[0], m, n,
                                                   BLOCK_R=32, BLOCK_N=128)
    elif offs.shape[0]:
        size = out[0].numel()
        _zero_empty_groups_kernel[(offs.shape[0], min(64, cdiv(size, 4096)))](
            out, offs, size, BLOCK=4096)
    return out


def _zero_outside_torch(out, offs, is_3d):
    """_zero_outside as whole-tensor torch.where (CPU, the interpreter, strided outputs)."""
    zero = torch.zeros((), dtype=out.dtype, device=out.device)
    if is_3d:
        return torch.where(rows_in_groups(offs, out.shape[0])[:, None], out, zero)
    _, sizes = group_bounds(offs)
    return torch.where((sizes > 0)[:, None, None], out, zero)


def _fp32(t):
    return t if t.dtype == torch.float32 else t.float()


def _pad_columns(a, b, offs, align):
    """2d x 2d operands (M, T), (N, T) grouped along the contraction T with groups that may
    start anywhere: copies in the padded layout (every group a multiple of `align` columns,
    zeros between), where the torch kernels' 16-byte TMA rule holds, and the padded offsets.
    Zero columns add nothing (MM-5); per-group factors are unchanged."""
    idx = pad_index(offs, a.shape[1], align)
    raw = torch.uint8 if a.element_size() == 1 else a.dtype
    pad = lambda t: gather_rows(t.t().view(raw), idx).view(t.dtype).t().contiguous()
    return pad(a), pad(b), padded_offsets(offs, align)


def _sm90_triton_ok(a, b, out_dtype, fast_accum):
    """Whether fast/grouped_mm_sm90.py runs this rowwise 2d x 3d product: QTRAIN_FAST_GROUPED_GEMM
    "auto" (default) on sm90 for the product with fast accumulation (where it is faster),
    "triton" also for the promoted one (and on CPU tensors under the interpreter, for the
    tests), "torch" never."""
    if GROUPED_GEMM == "torch" or (not fast_accum and GROUPED_GEMM != "triton"):
        return False
    if out_dtype != torch.bfloat16 or not a.dtype == b.dtype == torch.float8_e4m3fn:
        return False
    if not (a.is_contiguous() and b.is_contiguous()):
        return False
    if a.device.type == "cuda":
        if device_capability(a.device) != (9, 0):
            return False
    elif not (GROUPED_GEMM == "triton" and is_interpreted(sm90._grouped_2d3d_kernel)):
        return False
    if sm90.TensorDescriptor is None:
        _log_no_descriptors_once()
        return False
    # whole column tiles (b's rows of one expert never mix with the next's); TMA rows of a and
    # b start on 16-byte addresses
    return sm90.column_tile_2d3d(b.shape[1]) is not None and a.shape[1] % 16 == 0


def _fast_accum_tested(a):
    """torch._scaled_grouped_mm's use_fast_accum=True was checked (conformance, H200) on sm90
    only; elsewhere the product accumulates in fp32, which RC-3 always allows."""
    return a.device.type == "cuda" and device_capability(a.device) == (9, 0)


@functools.lru_cache(maxsize=None)
def _log_no_descriptors_once():
    log.info("%s: Triton %s has no triton.tools.tensor_descriptor; grouped float8 products run "
             "on torch._scaled_grouped_mm", LAYER, triton.__version__)


def scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype=torch.float32, group_align=1,
                      pow2_factors=False, use_fast_accum=False):
    """Backend interface (qtrain/grouped_ops.py): MM-5, routed as the module docstring says.
    group_align: the caller's promise that every group of a 2d x 2d product starts at a
    multiple of it (the grouped layer's padded layout); otherwise the operands are padded here.
    pow2_factors: the caller's promise that every factor is a power of two (see the emulated
    product). use_fast_accum: RC-3 allows this product fast accumulation (the output product)."""
    is_3d = b.dim() == 3
    n_groups = offs.shape[0]
    if (is_3d and n_groups and _rowwise_2d3d(a, a_dequant, b, b_dequant)
            and _sm90_triton_ok(a, b, out_dtype, use_fast_accum)):
        return sm90.grouped_2d3d(a, _fp32(a_dequant.reshape(-1)).contiguous(), b,
                                 _fp32(b_dequant.reshape(n_groups, -1)).contiguous(), offs,
                                 use_fast_accum)             # rows past offs[-1] zeroed too
    if _torch_scaled_ok(a, b, out_dtype) and n_groups:
        if is_3d and _rowwise_2d3d(a, a_dequant, b, b_dequant):
            # 2d x 3d: groups along M need no alignment (only K, N multiples of 16)
            out = torch._scaled_grouped_mm(a, b.transpose(-2, -1), _fp32(a_dequant.reshape(-1)),
                                           _fp32(b_dequant.reshape(n_groups, -1)), offs=offs,
                                           out_dtype=out_dtype,
                                           use_fast_accum=use_fast_accum and _fast_accum_tested(a))
            return _zero_outside(out, offs, True)
        if not is_3d and _rowwise_2d2d(a, a_dequant, b, b_dequant, n_groups):
            if group_align % FLOAT8_ALIGN:
                a, b, offs = _pad_columns(a, b, offs, FLOAT8_ALIGN)
            out = torch._scaled_grouped_mm(a, b.t(), _fp32(a_dequant.reshape(-1)),
                                           _fp32(b_dequant.reshape(-1)), offs=offs,
                                           out_dtype=out_dtype,
                                           use_fast_accum=use_fast_accum and _fast_accum_tested(a))
            return _zero_outside(out, offs, False)
    if a.dtype != torch.int8 and (_rowwise_2d3d(a, a_dequant, b, b_dequant) if is_3d
                                  else _rowwise_2d2d(a, a_dequant, b, b_dequant, n_groups)):
        _log_emulated_once(a, b, out_dtype)     # a float8 rowwise product that could not run
    return scaled_grouped_mm_emulated(a, a_dequant, b, b_dequant, offs, out_dtype, group_align,
                                      pow2_factors)


_EMULATED_LOGGED = set()


def _log_emulated_once(a, b, out_dtype):
    """No silent fallback: say once per (device, dtypes, out dtype) why torch._scaled_grouped_mm
    was not used (it needs CUDA sm90+, float8_e4m3fn operands, bf16 out, K/N multiples of 16)."""
    key = (a.device.type, a.dtype, b.dtype, out_dtype)
    if key not in _EMULATED_LOGGED:
        _EMULATED_LOGGED.add(key)
        log.warning("qtrain.fast.grouped_mm: float8 rowwise grouped product on %s with %s x %s -> "
                    "%s runs emulated (dequantize + torch._grouped_mm): torch._scaled_grouped_mm "
                    "needs CUDA sm90+, float8_e4m3fn operands, bfloat16 output and K, N multiples "
                    "of 16", a.device, a.dtype, b.dtype, out_dtype)


def _operand_dtype(a, out_dtype, pow2_factors):
    """The dtype the emulated product's operands are dequantized to. bf16 on CUDA when out is
    bf16 and the factors are powers of two: a float8 code times such a factor is exact in bf16
    (down to 2^-133), and torch._grouped_mm's bf16 kernel runs. Otherwise fp32, the exact
    values (MM-3's one rounding of code times factor); a torch whose CUDA _grouped_mm refuses
    fp32 gets bf16 operands with a warning (a second rounding: MM-4 may not hold under
    cancellation)."""
    if a.device.type != "cuda" or out_dtype == torch.float32:
        return torch.float32
    if pow2_factors:
        return out_dtype
    return torch.float32 if _FP32_GROUPED_OK.get(a.device.type, True) else out_dtype


_FP32_GROUPED_OK = {}      # device type -> False once torch._grouped_mm refused fp32 (logged)


def _grouped_mm_checked(a_hp, b_hp, offs, a, out_dtype):
    """torch._grouped_mm; fp32 operands on a torch that refuses them: logged once, retried in
    the output dtype."""
    try:
        return torch._grouped_mm(a_hp, b_hp, offs=offs)
    except RuntimeError as e:
        if a_hp.dtype != torch.float32 or a.device.type != "cuda" or out_dtype == torch.float32:
            raise
        _FP32_GROUPED_OK[a.device.type] = False
        log.warning("%s: torch._grouped_mm refuses float32 operands on %s (torch %s: %s); "
                    "emulated grouped products with factors not promised to be powers of two "
                    "run in %s, rounding each operand twice (MM-4 may not hold under "
                    "cancellation)", LAYER, a.device.type, torch.__version__,
                    str(e).splitlines()[0][:160], str(out_dtype)[6:])
        return torch._grouped_mm(a_hp.to(out_dtype), b_hp.to(out_dtype), offs=offs)


def scaled_grouped_mm_emulated(a, a_dequant, b, b_dequant, offs, out_dtype=torch.float32,
                               group_align=1, pow2_factors=False):
    """Dequantize exactly, then torch._grouped_mm (fp32 accumulation, one rounding). On CUDA
    a 2d x 2d product's groups are padded to 16 columns first (its 16-byte TMA rule) unless
    the caller promised that alignment."""
    dtype = _operand_dtype(a, out_dtype, pow2_factors)
    a_hp = _dequant(a, a_dequant, offs, dtype)
    b_hp = _dequant(b, b_dequant, offs, dtype)
    return _grouped_mm_of_values(a_hp, b_hp, offs, out_dtype, group_align).to(out_dtype)


def _grouped_mm_of_values(a_hp, b_hp, offs, out_dtype, group_align):
    """MM-5 of operands already in a high-precision dtype (NT form: a (M, K) with b (E, N, K),
    or a (M, T) with b (N, T) grouped along T) by torch._grouped_mm, the regions it leaves
    unwritten set to +0. On CUDA a 2d x 2d product's groups are padded to 16 columns first
    unless the caller promised that alignment."""
    if b_hp.dim() == 3:                    # A (M, K), B (E, K, N)
        out = _grouped_mm_of_views(a_hp, b_hp.transpose(-2, -1), offs, out_dtype)
    else:                                  # A (M, T), B (T, N)
        if a_hp.device.type == "cuda" and group_align % FLOAT8_ALIGN:
            a_hp, b_hp, offs = _pad_columns(a_hp, b_hp, offs, FLOAT8_ALIGN)
        out = _grouped_mm_of_views(a_hp, b_hp.t(), offs, out_dtype)
    return _zero_outside(out, offs, b_hp.dim() == 3)


_VIEWS_OK = {}             # device type -> False once torch._grouped_mm refused a view (logged)


def _grouped_mm_of_views(a, b, offs, out_dtype):
    """torch._grouped_mm(a, b) on a and b as _mm_layout gives them; if this torch refuses such
    an operand (logged once per device type), on copies in the layouts every torch takes (A
    row-major, B column-major) from then on."""
    if _VIEWS_OK.get(a.device.type, True):
        a_in, b_in = _mm_layout(a), _mm_layout(b)
        try:
            return _grouped_mm_checked(a_in, b_in, offs, a, out_dtype)
        except RuntimeError as e:
            if a_in.is_contiguous() and b_in.mT.is_contiguous():
                raise                      # already the layouts below: not a layout problem
            _VIEWS_OK[a.device.type] = False
            log.warning("%s: torch._grouped_mm refuses a transposed operand on %s (torch %s: "
                        "%s); grouped products of values copy their operands first", LAYER,
                        a.device.type, torch.__version__, str(e).splitlines()[0][:160])
    return _grouped_mm_checked(a.contiguous(), b.mT.contiguous().mT, offs, a, out_dtype)


def _mm_layout(t):
    """t as torch._grouped_mm takes a high-precision operand: row-major or column-major in its
    last two dims, the other stride a multiple of 16 bytes and the data 16-byte aligned (its
    stride rule, for either transpose); a copy only otherwise. The transposed views of NT-form
    values (w along N for grad_input, g along tokens for grad_weight) go as they are: the
    layouts torch's own _grouped_mm backward passes it (w row-major, grad_output.t())."""
    align = 16 // t.element_size()
    rows, cols = t.shape[-2], t.shape[-1]
    row_major = t.stride(-1) == 1 and t.stride(-2) >= max(cols, 1) and t.stride(-2) % align == 0
    col_major = t.stride(-2) == 1 and t.stride(-1) >= max(rows, 1) and t.stride(-1) % align == 0
    batch_ok = t.dim() == 2 or t.stride(0) % align == 0
    if (row_major or col_major) and batch_ok and t.data_ptr() % 16 == 0:
        return t
    return t.contiguous()


def mx_values_grouped_product(a, a_dequant, b, b_dequant, offs, group_align=1):
    """RC-7's emulated MX grouped product (grouped_ops.mm_mx_values_grouped): MM-5 in bf16 with
    fp32 sums (torch._grouped_mm), each operand given as its MX-10 values (dequant None: bf16,
    any strides) or as payload and block factors (dequantized exactly to bf16 first)."""
    for v, d, name in ((a, a_dequant, "a"), (b, b_dequant, "b")):
        if d is None and v.dtype != torch.bfloat16:
            raise TypeError(f"{LAYER}: mm_mx_values_grouped: {name} given as values has dtype "
                            f"{v.dtype}, expected torch.bfloat16")
    a16 = a if a_dequant is None else _dequant(a, a_dequant, offs, torch.bfloat16)
    b16 = b if b_dequant is None else _dequant(b, b_dequant, offs, torch.bfloat16)
    return _grouped_mm_of_values(a16, b16, offs, torch.bfloat16, group_align)
