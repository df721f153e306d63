"""Where a GPU waits: the idle gaps between device kernels in a torch.profiler Chrome trace,
each charged to the host op that launched the kernel after it (issue 8: compiled tensorwise
left the GPU idle 1.0 ms a step against bf16's 0.5).

    python -m benchmarks.trace_gaps trace.json [--top 15]

A gap is the time from one device event's end (kernel, memset, memcpy) to the next one's start
on the same device, both ordered by start. The kernel after a gap was late: the host op that
enqueued it (the innermost `cpu_op` around the runtime or driver call with the same
correlation id) is where the host spent the gap. A trace without CPU activity has no cpu_op
events: the gap is then charged to the runtime or driver call itself (cudaLaunchKernel for aten
kernels, cuLaunchKernelEx for Triton's and cuBLAS's, cudaMemsetAsync for zero-fills). Kernels
whose launch is not found are charged to "(launch not in trace)".
"""
import argparse
import bisect
import json
import sys
from collections import defaultdict

DEVICE_CATS = {"kernel", "gpu_memset", "gpu_memcpy"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}
NO_LAUNCHER = "(launch not in trace)"


def _innermost(ops, starts, t, look_back=500):
    """The op (ops sorted by start, starts their start times) that contains time t and starts
    last, i.e. the innermost, or None. Looks back at most look_back ops."""
    i = bisect.bisect_right(starts, t) - 1
    for j in range(i, max(-1, i - look_back), -1):
        if ops[j]["ts"] + ops[j].get("dur", 0) >= t:
            return ops[j]
    return None


def launchers(events):
    """correlation id -> name of the innermost cpu_op around the launch of that id."""
    ops_by_thread = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op" and e.get("ph") == "X":
            ops_by_thread[(e.get("pid"), e.get("tid"))].append(e)
    starts = {}
    for key, ops in ops_by_thread.items():
        ops.sort(key=lambda e: e["ts"])
        starts[key] = [e["ts"] for e in ops]
    out = {}
    for e in events:
        if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {}):
            key = (e.get("pid"), e.get("tid"))
            op = _innermost(ops_by_thread.get(key, []), starts.get(key, []), e["ts"])
            out[e["args"]["correlation"]] = op["name"] if op else e["name"]
    return out


def gaps(events):
    """[(gap us, previous device event name, next device event name, next's launcher)] over the
    trace's device events in start order, gaps > 0 only."""
    dev = sorted((e for e in events if e.get("cat") in DEVICE_CATS and e.get("ph") == "X"),
                 key=lambda e: e["ts"])
    who = launchers(events)
    out = []
    end = None
    prev = None
    for e in dev:
        if end is not None and e["ts"] > end:
            corr = e.get("args", {}).get("correlation")
            out.append((e["ts"] - end, prev["name"], e["name"], who.get(corr, NO_LAUNCHER)))
        if end is None or e["ts"] + e["dur"] > end:
            end, prev = e["ts"] + e["dur"], e
    return out


GAP_BUCKETS_US = (2, 5, 20, 100)


def size_buckets(g):
    """[(label, total us, count)] of the gaps g by size: short gaps are the device's own
    kernel-to-kernel turnaround, long ones a host that had not launched the next kernel yet."""
    edges = (0,) + GAP_BUCKETS_US + (float("inf"),)
    out = []
    for lo, hi in zip(edges, edges[1:]):
        sel = [x[0] for x in g if lo <= x[0] < hi]
        label = f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}")
        out.append((label, sum(sel), len(sel)))
    return out


def summarize(events, steps=1, top=15, width=60):
    """Text report: idle per step, idle by the late kernel's launcher, the largest gaps."""
    g = gaps(events)
    total = sum(x[0] for x in g)
    by_launcher = defaultdict(lambda: [0.0, 0])
    for us, _, _, who in g:
        by_launcher[who][0] += us
        by_launcher[who][1] += 1
    lines = [f"idle {total / steps / 1e3:.3f} ms per step in {len(g) / steps:.0f} gaps per step",
             "idle by gap size (us per step, gaps per step): " + ", ".join(
                 f"{label} {us / steps:.1f} ({n / steps:.0f})"
                 for label, us, n in size_buckets(g))]
    lines += ["idle by the launcher of the kernel after the gap (us per step, gaps per step):"]
    for who, (us, n) in sorted(by_launcher.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {us / steps:9.1f}  {n / steps:6.1f}  {who[:width]}")
    lines.append("largest gaps (us: previous -> next [launcher]):")
    for us, a, b, who in sorted(g, key=lambda x: -x[0])[:top]:
        lines.append(f"  {us:8.1f}  {a[:width // 2]} -> {b[:width // 2]} [{who[:width // 2]}]")
    return "\n".join(lines)


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.trace_gaps",
                                description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=1, help="steps in the trace (per-step figures)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print(summarize(load(args.trace), args.steps, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
