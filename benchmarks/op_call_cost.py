"""Host cost of one call of a two-tensor op registered three ways (fourteenth session: why
qtrain/_dispatch.py defines its ops with torch.library define / impl): through
torch.library.custom_op, through an op defined with Library.define / impl, and the Python
function called directly. The op body allocates its two outputs and does nothing else. Runs on
any machine (CPU tensors); host microseconds per call, median of --rounds rounds.

    python -m benchmarks.op_call_cost [--calls 20000] [--rounds 5]
"""
import argparse
import functools
import statistics
import sys
import time

import torch
from torch.library import Library, custom_op, infer_schema, register_fake


def _body(x: torch.Tensor, s: str, b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty(())


def _fake(x, s, b):
    return x.new_empty(x.shape), x.new_empty(())


@functools.lru_cache(maxsize=None)     # an op is defined once per process
def ops():
    """{label: callable} for the three ways, registered in namespace qtrain_op_cost."""
    via_custom_op = custom_op("qtrain_op_cost::via_custom_op", mutates_args=())(_body)
    via_custom_op.register_fake(_fake)
    lib = Library("qtrain_op_cost", "FRAGMENT")
    lib.define("via_define" + infer_schema(_body, mutates_args=()))
    lib.impl("via_define", _body, "CompositeExplicitAutograd")
    register_fake("qtrain_op_cost::via_define", _fake, lib=lib)
    return lib, {"custom_op": torch.ops.qtrain_op_cost.via_custom_op.default,
            "define / impl": torch.ops.qtrain_op_cost.via_define.default,
            "direct": _body}


def us_per_call(fn, x, calls):
    for _ in range(min(calls, 1000)):
        fn(x, "a", True)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x, "a", True)
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_call_cost",
                                description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    x = torch.randn(8)
    _, table = ops()                   # the Library is held by the cache: the ops live on
    print(f"torch {torch.__version__}, host us per call, median of {args.rounds} rounds of "
          f"{args.calls} calls")
    for label, fn in table.items():
        times = [us_per_call(fn, x, args.calls) for _ in range(args.rounds)]
        print(f"  {label:14s} {statistics.median(times):7.2f}  (rounds {min(times):.2f}.."
              f"{max(times):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
