"""Host work of one quantized fwd+bwd on the fast backend, counted without a GPU (issue 6, 8).

    python -m benchmarks.host_overhead                 # every linear recipe + the grouped layer
    python -m benchmarks.host_overhead --steps 50 --csv benchmarks/results/results.csv

Small layers and the MoE step are host-bound on the H200 (benchmarks/NOTES.md: the host
enqueues a grouped fwd+bwd in ~4 ms against 1.46 ms of GPU work). What the host does per step
does not depend on the device, so it is counted here on the CPU: the fast backend's Python runs
as on a GPU, its Triton kernels are launched through the interpreter's entry point but not run
(each launch is counted), and the torch products the GPU would run (torch._scaled_mm,
torch._scaled_grouped_mm, torch._int_mm) are replaced by an empty result of the right shape,
routed as on an sm90 GPU. Two routes test for CUDA tensors themselves and are not replayed:
blockwise products on cuBLAS and MX products as a bf16 GEMM (fast/scaled_mm.py). Here they
count as the Triton kernel's one launch, so the mxfp8 linear rows leave out the 2 dequant
launches and 1 GEMM per product that a GPU issues. The numbers are therefore:
- aten ops per step (TorchDispatchMode count: every op that reaches the dispatcher),
- Triton launches per step,
- of those, the ops that launch a device kernel on a GPU (not views, not allocations),
- host syncs (aten._local_scalar_dense: .item(), int(t), bool(t) on a device tensor), which
  stall the host on a GPU and break CUDA-graph capture,
- GPU launches per step: those ops plus the Triton launches (on the H200 host a bare Triton
  launch measured 22 us and a small aten op 14 us, benchmarks/moe_profile.py host_costs),
- host microseconds per step on THIS machine's CPU (kernels not run, payloads garbage; the
  mxfp8 grouped product is emulated and runs for real, so its time includes that compute).
bf16 runs the same step with torch.mm / torch._grouped_mm for scale.
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections import Counter

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")          # before qtrain.fast is imported

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

# aten ops that launch no device kernel: views and allocations
NO_KERNEL = {"view", "_unsafe_view", "detach", "t", "transpose", "expand", "slice", "select",
             "unsqueeze", "squeeze", "alias", "as_strided", "permute", "empty", "empty_strided",
             "empty_like", "split", "split_with_sizes", "unbind", "lift_fresh", "_reshape_alias"}
NAME = "fast-host-count"
LINEAR_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise",
                  "int8+sr")
VARIANTS = {"int8+sr": ("int8", dict(stochastic_grad_output=True))}   # name -> (recipe, fields)
GROUPED_RECIPES = ("rowwise", "mxfp8")


def config_of(name, backend):
    import qtrain
    recipe, fields = VARIANTS.get(name, (name, {}))
    return qtrain.recipe_config(recipe, backend=backend, **fields)


class Counts:
    launches = 0


def _count_launch(self, *args, grid, warmup, **kwargs):
    """Stands in for InterpretedFunction.run: count, do not execute."""
    Counts.launches += 1


def _fake_scaled_mm(a, b, scale_a=None, scale_b=None, out_dtype=None, use_fast_accum=False, **_):
    """The shape torch._scaled_mm returns, uninitialized (its GPU work is not the question)."""
    return torch.empty(a.shape[0], b.shape[-1], dtype=out_dtype or torch.bfloat16)


def _fake_int_mm(a, b):
    return torch.empty(a.shape[0], b.shape[-1], dtype=torch.int32)


def _fake_scaled_grouped_mm(a, b, scale_a=None, scale_b=None, offs=None, out_dtype=None, **_):
    if b.dim() == 3:                                          # 2d x 3d -> (M, N)
        return torch.empty(a.shape[0], b.shape[-1], dtype=out_dtype)
    return torch.empty(offs.shape[0], a.shape[0], b.shape[-1], dtype=out_dtype)   # 2d x 2d


def install_host_only_replay():
    """Route the fast backend as on an sm90 GPU, on CPU tensors, with kernels counted and not
    run. Returns the backend name to put in a config. Irreversible: a process of its own."""
    from triton.runtime.interpreter import InterpretedFunction

    from qtrain.backend import register_backend
    from qtrain.fast import grouped_mm as fg
    from qtrain.fast import scaled_mm as fs
    from qtrain.fast.backend import InterpretedFastBackend

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("benchmarks.host_overhead: counts host work on a CPU-only machine "
                         "(TRITON_INTERPRET=1); on a GPU use benchmarks/moe_profile.py")
    InterpretedFunction.run = _count_launch
    torch._scaled_mm = _fake_scaled_mm
    torch._int_mm = _fake_int_mm
    torch._scaled_grouped_mm = _fake_scaled_grouped_mm
    # the sm90 routing decisions, without their device test
    fs._scaled_mm_ok = lambda a, b, N, K: (K % 16 == 0 and N % 16 == 0 and not (
        a.dtype == b.dtype == torch.float8_e5m2))
    fs._int_mm_ok = lambda a, M, N, K: M > 16 and K % 8 == 0 and N % 8 == 0

    def torch_scaled_ok(a, b, out_dtype):
        dims = (a.shape[-1], b.shape[-2]) if b.dim() == 3 else (a.shape[0], b.shape[0])
        return (out_dtype == torch.bfloat16 and a.dtype == b.dtype == torch.float8_e4m3fn
                and all(d % 16 == 0 for d in dims))
    fg._torch_scaled_ok = torch_scaled_ok

    register_backend(NAME, lambda: InterpretedFastBackend(NAME))
    return NAME


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


@dataclasses.dataclass
class Row:
    workload: str
    recipe: str
    aten_ops: int
    kernel_ops: int
    syncs: int
    launches: int
    host_us: float
    top_ops: str

    @property
    def gpu_launches(self):
        return self.kernel_ops + self.launches


def measure(step, steps):
    for _ in range(2):
        step()                                            # first-call caches
    with _CountOps() as mode:
        Counts.launches = 0
        step()
        launches = Counts.launches
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e6)
    top = ", ".join(f"{k} {v}" for k, v in mode.ops.most_common(6))
    kernel_ops = sum(n for op, n in mode.ops.items() if op not in NO_KERNEL)
    syncs = mode.ops["_local_scalar_dense"]
    return sum(mode.ops.values()), kernel_ops, syncs, launches, statistics.median(times), top


def linear_step(recipe, backend, M, K, N):
    import qtrain
    from qtrain import qlinear
    # One linear stepped on one static x: sharing x's quantization between calls on the same
    # input (meant for q, k and v of one x) would skip the x cast that every real step makes.
    qlinear.SHARE_INPUT = False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=gen).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(N, K, generator=gen) * K ** -0.5).to(torch.bfloat16).requires_grad_()
    g = torch.randn(M, N, generator=gen).to(torch.bfloat16)
    if recipe == "bf16":
        fwd = lambda: torch.nn.functional.linear(x, w)   # noqa: E731
    else:
        layer = qtrain.QuantizedLinear(K, N, bias=False, dtype=torch.bfloat16,
                                       config=config_of(recipe, backend))
        layer.weight = torch.nn.Parameter(w.detach())
        fwd = lambda: layer(x)                               # noqa: E731

    def step():
        fwd().backward(g)
    return step


def grouped_step(recipe, backend, E, M, K, N):
    import qtrain
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=gen).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(E, N, K, generator=gen) * 0.02).to(torch.bfloat16).requires_grad_()
    g = torch.randn(M, N, generator=gen).to(torch.bfloat16)
    offs = torch.arange(M // E, M + 1, M // E, dtype=torch.int32)
    if recipe == "bf16":
        fwd = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)   # noqa: E731
    else:
        config = config_of(recipe, backend)
        fwd = lambda: qtrain.grouped_mm(x, w, offs, config)                   # noqa: E731

    def step():
        fwd().backward(g)
    return step


def run(steps, linear_shape=(128, 128, 128), grouped_shape=(4, 256, 128, 64)):
    torch.set_num_threads(1)            # timings of a 2-core CI machine: no intra-op thread waits
    backend = install_host_only_replay()
    rows = []
    for recipe in ("bf16",) + LINEAR_RECIPES:
        rows.append(Row(f"linear M{linear_shape[0]} K{linear_shape[1]} N{linear_shape[2]}", recipe,
                        *measure(linear_step(recipe, backend, *linear_shape), steps)))
    E, M, K, N = grouped_shape
    for recipe in ("bf16",) + GROUPED_RECIPES:
        rows.append(Row(f"grouped E{E} M{M} K{K} N{N}", recipe,
                        *measure(grouped_step(recipe, backend, *grouped_shape), steps)))
    return rows


def csv_rows(rows):
    out = []
    for r in rows:
        base = dict(op=f"host_fwd_bwd {r.workload.split()[0]}", backend=NAME, recipe=r.recipe,
                    shape=r.workload)
        for metric, value in (("aten_ops", r.aten_ops), ("aten_kernel_ops", r.kernel_ops),
                              ("host_syncs", r.syncs),
                              ("triton_launches", r.launches), ("gpu_launches", r.gpu_launches),
                              ("host_us_this_cpu", r.host_us)):
            out.append(dict(base, metric=metric, value=f"{value:.6g}"))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_overhead",
                                description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--csv", default=None, help="append rows to this results CSV")
    p.add_argument("--top", action="store_true", help="print the most frequent aten ops per row")
    args = p.parse_args(argv)
    rows = run(args.steps)
    if args.csv:
        print(f"appended {len(csv_rows(rows))} rows to {common.append_rows(csv_rows(rows), args.csv)}")
    header = ["workload", "recipe", "aten ops", "of them kernels", "host syncs",
              "Triton launches", "GPU launches", "host us (this CPU)"]
    table = [[r.workload, r.recipe, r.aten_ops, r.kernel_ops, r.syncs, r.launches,
              r.gpu_launches, f"{r.host_us:.0f}"] for r in rows]
    if args.top:
        for r in rows:
            print(f"{r.workload} {r.recipe}: {r.top_ops}")
    print(common.format_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
