"""The MX dim-0 cast written as x.T (mxfp8's grad_weight operands) by fast/cast_mx_gluon.py's
Gluon kernel at several tiles, against the shipped Triton kernel: bits and CUDA-graph time. An
experiment for issue 8's mx_dim0_t gate (cast_mx.DIM0_T_GLUON is off until it has run).

Why (benchmarks/NOTES.md, nineteenth session, item 3): compiled for sm_90, the shipped kernel's
TMA path writes its code tile into shared memory one byte at a time (160 byte stores per thread
at 128 rows x 32 columns, 1 warp) after 96 shuffles for the block maxima. Here the 16-bit tile
is converted once to a layout in which each thread holds one 32-row MX block of one column:
the block maximum is in-thread, and the thread's 32 codes are contiguous in x.T, so they leave
as 16-byte stores with no byte tile in shared memory. The arithmetic is the shipped kernel's
(fast.cast_mx's exponent and scale helpers). bf16 and fp32 x; GPU only (Gluon does not run under the
CPU interpreter); `--sass` compiles it for sm_90 on any machine and counts its memory ops.

    python3 -m benchmarks.gluon_mx_t [--shapes 8192x8192,8192x14336,16384x4096]
    python -m benchmarks.gluon_mx_t --sass          # CPU: registers and SASS op counts"""
import argparse
import sys

import torch

from benchmarks.common import format_table, time_shapes_against_first
from qtrain.fast import cast_mx_gluon
from qtrain.fast.cast_mx import _mx_dim0_kernel, _mx_params, mx_constexprs, quantize_mx_dim0


def gluon_mx_dim0_t(x, block_c=128, warps=4, load_lanes_c=8, elem_fmt="float8_e4m3fn",
                    scale_mode="rceil"):
    """(data (C, M), scale bits (C, M / 32)) as quantize_mx_dim0(x, ..., transposed=True), by
    fast/cast_mx_gluon.py's kernel at a tile."""
    why = cast_mx_gluon.unsupported(x, 32)
    if why is not None:
        raise ValueError(f"gluon_mx_dim0_t: {why}")
    params = _mx_params(_mx_dim0_kernel, x, elem_fmt, 32, scale_mode)
    return cast_mx_gluon.quantize_mx_dim0_t(x, elem_fmt, params, (block_c, warps, load_lanes_c))


SETTINGS = ((128, 4, 8), (128, 4, 16), (64, 2, 8), (256, 8, 8), (256, 4, 8), (64, 1, 8))


def sass(settings=SETTINGS):
    """Registers and memory-op counts of the kernel at each setting, compiled for sm_90 on
    this machine (benchmarks/sass_counts.py's compile)."""
    from benchmarks.sass_counts import compile_counts
    sig = {"x_ptr": "*i16", "data_ptr": "*u8", "scale_ptr": "*u8", "M": "i32", "C": "i32"}
    rows = []
    for block_c, warps, lanes in settings:
        const = dict(BLOCK_C=block_c, WARPS=warps, LOAD_LANES_C=lanes,
                     **mx_constexprs("float8_e4m3fn", "rceil", True, False))
        regs, ops = compile_counts(cast_mx_gluon._mx_dim0_t_kernel, sig, const, warps, True)
        rows.append([f"{block_c} cols, {warps} warps, {lanes} load lanes along C", str(regs),
                     ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))])
    print(format_table(["setting", "registers", "SASS memory ops"], rows))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8192x8192,8192x14336,16384x4096,4096x1024")
    p.add_argument("--sass", action="store_true", help="compile for sm_90 here and count ops")
    args = p.parse_args(argv)
    if args.sass:
        return sass()
    if not torch.cuda.is_available():
        print("gluon_mx_t: needs a CUDA GPU (Gluon kernels do not run under the CPU interpreter;"
              " --sass compiles without one)")
        return 2
    # the timed setting first (rceil, e4m3: mxfp8's), then the other scale mode and element
    # format at the first Gluon setting, each against the shipped kernel of its own mode
    cases = [("rceil", "float8_e4m3fn", SETTINGS, torch.bfloat16),
             ("floor", "float8_e4m3fn", SETTINGS[:1], torch.bfloat16),
             ("rceil", "float8_e5m2", SETTINGS[:1], torch.bfloat16),
             ("rceil", "float8_e4m3fn", SETTINGS[:1], torch.float32)]

    def make_x(r, c):
        x = torch.randn(r, c, device="cuda").to(torch.bfloat16)
        x[3, 5], x[r - 1, 0], x[r // 2, c - 1], x[40, 1] = 3.0e4, float("inf"), float("nan"), -1e-30
        x[64:96] = 0
        x[100:132, 7] = torch.tensor(2.0 ** -130).to(torch.bfloat16)      # subnormal blocks
        return x

    def cases_of(x):
        for mode, fmt, settings, dtype in cases:
            what = f"{mode}, {fmt}, {str(dtype)[6:]} x"
            variants = [(f"shipped Triton kernel, {what}",
                         lambda x, m=mode, f=fmt: quantize_mx_dim0(x, f, 32, m, True))]
            variants += [(f"gluon, {what}, {c} cols, {w} warps, {lc} load lanes along C",
                          lambda x, c=c, w=w, lc=lc, m=mode, f=fmt:
                          gluon_mx_dim0_t(x, c, w, lc, f, m)) for c, w, lc in settings]
            x_case = x.to(dtype)
            yield x_case, variants, x_case.element_size() + 1    # x read, 1-byte codes written

    return time_shapes_against_first(args.shapes, make_x, cases_of)

if __name__ == "__main__":
    sys.exit(main())
