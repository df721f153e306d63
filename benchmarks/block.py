"""Transformer-block benchmark (issue 8): fwd+bwd time and peak memory, bf16 vs qtrain vs torchao.

    python -m benchmarks.block --recipes all --compile both            # Llama3-8B block + small one
    python -m benchmarks.block --small --device cpu --compile eager    # CPU smoke run (reference)
    python -m benchmarks.block --recipes tensorwise,blockwise --keep-weight-variants   # RC-14 both ways
    python -m benchmarks.block --recipes tensorwise,rowwise --fast-grads-variants       # RC-15 both ways

Times are medians of many steps taken with CUDA events, spread p20..p80; speedups are bf16 time /
variant time in the same run. Rows go to benchmarks/results/results.csv; a table prints last.
"""
import argparse
import copy
import dataclasses
import gc
import sys
import time

import torch

from qtrain import convert_to_quantized_training, recipe_config
from qtrain.backend import resolve_backend_name
from qtrain.demo import RECIPES, parse_recipes
from qtrain.tiny_llama import Block, TinyLlamaConfig

from . import common

TORCHAO_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
COMPILE_MODE = None      # torch.compile mode of the "compiled" variants (--compile-mode)


@dataclasses.dataclass(frozen=True)
class BlockShape:
    name: str
    cfg: TinyLlamaConfig
    batch: int
    seq: int
    cuda_only: bool

    def describe(self):
        c = self.cfg
        return (f"{self.name}:B{self.batch}xT{self.seq}xD{c.dim}"
                f"/H{c.n_heads}/KV{c.n_kv_heads}/F{c.ffn_dim}")


SHAPES = {
    "llama3-8b": BlockShape("llama3-8b", TinyLlamaConfig(dim=4096, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                                                         max_seq_len=8192, rope_theta=500000.0), 1, 8192, True),
    "small": BlockShape("small", TinyLlamaConfig(dim=1024, n_heads=8, n_kv_heads=2, ffn_dim=3584,
                                                 max_seq_len=2048), 1, 2048, True),
    # The CPU smoke shape: every linear's K and N a multiple of 128 so all recipes convert it.
    "tiny": BlockShape("tiny", TinyLlamaConfig(dim=256, n_heads=4, n_kv_heads=2, ffn_dim=512,
                                               max_seq_len=128), 1, 128, False),
}


@dataclasses.dataclass
class Measurement:
    shape: str
    mode: str            # "eager" | "compiled"
    impl: str            # "bf16" | "qtrain" | "torchao"
    recipe: str
    backend: str
    median_ms: float = float("nan")
    p20_ms: float = float("nan")
    p80_ms: float = float("nan")
    peak_gib: float = float("nan")
    skipped: str = ""


def torchao_converter():
    """torchao's float8 training entry points, or (None, reason)."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except Exception as e:  # noqa: BLE001 -- any import failure means "not comparable here"
        return None, f"torchao.float8 not importable ({type(e).__name__}: {e})"

    def convert(model, recipe):
        return convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe))
    return convert, ""


def block_step(block, shape, device, compile_mode=False):
    """One fwd+bwd step of `block` (converted or not) on seeded inputs of `shape`: eager for
    compile_mode False, else torch.compile with that mode (None: the default mode)."""
    run = block if compile_mode is False else torch.compile(block, mode=compile_mode)
    torch.manual_seed(1)
    x = torch.randn(shape.batch, shape.seq, shape.cfg.dim, device=device, dtype=torch.bfloat16,
                    requires_grad=True)
    return _step_fn(run, x, torch.randn_like(x), list(block.parameters()))


def _step_fn(block, x, grad_out, params):
    def step():
        out = block(x)
        out.backward(grad_out)
        for p in params:
            p.grad = None
        x.grad = None
    return step


KEEP_WEIGHT = "+keepw"       # recipe suffix: the same recipe with keep_quantized_weight (RC-14)
KEEP_WEIGHT_RECIPES = ("tensorwise", "blockwise")
FAST_GRADS = "+fastgrads"    # recipe suffix: the same recipe with fast_accum_grads=True (RC-15)
FAST_GRADS_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
SUFFIX_FIELDS = {KEEP_WEIGHT: "keep_quantized_weight", FAST_GRADS: "fast_accum_grads"}


def qtrain_config(recipe):
    """recipe_config of a benchmark recipe name: a recipe, or a recipe + one SUFFIX_FIELDS
    suffix (that config field set to True)."""
    for suffix, field in SUFFIX_FIELDS.items():
        if recipe.endswith(suffix):
            return recipe_config(recipe[:-len(suffix)], **{field: True})
    return recipe_config(recipe)


def fast_backend_or_reason(recipe, device):
    """(backend name of the recipe's config on `device`, why a GPU timing of it would be
    meaningless, or ""): anything but the fast backend on a GPU times the wrong code."""
    backend = resolve_backend_name(qtrain_config(recipe).backend, device)
    if torch.device(device).type == "cuda" and backend != "fast":
        return backend, f"qtrain backend is {backend!r}, not 'fast': the GPU timing would be meaningless"
    return backend, ""


def measure(shape, base_block, mode, impl, recipe, device, reps, warmup):
    """Build the variant from `base_block` (deep copy), time fwd+bwd, record peak memory."""
    m = Measurement(shape.describe(), mode, impl, recipe, "torch")
    block = copy.deepcopy(base_block)
    if impl == "qtrain":
        m.backend, m.skipped = fast_backend_or_reason(recipe, device)
        if m.skipped:
            return m
        convert_to_quantized_training(block, qtrain_config(recipe))
    elif impl == "torchao":
        convert, reason = torchao_converter()
        m.backend = "torchao"
        if convert is None:
            m.skipped = reason
            return m
        convert(block, recipe)
    step = block_step(block, shape, device, COMPILE_MODE if mode == "compiled" else False)
    try:
        if device.type == "cuda":
            step()                                   # compile / autotune outside the memory window
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            m.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        t = common.time_fn(step, warmup=warmup, reps=reps, device=device)
        m.median_ms, m.p20_ms, m.p80_ms = t["median"], t["p20"], t["p80"]
    except Exception as e:  # noqa: BLE001 -- one failing variant must not lose the others' rows
        m.skipped = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    finally:
        del block, step
        gc.collect()
        if mode == "compiled":
            torch._dynamo.reset()                    # each variant compiles fresh, no recompile limit
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return m


def variants(recipes, with_torchao, keep_weight_variants=False, fast_grads_variants=False):
    yield "bf16", "bf16"
    for r in recipes:
        yield "qtrain", r
        if keep_weight_variants and r in KEEP_WEIGHT_RECIPES:
            yield "qtrain", r + KEEP_WEIGHT
        if fast_grads_variants and r in FAST_GRADS_RECIPES:
            yield "qtrain", r + FAST_GRADS
        if with_torchao:
            yield "torchao", r


def run_shape(shape, recipes, modes, device, reps, warmup, with_torchao=True, log=print, deadline=None,
              keep_weight_variants=False, fast_grads_variants=False):
    """Measure every variant of `shape`; variants not started before `deadline` (monotonic s) are
    listed as skipped so a table still prints inside the caller's time limit."""
    torch.manual_seed(0)
    base = Block(shape.cfg).to(device=device, dtype=torch.bfloat16)
    results = []
    for mode in modes:
        for impl, recipe in variants(recipes, with_torchao, keep_weight_variants,
                                     fast_grads_variants):
            if impl == "torchao" and recipe not in TORCHAO_RECIPES:
                log(f"  skip torchao {recipe}: this benchmark compares torchao's float8 recipes only "
                    f"({', '.join(TORCHAO_RECIPES)})")
                continue
            if deadline is not None and time.monotonic() > deadline:
                m = Measurement(shape.describe(), mode, impl, recipe, impl, skipped="time budget spent")
            else:
                m = measure(shape, base, mode, impl, recipe, device, reps, warmup)
            note = f"skipped: {m.skipped}" if m.skipped else f"{m.median_ms:.3f} ms"
            log(f"  {shape.name:<10} {mode:<8} {impl:<7} {recipe:<19} {note}")
            results.append(m)
    return results


def speedups(results):
    """{id(m): (vs bf16 same mode, vs bf16 compiled)} for measured rows."""
    base = {(m.shape, m.mode): m.median_ms for m in results if m.impl == "bf16" and not m.skipped}
    out = {}
    for m in results:
        same = base.get((m.shape, m.mode))
        comp = base.get((m.shape, "compiled"))
        out[id(m)] = (same / m.median_ms if same else float("nan"),
                      comp / m.median_ms if comp else float("nan"))
    return out


def csv_rows(results):
    ratio = speedups(results)
    rows = []
    for m in results:
        if m.skipped:
            continue
        mode = m.mode + (f"-{COMPILE_MODE}" if m.mode == "compiled" and COMPILE_MODE else "")
        base = dict(op=f"block_fwd_bwd_{mode}", backend=m.backend if m.impl != "bf16" else "torch",
                    recipe=m.recipe if m.impl != "torchao" else f"torchao_{m.recipe}", shape=m.shape)
        metrics = {"median_ms": m.median_ms, "p20_ms": m.p20_ms, "p80_ms": m.p80_ms,
                   "peak_mem_gib": m.peak_gib, "speedup_vs_bf16_same_mode": ratio[id(m)][0],
                   "speedup_vs_bf16_compiled": ratio[id(m)][1]}
        rows += [dict(base, metric=k, value=f"{v:.6g}") for k, v in metrics.items() if v == v]
    return rows


def _fmt(value, suffix):
    return "-" if value != value else f"{value:.2f}{suffix}"


def table(results):
    ratio = speedups(results)
    header = ["shape", "mode", "impl", "recipe", "median ms", "p20..p80 ms", "x bf16 (mode)",
              "x bf16 compiled", "peak GiB"]
    rows = []
    for m in results:
        if m.skipped:
            rows.append([m.shape.split(":")[0], m.mode, m.impl, m.recipe, "-", "-", "-", "-", "-"])
            continue
        same, comp, peak = (_fmt(v, s) for v, s in zip((*ratio[id(m)], m.peak_gib), ("x", "x", "")))
        rows.append([m.shape.split(":")[0], m.mode, m.impl, m.recipe, f"{m.median_ms:.3f}",
                     f"{m.p20_ms:.3f}..{m.p80_ms:.3f}", same, comp, peak])
    return common.format_table(header, rows)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.block", description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="all", help=f"'all', 'none' or a comma list of {','.join(RECIPES)}")
    p.add_argument("--compile", choices=("eager", "compiled", "both"), default="both")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of the compiled variants, e.g. reduce-overhead (CUDA "
                        "graphs; set QTRAIN_FAST_AUTOTUNE=0 with it)")
    p.add_argument("--small", action="store_true", help="only the small block (tiny on a CPU)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--reps", type=int, default=None, help="timed steps per variant (GPU 30, CPU 3)")
    p.add_argument("--no-torchao", action="store_true", help="skip the torchao comparison")
    p.add_argument("--large-only", action="store_true",
                   help="on CUDA, only the Llama3-8B-shaped block (not the small one)")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="results CSV to append to")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="start no new variant after this many seconds (compilation dominates)")
    p.add_argument("--keep-weight-variants", action="store_true",
                   help=f"also time {', '.join(KEEP_WEIGHT_RECIPES)} with keep_quantized_weight "
                        f"(recipe{KEEP_WEIGHT}, RC-14): one cast of w less per step against one "
                        f"byte per weight element kept for backward")
    p.add_argument("--fast-grads-variants", action="store_true",
                   help=f"also time {', '.join(FAST_GRADS_RECIPES)} with fast_accum_grads=True "
                        f"(recipe{FAST_GRADS}, RC-15): the gradient GEMMs with fast accumulation")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    if device.type == "cuda":
        shapes = ([SHAPES["small"]] if args.small else
                  [SHAPES["llama3-8b"]] if args.large_only else [SHAPES["llama3-8b"], SHAPES["small"]])
    elif not args.small:
        print("benchmarks.block: the Llama3-8B-shaped block needs CUDA (device is cpu). "
              "For a CPU smoke run use: python -m benchmarks.block --small --device cpu --compile eager",
              file=sys.stderr)
        return 2
    else:
        shapes = [SHAPES["tiny"]]
        print("benchmarks.block: CPU run on the 'tiny' block (reference backend; timings are not "
              "speed claims)")
    recipes = parse_recipes(args.recipes)
    global COMPILE_MODE
    COMPILE_MODE = args.compile_mode
    modes = ["eager", "compiled"] if args.compile == "both" else [args.compile]   # eager is cheap: first
    deadline = time.monotonic() + args.budget_s
    reps = args.reps or (30 if device.type == "cuda" else 3)
    warmup = 5 if device.type == "cuda" else 1
    results = []
    for shape in shapes:
        results += run_shape(shape, recipes, modes, device, reps, warmup, not args.no_torchao,
                             deadline=deadline, keep_weight_variants=args.keep_weight_variants,
                             fast_grads_variants=args.fast_grads_variants)
    path = common.append_rows(csv_rows(results), args.csv)
    skipped = [m for m in results if m.skipped]
    if skipped:
        print("\nskipped:")
        for m in skipped:
            print(f"  {m.shape.split(':')[0]} {m.mode} {m.impl} {m.recipe}: {m.skipped}")
    print(f"\nappended {len(csv_rows(results))} rows to {path}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
