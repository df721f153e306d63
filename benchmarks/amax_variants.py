"""Where does the amax pass lose its bandwidth? Times variants of a max-|x| reduction over one
(8192, 8192) bf16 tensor on the GPU, beside torch's reduction and copy, and checks that every
variant gives the bits of the shipped pass. An experiment for issue 8 (the tensorwise cast is
an amax pass plus a cast pass; the amax pass alone ran at 38% of copy on 2026-12-01).

    python benchmarks/amax_variants.py [--size 8192] [--in-flight]

Variants: tile shape, grid order (row tiles fastest, as shipped, or column tiles fastest),
atomic semantics (acq_rel, Triton's default, or relaxed), reduction order, warps, and a flat
1-D pass for the tensor amax."""
import argparse
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import module_settings  # noqa: E402
from qtrain.fast import amax  # noqa: E402
from qtrain.fast.amax import amax_bits_2d  # noqa: E402
from qtrain.fast.cast_float8 import quantize_float8_tensorwise  # noqa: E402


@triton.jit
def _amax_2d(x_ptr, R, C, out_ptr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
             COL_FAST: tl.constexpr, RELAXED: tl.constexpr, ROWS_FIRST: tl.constexpr):
    if COL_FAST:
        pid_c = tl.program_id(0)
        pid_r = tl.program_id(1)
    else:
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask, other=0)
    bits = ((x.to(tl.int32) << 16) & 0x7FFFFFFF)
    if ROWS_FIRST:
        m = tl.max(tl.max(bits, axis=1), axis=0)
    else:
        m = tl.max(tl.max(bits, axis=0), axis=0)
    if RELAXED:
        tl.atomic_max(out_ptr, m, sem="relaxed")
    else:
        tl.atomic_max(out_ptr, m)


@triton.jit
def _amax_flat(x_ptr, N, out_ptr, BLOCK: tl.constexpr, RELAXED: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0)
    m = tl.max((x.to(tl.int32) << 16) & 0x7FFFFFFF, axis=0)
    if RELAXED:
        tl.atomic_max(out_ptr, m, sem="relaxed")
    else:
        tl.atomic_max(out_ptr, m)


@triton.jit
def _amax_loop(x_ptr, R, C, out_ptr, N_ROW_TILES, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               UNROLL: tl.constexpr, STAGES: tl.constexpr):
    """The shipped loop (tensor amax only) with UNROLL row tiles loaded per iteration and the
    loop software-pipelined over STAGES: more bytes in flight per warp."""
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.int32)
    for rt in tl.range(tl.program_id(0) * UNROLL, N_ROW_TILES, tl.num_programs(0) * UNROLL,
                       num_stages=STAGES):
        for u in tl.static_range(UNROLL):
            rows = (rt + u) * BLOCK_R + tl.arange(0, BLOCK_R)
            mask = (rows[:, None] < R) & (cols[None, :] < C)
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask,
                        other=0)
            acc = tl.maximum(acc, (x.to(tl.int32) << 16) & 0x7FFFFFFF)
    tl.atomic_max(out_ptr, tl.max(tl.max(acc, axis=1), axis=0), sem="relaxed")


def sweep_in_flight(x):
    """Bytes in flight: is the pass's ~2.9 TB/s the read limit of this GPU, or too few loads
    outstanding per SM? Unrolled and software-pipelined loops, wider flat programs, beside
    torch's reductions; bits checked against torch."""
    n_sm = torch.cuda.get_device_properties(x.device).multi_processor_count
    R, C = x.shape
    xi, nbytes = x.view(torch.int16), x.numel() * 2
    want = int((x.float().view(torch.int32) & 0x7FFFFFFF).max())
    print(f"torch x.abs().amax(): {_time(lambda: x.abs().amax()):.1f} us; "
          f"torch x.amax(): {_time(lambda: x.amax()):.1f} us; "
          f"torch int16 sum: {_time(lambda: xi.sum(dtype=torch.int32)):.1f} us")
    for block in (8192, 16384, 32768):
        for warps in (4, 8, 16):
            def fn(block=block, warps=warps):
                out = torch.zeros(1, dtype=torch.int32, device="cuda")
                _amax_flat[(triton.cdiv(x.numel(), block),)](xi, x.numel(), out, BLOCK=block,
                                                             RELAXED=True, num_warps=warps)
                return out
            ok = int(fn()) == want
            us = _time(fn)
            print(f"flat 1-D, {block} per program, {warps} warps: {us:.1f} us, "
                  f"{nbytes / us / 1e3:.0f} GB/s {'ok' if ok else 'MISMATCH'}", flush=True)
    for (br, bc), unroll, stages, per_sm, warps in [
            (t, u, s, p, w) for t in ((32, 128), (64, 128), (32, 256)) for u in (1, 2, 4)
            for s in (1, 3) for p in (4, 8) for w in (4, 8)]:
        n_row_tiles, n_col = triton.cdiv(R, br), triton.cdiv(C, bc)
        programs = max(1, min(n_row_tiles // unroll, triton.cdiv(per_sm * n_sm, n_col)))
        def fn(br=br, bc=bc, unroll=unroll, stages=stages, warps=warps, programs=programs,
               n_row_tiles=n_row_tiles, n_col=n_col):
            out = torch.zeros(1, dtype=torch.int32, device="cuda")
            _amax_loop[(programs, n_col)](xi, R, C, out, n_row_tiles, BLOCK_R=br, BLOCK_C=bc,
                                          UNROLL=unroll, STAGES=stages, num_warps=warps)
            return out
        try:
            ok = int(fn()) == want
            us = _time(fn)
        except Exception as e:                       # a config Triton cannot compile
            print(f"loop {br}x{bc} unroll {unroll} stages {stages} {per_sm}/SM {warps} warps: "
                  f"{type(e).__name__}", flush=True)
            continue
        print(f"loop {br}x{bc} unroll {unroll} stages {stages} {per_sm}/SM {warps} warps: "
              f"{us:.1f} us, {nbytes / us / 1e3:.0f} GB/s {'ok' if ok else 'MISMATCH'}",
              flush=True)


def _time(fn):
    return do_bench(fn, warmup=25, rep=200) * 1e3          # us


def _settings(tile, per_sm, warps):
    """The amax pass's settings, those with row maxima too, set to one (tile, programs/SM,
    warps) inside the block."""
    return module_settings(amax, AMAX_TILE=tile, AMAX_PROGRAMS_PER_SM=per_sm, AMAX_WARPS=warps,
                           AMAX_ROWS_TILE=tile, AMAX_ROWS_PROGRAMS_PER_SM=per_sm)


MODES = {"tensor": dict(tensor=True), "columns": dict(cols=True),
         "rows+columns": dict(rows=True, cols=True)}


def sweep_shipped(x, configs, out):
    """The shipped pass (fast.amax.amax_bits_2d) under each (tile, programs/SM, warps), every
    mode; bits checked against torch's max of the |x| bits."""
    bits = (x.float().view(torch.int32) & 0x7FFFFFFF)
    want = {"tensor": bits.max().reshape(1), "rows": bits.amax(dim=1), "cols": bits.amax(dim=0)}
    for tile, per_sm, warps in configs:
        with _settings(tile, per_sm, warps):
            for mode, kw in MODES.items():
                t, r, c = amax_bits_2d(x, **kw)
                ok = all(torch.equal(got, want[k]) for k, got in
                         (("tensor", t), ("rows", r), ("cols", c)) if got is not None)
                us = _time(lambda: amax_bits_2d(x, **kw))
                out.append((tuple(x.shape), mode, tile, per_sm, warps, us,
                            x.numel() * 2 / us / 1e3, "ok" if ok else "MISMATCH"))
                print(*out[-1], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--in-flight", action="store_true",
                    help="only the bytes-in-flight sweep (sweep_in_flight)")
    args = ap.parse_args()
    n = args.size
    torch.manual_seed(0)
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    xi = x.view(torch.int16)
    nbytes = x.numel() * 2
    dst = torch.empty_like(x)
    print(f"amax variants on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    copy_us = _time(lambda: dst.copy_(x))
    print(f"torch copy_ ({n}, {n}) bf16: {copy_us:.1f} us, {2 * nbytes / copy_us / 1e3:.0f} GB/s")
    print(f"torch aminmax: {_time(lambda: torch.aminmax(x)):.1f} us")
    if args.in_flight:
        sweep_in_flight(x)
        return
    # 1. the reduction order of one tile (what made the pass slow, 2026-12-01)
    for rows_first in (False, True):
        for relaxed in (False, True):
            def fn(rows_first=rows_first, relaxed=relaxed):
                out = torch.zeros(1, dtype=torch.int32, device="cuda")
                _amax_2d[(n // 32, n // 128)](xi, n, n, out, BLOCK_R=32, BLOCK_C=128,
                                              COL_FAST=False, RELAXED=relaxed,
                                              ROWS_FIRST=rows_first)
                return out
            us = _time(fn)
            print(f"one 32x128 tile per program, {'axis 1' if rows_first else 'axis 0'} first, "
                  f"{'relaxed' if relaxed else 'acq_rel'} atomic: {us:.1f} us, "
                  f"{nbytes / us / 1e3:.0f} GB/s")
    for block in (4096, 8192):
        def fn(block=block):
            out = torch.zeros(1, dtype=torch.int32, device="cuda")
            _amax_flat[(triton.cdiv(x.numel(), block),)](xi, x.numel(), out, BLOCK=block,
                                                         RELAXED=True, num_warps=8)
            return out
        us = _time(fn)
        print(f"flat 1-D, {block} per program: {us:.1f} us, {nbytes / us / 1e3:.0f} GB/s")
    # 2. the shipped pass under its settings
    rows = []
    tiles = ((32, 128), (64, 128), (32, 256), (16, 512), (8, 1024))
    sweep_shipped(x, [(t, p, w) for t in tiles for p in (0, 4, 8, 16) for w in (4, 8)], rows)
    best = {}
    for r in rows:
        key = (r[2], r[3], r[4])
        best[key] = best.get(key, 0) + r[5]
    top = sorted(best, key=best.get)[:4]
    for shape in ((8192, 4096), (4096, 14336), (8192, 14336)):
        sweep_shipped(torch.randn(shape, device="cuda", dtype=torch.bfloat16), top, rows)
    amax_given = x.float().abs().amax()
    whole = _time(lambda: quantize_float8_tensorwise(x, "float8_e4m3fn"))
    cast_only = _time(lambda: quantize_float8_tensorwise(x, "float8_e4m3fn", amax=amax_given))
    print(f"\nshipped settings: tile {amax.AMAX_TILE}, {amax.AMAX_PROGRAMS_PER_SM} programs/SM, "
          f"{amax.AMAX_WARPS} warps (with rows: {amax.AMAX_ROWS_TILE}, "
          f"{amax.AMAX_ROWS_PROGRAMS_PER_SM}/SM); tensorwise cast whole {whole:.1f} us "
          f"({(2.5 * nbytes) / whole / 1e3:.0f} GB/s moved), cast pass alone {cast_only:.1f} us")
    print(f"\n{'shape':14s} {'mode':13s} {'tile':10s} {'/SM':>4s} {'warps':>5s} {'us':>7s} "
          f"{'GB/s':>6s} bits   (sum over modes at ({n}, {n}), best first)")
    for key in sorted(best, key=best.get)[:12]:
        for r in rows:
            if (r[2], r[3], r[4]) == key:
                print(f"{str(r[0]):14s} {r[1]:13s} {str(r[2]):10s} {r[3]:4d} {r[4]:5d} "
                      f"{r[5]:7.1f} {r[6]:6.0f} {r[7]}")


if __name__ == "__main__":
    main()
