"""Does a cast pass gain from reading first the part of x that L2 still holds? (GPU only.)

A producer writes x (t = a * b, as the MLP's h = silu(a) * b is written), then the float8 casts
run as a training step runs them: the tensorwise cast into both layouts with its amax given
(compiled steps: the amax comes fused into the producer), the same with its own amax pass
(eager steps), and the rowwise recipe's dual cast (its amax pass, then the cast). Each is timed
with CUDA events around the cast's kernels only, for every tile order of the cast pass
(fast/cast_float8.py TILE_ORDER), row order of the amax pass (fast/amax.py AMAX_ROW_ORDER) and
load eviction policy, interleaved rep by rep; "flushed" writes 256 MB between the producer and
the cast (no L2 reuse: what the order cannot beat). Bits are checked against the first
variant. Prints a table: median us and the ratio to the shipped order.

    python3 -m benchmarks.l2_order [--reps 40] [--shapes 8192x4096,8192x14336]
"""
import argparse
import statistics

import torch

import fast.amax as amax_mod
import fast.cast_float8 as cast_mod

FMT = "float8_e4m3fn"
VARIANTS = (  # (name, cast tile order, amax row order, load eviction policy)
    ("columns", "columns", "down", ""),
    ("rows", "rows", "down", ""),
    ("rows_back", "rows_back", "down", ""),
    ("rows_back+evict", "rows_back", "down", "evict_first"),
    ("amax_up+rows", "rows", "up", ""),
    ("amax_up+columns", "columns", "up", ""),
)


def _set(variant):
    _, order, amax_order, evict = variant
    cast_mod.TILE_ORDER, amax_mod.AMAX_ROW_ORDER, cast_mod.LOAD_EVICT = order, amax_order, evict


def _paths(t, amax):
    return {
        "tensorwise both, amax given": lambda: cast_mod.quantize_float8_tensorwise_both(
            t, FMT, amax=amax, with_dequant=True),
        "tensorwise both + amax pass": lambda: cast_mod.quantize_float8_tensorwise_both(
            t, FMT, with_dequant=True),
        "dual (rowwise) + amax pass": lambda: cast_mod.quantize_float8_dual(
            t, FMT, with_dequant=True),
    }


def _bits(outs):
    return [o.view(torch.uint8) if o.element_size() == 1 else o for o in outs]


def run(shapes, reps):
    rows = []
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for R, C in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(R, C, device="cuda", dtype=torch.bfloat16, generator=g)
        b = torch.randn(R, C, device="cuda", dtype=torch.bfloat16, generator=g)
        t = torch.empty_like(a)
        torch.mul(a, b, out=t)
        amax = t.abs().amax().float()
        for path, fn in _paths(t, amax).items():
            times = {}
            ref = None
            cases = [(v, False) for v in VARIANTS] + [(VARIANTS[0], True)]
            for rep in range(reps + 3):
                for variant, flushed in cases:
                    _set(variant)
                    torch.mul(a, b, out=t)
                    if flushed:
                        flush.fill_(rep & 0xFF)
                    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                    start.record()
                    out = fn()
                    end.record()
                    if rep == 0:
                        bits = _bits(out)
                        if ref is None:
                            ref = bits
                        elif not all(torch.equal(x, y) for x, y in zip(ref, bits)):
                            raise AssertionError(f"{path} {variant[0]} at {R}x{C}: bits differ")
                    if rep >= 3:
                        times.setdefault(variant[0] + (" (flushed)" if flushed else ""),
                                         []).append((start, end))
            torch.cuda.synchronize()
            base = None
            for name, evs in times.items():
                us = statistics.median(s.elapsed_time(e) for s, e in evs) * 1e3
                base = base or us
                rows.append((f"{R}x{C}", path, name, us, base / us))
    _set(VARIANTS[0])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--shapes", default="8192x4096,8192x14336,8192x1024,14336x4096")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows = run(shapes, args.reps)
    print(f"{'shape':>11}  {'path':<28} {'variant':<26} {'us':>8} {'x columns':>9}")
    for shape, path, name, us, ratio in rows:
        print(f"{shape:>11}  {path:<28} {name:<26} {us:8.1f} {ratio:9.3f}")


if __name__ == "__main__":
    main()
