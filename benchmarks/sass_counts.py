"""Registers and per-thread memory instructions of the shipped cast kernels at their shipped
settings, compiled for sm_90 by the installed Triton on any machine (no GPU): where a pass
moves bytes through shared memory one at a time (STS.U8), shuffles for a reduction (SHFL), or
stores global memory in narrow pieces. The nineteenth session found with these counts that the
two-payload float8 passes and the MoE per-group column casts transposed byte codes instead of
the 16-bit tile (benchmarks/NOTES.md). Counts are of instructions in the SASS text, not of
executions; the compile is Triton's own for sm_90 with the divisibility hints a launch with
16-aligned sizes gets. cuobjdump ships with Triton's NVIDIA backend.

    python -m benchmarks.sass_counts [--only NAME]"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.common import format_table

OPS = ("LDG", "STG", "LDS", "STS", "LDSM", "STSM", "SHFL", "BAR", "ATOM", "RED")


def _e4m3():
    from qtrain.fast.common import float8_params
    return float8_params("float8_e4m3fn")


def kernels():
    """(name, kernel, signature, constexprs, warps, gluon) at the shipped settings, bf16 x."""
    from qtrain.fast import (amax, cast_blockwise, cast_float8, cast_int8, cast_mx,
                             cast_mx_values, cast_grouped)
    from qtrain.fast.common import cast_tile, fp32
    from qtrain.formats import EPS_AMAX
    out = []
    tiles_sig = {"x_ptr": "*i16", "R": "i32", "C": "i32", "amax_ptr": "*i32", "qs_ptr": "*fp32",
                 "dq_ptr": "*fp32", "data_ptr": "*u8", "row_amax_ptr": "*i32",
                 "row_qs_ptr": "*fp32", "row_dq_ptr": "*fp32", "row_data_ptr": "*u8"}
    for name, transposed, dual, row_copy, tensorwise in (
            ("float8 tensorwise, x's layout", False, False, False, True),
            ("float8 tensorwise x.T", True, False, False, True),
            ("float8 tensorwise both layouts", True, False, True, True),
            ("float8 dual (rows x, columns x.T)", True, True, False, False)):
        (br, bc), warps = cast_float8._tile_setting(transposed, dual, row_copy)
        const = dict(BLOCK_R=br, BLOCK_C=bc, TENSORWISE=tensorwise, TRANSPOSED=transposed,
                     DUAL=dual, ROW_COPY=row_copy, WITH_DQ=True, POW2=not tensorwise, TMA=False,
                     T_FROM_X=cast_float8.T_FROM_X and (dual or row_copy), **_e4m3(),
                     EXACT_SOFT_CAST=False, IS_BF16=True)
        out.append((name, cast_float8._float8_tiles_kernel, dict(tiles_sig), const, warps, False))
    for name, rows, cols in (("amax, tensor", False, False),
                             ("amax, rows and columns", True, True)):
        (br, bc) = amax.AMAX_ROWS_TILE if rows else amax.AMAX_TILE
        out.append((name, amax._amax_tiles_kernel,
                    {"x_ptr": "*i16", "R": "i32", "C": "i32", "tensor_ptr": "*i32",
                     "row_ptr": "*i32", "col_ptr": "*i32", "N_ROW_TILES": "i32"},
                    dict(BLOCK_R=br, BLOCK_C=bc, TENSOR=not rows, ROWS=rows, COLS=cols,
                         IS_BF16=True), amax.AMAX_WARPS, False))
    rows_cap, cols_cap, warps = cast_mx.DIM0_TMA_TILE_T if cast_mx.DIM0_T_TMA else \
        cast_mx.DIM0_TILE_T
    groups = rows_cap // 32
    data_sig = f"tensordesc<u8[{cols_cap}, {rows_cap}]>" if cast_mx.DIM0_T_TMA else "*u8"
    out.append(("MX dim-0 x.T (Triton)", cast_mx._mx_dim0_kernel,
                {"x_ptr": "*i16", "data_ptr": data_sig, "scale_ptr": "*u8", "M": "i32",
                 "C": "i32"},
                dict(GROUPS=groups, BLOCK_SIZE=32, BLOCK_C=cols_cap, TRANSPOSED=True,
                     TMA=cast_mx.DIM0_T_TMA,
                     **cast_mx.mx_constexprs("float8_e4m3fn", "rceil", True, False)), warps,
                False))
    mx_e4m3 = cast_mx.mx_constexprs("float8_e4m3fn", "rceil", True, False)
    out.append(("MX-10 values, last axis", cast_mx_values._mx_values_dim_last_kernel,
                {"x_ptr": "*i16", "out_ptr": "*bf16", "n_blocks": "i32"},
                dict(BLOCK_B=cast_mx_values.DIM_LAST_ELEMS // 32, BLOCK_SIZE=32,
                     SOFT_BF16=False, **mx_e4m3), 4, False))
    rows_cap, cols_cap, warps = cast_mx_values.DIM0_TILE
    out.append(("MX-10 values, axis 0", cast_mx_values._mx_values_dim0_kernel,
                {"x_ptr": "*i16", "out_ptr": "*bf16", "M": "i32", "C": "i32"},
                dict(GROUPS=rows_cap // 32, BLOCK_SIZE=32, BLOCK_C=cols_cap, SOFT_BF16=False,
                     **mx_e4m3), warps, False))
    block_c, warps = cast_blockwise.COLUMN_BLOCKS_T_TILE
    out.append(("blockwise (128, 1) x.T", cast_blockwise._float8_column_blocks_t_kernel,
                {"x_ptr": "*i16", "data_ptr": "*u8", "qs_ptr": "*fp32", "dq_ptr": "*fp32",
                 "R": "i32", "C": "i32"},
                dict(B0=128, BLOCK_C=block_c, WITH_DQ=True, **_e4m3(), EXACT_SOFT_CAST=False,
                     IS_BF16=True), warps, False))
    br, bc, warps = cast_tile(8192, 8192, False)
    out.append(("int8 columnwise x.T", cast_int8._int8_tiles_kernel,
                {"x_ptr": "*i16", "data_ptr": "*i8", "ds_ptr": "*fp32", "amax_ptr": "*i32",
                 "noise_ptr": "*fp32", "seed": "i32", "R": "i32", "C": "i32",
                 "row_amax_ptr": "*i32", "row_ds_ptr": "*fp32", "row_data_ptr": "*i8"},
                dict(BLOCK_R=br, BLOCK_C=bc, TENSORWISE=False, TRANSPOSED=True, DUAL=False,
                     NOISE=0, EPS32=fp32(EPS_AMAX), IS_BF16=True), warps, False))
    for use in ("tokens", "experts"):
        br, bc, abr, warps, _ = cast_grouped.GROUP_CAST[use]
        out.append((f"grouped column cast x.T ({use})", cast_grouped._float8_group_cols_t_kernel,
                    {"x_ptr": "*i16", "offs_ptr": "*i32", "pends_ptr": "*i32",
                     "data_t_ptr": "*u8", "qs_ptr": "*fp32", "dq_ptr": "*fp32", "C": "i32",
                     "N_GROUPS": "i32", "N_COL_TILES": "i32", "GROUP_ROWS": "i32",
                     "G_STRIDE": "i32", "C_STRIDE": "i32"},
                    dict(FROM_OFFS=use == "tokens", ALIGN=16, BLOCK_R=br, AMAX_BLOCK_R=abr,
                         BLOCK_C=bc, STAGES=cast_grouped.GROUP_CAST_STAGES,
                         T_FROM_X=cast_grouped.GROUP_CAST_T_FROM_X, WITH_DQ=True, POW2=True,
                         **_e4m3(), EXACT_SOFT_CAST=False, IS_BF16=True), warps, False))
    block_r, block_c, warps = cast_grouped.PAD_TILE
    out.append(("token groups into the padded layout", cast_grouped._pad_groups_kernel,
                {"x_ptr": "*i16", "offs_ptr": "*i32", "pends_ptr": "*i32", "out_ptr": "*i16",
                 "C": "i32", "MP": "i32", "E": "i32"},
                dict(SEARCH=4, BLOCK_R=block_r, BLOCK_C=block_c), warps, False))
    return out


def compile_sm90(kernel, signature, consts, warps=4, gluon=False, aligned=None):
    """Triton's compile of `kernel` (a Gluon kernel with gluon) for sm_90 on this machine:
    runtime arguments typed by `signature`, the others given by `consts`, and `aligned`
    arguments (None: every one but tensor descriptors) hinted divisible by 16, as a launch with
    16-aligned sizes specializes them."""
    names = list(kernel.arg_names)                # the kernel's order: constexprs by index
    missing = set(names) - set(signature) - set(consts)
    if missing:
        raise ValueError(f"no value or type for {sorted(missing)}")
    if aligned is None:
        aligned = [n for n, t in signature.items() if not t.startswith("tensordesc")]
    sig = {n: signature.get(n, "constexpr") for n in names}
    kw = dict(constexprs={(names.index(n),): v for n, v in consts.items()},
              attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource
        src = GluonASTSource(kernel, sig, **kw)
    else:
        src = ASTSource(kernel, sig, **kw)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def compile_counts(kernel, signature, consts, warps, gluon):
    """(registers, Counter of SASS memory/sync instruction kinds) of the sm_90 compile."""
    ck = compile_sm90(kernel, signature, consts, warps, gluon)
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
        text = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name],
                              capture_output=True, text=True, check=True).stdout
    ops = collections.Counter(re.findall(r"\b((?:%s)(?:\.[\w.]+)?)\s" % "|".join(OPS), text))
    return int(re.search(r"REG:(\d+)", res).group(1)), ops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="kernels whose name contains this")
    args = p.parse_args(argv)
    rows = []
    for name, kernel, sig, const, warps, gluon in kernels():
        if args.only not in name:
            continue
        try:
            regs, ops = compile_counts(kernel, sig, const, warps, gluon)
        except Exception as e:                     # noqa: BLE001 (no backend here: say so)
            rows.append([name, "-", f"{type(e).__name__}: {str(e)[:100]}"])
            continue
        rows.append([name, str(regs), ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))])
    print(f"Triton {triton.__version__}, sm_90, bf16 x, shipped settings")
    print(format_table(["kernel", "registers", "SASS instructions (memory, shuffles, barriers)"],
                       rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
