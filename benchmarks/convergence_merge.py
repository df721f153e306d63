"""One table and one figure from several convergence curve files (issue 9), each recipe judged
against the baseline run of its own file.

    python -m benchmarks.convergence_merge A.csv B.csv --out merged.png

Each file is a `benchmarks.convergence` curves CSV (run, step, train_loss, val_loss) whose first
run is that call's high-precision baseline. Runs split over several device calls are compared
only with the baseline trained in the same call; the baselines' own spread is printed, since
GPU runs are not bit-reproducible (atomics in some backward kernels).
"""
import argparse
import csv
import math
import os
import sys

from qtrain.demo import RunResult

from . import common
from .convergence import _verdict, summary


def read_curves(path):
    """The runs of one curves file as RunResults (backend and rate unknown), in file order;
    the first is that file's baseline."""
    runs = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            r = runs.setdefault(row["run"], RunResult(row["run"], "-", [], [], math.nan, False))
            r.train_losses.append(float(row["train_loss"]))
            if row["val_loss"]:
                r.val_points.append((int(row["step"]), float(row["val_loss"])))
    if not runs:
        raise ValueError(f"convergence_merge: no runs in {path}")
    return list(runs.values())


def merged_rows(files, size):
    """Rows (file, result, rel diff or None, margin or None, ok): convergence.summary of each
    file, so every run is judged against the baseline of its own file."""
    return [(path, *row) for path in files
            for row in summary(read_curves(path), size, baseline=None)]


def table(rows):
    header = ["run", "file", "train loss", "val loss", "vs own baseline", "margin", "ok"]
    lines = [[r.name, os.path.basename(path), f"{r.final_train_loss:.4f}", f"{r.val_loss:.4f}",
              "-" if rel is None else f"{100 * rel:+.2f}%",
              "-" if margin is None else f"{100 * margin:.0f}%",
              "-" if rel is None else _verdict(ok, rel, margin)]
             for path, r, rel, margin, ok in rows]
    bases = [r.val_loss for _, r, rel, _, _ in rows if rel is None]
    spread = (f"\nbaselines: {', '.join(f'{v:.4f}' for v in bases)} "
              f"(spread {100 * (max(bases) - min(bases)) / min(bases):.2f}%)" if len(bases) > 1 else "")
    return common.format_table(header, lines) + spread


def plot(files, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, f in enumerate(files):
        runs = read_curves(f)
        base = dict(runs[0].val_points)
        for r in runs:
            steps, losses = zip(*r.val_points)
            is_base = r is runs[0]
            label = f"{r.name} (call {i + 1})" if is_base else r.name
            line, = ax.plot(steps, losses, "--" if is_base else "-o", markersize=3, label=label,
                            linewidth=1.0 if is_base else 1.3)
            if not is_base:
                gap.plot(steps, [100 * (v - base[s]) / base[s] for s, v in r.val_points], "-o",
                         markersize=3, color=line.get_color(), label=r.name)
    ax.set(xlabel="step", ylabel="validation loss", title=title, yscale="log")
    gap.axhline(0.0, color="black", linewidth=0.8)
    for m in (-1, 1):
        gap.axhline(m, color="grey", linewidth=0.6, linestyle=":")
    gap.set(xlabel="step", ylabel="validation loss vs own call's baseline (%)",
            title="gap to the baseline trained in the same call")
    ax.legend(fontsize=8)
    gap.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence_merge",
                                description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="convergence curve CSVs, each led by its baseline run")
    p.add_argument("--size", default="medium", help="margin table of benchmarks.convergence")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--title", default="convergence")
    args = p.parse_args(argv)
    rows = merged_rows(args.files, args.size)
    print(f"plot: {plot(args.files, args.out, args.title)}")
    print(table(rows))
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
