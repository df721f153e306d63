"""Where a block step reaches its peak memory (CUDA): one eager fwd+bwd of the Llama3-8B-shaped
block per recipe under a dispatch mode that reads torch.cuda.max_memory_allocated() after every
op. Prints, per recipe, the peak, the op that set it (forward or backward, its index in the
step), the memory allocated just before that op, and the ops that last raised the high-water
mark before it, so two recipes' peaks can be compared op for op.

    python -m benchmarks.peak_where [--recipes bf16,rowwise_with_gw_hp] [--shape small]
"""
import argparse
import copy
import gc

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.block import SHAPES, block_step, qtrain_config
from qtrain import convert_to_quantized_training
from qtrain.tiny_llama import Block

GIB = 2 ** 30


class _PeakTrace(TorchDispatchMode):
    """Each op that raised the high-water mark: (index, op, phase, allocated before, peak after)."""

    def __init__(self):
        super().__init__()
        self.index = 0
        self.raises = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = torch.cuda.memory_allocated()
        high = torch.cuda.max_memory_allocated()
        out = func(*args, **(kwargs or {}))
        peak = torch.cuda.max_memory_allocated()
        if peak > high:
            phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
            self.raises.append((self.index, str(func), phase, before, peak))
        self.index += 1
        return out


def locate(base_block, shape, recipe, device):
    block = copy.deepcopy(base_block)
    if recipe != "bf16":
        convert_to_quantized_training(block, qtrain_config(recipe))
    step = block_step(block, shape, device)
    step()                                          # warm-up: kernels compiled, caches made
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    trace = _PeakTrace()
    with trace:
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del block, step
    gc.collect()
    torch.cuda.empty_cache()
    return peak, trace.raises, trace.index


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="bf16,rowwise_with_gw_hp,mxfp8,tensorwise")
    p.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--last", type=int, default=6, help="high-water raises shown per recipe")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("peak_where: needs CUDA (torch.cuda memory statistics); skipped")
        return 0
    device = torch.device("cuda")
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    base = Block(shape.cfg).to(device=device, dtype=torch.bfloat16)
    for recipe in args.recipes.split(","):
        peak, raises, n_ops = locate(base, shape, recipe, device)
        print(f"\n{recipe}: peak {peak / GIB:.3f} GiB over {n_ops} ops")
        for index, op, phase, before, after in raises[-args.last:]:
            print(f"  op {index:5d} {phase:8s} {op:50s} before {before / GIB:.3f}  "
                  f"peak -> {after / GIB:.3f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
