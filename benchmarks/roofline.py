"""GEMM-and-cast roofline sweep (issue 8): "for my shapes, is float8 faster?" -- predicted and
measured fwd+bwd speedup over bf16 of one linear layer (M tokens, K in, N out) per recipe.

    python -m benchmarks.roofline --predict          # model only, any machine: table + heat-map PNG
    python -m benchmarks.roofline                    # CUDA: model + measurement, two PNGs, CSV rows
    python -m benchmarks.roofline --full-grid --budget-s 170
    python -m benchmarks.roofline --cuda-graphs      # GPU time of captured steps (no launch cost)

Model (METHOD.md: count bytes and FLOPs first). fwd+bwd is three GEMMs of 2MNK flops (RC-1);
each takes max(flops / product rate, operand+output bytes / copy bandwidth). bf16 runs all three
at the bf16 rate. A recipe runs its products at the rate measured for the product the fast backend
routes it to, plus its casts (which tensor is quantized along which axis: spec/07 RC-4..RC-9, as
qtrain/qlinear.py issues them), each costing its minimal bytes (read bf16 once, write 1-byte
payloads; scales not counted) over that cast kernel's measured minimal-bytes bandwidth, plus the
transpose copies the fast path makes and the backward's second cast of an axis-free weight
(RC-14's default). The blockwise products are timed at the Triton kernel's measured rate until
the cuBLAS blockwise route (fast/scaled_mm.py, 2026-11-30) has been measured. Rates come from the H200 CSVs in benchmarks/results/; a
missing row falls back to a stated default with a warning. Speedup = bf16 time / recipe time.
"""
import argparse
import csv
import dataclasses
import math
import os
import re
import statistics
import sys
import time
import warnings

from . import common

DEFAULT_CSVS = tuple(os.path.join(common.RESULTS_DIR, f) for f in (
    "2026-11-29-kernel-tuning-h200.csv", "2026-11-29-gpu-fast-check-h200.csv"))
RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise")
SWEEP = (1024, 2048, 4096, 8192, 14336, 16384)          # K and N of the predicted heat map
MEASURE_SWEEP = (1024, 4096, 8192)                      # K and N measured by default (~3 min)
TABLE_SWEEP = (1024, 4096, 16384)                       # K and N of the printed predicted table
LLAMA = (  # (name, K, N) of the linears, tokens M from --m
    ("llama3-8b q,o", 4096, 4096), ("llama3-8b k,v", 4096, 1024),
    ("llama3-8b gate,up", 4096, 14336), ("llama3-8b down", 14336, 4096),
    ("llama3-70b q,o", 8192, 8192), ("llama3-70b k,v", 8192, 1024),
    ("llama3-70b gate,up", 8192, 28672), ("llama3-70b down", 28672, 8192))
LLAMA3_8B_LINEARS = ((4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096),
                     (4096, 14336), (4096, 14336), (14336, 4096))    # q k v o gate up down

# ---------------------------------------------------------------- measured rates
# The CSV row (op, variant) timing the product each recipe runs on the fast backend, and the
# default (issue 8's ceilings; blockwise and MX, which the issue does not state, at the bf16 rate).
GEMM_ROWS = {  # key: (op, variant, default TFLOP/s)
    "bf16": ("torch mm", "bf16", 700.0),
    "float8_tensorwise": ("scaled_mm_nt", "tensorwise routed bfloat16", 1250.0),   # _scaled_mm
    "float8_rowwise": ("scaled_mm_nt", "rowwise routed bfloat16", 1250.0),         # _scaled_mm
    "int8": ("scaled_mm_nt", "int8 triton tuned bfloat16", 900.0),     # NOTES: Triton default
    "blockwise": ("scaled_mm_nt", "blockwise triton tuned bfloat16", 700.0),
    "mx": ("scaled_mm_nt", "mx triton tuned bfloat16", 700.0),
    # MX on CUDA with bf16 out: a bf16 GEMM of the dequantized operands (fast/scaled_mm.py)
    "mx_bf16": ("torch mm", "bf16", 700.0),
}
BF16_OPERANDS = ("bf16", "mx_bf16")            # products whose operands are read as 2 bytes
# Cast kernel -> CSV op names holding its minimal-bytes GB/s. Of the v1 ("bf16 in", the "old"
# value) and v2 ("new") kernels the faster was kept (commit defb938, NOTES), so the max is used.
CAST_ROWS = {
    "float8 tensorwise": ("cast float8 tensorwise",),
    "float8 rowwise": ("cast float8 rowwise",),
    "float8 columnwise.T": ("cast float8 columnwise.T", "cast float8 columnwise"),
    "float8 dual row+col.T": ("cast float8 dual row+col.T",),
    "mx dim-1 floor": ("cast mx dim-1 floor",),
    "mx dim0 transposed": ("cast mx dim0 transposed",),
    "int8 rowwise rne": ("cast int8 rowwise rne",),
    "int8 columnwise rne": ("cast int8 columnwise rne",),
    "blockwise 1x128": ("cast blockwise 1x128",),
    "blockwise 128x128": ("cast blockwise 128x128",),
}
DEFAULT_COPY_GBS = 4200.0                       # issue 8: copy 4.2 TB/s (read + written)
DEFAULT_CAST_GBS = DEFAULT_COPY_GBS / 2         # a cast at half the copy bandwidth
CAST_VARIANTS = ("bf16 in", "new")              # the shipped kernels' rows, not experiments


class MissingRateWarning(UserWarning):
    """A rate the model needs has no row in the CSVs; a stated default is used instead."""


@dataclasses.dataclass(frozen=True)
class Rates:
    gemm_tflops: dict       # GEMM_ROWS key -> TFLOP/s
    cast_gbs: dict          # CAST_ROWS key -> GB/s of minimal bytes
    copy_gbs: float         # bytes read + written per second of a plain copy
    sources: tuple          # the CSV paths read


def _numbers(text):
    return [float(v) for v in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", text or "")]


def _value(row):
    return row.get("value") if row.get("value") not in (None, "") else row.get("median", "")


def load_rates(paths=DEFAULT_CSVS):
    """Median product rate and best shipped cast bandwidth per kernel from the CSVs."""
    rows = []
    for path in paths:
        if os.path.exists(path):
            with open(path, newline="") as f:
                rows += [r for r in csv.DictReader(f) if r.get("status", "ok") == "ok"]
        else:
            warnings.warn(f"benchmarks.roofline: rates CSV {path} not found", MissingRateWarning)

    def missing(what, default, unit):
        warnings.warn(f"benchmarks.roofline: no measured row for {what} in "
                      f"{[os.path.basename(p) for p in paths]}; using the default {default:g} "
                      f"{unit}", MissingRateWarning, stacklevel=3)
        return default

    gemm = {}
    for key, (op, variant, default) in GEMM_ROWS.items():
        vals = [_numbers(_value(r))[0] for r in rows
                if r["op"] == op and r["recipe"] == variant and _numbers(_value(r))]
        gemm[key] = statistics.median(vals) if vals else missing(f"GEMM {op} {variant}", default,
                                                                 "TFLOP/s")
    cast = {}
    for key, ops in CAST_ROWS.items():
        vals = []
        for r in rows:
            if r["op"] in ops and r["recipe"] in CAST_VARIANTS:
                text = _value(r)
                if "min-bytes" in text:      # kernel_tuning: "moved (%) min-bytes X (%) old Y (%)"
                    vals += [float(v) for v in re.findall(r"(?:min-bytes|old) (\d+)", text)]
                elif _numbers(text):         # gpu_fast_check: "X (%copy) Tus", X on minimal bytes
                    vals.append(_numbers(text)[0])
        cast[key] = max(vals) if vals else missing(f"cast {key}", DEFAULT_CAST_GBS, "GB/s")
    copies = [_numbers(_value(r))[0] for r in rows
              if r["op"] == "torch copy_" and _numbers(_value(r))]
    copy = statistics.median(copies) if copies else missing("torch copy_", DEFAULT_COPY_GBS, "GB/s")
    return Rates(gemm, cast, copy, tuple(paths))


# ---------------------------------------------------------------- the recipes' work
@dataclasses.dataclass(frozen=True)
class Cast:
    """One cast kernel launch: `tensor` ("x" (M,K), "w" (N,K), "g" (M,N)) quantized for the
    products contracting along `axes`; one payload per axis unless the quantization is axis
    free (tensorwise, 128x128 block: one payload read either way)."""
    tensor: str
    axes: tuple
    kernel: str
    axis_free: bool = False

    @property
    def payloads(self):
        return 1 if self.axis_free else len(self.axes)

    def min_bytes(self, numel):
        return 2 * numel + self.payloads * numel        # bf16 read once, 1-byte payload(s)


@dataclasses.dataclass(frozen=True)
class Copy:
    """A transpose copy the fast path makes: `bytes_per_elem` read + written."""
    tensor: str
    bytes_per_elem: int
    why: str


@dataclasses.dataclass(frozen=True)
class RecipeWork:
    gemms: tuple            # GEMM_ROWS key of (output, grad_input, grad_weight)
    casts: tuple
    copies: tuple = ()
    recasts: tuple = ()     # the same quantization again in backward (RC-14: axis-free w)


F8, DUAL = "float8 tensorwise", "float8 dual row+col.T"
ROW_COL = (("x", "K", "M"), ("w", "K", "N"), ("g", "N", "M"))   # tensor, row axis, column axis
WORK = {
    # RC-4: one tensorwise payload per tensor serves both its products; NT needs fp8 transposes
    # of x and g; w is cast again in backward, written transposed (RC-14 default)
    "tensorwise": RecipeWork(("float8_tensorwise",) * 3, (
        Cast("x", ("K", "M"), F8, True), Cast("w", ("K", "N"), F8, True),
        Cast("g", ("N", "M"), F8, True)),
        (Copy("x", 2, "x.T for grad_weight"), Copy("g", 2, "g.T for grad_weight")),
        (Cast("w", ("N",), F8, True),)),
    # RC-5: x and g through the dual cast (one read, two payloads), w along K then along N
    "rowwise": RecipeWork(("float8_rowwise",) * 3, (
        Cast("x", ("K", "M"), DUAL), Cast("w", ("K",), "float8 rowwise"),
        Cast("w", ("N",), "float8 columnwise.T"), Cast("g", ("N", "M"), DUAL))),
    # RC-6: grad_input's w tensorwise, grad_weight in bf16
    "rowwise_with_gw_hp": RecipeWork(("float8_rowwise", "float8_rowwise", "bf16"), (
        Cast("x", ("K",), "float8 rowwise"), Cast("w", ("K",), "float8 rowwise"),
        Cast("w", ("N",), F8, True), Cast("g", ("N",), "float8 rowwise"))),
    # RC-7: every operand MX along its contraction axis, dim-1 kernel along rows, dim0.T
    # otherwise; each product a bf16 GEMM of its two operands dequantized in one pass (1 byte
    # read, 2 written per element: a copy-like pass, fast/block_dequant.py)
    "mxfp8": RecipeWork(("mx_bf16",) * 3, tuple(
        Cast(t, (a,), "mx dim-1 floor" if a == row else "mx dim0 transposed")
        for t, row, col in ROW_COL for a in (row, col)),
        tuple(Copy(t, 3, f"{t} along {a} dequantized to bf16")
              for t, row, col in ROW_COL for a in (row, col))),
    # RC-8: int8 rowwise along each contraction axis; x and g through the int8 dual cast (one
    # amax pass, one cast pass writing both; timed at the float8 dual kernel's rate, the same
    # structure, until its own row is measured), w along K then along N
    "int8": RecipeWork(("int8",) * 3, (
        Cast("x", ("K", "M"), DUAL), Cast("w", ("K",), "int8 rowwise rne"),
        Cast("w", ("N",), "int8 columnwise rne"), Cast("g", ("N", "M"), DUAL))),
    # RC-9: w 128x128, cast again in backward (RC-14 default) and read transposed (an fp8
    # transpose); x and g along M in (128, 1) column blocks written transposed from one read
    # (fast/cast_blockwise.py quantize_blockwise_t; timed at the 128x128 tile kernel's rate, its
    # closest measured kernel, until its own row exists)
    "blockwise": RecipeWork(("blockwise",) * 3, (
        Cast("x", ("K",), "blockwise 1x128"), Cast("x", ("M",), "blockwise 128x128"),
        Cast("w", ("K", "N"), "blockwise 128x128", True),
        Cast("g", ("N",), "blockwise 1x128"), Cast("g", ("M",), "blockwise 128x128")),
        (Copy("w", 2, "fp8 w.T for grad_input"),),
        (Cast("w", ("N",), "blockwise 128x128", True),)),
}


def numel(tensor, M, K, N):
    return {"x": M * K, "w": N * K, "g": M * N}[tensor]


def gemm_ms(M, K, N, tflops, operand_bytes, copy_gbs):
    """The three products of RC-1, each max(compute, memory); operands 1 or 2 bytes, outputs
    bf16. output: x, w -> (M, N); grad_input: g, w -> (M, K); grad_weight: g, x -> (N, K)."""
    flops = 2 * M * N * K
    io = ((M * K + N * K, M * N), (M * N + N * K, M * K), (M * N + M * K, N * K))
    return [max(flops / (tf * 1e9), (operand_bytes[i] * ops + 2 * out) / (copy_gbs * 1e6))
            for i, ((ops, out), tf) in enumerate(zip(io, tflops))]


def bf16_ms(M, K, N, rates):
    return sum(gemm_ms(M, K, N, [rates.gemm_tflops["bf16"]] * 3, (2, 2, 2), rates.copy_gbs))


@dataclasses.dataclass(frozen=True)
class Prediction:
    recipe: str
    bf16_ms: float
    gemm_ms: float
    cast_ms: float
    copy_ms: float

    @property
    def total_ms(self):
        return self.gemm_ms + self.cast_ms + self.copy_ms

    @property
    def speedup(self):
        return self.bf16_ms / self.total_ms


def predict(recipe, M, K, N, rates):
    work = WORK[recipe]
    tflops = [rates.gemm_tflops[k] for k in work.gemms]
    gemm = sum(gemm_ms(M, K, N, tflops, [2 if k in BF16_OPERANDS else 1 for k in work.gemms],
                       rates.copy_gbs))
    cast = sum(c.min_bytes(numel(c.tensor, M, K, N)) / (rates.cast_gbs[c.kernel] * 1e6)
               for c in work.casts + work.recasts)
    copy = sum(c.bytes_per_elem * numel(c.tensor, M, K, N) / (rates.copy_gbs * 1e6)
               for c in work.copies)
    return Prediction(recipe, bf16_ms(M, K, N, rates), gemm, cast, copy)


# ---------------------------------------------------------------- tables and pictures
def shape_id(M, K, N):
    return f"M{M}xK{K}xN{N}"


def predicted_table(points, recipes, rates):
    """points: [(label, M, K, N)] -> table of bf16 ms and each recipe's predicted speedup."""
    rows = []
    for label, M, K, N in points:
        preds = [predict(r, M, K, N, rates) for r in recipes]
        rows.append([label, f"{preds[0].bf16_ms:.3f}"] + [f"{p.speedup:.2f}x" for p in preds])
    return common.format_table(["shape", "bf16 ms"] + list(recipes), rows)


def aggregate_speedup(recipe, M, linears, rates):
    """bf16 time / recipe time summed over a model's linears (attention etc. not counted)."""
    preds = [predict(recipe, M, K, N, rates) for K, N in linears]
    return sum(p.bf16_ms for p in preds) / sum(p.total_ms for p in preds)


def heatmaps(path, title, sweep, recipes, value, note=None):
    """One panel per recipe: rows K, columns N; value(recipe, K, N) colours the cell (1.0 =
    bf16, white), note(recipe, K, N) -> extra text under the number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    grids = {r: [[value(r, K, N) for N in sweep] for K in sweep] for r in recipes}
    finite = [v for g in grids.values() for row in g for v in row if v == v]
    lo, hi = min(finite + [0.9]), max(finite + [1.1])
    norm = TwoSlopeNorm(vmin=min(lo, 0.99), vcenter=1.0, vmax=max(hi, 1.01))
    cols = 3
    rows = math.ceil(len(recipes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.4 * rows), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes.flat, recipes):
        im = ax.imshow(grids[r], cmap="RdYlGn", norm=norm, origin="lower")
        for i, K in enumerate(sweep):
            for j, N in enumerate(sweep):
                v = grids[r][i][j]
                text = "-" if v != v else f"{v:.2f}"
                if note is not None:
                    text += f"\n{note(r, K, N)}"
                dark = v == v and (v < 0.45 or v > 1.5)
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(sweep)), [str(s) for s in sweep], fontsize=7)
        ax.set_yticks(range(len(sweep)), [str(s) for s in sweep], fontsize=7)
        ax.set_xlabel("N (out features)")
        ax.set_ylabel("K (in features)")
        ax.set_title(r)
    for ax in list(axes.flat)[len(recipes):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="speedup over bf16 (1.0 = white)")
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- measurement (CUDA)
def measure(points, recipes, budget_s, log=print, cuda_graphs=False):
    """{(M, K, N): {"bf16": ms, recipe: ms or reason}}: fwd+bwd medians (triton do_bench) of
    F.linear and qtrain.linear (backend fast); variants not started within budget_s are skipped.
    cuda_graphs: time replays of a captured step, i.e. GPU time without the host's launch cost
    (what a compiled reduce-overhead loop sees); otherwise eager calls, host cost included."""
    import torch
    import triton.testing
    import qtrain
    from qtrain import qlinear
    # One linear timed on one static x: sharing x's quantization between calls on the same
    # input (meant for q, k and v of one x) would skip the x cast that every real step makes.
    qlinear.SHARE_INPUT = False
    deadline = time.monotonic() + budget_s
    out = {}
    for M, K, N in points:
        torch.manual_seed(0)
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5).requires_grad_()
        g = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        res = out[(M, K, N)] = {}
        variants = [("bf16", torch.nn.functional.linear)] + [
            (r, lambda a, b, c=qtrain.recipe_config(r, backend="fast"):
                qtrain.linear(a, b, config=c))
            for r in recipes]
        for name, fn in variants:
            if time.monotonic() > deadline:
                res[name] = "time budget spent"
                continue
            def step(fn=fn):
                fn(x, w).backward(g)
            try:
                step()                                   # compile and autotune outside the timing
                if cuda_graphs:
                    graph, _ = common.capture_cuda_graph(step, [x, w])   # replays accumulate
                    res[name] = triton.testing.do_bench(graph.replay, return_mode="median")
                else:
                    res[name] = triton.testing.do_bench(step, grad_to_none=[x, w], return_mode="median")
            except Exception as e:  # noqa: BLE001 -- one failing variant must not lose the rest
                res[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            done = f"{res[name]:.3f} ms" if isinstance(res[name], float) else res[name]
            log(f"  {shape_id(M, K, N):<22} {name:<19} {done}")
        del x, w, g
        torch.cuda.empty_cache()
    return out


def measured_speedup(res, recipe):
    b, r = res.get("bf16"), res.get(recipe)
    return b / r if isinstance(b, float) and isinstance(r, float) else float("nan")


def measured_rows(measured, recipes, rates, op="roofline"):
    rows = []
    for (M, K, N), res in measured.items():
        shape = shape_id(M, K, N)
        if isinstance(res.get("bf16"), float):
            rows.append(dict(op=op, backend="torch", recipe="bf16", shape=shape,
                             metric="median_ms", value=f"{res['bf16']:.6g}"))
        for r in recipes:
            base = dict(op=op, backend="fast", recipe=r, shape=shape)
            rows.append(dict(base, metric="speedup_predicted",
                             value=f"{predict(r, M, K, N, rates).speedup:.4g}"))
            if isinstance(res.get(r), float):
                rows += [dict(base, metric="median_ms", value=f"{res[r]:.6g}"),
                         dict(base, metric="speedup_measured",
                              value=f"{measured_speedup(res, r):.4g}")]
    return rows


def side_by_side_table(measured, recipes, rates):
    rows = []
    for (M, K, N), res in measured.items():
        b = res.get("bf16")
        cells = []
        for r in recipes:
            meas = measured_speedup(res, r)
            cells.append(f"{predict(r, M, K, N, rates).speedup:.2f}/"
                         + ("-" if meas != meas else f"{meas:.2f}"))
        rows.append([shape_id(M, K, N), f"{b:.3f}" if isinstance(b, float) else "-"] + cells)
    return common.format_table(["shape (pred/meas x)", "bf16 ms"] + list(recipes), rows)


# ---------------------------------------------------------------- command line
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.roofline",
                                description=__doc__.splitlines()[0])
    p.add_argument("--predict", action="store_true", help="model only (no GPU needed)")
    p.add_argument("--m", type=int, default=8192, help="tokens M (default 8192)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma list of recipes")
    p.add_argument("--full-grid", action="store_true",
                   help=f"measure K, N over {SWEEP} (default {MEASURE_SWEEP})")
    p.add_argument("--budget-s", type=float, default=170.0,
                   help="start no new measurement after this many seconds")
    p.add_argument("--rates-csv", action="append", default=None,
                   help="CSV(s) with measured rates (default: the 2026-11-29 H200 files)")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="results CSV to append to")
    p.add_argument("--out-dir", default=common.RESULTS_DIR, help="where the PNGs go")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="time CUDA-graph replays of each captured fwd+bwd (GPU time, no host "
                        "launch cost) instead of eager calls")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    unknown = [r for r in recipes if r not in WORK]
    if unknown:
        print(f"benchmarks.roofline: unknown recipes {unknown}; expected some of {RECIPES}",
              file=sys.stderr)
        return 2
    rates = load_rates(tuple(args.rates_csv) if args.rates_csv else DEFAULT_CSVS)
    M, date = args.m, common.environment()["date"][:10]
    src = ", ".join(os.path.basename(s) for s in rates.sources)
    print(f"rates from {src}: GEMM TFLOP/s "
          + ", ".join(f"{k} {v:.0f}" for k, v in rates.gemm_tflops.items())
          + f"; copy {rates.copy_gbs:.0f} GB/s; casts GB/s (min bytes) "
          + ", ".join(f"{k} {v:.0f}" for k, v in rates.cast_gbs.items()))
    png = heatmaps(os.path.join(args.out_dir, f"{date}-roofline-predicted.png"),
                   f"Predicted fwd+bwd speedup of one linear (M={M} tokens, K in, N out) "
                   f"over bf16\nrates: {src}", SWEEP, recipes,
                   lambda r, K, N: predict(r, M, K, N, rates).speedup)
    print(f"\nwrote {png}")
    points = [(f"M{M} K{K} N{N}", M, K, N) for K in TABLE_SWEEP for N in TABLE_SWEEP]
    points += [(f"{name} (M{M})", M, K, N) for name, K, N in LLAMA]
    print("\npredicted speedup over bf16 (fwd+bwd of one linear)")
    print(predicted_table(points, recipes, rates))
    print(f"llama3-8b, all 7 linears of a block, M={M}: "
          + ", ".join(f"{r} {aggregate_speedup(r, M, LLAMA3_8B_LINEARS, rates):.2f}x"
                      for r in recipes))
    if args.predict:
        return 0
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("\nbenchmarks.roofline: measure mode needs CUDA (no device here); printed the "
              "prediction only. Use --predict to ask for that explicitly.", file=sys.stderr)
        return 0
    sweep = SWEEP if args.full_grid else MEASURE_SWEEP
    print(f"\nmeasuring {len(sweep) ** 2} shapes x {1 + len(recipes)} variants, "
          f"budget {args.budget_s:.0f} s")
    measured = measure([(M, K, N) for K in sweep for N in sweep], recipes, args.budget_s,
                       cuda_graphs=args.cuda_graphs)
    how = "cuda-graphs" if args.cuda_graphs else "eager"
    path = common.append_rows(measured_rows(measured, recipes, rates,
                                            op="roofline" + ("_cuda_graphs" if args.cuda_graphs else "")),
                              args.csv)
    gpu = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    png2 = heatmaps(os.path.join(args.out_dir, f"{date}-roofline-measured-{how}-{gpu}.png"),
                    f"Measured fwd+bwd speedup of one linear (M={M}) over bf16 ({how}), predicted "
                    f"in parentheses\n{torch.cuda.get_device_name()}, torch {torch.__version__}",
                    sweep, recipes,
                    lambda r, K, N: measured_speedup(measured[(M, K, N)], r),
                    lambda r, K, N: f"({predict(r, M, K, N, rates).speedup:.2f})")
    print(f"\nappended rows to {path}; wrote {png2}")
    print(side_by_side_table(measured, recipes, rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
