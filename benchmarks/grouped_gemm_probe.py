"""Can a Triton float8 grouped product beat torch._scaled_grouped_mm on the MoE shape (issue 6)?

Times, in one process on one GPU, the 2d x 3d product of the MoE layer (out = a @ b[g].T per
token group, a (M, K) and b (E, N, K) float8 e4m3 with per-row / per-(expert, column) fp32
factors, bf16 out; forward and grad_input both have this form):
- torch._scaled_grouped_mm (what fast/grouped_mm.py runs today);
- torch._scaled_mm on the same M, K, N as one dense product (the rate a grouped kernel could
  reach at best);
- fast/grouped_mm_sm90.py's Triton kernel (persistent, TMA loads, tl.dot on float8, factors
  in the epilogue) over tile settings (BM, BN, BK, stages, warps), with fast accumulation
  (Triton's sm90 default, no promotion) or promotion to fp32 once per K tile;
and torch's 2d x 2d product of grad_weight (groups along the contraction, 16-column aligned
starts), promoting and not, against bf16. (The ninth session's first run also timed a Triton
2d x 2d kernel, since removed: results/2026-12-01-s9-grouped-gemm-probe-h200.log.)
Every Triton variant is checked against torch._scaled_grouped_mm's output (max relative error
of the whole output; 0 means the same bits).

    python -m benchmarks.grouped_gemm_probe [--budget-s 150]
"""
import argparse
import itertools
import sys
import time

import torch
import triton

from benchmarks.common import module_settings, time_fn
from benchmarks.moe_bench import SHAPE
from qtrain.fast import grouped_mm_sm90 as sm90


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
    timed("torch._scaled_grouped_mm use_fast_accum=True", lambda: torch._scaled_grouped_mm(
        a, b.transpose(-2, -1), sa, sb, offs=offs, out_dtype=torch.bfloat16,
        use_fast_accum=True))
    b0 = b[0].contiguous()
    timed("torch._scaled_mm dense (same M,K,N)", lambda: torch._scaled_mm(
        a, b0.t(), sa[:, None], sb[0][None, :], out_dtype=torch.bfloat16), check=False)
    abf, bbf = a.to(torch.bfloat16), b.to(torch.bfloat16)
    timed("bf16 torch._grouped_mm", lambda: torch._grouped_mm(
        abf, bbf.transpose(-2, -1), offs=offs), check=False)

    # grad_weight's 2d x 2d form: out[g] = a_t[:, group g].T-contracted, a_t (N, Mp), b_t (K, Mp)
    a_t = (torch.randn(N, M, device=dev) * 30).clamp(-448, 448).to(f8)
    b_t = (torch.randn(K, M, device=dev) * 30).clamp(-448, 448).to(f8)
    sa2 = torch.rand(E * N, device=dev) * 1e-3 + 1e-4
    sb2 = torch.rand(E * K, device=dev) * 1e-3 + 1e-4
    offs16 = (torch.div(offs, 16, rounding_mode="floor") * 16).to(torch.int32)
    offs16[-1] = M
    for fast in (False, True):
        timed(f"2d x 2d: torch._scaled_grouped_mm use_fast_accum={fast}",
              lambda: torch._scaled_grouped_mm(a_t, b_t.t(), sa2, sb2, offs=offs16,
                                               out_dtype=torch.bfloat16, use_fast_accum=fast),
              check=False)
    at_bf, bt_bf = a_t.to(torch.bfloat16), b_t.to(torch.bfloat16)
    timed("2d x 2d: bf16 torch._grouped_mm", lambda: torch._grouped_mm(
        at_bf, bt_bf.t(), offs=offs16), check=False)

    tiles = [(128, 256, 128, 3, 8), (128, 256, 128, 4, 8), (128, 128, 128, 3, 8),
             (256, 128, 128, 3, 8)]
    for tile, fast in itertools.product(tiles, (True, False)):
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget of {args.budget_s} s spent; {len(rows)} timed")
            break
        name = f"triton {tile} acc={'fast' if fast else 'promote/BK'}"
        try:
            with module_settings(sm90, SETTINGS={"2d3d": tile}):
                timed(name, lambda: sm90.grouped_2d3d(a, sa, b, sb, offs, fast))
        except Exception as ex:           # a setting that does not compile (shared memory)
            print(f"{name}: {type(ex).__name__}: {str(ex).splitlines()[0][:120]}")

    print(f"\n2d x 3d float8 rowwise grouped product, E{E} M{M} K{K} N{N}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}")
    print(f"{'variant':62s} {'ms':>7s} {'TFLOP/s':>8s} {'max rel err':>12s}")
    for name, ms, tf, err in sorted(rows, key=lambda r: (r[0].startswith("2d x 2d"), r[1])):
        print(f"{name:62s} {ms:7.3f} {tf:8.0f} {err:12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
