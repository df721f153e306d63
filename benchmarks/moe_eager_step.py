"""Eager MoE step, host and wall time, for A/B runs of two qtrain trees on the same machine.

The eager quantized MoE step is host-bound on the H200 (benchmarks/NOTES.md), and the host's
speed differs between machines by up to ~2x (the same aten op took 7.9 us on one, 14 us on
another), so host-side changes are timed against the previous code in one call, alternating
processes. Self-contained (no imports from this repository besides the installed `qtrain`), so
that a copy of it can run against an older tree's install:

    python benchmarks/moe_eager_step.py [--rounds 30] [--steps 10] [--graphs]

Per round, `steps` fwd+bwd steps of the moe_bench shape (E=8, 16384 tokens, 4096 -> 2048, bf16,
equal groups) are enqueued (host time: enqueue), then synchronized (wall). Prints the median ms
per step over the rounds for bf16 torch._grouped_mm and for qtrain float8 rowwise (fast
backend, RC-15 defaults), alternating the two each round. --graphs: also both under
torch.compile(mode="reduce-overhead"), replays timed the same way. --promoted: also qtrain
rowwise with fast_accum_grads=False (grad_input on torch's kernel instead of the Triton one).
"""
import argparse
import statistics
import time

import torch

E, M, K, N = 8, 16384, 4096, 2048


def _step(fn, x, w, g):
    def run():
        x.grad = w.grad = None
        fn().backward(g)
    return run


def _time_rounds(fns, rounds, steps):
    """{name: (median enqueue ms/step, median wall ms/step)}, the variants alternated."""
    got = {name: ([], []) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            got[name][0].append((t1 - t0) * 1e3 / steps)
            got[name][1].append((t2 - t0) * 1e3 / steps)
    return {name: (statistics.median(e), statistics.median(w)) for name, (e, w) in got.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--graphs", action="store_true")
    p.add_argument("--promoted", action="store_true")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("moe_eager_step: no CUDA device; skipped")
        return 0
    import qtrain
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
    w = (torch.randn(E, N, K, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    w.requires_grad_()
    g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.arange(M // E, M + 1, M // E, device="cuda", dtype=torch.int32)
    config = qtrain.Float8LinearConfig(recipe="rowwise", backend="fast")
    bf16 = lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)   # noqa: E731
    q = lambda: qtrain.grouped_mm(x, w, offs, config)                     # noqa: E731
    fns = {"bf16 eager": _step(bf16, x, w, g), "qtrain rowwise eager": _step(q, x, w, g)}
    if args.promoted:
        promoted = qtrain.Float8LinearConfig(recipe="rowwise", backend="fast",
                                             fast_accum_grads=False)
        fns["qtrain rowwise promoted eager"] = _step(
            lambda: qtrain.grouped_mm(x, w, offs, promoted), x, w, g)
    if args.graphs:
        fns["bf16 reduce-overhead"] = _step(torch.compile(bf16, mode="reduce-overhead"), x, w, g)
        fns["qtrain rowwise reduce-overhead"] = _step(
            torch.compile(q, mode="reduce-overhead"), x, w, g)
    for fn in fns.values():
        for _ in range(5):
            fn()                                   # compile, autotune, capture
    torch.cuda.synchronize()
    res = _time_rounds(fns, args.rounds, args.steps)
    print(f"# {args.label} qtrain at {qtrain.__file__}; {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; median of {args.rounds} rounds x {args.steps} steps")
    for name, (enq, wall) in res.items():
        print(f"{args.label:6s} {name:32s} enqueue {enq:7.3f} ms/step   wall {wall:7.3f} ms/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
