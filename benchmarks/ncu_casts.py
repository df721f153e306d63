"""The fused casts under Nsight Compute: one launch of each at 8192^2 bf16, each inside an NVTX
range named after it (inside one range "cast"), for `ncu --nvtx` to select and attribute them. Run on a GPU:

    ncu --clock-control none --nvtx --nvtx-include "cast/" --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
        --section LaunchStats python3 -m benchmarks.ncu_casts

Hardware counters (DRAM throughput against its peak, shared-memory bank conflicts, warp stall
reasons) say where the casts that write x.T lose bandwidth, which timing variants alone could
not (benchmarks/NOTES.md, sixteenth to eighteenth sessions)."""
import argparse

import torch

from qtrain.fast import cast_float8, cast_mx
from qtrain.fast.amax import amax_bits_2d


def cases(x):
    """(name, fn) of the casts, each one call."""
    y = torch.empty_like(x)
    return [
        ("copy", lambda: y.copy_(x)),
        ("amax_tensor", lambda: amax_bits_2d(x, tensor=True)),
        ("amax_rows_cols", lambda: amax_bits_2d(x, rows=True, cols=True)),
        ("float8_rowwise", lambda: cast_float8.quantize_float8_rowwise(x, "float8_e4m3fn", True)),
        ("float8_dual", lambda: cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True, True)),
        ("float8_tensorwise_t", lambda: cast_float8.quantize_float8_tensorwise(
            x, "float8_e4m3fn", False, True, None, True)),
        ("float8_tensorwise_both", lambda: cast_float8.quantize_float8_tensorwise_both(
            x, "float8_e4m3fn", False, None, True)),
        ("mx_dim0_t", lambda: cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil", True)),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="8192x8192")
    args = p.parse_args(argv)
    r, c = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    x = torch.randn(r, c, device="cuda").to(torch.bfloat16)
    todo = cases(x)
    for _, fn in todo:                 # compile every kernel outside the profiled ranges
        fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push("cast")
    for name, fn in todo:
        torch.cuda.nvtx.range_push(name)
        fn()
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    torch.cuda.nvtx.range_pop()
    print("profiled:", ", ".join(name for name, _ in todo))


if __name__ == "__main__":
    main()
