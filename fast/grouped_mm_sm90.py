"""Triton float8 grouped products for Hopper (sm90), spec/06 MM-5 with spec/07 RC-3's
accumulation rule: rowwise (per-row / per-group) factors, float8_e4m3fn payloads, bf16 out.

Why: on the MoE shape of issue 6 (E8, 16384 tokens, 4096 -> 2048; H200, torch 2.11, Triton 3.6,
ninth session, benchmarks/grouped_gemm_probe.py) torch._scaled_grouped_mm takes 268 us for
2d x 3d and 330 us for 2d x 2d, both promoting partial sums to fp32. Its 2d x 3d with
use_fast_accum=True takes 236 us; this file's 2d x 3d with fast accumulation 205 us (1340
TFLOP/s, the dense torch._scaled_mm rate) and, promoting every K tile, 270 us (the same bits as
torch's). RC-3 allows fast accumulation on the output product only, so:
- `grouped_2d3d`: out[r] = (a[r] . b[g]) * da[r] * db[g, n] for the rows r of group g (the
  forward, and grad_input with promotion). Tiles BM x BN over every group's rows; a row tile may
  reach into the next group or past M: those rows are loaded (TMA fills past M with zeros) but
  never stored. Rows past offs[-1] are left to the caller (MM-5 zeroes them).
- `grouped_2d2d`: out[g] = sum over the columns t of group g of a[:, t] b[:, t] * da[g] db[g]
  (grad_weight; a (M, T), b (N, T), the groups along T). The K loop runs over the group's
  columns in BK steps through TMA, so every group must start on a 16-byte address (a multiple
  of 16 columns: the grouped layer's padded layout); a last partial step (a group not a
  multiple of BK) loads through masked pointers. Empty groups give +0.
IMPRECISE is tl.dot's max_num_imprecise_acc: None (Triton's sm90 default: no promotion, RC-3's
P = K, the output product only) or BK (promotion to fp32 once per K tile, P = BK <= 128).
Bad input is the caller's to catch (fast/grouped_mm.py routes here only what `eligible` says).
"""
import torch
import triton
import triton.language as tl

from .amax import program_budget

LAYER = "qtrain.fast.grouped_mm_sm90"

# (BM, BN, BK, stages, warps): timed on the H200 (grouped_gemm_probe, ninth session): for 2d x 3d
# 128 x 256 x 128 with 3 stages and 8 warps, persistent, was the fastest of 32 settings.
SETTINGS = {"2d3d": (128, 256, 128, 3, 8), "2d2d": (128, 256, 128, 3, 8)}


def tensor_descriptor_class():
    """triton.tools.tensor_descriptor.TensorDescriptor, or None on a Triton without it."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


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
def _grouped_2d3d_kernel(a_desc, b_desc, sa_ptr, sb_ptr, offs_ptr, out_ptr, N, K, E,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         IMPRECISE: tl.constexpr):
    """Programs loop over the tiles (row tile, column tile), row tiles counted per group."""
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


@triton.jit
def _grouped_2d2d_kernel(a_desc, b_desc, a_ptr, b_ptr, sa_ptr, sb_ptr, offs_ptr, out_ptr,
                         M, N, T, E, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         IMPRECISE: tl.constexpr):
    """Programs loop over the tiles (group, row tile of M, column tile of N) of out (E, M, N)."""
    m_tiles = tl.cdiv(M, BM)
    n_tiles = tl.cdiv(N, BN)
    per_group = m_tiles * n_tiles
    for tile in range(tl.program_id(0), E * per_group, tl.num_programs(0)):
        g = tile // per_group
        r0 = ((tile % per_group) // n_tiles) * BM
        c0 = (tile % n_tiles) * BN
        start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
        end = tl.load(offs_ptr + g)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        n_full = (end - start) // BK
        for i in range(0, n_full):
            t = start + i * BK
            a = a_desc.load([r0, t])
            b = b_desc.load([c0, t])
            acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=IMPRECISE)
        rows = r0 + tl.arange(0, BM)
        cols = c0 + tl.arange(0, BN)
        t0 = start + n_full * BK
        if t0 < end:                    # the group's last columns: fewer than BK
            ts = t0 + tl.arange(0, BK)
            in_group = ts < end
            a = tl.load(a_ptr + rows[:, None].to(tl.int64) * T + ts[None, :],
                        mask=(rows < M)[:, None] & in_group[None, :], other=0.0)
            b = tl.load(b_ptr + cols[:, None].to(tl.int64) * T + ts[None, :],
                        mask=(cols < N)[:, None] & in_group[None, :], other=0.0)
            acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=IMPRECISE)
        sa = tl.load(sa_ptr + g * M + rows, mask=rows < M, other=0.0)
        sb = tl.load(sb_ptr + g * N + cols, mask=cols < N, other=0.0)
        out = acc * sa[:, None] * sb[None, :]
        out = tl.where(end > start, out, 0.0)            # an empty group: +0 (MM-5)
        keep = (rows < M)[:, None] & (cols < N)[None, :]
        tl.store(out_ptr + g.to(tl.int64) * M * N + rows[:, None].to(tl.int64) * N
                 + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=keep)


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
    Returns bf16 (M, N); rows past offs[-1] unwritten. fast_accum: RC-3's P = K (the output
    product), else promotion every BK columns."""
    TensorDescriptor = tensor_descriptor_class()
    bm, _, bk, stages, warps = SETTINGS["2d3d"]
    m, k = a.shape
    e, n, _ = b.shape
    bn = column_tile_2d3d(n)
    out = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(b.view(e * n, k), [bn, bk])
    grid = _programs(a.device, (-(-m // bm) + e) * (n // bn))
    _grouped_2d3d_kernel[(grid,)](a_desc, b_desc, da, db, offs, out, n, k, e, BM=bm, BN=bn,
                                  BK=bk, IMPRECISE=None if fast_accum else bk,
                                  num_stages=stages, num_warps=warps)
    return out


def grouped_2d2d(a, da, b, db, offs):
    """a (M, T), b (N, T) float8 row-major, grouped along T by offs (int32 (E,) ends); da (E, M),
    db (E, N) fp32. Returns bf16 (E, M, N), empty groups +0. Promotes every BK columns."""
    TensorDescriptor = tensor_descriptor_class()
    bm, bn, bk, stages, warps = SETTINGS["2d2d"]
    m, t = a.shape
    n = b.shape[0]
    e = offs.shape[0]
    out = torch.empty((e, m, n), dtype=torch.bfloat16, device=a.device)
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(b, [bn, bk])
    grid = _programs(a.device, e * (-(-m // bm)) * (-(-n // bn)))
    _grouped_2d2d_kernel[(grid,)](a_desc, b_desc, a, b, da, db, offs, out, m, n, t, e, BM=bm,
                                  BN=bn, BK=bk, IMPRECISE=bk, num_stages=stages,
                                  num_warps=warps)
    return out
