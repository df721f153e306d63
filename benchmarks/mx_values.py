"""The emulated mxfp8 operand (RC-7 on a GPU without MX tensor cores), two ways, for one bf16 x:
the shipped MX cast followed by the bf16 dequantization that the product makes of it
(payload route: 2 + 1 then 1 + 2 bytes per element, two launches), against the one-pass cast
to MX-10 values (fast/cast_mx_values.py: 2 + 2 bytes). Same bits checked first (the values of
the payload route, transposed back where its cast writes x.T), then CUDA-graph times.

    python3 -m benchmarks.mx_values [--shapes 8192x8192,8192x14336,14336x4096]"""
import argparse
import sys

import torch

from benchmarks.common import format_table, graph_replay_us, module_settings
from qtrain.fast import cast_mx_values
from qtrain.fast.block_dequant import dequant_blocks
from qtrain.fast.cast_mx import quantize_mx_dim0, quantize_mx_dim_last
from qtrain.fast.cast_mx_values import quantize_mx_values
from qtrain.recipes import e8m0_to_fp32_bits


def payload_route(x, axis, mode):
    """The shipped route's bf16 operand: along K (axis -1) x's layout; along M (axis 0) x.T's
    (the cast writes x.T, the product's NT operand)."""
    if axis == -1:
        data, bits = quantize_mx_dim_last(x, "float8_e4m3fn", 32, mode)
    else:
        data, bits = quantize_mx_dim0(x, "float8_e4m3fn", 32, mode, transposed=True)
    return dequant_blocks(data, e8m0_to_fp32_bits(bits), torch.bfloat16)


def same_bf16(a, b):
    """Equal bf16 bits, NaN payloads free (MX-10)."""
    a16, b16 = a.view(torch.int16), b.view(torch.int16)
    return bool(((a16 == b16) | (a.isnan() & b.isnan())).all())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="8192x8192,8192x14336,14336x4096,8192x1024")
    p.add_argument("--sweep", action="store_true",
                   help="also the values kernels at other tiles (same bits checked)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("mx_values: needs a CUDA GPU")
        return 2
    torch.manual_seed(0)
    rows, bad = [], 0
    for shape in args.shapes.split(","):
        r, c = (int(v) for v in shape.split("x"))
        x = torch.randn(r, c, device="cuda").to(torch.bfloat16)
        x[3, 5], x[r - 1, 0], x[r // 2, c - 1] = 3.0e4, float("inf"), float("nan")
        x[64:96] = 0
        x[100:132, 7] = torch.tensor(2.0 ** -130).to(torch.bfloat16)
        y = torch.empty_like(x)
        copy_us = graph_replay_us(lambda: y.copy_(x))
        rows.append([shape, "torch copy_", f"{copy_us:.1f}", "1.00", ""])
        for axis in (-1, 0):
            for mode in ("rceil", "floor"):
                old = payload_route(x, axis, mode)
                new = quantize_mx_values(x, "float8_e4m3fn", 32, axis, mode)
                if axis == 0:
                    new = new.t().contiguous()
                same = same_bf16(old, new)
                bad += not same
                if mode != "rceil":
                    rows.append([shape, f"axis {axis} floor: bits", "", "",
                                 "same" if same else "DIFFERENT"])
                    continue
                for name, fn, moved in (
                        ("cast + dequant (payload)", lambda: payload_route(x, axis, mode), 6),
                        ("values (one pass)", lambda: quantize_mx_values(
                            x, "float8_e4m3fn", 32, axis, mode), 4)):
                    us = graph_replay_us(fn)
                    frac = (moved / us) / (4 / copy_us)
                    rows.append([shape, f"axis {axis} rceil: {name}", f"{us:.1f}",
                                 f"{frac:.2f}", "same bits" if same else "DIFFERENT BITS"])
        if args.sweep:
            bad += sweep(x, copy_us, shape, rows)
    print(format_table(["shape", "variant", "us (graph)", "of copy", "bits"], rows))
    return 1 if bad else 0


SWEEP = {0: [("DIM0_TILE", t) for t in ((32, 64, 1), (32, 128, 2), (64, 128, 2), (64, 128, 4),
                                         (128, 64, 2), (128, 128, 4))],
         -1: [("DIM_LAST_ELEMS", n) for n in (1024, 2048, 8192, 16384)]}


def sweep(x, copy_us, shape, rows):
    """The values kernels at the SWEEP settings: bits against the shipped setting, time."""
    bad = 0
    for axis, settings in SWEEP.items():
        want = quantize_mx_values(x, "float8_e4m3fn", 32, axis, "rceil")
        for name, value in settings:
            with module_settings(cast_mx_values, **{name: value}):
                got = quantize_mx_values(x, "float8_e4m3fn", 32, axis, "rceil")
                same = same_bf16(got, want)
                bad += not same
                us = graph_replay_us(lambda: quantize_mx_values(x, "float8_e4m3fn", 32, axis,
                                                                "rceil"))
            rows.append([shape, f"axis {axis} values, {name}={value}", f"{us:.1f}",
                         f"{(4 / us) / (4 / copy_us):.2f}", "same bits" if same else "DIFFERENT"])
    return bad


if __name__ == "__main__":
    sys.exit(main())
