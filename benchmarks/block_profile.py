"""Where a transformer block's step goes (issue 8): host enqueue, wall and GPU-busy time per
fwd+bwd of the Llama3-8B-shaped block, and the top kernels by GPU time, per variant.

    python -m benchmarks.block_profile --recipes tensorwise,tensorwise+keepw --compile compiled

A step whose host enqueue time is close to its wall time is host-bound: the GPU waits for
launches. GPU-busy is the time at least one kernel runs (the union of the kernels' device
intervals in the profiled steps; the kernel sum beside it would count overlapping kernels
twice). Busy comes from profiled steps and the wall from unprofiled ones, so a GPU-bound step
can show busy a little above its wall: rowwise_with_gw_hp compiled on the H200, busy 16.41 ms
against wall 16.08 with union == sum (no overlap; 2026-12-03-s17-block-profile-union-h200.log).
A small negative idle means GPU-bound, not a counting error. Variants use benchmarks.block's
names (bf16, a recipe, recipe+keepw for RC-14's kept weight). Rows go to results.csv.
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import torch
from torch.autograd import DeviceType

from qtrain import convert_to_quantized_training

from . import common, trace_gaps
from .block import KEEP_WEIGHT, SHAPES, block_step, qtrain_config
from qtrain.tiny_llama import Block


def profile_variant(base, shape, name, compile_mode, steps, rows, device="cuda", gaps=0,
                    gaps_host=True):
    block = copy.deepcopy(base)
    if name != "bf16":
        convert_to_quantized_training(block, qtrain_config(name))
    step = block_step(block, shape, device, {"eager": False, "compiled": None}.get(compile_mode,
                                                                                  compile_mode))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):                      # compile, autotune, allocator warm-up
        step()
    sync()
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    enqueue = (time.perf_counter() - t0) / n * 1e3
    sync()
    wall = (time.perf_counter() - t0) / n * 1e3
    activities = [torch.profiler.ProfilerActivity.CUDA if device == "cuda"
                  else torch.profiler.ProfilerActivity.CPU]
    if gaps and gaps_host and device == "cuda":   # host ops too, so that each gap names the op
        activities.append(torch.profiler.ProfilerActivity.CPU)   # that launched (slows the host)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    gap_report = None
    if gaps:                      # where the GPU waits, charged to the late kernel's launcher
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            gap_report = trace_gaps.summarize(trace_gaps.load(path), steps, gaps)
    # device events only: with CPU activity recorded, the op that launched a kernel also
    # carries its device time, and counting both rows doubled "GPU busy" (fifteenth session)
    kernels = [e for e in prof.key_averages()
               if e.device_time_total > 0 and e.cpu_time_total == 0]
    kernel_sum = sum(e.self_device_time_total for e in kernels) / steps / 1e3
    busy = union_us([(e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == DeviceType.CUDA]) / steps / 1e3
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    top = [(e.key[:70], e.count // steps, e.self_device_time_total / steps / 1e3) for e in kernels[:rows]]
    del block, step
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(name=name, enqueue=enqueue, wall=wall, busy=busy, kernel_sum=kernel_sum, top=top,
                gaps=gap_report)


def union_us(intervals):
    """Total length of the union of (start, end) intervals: time with at least one kernel
    running, however many overlap."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.block_profile",
                                description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="tensorwise,tensorwise" + KEEP_WEIGHT,
                   help="comma list of variants (bf16 is always first)")
    p.add_argument("--compile", default="compiled",
                   help="eager, compiled (torch.compile default mode) or a torch.compile mode")
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    p.add_argument("--rows", type=int, default=12, help="kernels listed per variant")
    p.add_argument("--gaps", type=int, default=0,
                   help="also list the GPU's idle gaps (benchmarks/trace_gaps.py): this many "
                        "launchers and largest gaps per variant")
    p.add_argument("--gaps-device-only", action="store_true",
                   help="record the gaps without host ops: the host runs at its unprofiled "
                        "speed, and each gap is charged to the launch call, not the op")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="results CSV to append to")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.block_profile: needs CUDA (it profiles GPU kernels)", file=sys.stderr)
        return 2
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    base = Block(shape.cfg).to(device="cuda", dtype=torch.bfloat16)
    names = ["bf16"] + [r for r in args.recipes.split(",") if r and r != "bf16"]
    results = []
    for name in names:
        r = profile_variant(base, shape, name, args.compile, args.steps, args.rows,
                            gaps=args.gaps, gaps_host=not args.gaps_device_only)
        results.append(r)
        print(f"\n=== {name} ({args.compile}): per step wall {r['wall']:.3f} ms, host enqueue "
              f"{r['enqueue']:.3f} ms, GPU busy {r['busy']:.3f} ms (kernel sum "
              f"{r['kernel_sum']:.3f})")
        print(common.format_table(["kernel", "calls/step", "ms/step"],
                                  [[k, str(c), f"{t:.3f}"] for k, c, t in r["top"]]))
        if r["gaps"]:
            print(r["gaps"])
    rows = [dict(op=f"block_profile_{args.compile}", backend="torch" if r["name"] == "bf16" else "fast",
                 recipe=r["name"], shape=shape.describe(), metric=k, value=f"{r[v]:.6g}")
            for r in results for k, v in (("wall_ms", "wall"), ("host_enqueue_ms", "enqueue"),
                                          ("gpu_busy_ms", "busy"),
                                          ("gpu_kernel_sum_ms", "kernel_sum"))]
    common.append_rows(rows, args.csv)
    print(f"\n{shape.describe()}, {args.compile}, {torch.cuda.get_device_name()}, torch "
          f"{torch.__version__}")
    print(common.format_table(
        ["variant", "wall ms", "host enqueue ms", "GPU busy ms", "GPU idle ms", "kernel sum ms"],
        [[r["name"], f"{r['wall']:.3f}", f"{r['enqueue']:.3f}", f"{r['busy']:.3f}",
          f"{r['wall'] - r['busy']:.3f}", f"{r['kernel_sum']:.3f}"] for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
