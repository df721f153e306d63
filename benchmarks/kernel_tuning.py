"""Tuning run of the qtrain.fast kernels on one GPU: (a) bits of every new cast vs
qtrain.reference and every product variant vs the MM-4 bound, (b) old-vs-new timings (casts on
8192x8192 in GB/s and % of a measured copy, products on 8192^3 and two Llama shapes in TFLOP/s
and x bf16 mm). Short table last; CSV to $OUT/kernel_tuning.csv. Target: < 4 minutes on an H200.

    python benchmarks/kernel_tuning.py
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_fast_check as G  # noqa: E402  (edge inputs, bit compare, MM-4 ratio, operands)

# the tuning CSV keeps its "median" column (benchmarks/roofline.py reads either)
LOG = G.RunLog(float(os.environ.get("QTRAIN_TUNING_BUDGET_S", "220")), value_key="median",
               traceback_limit=0)
T0, ROWS, record, guarded = LOG.t0, LOG.rows, LOG.record, LOG.guarded
# today's H200 numbers of the previous kernels (benchmarks/results, gpu_fast_check.log),
# GB/s on minimal bytes (read x once, write payload + scales) and TFLOP/s on 8192^3
OLD = {"float8 tensorwise": 2059, "float8 rowwise": 1985, "float8 columnwise": 1411,
       "float8 dual row+col.T": 1436, "mx dim-1 floor": 3691, "mx dim0 transposed": 1544,
       "int8 rowwise rne": 1929, "int8 rowwise stochastic": 774, "int8 columnwise rne": 1097,
       "blockwise 1x128": 3239, "blockwise 128x128": 3160}


def bench(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=5, rep=40, return_mode="median")


# ---------------------------------------------------------------- (a) correctness
def check_casts():
    from qtrain import reference as R
    from qtrain.fast import cast_blockwise, cast_float8, cast_int8, cast_mx
    shape = (1024, 4096)
    xn = G.edge_input(shape, torch.bfloat16, seed=3)
    x = G.torch_of(xn, torch.bfloat16)
    u = np.random.default_rng(2).random(shape, dtype=np.float32)
    ut = torch.from_numpy(u).cuda()
    rd, rs = R.quantize_float8(xn, "float8_e4m3fn", -1, True)
    cd, cs = R.quantize_float8(xn, "float8_e4m3fn", 0, True)
    md, ms = R.quantize_mx(xn, "float8_e4m3fn", 32, 0, "rceil")
    cases = [
        ("float8 tensorwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn"),
         lambda: R.quantize_float8(xn, "float8_e4m3fn", None, False)),
        ("float8 tensorwise e5m2fnuz", lambda: cast_float8.quantize_float8(x, "float8_e5m2fnuz"),
         lambda: R.quantize_float8(xn, "float8_e5m2fnuz", None, False)),
        ("float8 rowwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True),
         lambda: (rd, rs)),
        ("float8 columnwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn", 0, True),
         lambda: (cd, cs)),
        ("float8 columnwise.T", lambda: cast_float8.quantize_float8_columnwise(
            x, "float8_e4m3fn", True, transposed=True),
         lambda: (np.ascontiguousarray(cd.T), np.ascontiguousarray(cs.T))),
        ("float8 dual", lambda: cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True),
         lambda: (rd, rs, np.ascontiguousarray(cd.T), np.ascontiguousarray(cs.T))),
        ("mx dim-1 floor", lambda: cast_mx.quantize_mx(x, "float8_e4m3fn", 32, -1, "floor"),
         lambda: R.quantize_mx(xn, "float8_e4m3fn", 32, -1, "floor")),
        ("mx dim0", lambda: cast_mx.quantize_mx(x, "float8_e4m3fn", 32, 0, "rceil"),
         lambda: (md, ms)),
        ("mx dim0 transposed", lambda: cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil",
                                                                transposed=True),
         lambda: (np.ascontiguousarray(md.T), np.ascontiguousarray(ms.T))),
        ("int8 rowwise rne", lambda: cast_int8.quantize_int8(x, -1),
         lambda: R.quantize_int8(xn, -1)),
        ("int8 rowwise noise", lambda: cast_int8.quantize_int8(x, -1, ut),
         lambda: R.quantize_int8(xn, -1, u)),
        ("int8 columnwise noise", lambda: cast_int8.quantize_int8(x, 0, ut),
         lambda: R.quantize_int8(xn, 0, u)),
        ("int8 tensorwise", lambda: cast_int8.quantize_int8(x, None),
         lambda: R.quantize_int8(xn, None)),
        ("blockwise 1x128", lambda: cast_blockwise.quantize_blockwise(x, (1, 128)),
         lambda: R.quantize_blockwise(xn, (1, 128))),
        ("blockwise 128x128", lambda: cast_blockwise.quantize_blockwise(x, (128, 128)),
         lambda: R.quantize_blockwise(xn, (128, 128))),
    ]
    for name, fast, ref in cases:
        def one():
            total, first = 0, None
            for got, exp in zip(fast(), ref()):
                n, where = G.mismatches(G.to_np(got), exp)
                total += abs(n)
                first = first or (where if n else None)
            record("check cast", name, shape, "mismatches", total,
                   "ok" if total == 0 else f"FAIL first {first}")
        guarded("check cast", name, shape, one)

    def seeded():
        a, _ = cast_int8.quantize_int8(x, -1, seed=7)
        b, _ = cast_int8.quantize_int8(x, -1, seed=7)
        r, _ = cast_int8.quantize_int8(x, -1)
        ok = torch.equal(a, b) and (a.int() - r.int()).abs().max().item() <= 1
        record("check cast", "int8 stochastic seeded", shape, "reproducible", ok,
               "ok" if ok else "FAIL")
    guarded("check cast", "int8 stochastic seeded", shape, seeded)


def product_variants(kind):
    """(name, fn(a, da, b, db, out_dtype)) of every product variant worth checking/timing."""
    from qtrain.fast import scaled_mm as S
    runs = [("routed", S.scaled_mm_nt),
            ("triton tuned", lambda *o: S.scaled_mm_nt_triton(*o)),
            ("triton v1", lambda *o: S.scaled_mm_nt_triton(*o, variant="v1"))]
    cls = {"mx": "promote32", "blockwise": "promote128", "int8": "full"}.get(kind)
    for c in S._CONFIGS.get(cls, []):
        cfg = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        name = "cfg {BLOCK_M}x{BLOCK_N} sub{SUB_K}x{SPLIT}".format(**c.kwargs) + \
            f" w{c.num_warps}s{c.num_stages}"
        runs.append((name, lambda *o, cfg=cfg: S.scaled_mm_nt_triton(*o, config=cfg)))
    if kind == "rowwise":
        runs.append(("old unit-scale+post", _rowwise_unit_scale))
    return runs


def _rowwise_unit_scale(a, da, b, db, out_dtype):
    one = torch.ones((), dtype=torch.float32, device=a.device)
    out = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    return out.mul_(da).mul_(db.reshape(1, -1)).to(out_dtype)


def check_products():
    for kind in ("mx", "blockwise", "int8", "rowwise", "tensorwise"):
        for (M, N, K) in ((512, 384, 1024), (17, 256, 4096), (512, 384, 16), (17, 48, 16)):
            if kind in ("mx", "blockwise") and K == 16:
                continue
            def one():
                ops = G.product_operands(kind, M, N, K)
                worst, bad = 0.0, []
                for name, fn in product_variants(kind):
                    for od in (torch.float32, torch.bfloat16):
                        try:
                            out = fn(*ops, od)
                            torch.cuda.synchronize()
                            r = G.mm4_ratio(*ops, out, od, 23)
                        except Exception as e:  # noqa: BLE001
                            bad.append(f"{name}: {type(e).__name__} {str(e)[:80]}")
                            continue
                        worst = max(worst, r)
                        if not r <= 1:
                            bad.append(f"{name} {str(od)[6:]} ratio {r:.3g}")
                record("check product", kind, (M, N, K), "worst MM4 ratio", f"{worst:.3g}",
                       "ok" if not bad else "FAIL " + "; ".join(bad)[:300])
            guarded("check product", kind, (M, N, K), one)


# ---------------------------------------------------------------- (b) timings
def time_casts():
    from qtrain.fast import amax, cast_blockwise, cast_float8, cast_int8, cast_mx, common
    from benchmarks.common import module_settings
    M, K = 8192, 8192
    n = M * K
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_gbs = 2 * 2 * n / bench(lambda: y.copy_(x)) / 1e6
    record("torch copy_", "bf16", (M, K), "GB/s", f"{copy_gbs:.0f}")
    f8 = "float8_e4m3fn"
    # (name, fn, minimal bytes (x once + outputs), bytes actually moved)
    cases = [
        ("float8 tensorwise", lambda: cast_float8.quantize_float8(x, f8), 3 * n, 5 * n),
        ("float8 rowwise", lambda: cast_float8.quantize_float8(x, f8, -1, True), 3 * n, 3 * n),
        ("float8 columnwise", lambda: cast_float8.quantize_float8(x, f8, 0, True), 3 * n, 5 * n),
        ("float8 columnwise.T", lambda: cast_float8.quantize_float8_columnwise(
            x, f8, True, transposed=True), 3 * n, 5 * n),
        ("float8 dual row+col.T", lambda: cast_float8.quantize_float8_dual(x, f8, True), 4 * n, 6 * n),
        ("mx dim-1 floor", lambda: cast_mx.quantize_mx(x, f8, 32, -1, "floor"), 3 * n, 3 * n),
        ("mx dim0 transposed", lambda: cast_mx.quantize_mx_dim0(x, f8, 32, "rceil", True), 3 * n, 3 * n),
        ("int8 rowwise rne", lambda: cast_int8.quantize_int8(x, -1), 3 * n, 3 * n),
        ("int8 rowwise stochastic", lambda: cast_int8.quantize_int8(x, -1, seed=1), 3 * n, 3 * n),
        ("int8 columnwise rne", lambda: cast_int8.quantize_int8(x, 0), 3 * n, 5 * n),
        ("int8 columnwise stochastic", lambda: cast_int8.quantize_int8(x, 0, seed=1), 3 * n, 5 * n),
        ("blockwise 1x128", lambda: cast_blockwise.quantize_blockwise(x, (1, 128)), 3 * n, 3 * n),
        ("blockwise 128x128", lambda: cast_blockwise.quantize_blockwise(x, (128, 128)), 3 * n, 3 * n),
    ]

    def timed(name, fn, minimal, moved, tag="new"):
        ms = bench(fn)
        gbs, real = minimal / ms / 1e6, moved / ms / 1e6
        old = OLD.get(name)
        record("cast " + name, tag, (M, K), "GB/s moved (%copy)",
               f"{real:.0f} ({100 * real / copy_gbs:.0f}%) min-bytes {gbs:.0f} "
               f"({100 * gbs / copy_gbs:.0f}%)" + (f" old {old} ({100 * old / copy_gbs:.0f}%)"
                                                  if old and tag == "new" else "")
               + f" {ms * 1e3:.0f}us")
    for name, fn, minimal, moved in cases:
        guarded("cast " + name, "new", (M, K), lambda: timed(name, fn, minimal, moved))
    # variants: the two-loop rowwise (second read from L2) and the amax pass's rows per program
    def two_loop():
        with module_settings(common, ROW_IN_REGISTERS=0):
            timed("float8 rowwise", cases[1][1], 3 * n, 5 * n, "two-loop")
            timed("int8 rowwise rne", cases[7][1], 3 * n, 5 * n, "two-loop")
    guarded("cast rowwise", "two-loop", (M, K), two_loop)
    for per_sm in (4, 16):
        def amax_var(per_sm=per_sm):
            with module_settings(amax, AMAX_PROGRAMS_PER_SM=per_sm):
                timed("float8 columnwise", cases[2][1], 3 * n, 5 * n, f"amax {per_sm} programs/SM")
                timed("float8 tensorwise", cases[0][1], 3 * n, 5 * n, f"amax {per_sm} programs/SM")
        guarded("cast amax", f"{per_sm} programs/SM", (M, K), amax_var)


def time_products():
    shapes = [(8192, 8192, 8192), (8192, 14336, 4096), (8192, 4096, 14336)]   # (M, N, K)
    for si, (M, N, K) in enumerate(shapes):
        flop = 2 * M * N * K
        a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        bf16_tf = flop / bench(lambda: a @ b.t()) / 1e9
        record("torch mm", "bf16", (M, N, K), "TFLOP/s", f"{bf16_tf:.0f}")
        del a, b
        for kind in ("mx", "blockwise", "int8", "rowwise", "tensorwise"):
            def one(kind=kind):
                ops = G.product_operands(kind, M, N, K)
                runs = product_variants(kind)
                if si > 0:      # Llama shapes: shipped paths and the old kernel only
                    runs = [r for r in runs if not r[0].startswith("cfg")]
                if kind == "tensorwise":
                    runs = runs[:1]
                if kind in ("mx", "blockwise") and si > 0:
                    runs = [r for r in runs if r[0] != "routed"]
                ods = (torch.bfloat16, torch.float32) if kind == "rowwise" else (torch.bfloat16,)
                for name, fn in runs:
                    for od in ods:
                        if time.time() - T0 > LOG.budget_s:
                            return
                        LOG.record_product_rate(f"{kind} {name}", od, (M, N, K),
                                                bench(lambda: fn(*ops, od)), bf16_tf)
            guarded("scaled_mm_nt", kind, (M, N, K), one)


def main():
    if not torch.cuda.is_available():
        print("kernel_tuning: no CUDA device; nothing to do")
        return 0
    import triton
    gpu = torch.cuda.get_device_name()
    print(f"kernel_tuning on {gpu}, torch {torch.__version__}, triton {triton.__version__}")
    for section in (check_casts, time_casts, check_products, time_products):
        guarded(section.__name__, "", "", section)
    LOG.write_out_csv("kernel_tuning.csv")
    print("\n=== summary ===")
    for r in ROWS:
        if r["status"] != "ok" or r["op"].startswith(("cast", "scaled_mm", "torch")):
            print(f"{r['op'][:26]:26s} {r['recipe'][:36]:36s} {r['shape']:20s} "
                  f"{r['median']!s:60s} {r['status'][:120]}")
    n_fail = sum(r["status"].startswith("FAIL") for r in ROWS)
    print(f"{len(ROWS)} rows, {n_fail} failures, {time.time() - T0:.0f}s")
    print("INT8_TRITON: compare 'int8 routed' (torch._int_mm) with 'int8 triton tuned' above; "
          "set QTRAIN_FAST_INT8_TRITON=1 / fast.scaled_mm.INT8_TRITON if faster")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
