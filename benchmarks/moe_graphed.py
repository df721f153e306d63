"""A MoE experts layer eager, under torch.cuda.make_graphed_callables and under torch.compile
(issue 6): the quantized grouped product is host-bound eager (benchmarks/moe_bench.py), and a
CUDA graph of the layer's forward and backward removes the host's launches, without
torch.compile (make_graphed_callables) or with it (mode="reduce-overhead": the converted
module's GroupedExpertsWeight is traced into the graph). Times fwd+bwd of a grouped-experts
module (moe_bench's shape: E=8, 16384 tokens sorted by expert, 4096 -> 2048) for bf16 and
qtrain float8 rowwise (qtrain.convert_moe_to_quantized_training), eager, graphed, compiled
and compiled with CUDA graphs, and checks that the graphed qtrain layer gives the eager
layer's bits (and says whether the compiled ones do).

Each step feeds another x (two tensors alternate), as a training step would, so the graphed
rows include make_graphed_callables' copy of x into its static input.

    python benchmarks/moe_graphed.py
"""
import copy
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import format_table, time_fn  # noqa: E402

E, M, K, N = 8, 16384, 4096, 2048


class GroupedExperts(torch.nn.Module):
    """The module pattern qtrain.moe converts: a 3-D expert weight run by torch._grouped_mm."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, offs):
        return torch._grouped_mm(x, self.w.transpose(-2, -1), offs=offs)


def main():
    if not torch.cuda.is_available():
        print("moe_graphed: no CUDA device; skipped")
        return 0
    import qtrain
    gen = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16).requires_grad_()
          for _ in range(2)]
    w = (torch.randn(E, N, K, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.arange(M // E, M + 1, M // E, device="cuda", dtype=torch.int32)
    bf16 = GroupedExperts(w.clone())
    quant = qtrain.convert_moe_to_quantized_training(
        GroupedExperts(w.clone()), qtrain.Float8LinearConfig(recipe="rowwise", backend="fast"))
    layers = {"bf16": bf16, "qtrain float8 rowwise": quant}
    graphed = {name: torch.cuda.make_graphed_callables(copy.deepcopy(layer),
                                                       (xs[0], offs))
               for name, layer in layers.items()}

    def stepper(fn, params):
        turn = [0]

        def step():
            x = xs[turn[0] % 2]
            turn[0] += 1
            x.grad = None
            for p in params:
                p.grad = None
            fn(x, offs).backward(g)
        return step

    # the graphed qtrain layer against the eager one: output and both gradients, bit for bit
    outs = {}
    for kind, fn, params in (("eager", quant, list(quant.parameters())),
                             ("graphed", graphed["qtrain float8 rowwise"],
                              list(graphed["qtrain float8 rowwise"].parameters()))):
        x = xs[1]
        x.grad = None
        for p in params:
            p.grad = None
        y = fn(x, offs)
        y.backward(g)
        outs[kind] = (y.detach().clone(), x.grad.clone(), params[0].grad.clone())
    same = all(torch.equal(a, b) for a, b in zip(outs["eager"], outs["graphed"]))
    print(f"qtrain graphed vs eager (output, grad_input, grad_weight): "
          f"{'bit-identical' if same else 'DIFFER'}")
    compiled = {(name, mode): (torch.compile(c, fullgraph=True, mode=mode), c)
                for name, layer in layers.items() for mode in (None, "reduce-overhead")
                for c in [copy.deepcopy(layer)]}
    for mode in (None, "reduce-overhead"):
        fn, layer = compiled[("qtrain float8 rowwise", mode)]
        for _ in range(3):                      # cudagraph trees record on a later call
            x = xs[1]
            x.grad = layer.w.grad = None
            y = fn(x, offs)
            y.backward(g)
        got = (y.detach().clone(), x.grad.clone(), layer.w.grad.clone())
        bits = all(torch.equal(a, b) for a, b in zip(outs["eager"], got))
        print(f"qtrain compiled (mode={mode}) vs eager: {'bit-identical' if bits else 'DIFFER'}")

    cases = {}
    for name, layer in layers.items():
        cases[f"{name}, eager"] = stepper(layer, list(layer.parameters()))
        cases[f"{name}, make_graphed_callables"] = stepper(graphed[name],
                                                           list(graphed[name].parameters()))
        for mode in (None, "reduce-overhead"):
            fn, c = compiled[(name, mode)]
            cases[f"{name}, compiled {mode or 'default'}"] = stepper(fn, list(c.parameters()))
    times = {label: [] for label in cases}
    for _ in range(3):                                 # rounds, the cases interleaved
        for label, fn in cases.items():
            times[label] += time_fn(fn, warmup=3, reps=10, device="cuda")["times"]
    base = statistics.median(times["bf16, eager"])
    rows = [[label, f"{statistics.median(t):.3f}", f"{base / statistics.median(t):.2f}x"]
            for label, t in times.items()]
    print(format_table(["MoE experts fwd+bwd (E8 M16384 K4096 N2048)", "ms", "vs bf16 eager"],
                       rows))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
