"""Where the host's time goes in one fwd+bwd of the Llama3-8B-shaped block (issue 8): a step
whose host enqueue time exceeds its GPU-busy time is host-bound (benchmarks.block_profile), and
this tells which Python functions and which torch ops spend that host time.

    python -m benchmarks.block_host_profile --recipe tensorwise --compile compiled

Prints, per step: the host enqueue time without a profiler; the CPU-side torch.profiler table
(self CPU time by op: aten ops, qtrain:: custom ops, CUDA/Triton launch calls); and cProfile's
functions by own time and by cumulative time, qtrain's and Triton's among them. cProfile slows
Python calls, so its times are shares, not the true cost.
"""
import argparse
import copy
import cProfile
import io
import pstats
import sys
import time

import torch

from qtrain import convert_to_quantized_training

from .block import SHAPES, block_step, fast_backend_or_reason, qtrain_config
from qtrain.tiny_llama import Block


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.block_host_profile",
                                description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="tensorwise", help="a recipe, or bf16")
    p.add_argument("--compile", default="compiled",
                   help="eager, compiled (torch.compile default mode) or a torch.compile mode")
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--rows", type=int, default=30, help="rows per table")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks.block_host_profile: needs CUDA (it times the host beside a GPU)",
              file=sys.stderr)
        return 2
    if args.recipe != "bf16":
        reason = fast_backend_or_reason(args.recipe, "cuda")[1]
        if reason:
            print(f"benchmarks.block_host_profile: {reason}", file=sys.stderr)
            return 2
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    block = copy.deepcopy(Block(shape.cfg).to(device="cuda", dtype=torch.bfloat16))
    if args.recipe != "bf16":
        convert_to_quantized_training(block, qtrain_config(args.recipe))
    step = block_step(block, shape, "cuda", {"eager": False, "compiled": None}.get(args.compile,
                                                                                   args.compile))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    enqueue = (time.perf_counter() - t0) / n * 1e3
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n * 1e3
    print(f"{args.recipe} ({args.compile}), {shape.describe()}: host enqueue {enqueue:.3f} ms, "
          f"wall {wall:.3f} ms per step ({torch.cuda.get_device_name()}, torch "
          f"{torch.__version__})")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    print(f"\n=== torch.profiler, CPU side, {args.steps} steps (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                    max_name_column_width=70))

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key)
        stats.print_stats(args.rows)
        print(f"\n=== cProfile, {args.steps} steps, by {key}")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:12000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
