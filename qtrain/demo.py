"""Quick-start demo (issue 3): a small Llama trained on the stdlib's source, high precision vs every recipe.

    python -m qtrain.demo [--steps N] [--recipes all|none|a,b] [--device auto|cpu|cuda] [--compile]

Every run starts from the same seed (same initial weights, same batches). On a CPU the recipes run
on the reference backend (NumPy, written for clarity, not speed), so the model is tiny; on a GPU
the fast backend trains a bigger one. Exit status 1 when any run diverges (non-finite loss).
"""
import argparse
import dataclasses
import math
import os
import sys
import time

# Before NumPy loads (through torch): OpenBLAS threads fight torch's on the reference backend's
# small products (~170x slower steps on 2 cores without this). A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

from .backend import resolve_backend_name
from .config import RECIPE_NAMES, recipe_config
from .convert import convert_to_quantized_training
from .text_corpus import VOCAB_SIZE, StdlibCorpus
from .tiny_llama import TinyLlama, TinyLlamaConfig, num_parameters

RECIPES = RECIPE_NAMES               # every recipe, in qtrain.config's order
FINAL_WINDOW = 10                    # "final train loss" = mean of the last this many steps


@dataclasses.dataclass(frozen=True)
class RunSettings:
    model: TinyLlamaConfig
    batch_size: int
    seq_len: int
    steps: int
    lr: float
    device: str
    precision: str = "bf16"          # the high-precision baseline: "bf16" (autocast) or "fp32"
    seed: int = 0
    warmup_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_points: int = 4             # validation passes during a run (the last one at the end)
    eval_batches: int = 4
    compile: object = False          # False, True (default mode) or a torch.compile mode name
    outlier_gain: float = 0.0        # > 0: scale channel 0 of every feed-forward input (issue 9)

    def __post_init__(self):
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"qtrain.demo: precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.steps < 1:
            raise ValueError(f"qtrain.demo: steps must be >= 1, got {self.steps}")

    @property
    def tokens_per_step(self):
        return self.batch_size * self.seq_len


# Every linear in these models has K and N multiples of 128, so every recipe (blockwise included)
# converts all of them. CPU sizes were measured to fit all 7 runs in a few minutes on 2 cores.
PRESETS = {
    "cpu": dict(model=TinyLlamaConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=256,
                                      max_seq_len=64),
                batch_size=8, seq_len=64, steps=150, lr=3e-3, eval_batches=2),
    "gpu": dict(model=TinyLlamaConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536,
                                      max_seq_len=512),
                batch_size=32, seq_len=512, steps=400, lr=1e-3, eval_batches=8),
}


def default_settings(device, **overrides):
    preset = dict(PRESETS["gpu" if device.startswith("cuda") else "cpu"])
    preset.update({k: v for k, v in overrides.items() if v is not None})
    return RunSettings(device=device, **preset)


@dataclasses.dataclass
class RunResult:
    name: str                        # "bf16" / "fp32" for the baseline, else the recipe name
    backend: str
    train_losses: list
    val_points: list                 # [(step, val_loss)]
    tokens_per_s: float
    diverged: bool
    error: str = ""                  # set when the run raised instead of finishing

    @property
    def final_train_loss(self):
        tail = self.train_losses[-FINAL_WINDOW:]
        return sum(tail) / len(tail) if tail else math.nan

    @property
    def val_loss(self):
        return self.val_points[-1][1] if self.val_points else math.nan


def skip_output_head(module, fqn):
    """Convert every linear but the language-model head (kept in high precision, as is usual)."""
    return fqn != "output"


def build_model(settings, recipe=None):
    """The seeded model (same initial weights for every run), converted for `recipe` if given:
    a recipe name, or a config object (any qtrain linear config)."""
    torch.manual_seed(settings.seed)
    model = TinyLlama(settings.model)
    if settings.outlier_gain > 0:
        model.inject_channel_outlier(channel=0, gain=settings.outlier_gain)
    model = model.to(settings.device)
    backend = "torch"
    if recipe is not None:
        config = recipe_config(recipe) if isinstance(recipe, str) else recipe
        convert_to_quantized_training(model, config, module_filter_fn=skip_output_head)
        backend = resolve_backend_name(config.backend, settings.device)
    return model, backend


def lr_at(step, settings):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warmup = max(1, int(settings.warmup_frac * settings.steps))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def _loss(model, inputs, targets, settings):
    device_type = torch.device(settings.device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
        logits = model(inputs)
    return F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), targets.reshape(-1))


@torch.no_grad()
def evaluate(model, val_batches, settings):
    model.eval()
    total = sum(_loss(model, x.to(settings.device), y.to(settings.device), settings).item()
                for x, y in val_batches)
    model.train()
    return total / len(val_batches)


class Progress:
    """One live line per run, rewritten in place with '\\r' (at most ~10 times a second)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._last = 0.0

    def update(self, text, force=False):
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._last = now
            self.stream.write("\r" + text.ljust(78))
            self.stream.flush()

    def done(self, text):
        self.update(text, force=True)
        self.stream.write("\n")
        self.stream.flush()


def train_one(name, recipe, settings, corpus, progress=None, on_eval=None):
    """Train one model (`recipe` None = the high-precision baseline; else a recipe name or a
    config, as build_model takes) and return its RunResult. on_eval(result so far), if given,
    is called after every validation pass (a caller cut by a time limit keeps the curve)."""
    progress = progress or Progress()
    model, backend = build_model(settings, recipe)
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=settings.lr, betas=(0.9, 0.95))
    step_fn = torch.compile(model, mode=compile_mode(settings.compile)) if settings.compile else model
    batches = corpus.train_batches(settings.batch_size, settings.seq_len, seed=settings.seed)
    val_batches = corpus.val_batches(settings.batch_size, settings.seq_len, settings.eval_batches)
    eval_at = {max(1, round(settings.steps * (i + 1) / settings.eval_points))
               for i in range(settings.eval_points)}
    losses, val_points, diverged = [], [], False
    timed_steps, timed_s = 0, 0.0
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        x, y = (t.to(settings.device, non_blocking=True) for t in next(batches))
        t0 = time.perf_counter()
        loss = _loss(step_fn, x, y, settings)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()          # synchronizes, so the step time below is complete
        if step >= 2:                # the first steps pay for compilation and warm-up
            timed_steps, timed_s = timed_steps + 1, timed_s + time.perf_counter() - t0
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            break
        tok_s = timed_steps * settings.tokens_per_step / timed_s if timed_s else 0.0
        if step + 1 in eval_at:
            val_points.append((step + 1, evaluate(step_fn, val_batches, settings)))
            if on_eval is not None:
                on_eval(RunResult(name, backend, list(losses), list(val_points), tok_s, False))
        progress.update(f"{name:<20} step {step + 1:>4}/{settings.steps}  loss {value:7.4f}  "
                        f"{tok_s:9.0f} tok/s")
    tok_s = timed_steps * settings.tokens_per_step / timed_s if timed_s else math.nan
    status = "DIVERGED (non-finite loss)" if diverged else f"val loss {val_points[-1][1]:.4f}"
    progress.done(f"{name:<20} {len(losses):>4} steps  {status}  {tok_s:9.0f} tok/s  [{backend}]")
    return RunResult(name, backend, losses, val_points, tok_s, diverged)


def compile_mode(value):
    """torch.compile's mode for a --compile value: True / "default" -> None (its default),
    else the mode name ("reduce-overhead": CUDA graphs, for host-bound small models)."""
    return None if value in (True, "default") else value


def run_or_report(name, recipe, settings, corpus, **kwargs):
    """train_one, but a run that raises becomes a failed row so the other runs still report."""
    try:
        return train_one(name, recipe, settings, corpus, **kwargs)
    except Exception as e:  # noqa: BLE001 -- reported in the table and the exit status
        print(f"\n{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return RunResult(name, "-", [], [], math.nan, True, f"{type(e).__name__}: {str(e)[:200]}")


def format_table(results, baseline):
    """Plain-text results table; 'vs <baseline>' is the relative difference of validation loss."""
    base = next((r for r in results if r.name == baseline), None)
    head = (f"{'recipe':<20} {'train loss':>10} {'val loss':>9} {'vs ' + baseline:>9} "
            f"{'tokens/s':>10}  backend")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.error:
            rel = "failed"
        elif r.diverged:
            rel = "diverged"
        elif base is None or base.diverged or r is base:
            rel = "-"
        else:
            rel = f"{100 * (r.val_loss - base.val_loss) / base.val_loss:+.2f}%"
        lines.append(f"{r.name:<20} {r.final_train_loss:>10.4f} {r.val_loss:>9.4f} {rel:>9} "
                     f"{r.tokens_per_s:>10.0f}  {r.backend}")
    lines.append(f"train loss: mean of the last {FINAL_WINDOW} steps; val loss: {baseline} baseline vs recipe "
                 "on held-out stdlib files")
    return "\n".join(lines)


def _smooth(values, window=5):
    """Trailing mean over the last `window` steps (little lag, unlike an EMA started at step 1)."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window))
            for i in range(len(values))]


def plot_curves(results, path, title):
    """Train loss (smoothed) and validation points per run, plus the gap to the baseline."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    base = _smooth(results[0].train_losses) if results else []
    for r in results:
        curve = _smooth(r.train_losses)
        line, = ax.plot(range(1, len(curve) + 1), curve, label=r.name, linewidth=1.2)
        if r.val_points:
            ax.plot(*zip(*r.val_points), "o", color=line.get_color(), markersize=4)
        n = min(len(curve), len(base))
        if r is not results[0] and n:
            gap.plot(range(1, n + 1), [100 * (c - b) / b for c, b in zip(curve[:n], base[:n])],
                     color=line.get_color(), label=r.name, linewidth=1.2)
    ax.set(xlabel="step", ylabel="train loss (mean of 5 steps); dots: validation", title=title)
    gap.axhline(0.0, color="black", linewidth=0.8)
    gap.set(xlabel="step", ylabel=f"train loss vs {results[0].name if results else 'baseline'} (%)",
            title="gap to the high-precision baseline")
    ax.legend(fontsize=8)
    if gap.get_legend_handles_labels()[0]:
        gap.legend(fontsize=8)
    else:
        gap.text(0.5, 0.5, "no recipe runs", ha="center", va="center", transform=gap.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_recipes(text):
    if text in ("all", ""):
        return list(RECIPES)
    if text == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"qtrain.demo: unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    return names


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m qtrain.demo", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (preset default)")
    p.add_argument("--recipes", default="all", help=f"'all', 'none' or a comma list of {','.join(RECIPES)}")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model of every run; MODE: a torch.compile mode "
                        "(e.g. reduce-overhead: CUDA graphs; set QTRAIN_FAST_AUTOTUNE=0 with it)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="high-precision baseline and model compute dtype (bf16 = autocast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="qtrain_demo_loss.png", help="loss-curve PNG path")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    recipes = parse_recipes(args.recipes)
    settings = default_settings(device, steps=args.steps, compile=args.compile,
                                precision=args.precision, seed=args.seed)
    corpus = StdlibCorpus()
    model_desc = (f"TinyLlama dim={settings.model.dim} layers={settings.model.n_layers} "
                  f"heads={settings.model.n_heads}/{settings.model.n_kv_heads}kv "
                  f"ffn={settings.model.ffn_dim} ({num_parameters(TinyLlama(settings.model)) / 1e6:.2f}M params)")
    print(f"qtrain demo: {model_desc}, batch {settings.batch_size}x{settings.seq_len} bytes, "
          f"{settings.steps} steps, device {device}, baseline {settings.precision}"
          f"{', torch.compile' if settings.compile else ''}"
          f"{' ' + str(settings.compile) if settings.compile and compile_mode(settings.compile) else ''}")
    print(f"corpus: {corpus}")
    started = time.perf_counter()
    results = [run_or_report(settings.precision, None, settings, corpus)]
    for recipe in recipes:
        results.append(run_or_report(recipe, recipe, settings, corpus))
    print()
    print(format_table(results, settings.precision))
    title = f"qtrain demo: {model_desc.split(' (')[0]}, {device}"
    print(f"loss curves: {plot_curves(results, args.out, title)}")
    print(f"total time: {time.perf_counter() - started:.1f} s")
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"qtrain.demo: {r.name} failed: {r.error}", file=sys.stderr)
    diverged = [r.name for r in results if r.diverged and not r.error]
    if diverged:
        print(f"qtrain.demo: diverged (non-finite loss): {', '.join(diverged)}", file=sys.stderr)
    return 1 if failed or diverged else 0


if __name__ == "__main__":
    sys.exit(main())
