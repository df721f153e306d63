"""Settings sweep of the per-group float8 column cast (fast/cast_grouped.py GROUP_CAST: BLOCK_R,
BLOCK_C, AMAX_BLOCK_R, warps, programs per SM) on the MoE shape of moe_bench (E=8, 16384
tokens, K=4096, N=2048): token groups of x (M, K) and of g (M, N), and the expert weights
w (E, N, K). Each setting is checked bit for bit against the default's output, then timed as
CUDA-graph replays (GPU time, no host time; the padded offsets are computed once outside).
Prints a table last (fastest first per use) and appends rows to
benchmarks/results/results.csv.

    python -m benchmarks.group_cast_sweep [--budget-s 150] [--top 5] [--experts E]
                                          [--stages | --grid-stages N]

--experts E splits the same 16384 tokens into E groups (the weights become (E, N, K)).
--stages times the default settings only, each with the row loops' software pipelining
(GROUP_CAST_STAGES) None, 2, 3 and 4.
--grid-stages N times the defaults with stages None and N, then a smaller grid (the tiles,
programs per SM 0, 1 and 2, 4 and 8 warps) all with stages N.
--t-from-x times the defaults and the tiles (4 warps, one item per program) with loop 2
encoding x.T from the transposed 16-bit tile (GROUP_CAST_T_FROM_X) and from the byte codes.
GB/s counts the bytes one cast must move when both reads of x come from HBM: two reads of
the bf16 input and one write of the float8 payload (5 bytes an element).
"""
import argparse
import itertools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (append_rows, capture_cuda_graph, format_table,  # noqa: E402
                               module_settings, time_fn)
from benchmarks.moe_bench import moe_inputs  # noqa: E402

# (BLOCK_R, BLOCK_C); the 128- and 256-row tiles first (thirteenth session: full 128-byte
# lines of x.T per tile; the others were timed in the eighth and ninth sessions)
TILES = ((128, 64), (256, 32), (256, 64), (128, 128), (32, 64), (64, 64), (16, 128),
         (32, 128), (64, 32), (128, 32))


STAGES = (None, 2, 3, 4)


def settings(stages=False, grid_stages=None, t_from_x=False):
    """(label, GROUP_CAST setting, GROUP_CAST_STAGES, GROUP_CAST_T_FROM_X) to time: the
    defaults first (stages: only they, with each of STAGES), then the grid (grid_stages: the
    defaults with stages None and grid_stages, then the pipelined grid; t_from_x: the defaults
    and the tiles, each with both encodes)."""
    from qtrain.fast import cast_grouped as fg
    seen = []
    for s in (fg.GROUP_CAST["tokens"], fg.GROUP_CAST["experts"]):
        if s not in seen:
            seen.append(s)
    if t_from_x:
        seen += [(br, bc, br, 4, 0) for br, bc in TILES if (br, bc, br, 4, 0) not in seen]
        return [(f"{s} t_from_x={t}", s, fg.GROUP_CAST_STAGES, t) for s in seen
                for t in (False, True)]
    tfx = fg.GROUP_CAST_T_FROM_X
    return [v + (tfx,) for v in _settings_stages(seen, stages, grid_stages)]


def _settings_stages(seen, stages, grid_stages):
    from qtrain.fast import cast_grouped as fg
    if stages:
        return [(f"{s} stages={st}", s, st) for s in seen for st in STAGES]
    if grid_stages is not None:
        out = [(f"{s} stages={st}", s, st) for s in seen for st in (None, grid_stages)]
        for (br, bc), warps, per_sm in itertools.product(TILES, (4, 8), (0, 1, 2)):
            s = (br, bc, br, warps, per_sm)
            if s not in seen:
                seen.append(s)
                out.append((f"{s} stages={grid_stages}", s, grid_stages))
        return out
    for (br, bc), tall, warps, per_sm in itertools.product(TILES, (False, True), (4, 8), (0, 2)):
        abr = max(br, 8192 // bc) if tall else br          # loop 1 on 16 KB bf16 tiles
        for s in ((br, bc, abr, warps, per_sm), (br, bc, 256, warps, per_sm)):
            if s not in seen:
                seen.append(s)
    return [(str(s), s, fg.GROUP_CAST_STAGES) for s in seen]


def graph_us(fn, calls=20, replays=5):
    """GPU microseconds per fn() call: `calls` calls captured in one CUDA graph, the graph's
    replays timed by benchmarks.common.time_fn (median)."""
    graph, _ = capture_cuda_graph(lambda: [fn() for _ in range(calls)], params=(), warmup=1)
    ms = time_fn(graph.replay, warmup=1, reps=replays, device="cuda")["median"]
    del graph
    return ms * 1e3 / calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=150.0)
    p.add_argument("--top", type=int, default=5, help="rows per use in the printed table")
    p.add_argument("--experts", type=int, default=None, help="groups (default moe_bench's E)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--stages", action="store_true", help="the defaults with each loop pipelining")
    how.add_argument("--grid-stages", type=int, default=None,
                     help="the defaults, then a grid of settings, with this loop pipelining")
    how.add_argument("--t-from-x", action="store_true",
                     help="the defaults and the tiles, x.T encoded from x or from the codes")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("group_cast_sweep: no CUDA device; skipped")
        return 0
    from benchmarks import moe_bench
    from qtrain.fast import cast_grouped as fg
    from qtrain.grouping import padded_offsets
    shape = dict(moe_bench.SHAPE, E=args.experts or moe_bench.SHAPE["E"])
    with module_settings(moe_bench, SHAPE=shape):
        x, w, g, offs = moe_inputs()
    pends = padded_offsets(offs, 16)
    fmt = "float8_e4m3fn"
    jobs = {"tokens x (M, K)": (x, lambda: fg.quantize_float8_grouped_t(
                x, offs, 16, fmt, True, padded_offs=pends, with_dequant=True)),
            "tokens g (M, N)": (g, lambda: fg.quantize_float8_grouped_t(
                g, offs, 16, fmt, True, padded_offs=pends, with_dequant=True)),
            "experts w (E, N, K)": (w, lambda: fg.quantize_float8_experts_t(
                w, fmt, True, with_dequant=True))}
    default = dict(fg.GROUP_CAST)
    # what ships for each use at this shape: token groups take the experts' wide tile when it
    # fills WIDE_TILE_WAVES waves (fg._group_cast_setting), so x's setting may be "experts"
    shipped = {label: fg._group_cast_setting(label.split()[0], shape["E"], src.shape[-1],
                                             src.device)
               for label, (src, _) in jobs.items()}
    want = {label: [t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32)
                    for t in fn()] for label, (_, fn) in jobs.items()}
    results, rows, t0 = {label: [] for label in jobs}, [], time.time()
    dev = torch.cuda.get_device_name()
    for name, setting, stages, t_from_x in settings(args.stages, args.grid_stages, args.t_from_x):
        if time.time() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: later settings not timed")
            break
        for label, (src, fn) in jobs.items():
            try:
                with module_settings(fg, GROUP_CAST={"tokens": setting, "experts": setting},
                                     GROUP_CAST_STAGES=stages, GROUP_CAST_T_FROM_X=t_from_x):
                    got = fn()
                    same = all(torch.equal(a.view(b.dtype), b)
                               for a, b in zip(got, want[label]))
                    us = graph_us(fn)
            except Exception as e:    # noqa: BLE001 (a setting that does not compile: report)
                print(f"{label} {name}: {type(e).__name__}: {str(e)[:160]}")
                continue
            gbs = 5 * src.numel() / (us * 1e-6) / 1e9
            results[label].append((us, name, gbs, same))
            rows.append(dict(op="group_cast_sweep", backend="fast", recipe="rowwise",
                             shape=f"{label} {name}", metric="us graph (bits same)",
                             value=f"{us:.1f} ({same})"))
    append_rows(rows)
    table = []
    for label, res in results.items():
        res.sort(key=lambda r: r[0])
        mine = str(shipped[label])
        names = (mine, f"{mine} stages={fg.GROUP_CAST_STAGES}",
                 f"{mine} t_from_x={fg.GROUP_CAST_T_FROM_X}")
        is_default = names.__contains__
        base = [r for r in res if is_default(r[1])]
        for us, name, gbs, same in res[:args.top] + [r for r in base if r not in res[:args.top]]:
            tag = " (shipped)" if is_default(name) else ""
            table.append([label, name + tag, f"{us:.1f}", f"{gbs:.0f}", "yes" if same else "NO"])
    bad = [(label, r[1]) for label, res in results.items() for r in res if not r[3]]
    print(f"\ngroup_cast_sweep on {dev}, torch {torch.__version__}, shape {shape}, "
          f"{sum(len(r) for r in results.values())} timings in {time.time() - t0:.0f} s; "
          f"GROUP_CAST: {default}; shipped at this shape: {shipped}")
    print(format_table(["use", "setting", "us (graph)", "GB/s (5 B/elem)", "bits = default"],
                       table))
    if bad:
        print(f"BITS DIFFER for {len(bad)} settings: {bad[:8]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
