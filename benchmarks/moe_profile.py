"""Where the time of a quantized MoE grouped product goes (issue 6): torch.profiler over a few
fwd+bwd steps of qtrain.grouped_mm on the fast backend, top kernels by GPU time, next to bf16.

    python benchmarks/moe_profile.py [--recipe rowwise|mxfp8] [--steps 5]
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import host_us_per_call  # noqa: E402
from benchmarks.moe_bench import SHAPE, moe_inputs  # noqa: E402

E, M, K, N = SHAPE["E"], SHAPE["M"], SHAPE["K"], SHAPE["N"]


def _step(x, w, offs, g, fn):
    x.grad = w.grad = None
    fn(x, w, offs).backward(g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="rowwise", choices=("rowwise", "mxfp8"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=15, help="kernels listed per table")
    p.add_argument("--host", action="store_true",
                   help="instead: where the host time of the quantized eager step goes "
                        "(synchronizing calls, then cProfile by own time)")
    p.add_argument("--compiled", action="store_true",
                   help="with --host: the step under torch.compile (default mode) instead of eager")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/moe_profile.py: needs CUDA (it profiles the fast backend's kernels)")
        return 0
    import qtrain
    x, w, g, offs = moe_inputs()
    x.requires_grad_()
    w.requires_grad_()
    config = dataclasses.replace(qtrain.recipe_config(args.recipe), backend="fast")
    variants = {"bf16": lambda a, b, o: torch._grouped_mm(a, b.transpose(-2, -1), offs=o),
                f"qtrain {args.recipe}": lambda a, b, o: qtrain.grouped_mm(a, b, o, config)}
    if args.host:
        fn = variants[f"qtrain {args.recipe}"]
        return host_breakdown(x, w, offs, g, torch.compile(fn) if args.compiled else fn,
                              args.rows)
    for name, fn in variants.items():
        for _ in range(3):                                   # warm-up: compile, autotune
            _step(x, w, offs, g, fn)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                _step(x, w, offs, g, fn)
            torch.cuda.synchronize()
        t0 = time.perf_counter()                              # CPU-bound or GPU-bound?
        for _ in range(10):
            _step(x, w, offs, g, fn)
        t_enqueue = time.perf_counter() - t0
        torch.cuda.synchronize()
        t_wall = time.perf_counter() - t0
        print(f"\n=== {name}: no profiler, per step: host enqueue {t_enqueue * 100:.3f} ms, "
              f"wall {t_wall * 100:.3f} ms (enqueue close to wall: the host is the bottleneck)")
        print(f"=== {name}: {args.steps} fwd+bwd steps, E={E} M={M} K={K} N={N}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    host_costs()
    return 0


def host_breakdown(x, w, offs, g, fn, rows, steps=20):
    """Does the eager step synchronize with the GPU (each such call warns once under
    torch.cuda.set_sync_debug_mode), and which Python functions hold its host time."""
    import cProfile
    import pstats
    import warnings
    for _ in range(3):
        _step(x, w, offs, g, fn)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        _step(x, w, offs, g, fn)
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(c.message).splitlines()[0] for c in caught]
    print(f"synchronizing calls in one eager step: {len(syncs)}")
    for line in syncs[:10]:
        print("  ", line)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(x, w, offs, g, fn)
    torch.cuda.synchronize()
    print(f"wall per step without the profiler: {(time.perf_counter() - t0) / steps * 1e3:.3f} ms")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        _step(x, w, offs, g, fn)
    prof.disable()
    t_host = (time.perf_counter() - t0) / steps
    torch.cuda.synchronize()
    print(f"host per step under cProfile: {t_host * 1e3:.3f} ms ({steps} steps)")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)
    return 0


def host_costs(n=200):
    """Host time of one launch, per kind of call (tiny tensors: the GPU work is negligible)."""
    from qtrain import ops
    from qtrain.fast import grouped_mm as fg
    t = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(64, 64, device="cuda", dtype=torch.bfloat16)
    offs = torch.tensor([64], device="cuda", dtype=torch.int32)
    calls = {
        "aten torch.reciprocal": lambda: torch.reciprocal(t),
        "Triton launch (zero_rows kernel)": lambda: fg._zero_rows_past_end_kernel[(2,)](
            out, offs, 1, 64, 64, BLOCK_R=32, BLOCK_N=128),
        "fast rowwise cast, direct": lambda: ops.quantize_float8._fn(t, "float8_e4m3fn", -1, False, "fast"),
        "fast rowwise cast, custom op": lambda: ops.quantize_float8._op(t, "float8_e4m3fn", -1, False, "fast"),
    }
    print("\nhost time per call (us), tiny tensors")
    for name, fn in calls.items():
        print(f"  {name:36s} {host_us_per_call(fn, n):8.1f}")


if __name__ == "__main__":
    sys.exit(main())
