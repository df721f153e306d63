"""Host cost of one Triton launch on this machine (issue 6: the eager MoE step is host-bound).

For the float8 rowwise cast kernel (17 arguments, 11 of them constexpr) and a small kernel
(7 arguments, 2 constexpr), on tiny tensors so that the GPU work is negligible, host
microseconds per call of:
- the whole fast cast call (fast/cast_float8.quantize_float8_rowwise: allocations, checks,
  launch);
- `kernel[grid](...)`, Triton's JIT path (binding, specialization, cache key, launch);
- the compiled kernel's own launcher, `compiled[grid](*args)` (no binding or specialization):
  what a launch cache keyed by the caller could cost at best.

    python -m benchmarks.triton_launch_cost
"""
import sys

import torch
import triton

from benchmarks.common import host_us_per_call


def main():
    if not torch.cuda.is_available():
        print("benchmarks/triton_launch_cost.py: needs CUDA")
        return 0
    from qtrain.fast import cast_float8 as cf
    from qtrain.fast import grouped_mm as fg
    from qtrain.fast.common import float8_params
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    data = torch.empty(64, 64, device="cuda", dtype=torch.float8_e4m3fn)
    qs = torch.empty(64, 1, device="cuda")
    dq = torch.empty(64, 1, device="cuda")
    rowwise_args = (x.view(torch.int16), data.view(torch.uint8), qs, dq, 64, 64)
    rowwise_kw = dict(BLOCK_R=16, BLOCK_K=64, POW2=True, WITH_DQ=True,
                      **float8_params("float8_e4m3fn"), EXACT_SOFT_CAST=False, IS_BF16=True)
    jit_rowwise = lambda: cf._float8_rowwise_kernel[(4,)](*rowwise_args, **rowwise_kw,  # noqa: E731
                                                          num_warps=4)
    compiled = jit_rowwise()
    params = [p.name for p in cf._float8_rowwise_kernel.params]
    values = dict(zip(params, rowwise_args), **rowwise_kw)
    ordered = [values[n] for n in params]
    direct_rowwise = compiled[(4, 1, 1)]
    want = data.clone()
    data.zero_()
    direct_rowwise(*ordered)                   # the same launch: the same bytes
    torch.cuda.synchronize()
    assert torch.equal(data.view(torch.uint8), want.view(torch.uint8)), "direct launch differs"

    out = torch.empty(64, 64, device="cuda", dtype=torch.bfloat16)
    offs = torch.tensor([64], device="cuda", dtype=torch.int32)
    jit_zero = lambda: fg._zero_rows_past_end_kernel[(2,)](out, offs, 1, 64, 64,  # noqa: E731
                                                           BLOCK_R=32, BLOCK_N=128)
    compiled_zero = jit_zero()
    direct_zero = compiled_zero[(2, 1, 1)]
    calls = {
        "fast rowwise cast, whole call": lambda: cf.quantize_float8_rowwise(
            x, "float8_e4m3fn", True, with_dequant=True),
        "rowwise kernel, kernel[grid](...)": jit_rowwise,
        "rowwise kernel, compiled launcher": lambda: direct_rowwise(*ordered),
        "zero_rows kernel, kernel[grid](...)": jit_zero,
        "zero_rows kernel, compiled launcher": lambda: direct_zero(out, offs, 1, 64, 64, 32, 128),
        "aten torch.empty_like": lambda: torch.empty_like(x),
    }
    torch.cuda.synchronize()
    print(f"host us per call, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"Triton {triton.__version__}")
    for name, fn in calls.items():
        print(f"  {name:40s} {host_us_per_call(fn, 500):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
