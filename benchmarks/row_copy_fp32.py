"""Diagnosis of the one-pass both-layouts cast for fp32 x (fast/cast_float8.py ROW_COPY): on the
H200 (Triton 3.6) it wrote wrong x.T codes for fp32 x while bf16 was exact, so fp32 takes the
cast plus the tiled transpose there. This runs the one-pass kernel for fp32 and bf16 under each
ROW_COPY_VARIANT (store order, a barrier between the two stores), counts the bytes of x and x.T
that differ from the two-pass result (the tensorwise cast, then its transpose), and times each
variant on an 8192^2 bf16 x. Prints a table last; appends rows to benchmarks/results/results.csv.

    python -m benchmarks.row_copy_fp32                 # GPU
    python -m benchmarks.row_copy_fp32 --device cpu    # interpreter smoke run, small shapes

If a variant gives 0 differing bytes for fp32 at every shape, add torch.float32 to
ROW_COPY_CUDA_DTYPES with that variant as ROW_COPY_VARIANT (if its bf16 time is no worse).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = ((False, False), (False, True), (True, False), (True, True))
SHAPES_GPU = ((256, 512), (256, 384), (8192, 4096))
SHAPES_CPU = ((64, 256), (32, 128))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from benchmarks.common import append_rows, format_table, time_fn
    from qtrain.fast import cast_float8 as cf
    fmt = "float8_e4m3fn"
    shapes = SHAPES_GPU if args.device == "cuda" else SHAPES_CPU
    gen = torch.Generator(device=args.device).manual_seed(0)
    saved = (cf.ROW_COPY_CUDA_DTYPES, cf.ROW_COPY_VARIANT)
    table, rows = [], []
    try:
        cf.ROW_COPY_CUDA_DTYPES = (torch.bfloat16, torch.float32)
        for variant in VARIANTS:
            cf.ROW_COPY_VARIANT = variant
            diffs = []
            for dtype in (torch.float32, torch.bfloat16):
                for shape in shapes:
                    x = (torch.randn(shape, generator=gen, device=args.device) * 3).to(dtype)
                    data, data_t, _ = cf.quantize_float8_tensorwise_both(x, fmt)
                    want, _ = cf.quantize_float8_tensorwise(x, fmt)
                    bad_x = int((data.view(torch.uint8) != want.view(torch.uint8)).sum())
                    bad_t = int((data_t.view(torch.uint8)
                                 != want.t().contiguous().view(torch.uint8)).sum())
                    diffs.append(f"{str(dtype)[6:]} {shape[0]}x{shape[1]}: {bad_x}/{bad_t}")
                    rows.append(dict(op="row_copy_fp32", backend="fast", recipe="tensorwise",
                                     shape=f"{dtype} {shape} first={variant[0]} barrier={variant[1]}",
                                     metric="bytes differing x/x.T", value=f"{bad_x}/{bad_t}"))
            us = "-"
            if args.device == "cuda":
                x = torch.randn(8192, 8192, device="cuda").to(torch.bfloat16)
                us = f"{time_fn(lambda: cf.quantize_float8_tensorwise_both(x, fmt), warmup=3, reps=20, device='cuda')['median'] * 1e3:.0f}"
                rows.append(dict(op="row_copy_fp32", backend="fast", recipe="tensorwise",
                                 shape=f"bf16 (8192, 8192) first={variant[0]} barrier={variant[1]}",
                                 metric="us", value=us))
            table.append([f"first={variant[0]} barrier={variant[1]}", "; ".join(diffs), us])
    finally:
        cf.ROW_COPY_CUDA_DTYPES, cf.ROW_COPY_VARIANT = saved
    if args.device == "cuda":
        append_rows(rows)
    print(format_table(["ROW_COPY_VARIANT", "bytes differing x / x.T", "bf16 8192^2 us"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
