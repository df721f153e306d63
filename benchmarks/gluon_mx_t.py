"""The MX dim-0 cast written as x.T (mxfp8's grad_weight operands) in Gluon, against the
shipped Triton kernel: bits and CUDA-graph time. An experiment for issue 8's mx_dim0_t gate.

Why (benchmarks/NOTES.md, nineteenth session, item 3): compiled for sm_90, the shipped kernel's
TMA path writes its code tile into shared memory one byte at a time (160 byte stores per thread
at 128 rows x 32 columns, 1 warp) after 96 shuffles for the block maxima. Here the 16-bit tile
is converted once to a layout in which each thread holds one 32-row MX block of one column:
the block maximum is in-thread, and the thread's 32 codes are contiguous in x.T, so they leave
as 16-byte stores with no byte tile in shared memory. The arithmetic is the shipped kernel's
(fast.cast_mx's exponent and scale helpers). bf16 x only; GPU only (Gluon does not run under the
CPU interpreter); `--sass` compiles it for sm_90 on any machine and counts its memory ops.

    python3 -m benchmarks.gluon_mx_t [--shapes 8192x8192,8192x14336,16384x4096]
    python -m benchmarks.gluon_mx_t --sass          # CPU: registers and SASS op counts"""
import argparse
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from benchmarks.common import format_table, time_against_first
from qtrain.fast.cast_mx import _mx_exponent, _mx_scale_block, quantize_mx_dim0
from qtrain.fast.common import TORCH_FLOAT8, float8_params, fp32
from qtrain.formats import float8_format

BLOCK = 32                                     # the MX block (MX-1); one tile is one block tall


@gluon.jit
def _mx_dim0_t_kernel(x_ptr, data_ptr, scale_ptr, M, C, BLOCK_C: gl.constexpr,
                      WARPS: gl.constexpr, LOAD_LANES_C: gl.constexpr, RCEIL: gl.constexpr,
                      EMAX: gl.constexpr, RCP_MAX: gl.constexpr, MAX: gl.constexpr,
                      MBITS: gl.constexpr, BIAS: gl.constexpr, FNUZ: gl.constexpr,
                      TL_DTYPE: gl.constexpr, EXACT_SOFT_CAST: gl.constexpr):
    """Rows [program_id(0) * 32, +32) (one MX block) x columns [program_id(1) * BLOCK_C, ...)
    of bf16 x (M, C) as int16 bits; data (C, M) and e8m0 scales (C, M / 32), as
    cast_mx.quantize_mx_dim0(x, transposed=True) writes them. M % 32 == 0 (MX-1)."""
    load_l: gl.constexpr = gl.BlockedLayout([1, 8], [32 // LOAD_LANES_C, LOAD_LANES_C],
                                            [WARPS, 1], [1, 0])
    block_l: gl.constexpr = gl.BlockedLayout([32, 1], [1, 32], [1, WARPS], [0, 1])
    rows = gl.program_id(0) * 32 + gl.arange(0, 32, layout=gl.SliceLayout(1, load_l))
    cols = gl.program_id(1) * BLOCK_C + gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, load_l))
    x = gl.load(x_ptr + rows[:, None].to(gl.int64) * C + cols[None, :],
                mask=cols[None, :] < C, other=0)
    x = gl.convert_layout(x, block_l)                      # 16-bit, through shared memory
    rows_b = gl.program_id(0) * 32 + gl.arange(0, 32, layout=gl.SliceLayout(1, block_l))
    cols_b = gl.program_id(1) * BLOCK_C + gl.arange(0, BLOCK_C,
                                                     layout=gl.SliceLayout(0, block_l))
    bits = x.to(gl.int32) << 16                            # the bf16 value's fp32 bits
    e, nan = _mx_exponent(gl.max(bits & 0x7FFFFFFF, axis=0), RCEIL, EMAX, RCP_MAX)
    code = _mx_scale_block(bits.to(gl.float32, bitcast=True), e[None, :], nan[None, :], MAX,
                           MBITS, BIAS, FNUZ, TL_DTYPE, EXACT_SOFT_CAST)
    col_ok = cols_b < C
    gl.store(data_ptr + cols_b[None, :].to(gl.int64) * M + rows_b[:, None], code,
             mask=col_ok[None, :])
    byte = gl.where(nan, 0xFF, e + 127).to(gl.uint8)
    gl.store(scale_ptr + cols_b.to(gl.int64) * (M // 32) + gl.program_id(0), byte, mask=col_ok)


def _params(elem_fmt="float8_e4m3fn", scale_mode="rceil"):
    f = float8_format(elem_fmt)
    return dict(RCEIL=scale_mode == "rceil", EMAX=f.emax, RCP_MAX=fp32(1.0 / f.max),
                **float8_params(elem_fmt), EXACT_SOFT_CAST=False)


def gluon_mx_dim0_t(x, block_c=128, warps=4, load_lanes_c=8, elem_fmt="float8_e4m3fn",
                    scale_mode="rceil"):
    """(data (C, M), scale bits (C, M / 32)) as quantize_mx_dim0(x, ..., transposed=True)."""
    M, C = x.shape
    if x.dtype != torch.bfloat16 or M % BLOCK:
        raise ValueError(f"gluon_mx_dim0_t: bf16 x with rows a multiple of {BLOCK}, got "
                         f"{x.dtype} {tuple(x.shape)}")
    data = torch.empty((C, M), dtype=TORCH_FLOAT8[elem_fmt], device=x.device)
    scale = torch.empty((C, M // BLOCK), dtype=torch.uint8, device=x.device)
    _mx_dim0_t_kernel[(M // BLOCK, triton.cdiv(C, block_c))](
        x.view(torch.int16), data.view(torch.uint8), scale, M, C, BLOCK_C=block_c,
        WARPS=warps, LOAD_LANES_C=load_lanes_c, **_params(elem_fmt, scale_mode),
        num_warps=warps)
    return data, scale


SETTINGS = ((128, 4, 8), (128, 4, 16), (64, 2, 8), (256, 8, 8), (256, 4, 8), (64, 1, 8))


def sass(settings=SETTINGS):
    """Registers and memory-op counts of the kernel compiled for sm_90 on this machine."""
    import collections
    import os
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    rows = []
    for block_c, warps, lanes in settings:
        sig = {"x_ptr": "*i16", "data_ptr": "*u8", "scale_ptr": "*u8", "M": "i32", "C": "i32"}
        const = dict(BLOCK_C=block_c, WARPS=warps, LOAD_LANES_C=lanes, **_params())
        names = list(sig) + list(const)
        src = GluonASTSource(_mx_dim0_t_kernel, {**sig, **{n: "constexpr" for n in const}},
                             constexprs={(names.index(n),): v for n, v in const.items()},
                             attrs={(names.index(n),): [["tt.divisibility", 16]] for n in sig})
        ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(ck.asm["cubin"])
            f.flush()
            res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name],
                                 capture_output=True, text=True).stdout
            text = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name],
                                  capture_output=True, text=True).stdout
        ops = collections.Counter(re.findall(r"\b((?:STG|LDG|STS|LDS|BAR|SHFL)\S*)", text))
        rows.append([f"{block_c} cols, {warps} warps, {lanes} load lanes along C",
                     re.search(r"REG:(\d+)", res).group(1),
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
    cases = [("rceil", "float8_e4m3fn", SETTINGS), ("floor", "float8_e4m3fn", SETTINGS[:1]),
             ("rceil", "float8_e5m2", SETTINGS[:1])]
    rows, failures = [], 0
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        r, c = (int(v) for v in shape.split("x"))
        x = torch.randn(r, c, device="cuda").to(torch.bfloat16)
        x[3, 5], x[r - 1, 0], x[r // 2, c - 1], x[40, 1] = 3.0e4, float("inf"), float("nan"), -1e-30
        x[64:96] = 0
        x[100:132, 7] = torch.tensor(2.0 ** -130).to(torch.bfloat16)      # subnormal blocks
        for mode, fmt, settings in cases:
            variants = [(f"shipped Triton kernel, {mode}, {fmt}",
                         lambda x, m=mode, f=fmt: quantize_mx_dim0(x, f, 32, m, True))]
            variants += [(f"gluon, {mode}, {fmt}, {c} cols, {w} warps, {lc} load lanes along C",
                          lambda x, c=c, w=w, lc=lc, m=mode, f=fmt:
                          gluon_mx_dim0_t(x, c, w, lc, f, m)) for c, w, lc in settings]
            got_rows, got_failures = time_against_first(x, variants, 3, shape)
            rows += got_rows
            failures += got_failures
    print(format_table(["shape", "variant", "us (graph)", "of copy", "bits vs shipped"], rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
