"""Serving a trained MoE block on a GPU (issue 6): the forward alone, no gradients, of
benchmarks/moe_block.py's block (router, top-2 of 8 SwiGLU experts, 4096 -> 2048 -> 4096)
for a prefill-sized and a decode-sized batch of tokens, eager and under torch.compile
(default and reduce-overhead modes). Variants:
- bf16;
- qtrain float8 rowwise experts running the training forward under torch.no_grad (each call
  quantizes the expert weights again);
- the same after qtrain.to_inference, which freezes the experts: their quantized weights are
  made once and refreshed in place by in-place writes (qtrain/moe_weight.py). Every qtrain
  variant's output must have the bits of the eager training forward; the script says
  whether it does.
Rounds interleave the variants; a time is the median over all rounds. Prints a table last and
appends rows to benchmarks/results/results.csv (and $OUT/moe_serving.csv when OUT is set).

    python benchmarks/moe_serving.py [--tokens 8192,256] [--rounds 3] [--reps 20] [--modes eager,default]
"""
import argparse
import copy
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_rows, format_table, time_fn  # noqa: E402
from benchmarks.moe_block import DIM, E, HIDDEN, TOP_K, MoEBlock  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="python benchmarks/moe_serving.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="8192,256")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--modes", default="eager,default,reduce-overhead",
                   help="eager, and torch.compile modes (default, reduce-overhead)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("moe_serving: no CUDA device; skipped")
        return 0
    import qtrain
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = MoEBlock(gen).eval()
    training = copy.deepcopy(base)
    qtrain.convert_moe_to_quantized_training(
        training.experts, qtrain.Float8LinearConfig(recipe="rowwise", backend="fast"))
    serving = copy.deepcopy(training)
    qtrain.to_inference(serving)
    eager = {"bf16": base, "qtrain rowwise, training forward": training,
             "qtrain rowwise, to_inference (frozen)": serving}
    blocks, mode_of = {}, {}
    for mode in args.modes.split(","):
        for name, block in eager.items():
            label = name if mode == "eager" else f"{name}, {mode}"
            blocks[label] = block if mode == "eager" else torch.compile(
                block, mode=None if mode == "default" else mode)
            mode_of[label] = mode
    rows, csv_rows = [], []
    for tokens in (int(t) for t in args.tokens.split(",")):
        x = (torch.randn(tokens, DIM, generator=gen, device="cuda") * 0.5).to(torch.bfloat16)
        with torch.no_grad():
            outs = {}
            for name, block in blocks.items():
                for _ in range(3):                # cudagraph trees record on a later call
                    out = block(x)
                outs[name] = out.clone()
                del out                           # no live output of a replayed graph
        # the frozen block against the training forward in the same mode (inductor fuses
        # SwiGLU's elementwise ops in fp32: compiled and eager bits differ, bf16's too)
        for mode in args.modes.split(","):
            suffix = "" if mode == "eager" else f", {mode}"
            same = torch.equal(outs[f"qtrain rowwise, to_inference (frozen){suffix}"],
                               outs[f"qtrain rowwise, training forward{suffix}"])
            print(f"T{tokens} {mode}: frozen output {'has' if same else 'DOES NOT HAVE'} the "
                  f"training forward's bits")
        times = {name: [] for name in blocks}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, block in blocks.items():
                    times[name] += time_fn(lambda: block(x), warmup=3, reps=args.reps,
                                           device="cuda")["times"]
        med = {name: statistics.median(t) for name, t in times.items()}
        shape = f"E{E} top{TOP_K} T{tokens} D{DIM} H{HIDDEN}"
        for name, ms in med.items():
            mode = mode_of[name]
            bf16 = med["bf16" if mode == "eager" else f"bf16, {mode}"]
            rows.append([f"T{tokens}", name, f"{ms:.3f}", f"{bf16 / ms:.2f}x"])
            csv_rows.append(dict(op="moe_block_forward_no_grad",
                                 backend="torch" if name.startswith("bf16") else "fast",
                                 recipe=name, shape=shape,
                                 metric="ms_median", value=f"{ms:.4f}"))
    append_rows(csv_rows)
    if os.environ.get("OUT"):
        append_rows(csv_rows, os.path.join(os.environ["OUT"], "moe_serving.csv"))
    print(format_table(["tokens", "MoE block forward, no grad", "ms", "vs bf16 same mode"],
                       rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
