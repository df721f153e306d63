"""Triton float8 grouped product for Hopper (sm90), 2d x 3d, spec/06 MM-5 with spec/07 RC-3's
accumulation rule: per-row / per-(expert, column) factors, float8_e4m3fn payloads, bf16 out.

`grouped_2d3d`: out[r] = (a[r] . b[g]) * da[r] * db[g, n] for the rows r of group g. Tiles
BM x BN over every group's rows, loaded with tensor descriptors (TMA); a row tile may reach into
the next group or past M: those rows are loaded (TMA fills past M with zeros) but never stored.
Rows past offs[-1] are written as +0 by the same programs after their tiles (MM-5; one launch
fewer per product than a separate zeroing kernel: the eager step's host time feels each launch).
IMPRECISE is tl.dot's max_num_imprecise_acc: None (Triton's sm90 default: no promotion, RC-3's
P = K, allowed on the output product only) or BK (promotion to fp32 once per K tile,
P = BK <= 128).

Why: on the MoE shape of issue 6 (E8, 16384 tokens, 4096 -> 2048; H200, torch 2.11, Triton 3.6,
ninth session, benchmarks/grouped_gemm_probe.py, results 2026-12-01-s9-grouped-gemm-probe)
torch._scaled_grouped_mm takes 269 us for this product promoting partial sums to fp32 and
237 us with use_fast_accum=True; this kernel with fast accumulation 205 us (1340 TFLOP/s, the
dense torch._scaled_mm rate on the same M, K, N) and, promoting, 271 us (the same bits as
torch's). So fast/grouped_mm.py runs it for the forward only (RC-3's fast product). A 2d x 2d
kernel of the same build (grad_weight, promoting) took 441 us against torch's 330 and was
removed: each output tile's K loop is one group's ~2048 tokens, 16 steps, and Triton's loop
does not hide the tile's pipeline fill and bf16 epilogue behind the next tile.
fast/grouped_mm.py routes here only what its `_sm90_triton_ok` accepts.
"""
import torch
import triton
import triton.language as tl

from .amax import program_budget

LAYER = "qtrain.fast.grouped_mm_sm90"

# (BM, BN, BK, stages, warps): timed on the H200 (grouped_gemm_probe, ninth session): 128 x 256
# x 128 with 3 stages and 8 warps, persistent, was the fastest of the 32 settings of its first run.
SETTINGS = {"2d3d": (128, 256, 128, 3, 8)}
PROMOTE_EVERY = 128          # RC-3: promoted products add to fp32 at least every 128 terms


# Host-side TMA descriptors, resolved once (the routing asks on every call); None on a Triton
# without them, and then fast/grouped_mm.py routes these products to torch.
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None


@triton.jit
def _group_of_row_tile(offs_ptr, E, mt, BM: tl.constexpr):
    """(group, first row, group end) of row tile mt, the tiles counted group by group."""
    g = 0
    row0 = 0
    g_end = 0
    seen = 0
    for e in range(E):
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        cnt = (end - start + BM - 1) // BM
        hit = (mt >= seen) & (mt < seen + cnt)
        g = tl.where(hit, e, g)
        row0 = tl.where(hit, start + (mt - seen) * BM, row0)
        g_end = tl.where(hit, end, g_end)
        seen += cnt
    return g, row0, g_end


@triton.jit
def _grouped_2d3d_kernel(a_desc, b_desc, sa_ptr, sb_ptr, offs_ptr, out_ptr, M, N, K, E,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         IMPRECISE: tl.constexpr):
    """Programs loop over the tiles (row tile, column tile), row tiles counted per group, then
    over the tiles of rows [offs[E-1], M), stored as zeros."""
    n_tiles = N // BN
    m_tiles = 0
    for e in range(E):
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        m_tiles += (end - start + BM - 1) // BM
    for tile in range(tl.program_id(0), m_tiles * n_tiles, tl.num_programs(0)):
        g, row0, g_end = _group_of_row_tile(offs_ptr, E, tile // n_tiles, BM)
        col0 = (tile % n_tiles) * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            a = a_desc.load([row0, k])
            b = b_desc.load([g * N + col0, k])
            acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=IMPRECISE)
        rows = row0 + tl.arange(0, BM)
        cols = col0 + tl.arange(0, BN)
        keep = rows < g_end
        sa = tl.load(sa_ptr + rows, mask=keep, other=0.0)
        sb = tl.load(sb_ptr + g * N + cols)
        out = (acc * sa[:, None] * sb[None, :]).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], out,
                 mask=keep[:, None])
    m_end = tl.load(offs_ptr + E - 1)
    zeros = tl.zeros((BM, BN), dtype=out_ptr.dtype.element_ty)
    for tile in range(tl.program_id(0), tl.cdiv(M - m_end, BM) * n_tiles, tl.num_programs(0)):
        rows = m_end + (tile // n_tiles) * BM + tl.arange(0, BM)
        cols = (tile % n_tiles) * BN + tl.arange(0, BN)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], zeros,
                 mask=(rows < M)[:, None])


def column_tile_2d3d(n):
    """BN for a 2d x 3d product with N columns: SETTINGS' BN or its half, whichever divides N
    (a tile never reads the next expert's rows of b), else None (not for these kernels)."""
    bn = SETTINGS["2d3d"][1]
    return next((t for t in (bn, bn // 2) if n % t == 0), None)


def _programs(device, n_tiles_bound):
    """Persistent grid: one program per SM (the interpreter: a few), never more than tiles."""
    return max(1, min(n_tiles_bound, program_budget(device, 1)))


def grouped_2d3d(a, da, b, db, offs, fast_accum):
    """a (M, K), b (E, N, K) float8 row-major; da (M,), db (E, N) fp32; offs int32 (E,) ends.
    Returns bf16 (M, N), rows past offs[-1] +0 (MM-5). fast_accum: RC-3's P = K (the output
    product), else promotion every min(BK, PROMOTE_EVERY) columns."""
    bm, _, bk, stages, warps = SETTINGS["2d3d"]
    m, k = a.shape
    e, n, _ = b.shape
    bn = column_tile_2d3d(n)
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(b.view(e * n, k), [bn, bk])
    grid = _programs(a.device, (-(-m // bm) + e) * (n // bn))
    imprecise = None if fast_accum else min(bk, PROMOTE_EVERY)
    _grouped_2d3d_kernel[(grid,)](a_desc, b_desc, da, db, offs, out, m, n, k, e, BM=bm, BN=bn,
                                  BK=bk, IMPRECISE=imprecise, num_stages=stages, num_warps=warps)
    return out
