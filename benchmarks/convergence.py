"""Loss parity on real text (issue 9): a Llama-style model on the stdlib's source, bf16 vs every recipe.

    python -m benchmarks.convergence --size medium            # GPU, ~76M params
    python -m benchmarks.convergence --size tiny --device cpu # CPU, reference backend
    python -m benchmarks.convergence --size tiny --outlier    # one channel scaled by --outlier-gain
    python -m benchmarks.convergence --seeds 0,1,2            # every run per seed, mean and spread
    python -m benchmarks.convergence --jobs 7                 # the runs as processes sharing the GPU

Writes <out-dir>/convergence_<size>[_outlier].csv (run, step, train_loss, val_loss) and .png,
appends summary rows to the results CSV, and prints a table last: final train and validation loss,
relative validation-loss difference to bf16, tokens/s, and whether the margin below is met.

The outlier run multiplies channel 0 of every feed-forward input by a fixed gain. Tensorwise
float8 then spends its one scale on that channel for the whole tensor; rowwise keeps one scale per
row along K for the output product (the channel sits in every row) and one per channel for
grad_weight; MX and blockwise confine it to one 32- or 128-element block.
"""
import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from qtrain.demo import RECIPES, RunResult, RunSettings, parse_recipes, plot_curves, run_or_report
from qtrain.text_corpus import StdlibCorpus
from qtrain.tiny_llama import TinyLlama, TinyLlamaConfig, num_parameters

from . import common

SIZES = {
    # CPU (reference backend): the demo's model, trained longer.
    "tiny": dict(model=TinyLlamaConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=256,
                                       max_seq_len=64),
                 batch_size=4, seq_len=64, steps=100, lr=3e-3, eval_points=5, eval_batches=4),
    # GPU (fast backend): ~76M parameters, ~24M tokens (about two passes over the stdlib's source).
    "medium": dict(model=TinyLlamaConfig(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048,
                                         max_seq_len=1024),
                   batch_size=16, seq_len=1024, steps=1500, lr=1e-3, eval_points=10, eval_batches=16),
}

# Allowed |relative difference| of final validation loss to bf16. Medium: issue 9's targets.
# Tiny: a 100-step CPU run sits on a steep part of the curve where a few hundredths of a nat of
# noise are several times the medium target, so the margin is looser (3%) and stated as such.
MARGINS = {
    "medium": {"int8": 0.02, "default": 0.01},
    "tiny": {"default": 0.03},
}


def margin_for(size, recipe):
    table = MARGINS[size]
    return table.get(recipe, table["default"])


def write_curves(results, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "train_loss", "val_loss"])
        for r in results:
            val = dict(r.val_points)
            for step, loss in enumerate(r.train_losses, start=1):
                w.writerow([r.name, step, f"{loss:.6f}", f"{val[step]:.6f}" if step in val else ""])
    return path


def summary(results, size, baseline):
    """Rows of (result, rel diff or None, margin or None, ok)."""
    base = results[0]
    out = []
    for r in results:
        if r is base:
            out.append((r, None, None, not r.diverged))
            continue
        rel = (r.val_loss - base.val_loss) / base.val_loss
        margin = margin_for(size, r.name)
        out.append((r, rel, margin, (not r.diverged) and abs(rel) <= margin))
    return out


def _verdict(ok, rel, margin):
    """'yes' inside the symmetric margin; outside it, which side: 'NO (worse)' or
    'NO (better)' (a quantized run that ends lower than the baseline by more than the margin
    is outside the band too, and says so rather than reading as a loss of quality)."""
    if ok:
        return "yes"
    if rel is None or margin is None or rel != rel:
        return "NO"
    return "NO (better)" if rel < -margin else "NO (worse)"


def table(rows, baseline):
    header = ["run", "train loss", "val loss", f"vs {baseline}", "margin", "tokens/s", "backend", "ok"]
    lines = []
    for r, rel, margin, ok in rows:
        verdict = ("cut" if "time budget" in r.error else "failed" if r.error
                   else "diverged" if r.diverged
                   else "-" if rel is None else f"{100 * rel:+.2f}%")
        lines.append([r.name, f"{r.final_train_loss:.4f}", f"{r.val_loss:.4f}", verdict,
                      "-" if margin is None else f"{100 * margin:.0f}%", f"{r.tokens_per_s:.0f}",
                      r.backend, _verdict(ok, None if r.diverged else rel, margin)])
    return common.format_table(header, lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.convergence", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="tiny on CPU, medium on GPU (default by device)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--recipes", default="all", help=f"'all', 'none' or a comma list of {','.join(RECIPES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile every run's model (MODE: a torch.compile mode)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="comma list of seeds (overrides --seed): every run once per seed, then a "
                        "table of the mean and spread of each recipe's difference to bf16")
    p.add_argument("--outlier", action="store_true", help="inject one large feed-forward input channel")
    p.add_argument("--outlier-gain", type=float, default=30000.0,
                   help="gain of the outlier channel (30000: tiny, 20 steps, CPU put tensorwise +1.4%% "
                        "behind bf16 while rowwise and mxfp8 stayed within 0.2%%; 1000 showed nothing)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="start no further run once this many seconds are spent (0: no limit)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run this many runs at once, each in its own process on the same device "
                        "(eager runs are host-bound: 7 at once share one H200). Losses are the same "
                        "as one at a time; tokens/s is then the shared rate and is labelled so. "
                        "--budget-s then stops every run still going and reports how far it got")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)      # child of --jobs
    p.add_argument("--result-json", default=None, help=argparse.SUPPRESS)  # child of --jobs
    p.add_argument("--out-dir", default=common.RESULTS_DIR)
    p.add_argument("--csv", default=common.RESULTS_CSV, help="results CSV for the summary rows")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    size = args.size or ("medium" if device.startswith("cuda") else "tiny")
    recipes = parse_recipes(args.recipes)
    preset = dict(SIZES[size])
    if args.steps:
        preset["steps"] = args.steps
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    corpus = StdlibCorpus()
    started = time.perf_counter()

    def settings_for(seed):
        return RunSettings(device=device, compile=args.compile, precision=args.precision,
                           seed=seed, outlier_gain=args.outlier_gain if args.outlier else 0.0,
                           **preset)

    if args.run_one is not None:        # one run of a --jobs pool: its result goes to a file
        return run_child(args, settings_for(seeds[0]), corpus)
    runs = [(seed, name, recipe) for seed in seeds
            for name, recipe in [(args.precision, None)] + [(r, r) for r in recipes]]
    pooled = run_pool(args, argv_for_child(args, size), runs, started) if args.jobs > 1 else None
    per_seed, status = {}, 0
    for seed in seeds:
        rows, seed_status = run_seed(args, size, settings_for(seed), recipes, corpus, started,
                                     suffix=f"_seed{seed}" if len(seeds) > 1 else "",
                                     pooled=None if pooled is None else pooled[seed])
        per_seed[seed] = rows
        status = max(status, seed_status)
    if len(seeds) > 1:
        print(seeds_table(per_seed, size, args.precision))
    return status


def run_seed(args, size, settings, recipes, corpus, started, suffix="", pooled=None):
    """bf16 and every recipe from one seed: curves, PNG, CSV rows and the table. pooled: this
    seed's results already run by run_pool, in run order. Returns (summary rows, exit status)."""
    cfg = settings.model
    shape = (f"{size}:D{cfg.dim}/L{cfg.n_layers}/H{cfg.n_heads}/KV{cfg.n_kv_heads}/F{cfg.ffn_dim}"
             f"/B{settings.batch_size}xT{settings.seq_len}/S{settings.steps}"
             + (f"/outlier{args.outlier_gain:g}" if args.outlier else "")
             + (f"/seed{settings.seed}" if suffix else ""))
    print(f"convergence {shape}: {num_parameters(TinyLlama(cfg)) / 1e6:.1f}M params, "
          f"device {settings.device}, baseline {settings.precision}")
    stem = f"convergence_{size}" + ("_outlier" if args.outlier else "") + suffix
    os.makedirs(args.out_dir, exist_ok=True)
    runs = [(settings.precision, None)] + [(r, r) for r in recipes]
    curves_csv = os.path.join(args.out_dir, stem + ".csv")
    results, skipped = [], []
    if pooled is not None:              # already run: their curves in one write
        results = [pooled[name] for name, _ in runs]
        curves = write_curves(results, curves_csv)
        runs = []
    for name, recipe in runs:
        spent = time.perf_counter() - started
        if args.budget_s and results and spent > args.budget_s:
            skipped.append(name)              # said in the table, never silently dropped
            continue
        results.append(run_or_report(name, recipe, settings, corpus))
        # curves after every run: a run cut by a time limit still leaves the finished ones
        curves = write_curves(results, curves_csv)
        print(f"[{time.perf_counter() - started:.0f} s] {name} done", flush=True)
    png = plot_curves(results, os.path.join(args.out_dir, stem + ".png"), f"convergence {shape}")
    rows = summary(results, size, settings.precision)
    op = "convergence" + ("_outlier" if args.outlier else "")
    csv_rows = []
    # runs sharing the device report the shared rate, under a name of its own
    rate = "tokens_per_s" if pooled is None else f"tokens_per_s_{args.jobs}_runs_sharing_device"
    for r, rel, _, _ in rows:
        if r.error:
            continue                       # a failed or cut run has no final numbers to record
        metrics = {"final_train_loss": r.final_train_loss, "val_loss": r.val_loss,
                   rate: r.tokens_per_s, "diverged": float(r.diverged)}
        if rel is not None:
            metrics["val_loss_rel_diff_pct"] = 100 * rel
        csv_rows += [dict(op=op, backend=r.backend, recipe=r.name, shape=shape, metric=k, value=f"{v:.6g}")
                     for k, v in metrics.items()]
    common.append_rows(csv_rows, args.csv)
    print(f"\ncurves: {curves}\nplot: {png}\nsummary rows appended to {args.csv}")
    print(f"total time: {time.perf_counter() - started:.1f} s")
    print(table(rows, settings.precision))
    if pooled is not None:
        print(f"tokens/s: {args.jobs} runs at once on one {settings.device} device (shared rate)")
    if skipped:
        print(f"NOT RUN (time budget of {args.budget_s:.0f} s spent): {', '.join(skipped)}")
    return rows, 1 if any(r.diverged for r in results) else 0


def _result_to_json(result, done):
    return dict(dataclasses.asdict(result), done=done)


def _result_from_json(obj):
    obj = dict(obj)
    done = obj.pop("done")
    obj["val_points"] = [tuple(p) for p in obj["val_points"]]
    return RunResult(**obj), done


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)              # a reader never sees half a file


def run_child(args, settings, corpus):
    """One run of a --jobs pool: the result (and, after every validation pass, the result so
    far) goes to --result-json."""
    recipe = None if args.run_one == settings.precision else args.run_one
    result = run_or_report(args.run_one, recipe, settings, corpus,
                           on_eval=lambda partial: _write_json(args.result_json,
                                                               _result_to_json(partial, False)))
    _write_json(args.result_json, _result_to_json(result, True))
    return 1 if result.diverged else 0


def argv_for_child(args, size):
    """The options every child shares with its parent (seed and run are added per child)."""
    argv = ["--size", size, "--device", args.device, "--precision", args.precision,
            "--out-dir", args.out_dir, "--csv", args.csv]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.compile:
        argv += ["--compile"] + ([] if args.compile is True else [str(args.compile)])
    if args.outlier:
        argv += ["--outlier", "--outlier-gain", repr(args.outlier_gain)]
    return argv


def run_pool(args, child_argv, runs, started):
    """Every (seed, name, recipe) run in its own process, at most args.jobs at once, on the
    same device. Returns {seed: {name: RunResult}}. A run still going when --budget-s is spent
    is stopped and becomes an error row that says how far it got (its curve is kept)."""
    workdir = tempfile.mkdtemp(prefix="qtrain_convergence_")
    waiting, running, results = list(runs), {}, {}
    print(f"{len(runs)} runs, {args.jobs} at a time; logs in {workdir}", flush=True)

    def finish(key, proc, note=""):
        seed, name = key
        path = os.path.join(workdir, f"{name}_seed{seed}.json")
        if os.path.exists(path):
            with open(path) as f:
                result, done = _result_from_json(json.load(f))
        else:
            result, done = RunResult(name, "-", [], [], float("nan"), True), False
        if not done and not result.error:
            steps = len(result.train_losses)
            result.error = (note or f"process ended (rc={proc.returncode})") + f" at step {steps}"
            result.diverged = True         # as run_or_report marks a run that raised: no verdict
        results.setdefault(seed, {})[name] = result
        tail = ""
        if proc.returncode not in (0, None) or result.error:
            with open(os.path.join(workdir, f"{name}_seed{seed}.log"), errors="replace") as f:
                tail = "".join(f.read().replace("\r", "\n").splitlines(True)[-5:])
        print(f"[{time.perf_counter() - started:.0f} s] {name} seed {seed}: "
              f"{result.error or f'val loss {result.val_loss:.4f}'}" + (f"\n{tail}" if tail else ""),
              flush=True)

    while waiting or running:
        while waiting and len(running) < args.jobs:
            seed, name, _ = waiting.pop(0)
            stem = os.path.join(workdir, f"{name}_seed{seed}")
            cmd = [sys.executable, "-m", "benchmarks.convergence", *child_argv, "--seed", str(seed),
                   "--run-one", name, "--result-json", stem + ".json"]
            log = open(stem + ".log", "w")
            running[(seed, name)] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for key, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[key]
                finish(key, proc)
        if args.budget_s and time.perf_counter() - started > args.budget_s and running:
            for key, (proc, log) in list(running.items()):
                proc.terminate()
                proc.wait()
                log.close()
                del running[key]
                finish(key, proc, note=f"stopped by the time budget of {args.budget_s:.0f} s")
            for seed, name, _ in waiting:
                results.setdefault(seed, {})[name] = RunResult(
                    name, "-", [], [], float("nan"), False,
                    f"not started (time budget of {args.budget_s:.0f} s)")
            waiting = []
        time.sleep(1.0)
    return results


def seeds_table(per_seed, size, baseline):
    """Per recipe: the difference to the baseline for each seed, their mean and range; ok when
    the mean is within the margin and no seed diverged."""
    names = []
    for rows in per_seed.values():
        names += [r.name for r, rel, _, _ in rows if rel is not None and r.name not in names]
    header = ["run"] + [f"seed {s}" for s in per_seed] + ["mean", "min..max", "margin", "ok"]
    lines = []
    for name in names:
        rels, diverged = [], False
        for rows in per_seed.values():
            hit = next((row for row in rows if row[0].name == name), None)
            if hit is None:
                rels.append(None)
                continue
            diverged |= hit[0].diverged
            rels.append(None if hit[0].diverged else hit[1])
        done = [v for v in rels if v is not None]
        mean = sum(done) / len(done) if done else float("nan")
        margin = margin_for(size, name)
        ok = bool(done) and not diverged and abs(mean) <= margin
        lines.append([name] + ["-" if v is None else f"{100 * v:+.2f}%" for v in rels]
                     + [f"{100 * mean:+.2f}%",
                        f"{100 * min(done):+.2f}..{100 * max(done):+.2f}%" if done else "-",
                        f"{100 * margin:.0f}%", _verdict(ok, None if diverged or not done else mean, margin)])
    return (f"\nvalidation loss vs {baseline}, per seed:\n"
            + common.format_table(header, lines))


if __name__ == "__main__":
    sys.exit(main())
