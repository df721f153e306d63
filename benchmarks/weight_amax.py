"""The weights' tensorwise amax under torch.compile (issue 8): the fast backend's amax pass
(ops.tensor_amax, what the compiled tensorwise linear runs for w today) against torch's rows-first
reduction compiled by inductor, over the seven weights of the Llama3-8B-shaped block in one
sequence (436 MB of bf16, more than L2 holds, as in a training step). Times are CUDA-graph
replays; the amaxes are checked equal bit for bit.

    python benchmarks/weight_amax.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import graph_replay_us  # noqa: E402

# (out_features, in_features) of q, k, v, o, w1, w3, w2 (dim 4096, 8 kv heads of 128, ffn 14336)
WEIGHTS = ((4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096),
           (14336, 4096), (4096, 14336))


def main():
    if not torch.cuda.is_available():
        print("weight_amax: no CUDA device; skipped")
        return 0
    from qtrain import ops
    from qtrain.recipes import torch_amax_rows_first
    gen = torch.Generator(device="cuda").manual_seed(0)
    ws = [torch.randn(s, generator=gen, device="cuda").to(torch.bfloat16) for s in WEIGHTS]
    moved = sum(w.numel() * w.element_size() for w in ws)
    compiled = torch.compile(lambda ts: [torch_amax_rows_first(t) for t in ts])
    variants = {
        "fast amax pass (ops.tensor_amax)": lambda: [ops.tensor_amax(w, "fast") for w in ws],
        "torch rows-first, compiled": lambda: compiled(ws),
        "torch amax, eager": lambda: [w.abs().amax().float() for w in ws],
    }
    ref = [a.reshape(()) for a in variants["fast amax pass (ops.tensor_amax)"]()]
    copy_dst = [torch.empty_like(w) for w in ws]
    copy_us = graph_replay_us(lambda: [d.copy_(w) for d, w in zip(copy_dst, ws)])
    print(f"seven weights, {moved / 1e6:.0f} MB bf16; copy of all {copy_us:.1f} us "
          f"({2 * moved / copy_us / 1e6:.2f} TB/s read+write)")
    print(f"{'variant':36s} {'us':>8s} {'TB/s read':>10s}  bits")
    for name, fn in variants.items():
        got = [a.reshape(()) for a in fn()]
        same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(got, ref))
        us = graph_replay_us(fn)
        print(f"{name:36s} {us:8.1f} {moved / us / 1e6:10.2f}  {'equal' if same else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
