"""Can a Triton float8 grouped product beat torch._scaled_grouped_mm on the MoE shape (issue 6)?

Times, in one process on one GPU, the 2d x 3d product of the MoE layer (out = a @ b[g].T per
token group, a (M, K) and b (E, N, K) float8 e4m3 with per-row / per-(expert, column) fp32
factors, bf16 out; forward and grad_input both have this form):
- torch._scaled_grouped_mm (what fast/grouped_mm.py runs today);
- torch._scaled_mm on the same M, K, N as one dense product (the rate a grouped kernel could
  reach at best);
- a Triton kernel (below): tiles of BM x BN over every group's rows, each loading its tile with
  tensor descriptors (TMA), a K loop of tl.dot on float8, the two factors applied in fp32 at
  the end, rows past the group's end masked; persistent (PROGS programs looping over tiles) or
  one tile per program. IMPRECISE: tl.dot's max_num_imprecise_acc (None: Triton's default on
  sm90, no promotion of the tensor cores' partial sums; BK: promoted to fp32 once per K tile).
Every variant is checked against torch._scaled_grouped_mm's output first (max relative error).

    python -m benchmarks.grouped_gemm_probe [--budget-s 150]
"""
import argparse
import itertools
import sys
import time

import torch
import triton
import triton.language as tl

from benchmarks.common import time_fn
from benchmarks.moe_bench import SHAPE


@triton.jit
def _grouped_fp8_nt_kernel(a_desc, b_desc, sa_ptr, sb_ptr, offs_ptr, out_ptr, N, K, E,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           PROGS: tl.constexpr, IMPRECISE: tl.constexpr):
    n_tiles = N // BN
    m_tiles = 0
    for e in range(E):
        end = tl.load(offs_ptr + e)
        start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
        m_tiles += (end - start + BM - 1) // BM
    if PROGS == 0:
        first, step = tl.program_id(0), m_tiles * n_tiles + 1
    else:
        first, step = tl.program_id(0), PROGS
    for tile in range(first, m_tiles * n_tiles, step):
        mt = tile // n_tiles
        nt = tile % n_tiles
        # the group holding row tile mt: walk the groups' tile counts
        g = 0
        g_start = 0
        g_end = 0
        seen = 0
        for e in range(E):
            end = tl.load(offs_ptr + e)
            start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
            cnt = (end - start + BM - 1) // BM
            hit = (mt >= seen) & (mt < seen + cnt)
            g = tl.where(hit, e, g)
            g_start = tl.where(hit, start + (mt - seen) * BM, g_start)
            g_end = tl.where(hit, end, g_end)
            seen += cnt
        row0 = g_start
        col0 = nt * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            a = a_desc.load([row0, k])
            b = b_desc.load([g * N + col0, k])
            acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=IMPRECISE)
        rows = row0 + tl.arange(0, BM)
        cols = col0 + tl.arange(0, BN)
        sa = tl.load(sa_ptr + rows, mask=rows < g_end, other=0.0)
        sb = tl.load(sb_ptr + g * N + cols)
        out = (acc * sa[:, None] * sb[None, :]).to(tl.bfloat16)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], out,
                 mask=(rows < g_end)[:, None])


def triton_grouped(a, b, sa, sb, offs, bm, bn, bk, stages, warps, progs, imprecise):
    from triton.tools.tensor_descriptor import TensorDescriptor
    m, k = a.shape
    e, n, _ = b.shape
    out = torch.empty(m, n, device=a.device, dtype=torch.bfloat16)
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(b.view(e * n, k), [bn, bk])
    grid = progs if progs else (triton.cdiv(m, bm) + e) * (n // bn)
    _grouped_fp8_nt_kernel[(grid,)](a_desc, b_desc, sa, sb, offs, out, n, k, e, BM=bm, BN=bn,
                                    BK=bk, PROGS=progs, IMPRECISE=imprecise, num_stages=stages,
                                    num_warps=warps)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=150)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/grouped_gemm_probe.py: needs CUDA")
        return 0
    t_start = time.perf_counter()
    E, M, K, N = SHAPE["E"], SHAPE["M"], SHAPE["K"], SHAPE["N"]
    dev = "cuda"
    torch.manual_seed(0)
    f8 = torch.float8_e4m3fn
    a = (torch.randn(M, K, device=dev) * 30).clamp(-448, 448).to(f8)
    b = (torch.randn(E, N, K, device=dev) * 30).clamp(-448, 448).to(f8)
    sa = torch.rand(M, device=dev) * 1e-3 + 1e-4
    sb = torch.rand(E, N, device=dev) * 1e-3 + 1e-4
    sizes = torch.tensor([2100, 1900, 2300, 1700, 2048, 2200, 1800, 2336])   # sums to M
    assert int(sizes.sum()) == M and len(sizes) == E
    offs = torch.cumsum(sizes, 0).to(device=dev, dtype=torch.int32)
    flops = 2.0 * M * K * N
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    ref = torch._scaled_grouped_mm(a, b.transpose(-2, -1), sa, sb, offs=offs,
                                   out_dtype=torch.bfloat16)
    rows = []

    def timed(name, fn, check=True):
        err = float("nan")
        if check:
            got = fn().float()
            err = ((got - ref.float()).abs().max() / ref.float().abs().max()).item()
        t = time_fn(fn, warmup=3, reps=30, device=dev)
        rows.append((name, t["median"], flops / t["median"] / 1e9, err))

    timed("torch._scaled_grouped_mm", lambda: torch._scaled_grouped_mm(
        a, b.transpose(-2, -1), sa, sb, offs=offs, out_dtype=torch.bfloat16), check=False)
    b0 = b[0].contiguous()
    timed("torch._scaled_mm dense (same M,K,N)", lambda: torch._scaled_mm(
        a, b0.t(), sa[:, None], sb[0][None, :], out_dtype=torch.bfloat16), check=False)
    abf, bbf = a.to(torch.bfloat16), b.to(torch.bfloat16)
    timed("bf16 torch._grouped_mm", lambda: torch._grouped_mm(
        abf, bbf.transpose(-2, -1), offs=offs), check=False)

    settings = list(itertools.product(
        [(128, 128, 128), (128, 256, 128), (256, 128, 128), (128, 256, 64)],   # BM, BN, BK
        [3, 4], [8], [0, sms], [None, "BK"]))
    for (bm, bn, bk), stages, warps, progs, imp in settings:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget of {args.budget_s} s spent; {len(rows)} timed")
            break
        imprecise = bk if imp == "BK" else None
        name = (f"triton BM{bm} BN{bn} BK{bk} s{stages} w{warps} "
                f"{'persistent' if progs else 'tile/prog'} acc={'promote/BK' if imp else 'sm90 default'}")
        try:
            timed(name, lambda: triton_grouped(a, b, sa, sb, offs, bm, bn, bk, stages, warps,
                                               progs, imprecise))
        except Exception as ex:           # a setting that does not compile (shared memory)
            print(f"{name}: {type(ex).__name__}: {str(ex).splitlines()[0][:120]}")

    print(f"\n2d x 3d float8 rowwise grouped product, E{E} M{M} K{K} N{N}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}")
    print(f"{'variant':70s} {'ms':>7s} {'TFLOP/s':>8s} {'max rel err':>12s}")
    for name, ms, tf, err in sorted(rows, key=lambda r: r[1]):
        print(f"{name:70s} {ms:7.3f} {tf:8.0f} {err:12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
