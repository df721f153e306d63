"""GPU check and timing of qtrain.fast (issue 4): bit-exactness of every cast against
qtrain.reference on real shapes, products against the MM-4 bound, bandwidth of each cast vs a
measured copy, TFLOP/s of each product vs bf16 mm. Prints a table last; writes
$OUT/gpu_fast_check.csv when OUT is set. Each piece reports failure instead of crashing.

    python benchmarks/gpu_fast_check.py            # < 4 minutes on one H200
    python benchmarks/gpu_fast_check.py time_casts # only these sections (comma list)
    python benchmarks/gpu_fast_check.py host_profile  # where a cast call's host time goes
"""
import csv
import datetime
import os
import sys
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (capture_cuda_graph, fast_operand_pair, host_us_per_call,  # noqa: E402
                               module_settings)


class RunLog:
    """Result rows of one GPU script: `record` prints a row and keeps it; `guarded` runs one
    check or timing and turns an exception (or the time budget running out) into a FAIL/SKIP
    row instead of a crash. Shared with benchmarks/kernel_tuning.py."""

    def __init__(self, budget_s, value_key="value", traceback_limit=3):
        self.t0 = time.time()
        self.budget_s = budget_s
        self.value_key = value_key
        self.traceback_limit = traceback_limit
        self.rows = []

    def record(self, op, recipe, shape, metric, value, status="ok"):
        self.rows.append({"op": op, "backend": "fast", "recipe": recipe, "shape": str(shape),
                          "metric": metric, self.value_key: value, "status": status})
        print(f"[{time.time() - self.t0:6.1f}s] {op:28s} {recipe:34s} {str(shape):22s} "
              f"{metric:16s} {value} {'' if status == 'ok' else status}", flush=True)

    def guarded(self, op, recipe, shape, fn):
        if time.time() - self.t0 > self.budget_s:
            self.record(op, recipe, shape, "skipped", "", "SKIP: time budget")
            return
        try:
            fn()
        except Exception as e:   # noqa: BLE001 (report, not crash)
            self.record(op, recipe, shape, "error", "", f"FAIL: {type(e).__name__}: {str(e)[:300]}")
            if self.traceback_limit:
                traceback.print_exc(limit=self.traceback_limit)

    def record_product_rate(self, label, od, shape, ms, bf16_tflops):
        """One product timing as TFLOP/s of the (M, N, K) shape and its ratio to bf16 mm."""
        M, N, K = shape
        tf = 2 * M * N * K / ms / 1e9
        self.record("scaled_mm_nt", f"{label} {str(od)[6:]}", shape, "TFLOP/s (xbf16)",
                    f"{tf:.0f} ({tf / bf16_tflops:.2f}x)")

    def write_out_csv(self, name):
        """$OUT/<name>: every row with GPU, torch and Triton versions and the date (nothing
        when OUT is unset or no row was recorded)."""
        out_dir = os.environ.get("OUT")
        if not out_dir or not self.rows:
            return
        import triton
        facts = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                     triton=triton.__version__, date=datetime.date.today().isoformat())
        path = os.path.join(out_dir, name)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.rows[0]) + list(facts))
            w.writeheader()
            for r in self.rows:
                w.writerow(dict(r, **facts))
        print(f"wrote {path}")


LOG = RunLog(float(os.environ.get("QTRAIN_GPU_CHECK_BUDGET_S", "210")))   # checks stop past this
T0, ROWS, record, guarded = LOG.t0, LOG.rows, LOG.record, LOG.guarded


def to_np(t):
    import ml_dtypes
    m = {torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2,
         torch.float8_e4m3fnuz: ml_dtypes.float8_e4m3fnuz,
         torch.float8_e5m2fnuz: ml_dtypes.float8_e5m2fnuz, torch.bfloat16: ml_dtypes.bfloat16}
    t = t.detach().cpu().contiguous()
    if t.dtype in m:
        return t.view(torch.uint8 if t.element_size() == 1 else torch.int16).numpy().view(m[t.dtype])
    return t.numpy()


def mismatches(got, exp):
    """(count, first bad index) bitwise, NaN payloads free."""
    got, exp = np.asarray(got), np.asarray(exp)
    if got.shape != exp.shape:
        return -1, f"shape {got.shape} != {exp.shape}"
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32}[got.itemsize]
    bad = got.view(u) != exp.view(u)
    if got.dtype.kind in "fV":
        bad &= ~(np.isnan(got.astype(np.float64)) & np.isnan(exp.astype(np.float64)))
    n = int(bad.sum())
    return n, (None if n == 0 else np.unravel_index(int(np.flatnonzero(bad)[0]), got.shape))


def edge_input(shape, dtype, seed=0):
    """Random rows of varied magnitude plus NaN/Inf/zero/subnormal/saturation rows (2-D)."""
    import ml_dtypes
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(2.0) ** rng.integers(-20, 20, size=(shape[0], 1)).astype(np.float32)
    r = shape[0]
    if r >= 9:
        x[1] = 0.0
        x[1, ::2] = -0.0
        x[2, min(3, shape[1] - 1)] = np.nan
        x[3, 1] = -np.inf
        x[4] *= np.float32(2.0 ** -140)                                   # subnormals
        x[5, 0] = np.float32(3.0e38)
        x[6] = np.float32(2.0 ** -133)                                    # MX-7 bf16 subnormal block
        x[7] = np.float32(480.0)                                          # saturation
        x[8, 0] = np.uint32(0x40600001).view(np.float32)
    if r > 64:
        x[r // 2, :: 7] = np.inf
    return x.astype(np.float32 if dtype == torch.float32 else ml_dtypes.bfloat16)


def torch_of(xn, dtype):
    if dtype == torch.bfloat16:
        return torch.from_numpy(xn.view(np.int16).copy()).view(torch.bfloat16).cuda()
    return torch.from_numpy(xn).cuda()


def check_casts():
    from qtrain import reference as R
    from qtrain.fast import cast_blockwise, cast_float8, cast_int8, cast_mx

    def compare(op, recipe, shape, pairs):
        total = 0
        first = None
        for got, exp in pairs:
            n, where = mismatches(to_np(got), exp)
            total += abs(n)
            first = first or (where if n else None)
        record(op, recipe, shape, "mismatches", total, "ok" if total == 0 else f"FAIL first {first}")

    def big_float8(x, xn, tag, shape):
        """axis -1, axis 0 and the dual cast against one reference call per axis."""
        rd, rs = R.quantize_float8(xn, "float8_e4m3fn", -1, True)
        cd, cs = R.quantize_float8(xn, "float8_e4m3fn", 0, True)
        compare("quantize_float8", f"e4m3fn ax=-1 {tag}", shape,
                zip(cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True), (rd, rs)))
        compare("quantize_float8", f"e4m3fn ax=0 {tag}", shape,
                zip(cast_float8.quantize_float8(x, "float8_e4m3fn", 0, True), (cd, cs)))
        d, s, dt, st = cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True)
        compare("quantize_float8_dual", f"e4m3fn {tag}", shape,
                [(d, rd), (s, rs), (dt, np.ascontiguousarray(cd.T)), (st, np.ascontiguousarray(cs.T))])

    shapes = [(1, 16), (17, 16), (4095, 16), (1, 8192), (17, 8192), (4095, 8192)]
    big = (4095, 8192)
    for shape in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            if shape == big and dtype == torch.float32:
                continue
            xn = edge_input(shape, dtype)
            x = torch_of(xn, dtype)
            tag = f"{str(dtype)[6:]}"
            if shape == big:      # the reference is slow here: compute each reference once
                guarded("quantize_float8", f"e4m3fn rowwise/colwise/dual {tag}", shape,
                        lambda: big_float8(x, xn, tag, shape))
            else:
                for fmt in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
                    for axis in (None, -1, 0):
                        pow2 = axis is not None
                        guarded("quantize_float8", f"{fmt} ax={axis} {tag}", shape, lambda: compare(
                            "quantize_float8", f"{fmt} ax={axis} {tag}", shape,
                            zip(cast_float8.quantize_float8(x, fmt, axis, pow2),
                                R.quantize_float8(xn, fmt, axis, pow2))))
                guarded("quantize_float8_dual", tag, shape, lambda: big_float8(x, xn, tag, shape))
            if shape[1] % 32 == 0:
                for mode in ("floor", "rceil"):
                    for fmt in (["float8_e4m3fn"] if shape == big else ["float8_e4m3fn", "float8_e5m2"]):
                        guarded("quantize_mx", f"{fmt} {mode} dim-1 {tag}", shape, lambda: compare(
                            "quantize_mx", f"{fmt} {mode} dim-1 {tag}", shape,
                            zip(cast_mx.quantize_mx(x, fmt, 32, -1, mode),
                                R.quantize_mx(xn, fmt, 32, -1, mode))))
            for noise in (None, "given"):
                u = None if noise is None else np.random.default_rng(1).random(shape, dtype=np.float32)
                for axis in (-1, 0):
                    guarded("quantize_int8", f"ax={axis} noise={noise} {tag}", shape, lambda: compare(
                        "quantize_int8", f"ax={axis} noise={noise} {tag}", shape,
                        zip(cast_int8.quantize_int8(x, axis, None if u is None else torch.from_numpy(u).cuda()),
                            R.quantize_int8(xn, axis, u))))
            if shape[1] % 128 == 0 and shape != big:
                guarded("quantize_blockwise", f"1x128 {tag}", shape, lambda: compare(
                    "quantize_blockwise", f"1x128 {tag}", shape,
                    zip(cast_blockwise.quantize_blockwise(x, (1, 128)),
                        R.quantize_blockwise(xn, (1, 128)))))
    # dim0 MX and 128x128 need rows divisible by the block
    for shape in [(32, 16), (4096, 8192), (128, 16 * 128), (1024, 8192)]:
        xn = edge_input(shape, torch.bfloat16)
        x = torch_of(xn, torch.bfloat16)
        for mode in ("floor", "rceil"):
            def dim0():
                rd, rs = R.quantize_mx(xn, "float8_e4m3fn", 32, 0, mode)
                compare("quantize_mx", f"e4m3fn {mode} dim0", shape,
                        zip(cast_mx.quantize_mx(x, "float8_e4m3fn", 32, 0, mode), (rd, rs)))
                compare("quantize_mx_dim0_T", f"e4m3fn {mode}", shape,
                        zip(cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, mode, transposed=True),
                            (np.ascontiguousarray(rd.T), np.ascontiguousarray(rs.T))))
            guarded("quantize_mx", f"e4m3fn {mode} dim0", shape, dim0)
        if shape[0] > 1024:
            continue
        if shape[0] % 128 == 0 and shape[1] % 128 == 0:
            guarded("quantize_blockwise", "128x128", shape, lambda: compare(
                "quantize_blockwise", "128x128", shape,
                zip(cast_blockwise.quantize_blockwise(x, (128, 128)),
                    R.quantize_blockwise(xn, (128, 128)))))


def product_operands(kind, M, N, K, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
    return fast_operand_pair(kind, x, w)


def mm4_ratio(a, da, b, db, out, out_dtype, p_acc):
    """MM-4: |out - ref| <= 2 u_out |ref| + (K 2^-p_acc + 2^-22) sum_k |A dA B dB|; returns max ratio."""
    from qtrain import reference as R
    A = to_np(a).astype(np.float64) * R.expand_dequant(to_np(da), tuple(a.shape), "a")
    B = to_np(b).astype(np.float64) * R.expand_dequant(to_np(db), tuple(b.shape), "b")
    ref = A @ B.T
    s = np.abs(A) @ np.abs(B).T
    u = 2.0 ** -8 if out_dtype == torch.bfloat16 else 2.0 ** -24
    bound = 2 * u * np.abs(ref) + (A.shape[1] * 2.0 ** -p_acc + 2.0 ** -22) * s
    err = np.abs(to_np(out.float()).astype(np.float64) - ref)
    return float(np.max(err / np.maximum(bound, 1e-300)))


def check_products():
    from qtrain.fast.scaled_mm import scaled_mm_nt, scaled_mm_nt_triton
    for kind in ("tensorwise", "rowwise", "mx", "blockwise", "int8"):
        for (M, N, K) in ((17, 256, 8192), (512, 384, 1024)):
            def one():
                ops = product_operands(kind, M, N, K)
                for name, fn in (("routed", scaled_mm_nt), ("triton", scaled_mm_nt_triton)):
                    for od in (torch.float32, torch.bfloat16):
                        out = fn(*ops[:2], *ops[2:], od)
                        torch.cuda.synchronize()
                        r23 = mm4_ratio(*ops, out, od, 23)
                        r13 = mm4_ratio(*ops, out, od, 13)
                        record("scaled_mm_nt", f"{kind} {name} {str(od)[6:]}", (M, N, K),
                               "MM4 ratio p23/p13", f"{r23:.3g}/{r13:.3g}",
                               "ok" if r23 <= 1 else ("WARN: meets p_acc=13 only" if r13 <= 1 else "FAIL"))
            guarded("scaled_mm_nt", kind, (M, N, K), one)


def bench(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def bench_graph(fn):
    """Median GPU time of fn() captured in a CUDA graph and replayed: the kernels' own time,
    without the host's launch work between them. triton's do_bench puts events around each
    eager call, so a call of several launches whose host work outlasts its kernels is timed at
    the host's pace; the graph replay is one launch for the whole call."""
    graph, _ = capture_cuda_graph(fn, params=())
    return bench(graph.replay)


def _with_setting(module, name, value, fn):
    """fn() with the module-level tuning setting `name` of qtrain.fast.`module` set to value
    (the amax grid, the tile of the passes that write x.T), restored afterwards."""
    import importlib
    with module_settings(importlib.import_module(f"qtrain.fast.{module}"), **{name: value}):
        return fn()


def time_casts():
    from qtrain.fast import cast_blockwise, cast_float8, cast_int8, cast_mx
    from qtrain.fast import noise as fast_noise
    M, K = 8192, 8192
    call = torch.tensor(7, dtype=torch.int64, device="cuda")
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    copy_gbs = 2 * x.numel() * 2 / ms / 1e6
    record("torch copy_", "bf16", (M, K), "GB/s", f"{copy_gbs:.0f}")
    n = x.numel()
    scale_b = 4 * M
    from qtrain.fast.amax import amax_bits_2d
    from qtrain.fast.block_dequant import dequant_blocks
    from qtrain.fast.transpose import transpose_bytes
    mx_p = x.to(torch.float8_e4m3fn)
    tall_tiles = ((64, 128), (128, 64), (128, 128))       # (BLOCK_R, BLOCK_C) of the x.T writers
    mx_d = torch.exp2(torch.randint(-4, 4, (M, K // 32), device="cuda").float())
    cases = [  # (name, fn, minimal bytes moved: read x once + write payloads and scales)
        ("float8 tensorwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn"), 2 * n + n),
        ("float8 rowwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True), 3 * n + scale_b),
        ("float8 columnwise", lambda: cast_float8.quantize_float8(x, "float8_e4m3fn", 0, True), 3 * n + 4 * K),
        ("float8 dual row+col.T", lambda: cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True), 4 * n + scale_b + 4 * K),
        ("mx dim-1 floor", lambda: cast_mx.quantize_mx(x, "float8_e4m3fn", 32, -1, "floor"), 3 * n + n // 32),
        ("mx dim-1 rceil", lambda: cast_mx.quantize_mx(x, "float8_e4m3fn", 32, -1, "rceil"), 3 * n + n // 32),
        ("mx dim0 transposed", lambda: cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil", True), 3 * n + n // 32),
        ("int8 rowwise rne", lambda: cast_int8.quantize_int8(x, -1), 3 * n + scale_b),
        ("int8 rowwise stochastic", lambda: cast_int8.quantize_int8(x, -1, seed=1), 3 * n + scale_b),
        ("int8 rowwise I8-10 noise", lambda: cast_int8.quantize_int8(x, -1, counter_noise=(1, call)), 3 * n + scale_b),
        ("int8 columnwise rne", lambda: cast_int8.quantize_int8(x, 0), 3 * n + 4 * K),
        ("blockwise 1x128", lambda: cast_blockwise.quantize_blockwise(x, (1, 128)), 3 * n + n // 32),
        ("blockwise 128x128", lambda: cast_blockwise.quantize_blockwise(x, (128, 128)), 3 * n),
        # x.T written by the cast itself (2026-11-30): RC-14's w, and the along-M operands
        ("float8 tensorwise.T", lambda: cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, True), 3 * n),
        ("int8 columnwise.T rne", lambda: cast_int8.quantize_int8(x, 0, transposed=True), 3 * n + 4 * K),
        ("int8 dual row+col.T", lambda: cast_int8.quantize_int8_dual(x), 4 * n + scale_b + 4 * K),
        ("blockwise 128x1.T", lambda: cast_blockwise.quantize_blockwise_t(x, (1, 128)), 3 * n + n // 32),
        ("uniform_noise I8-10", lambda: fast_noise.uniform_noise(x, 1, call), 4 * n),
        # the amax pass with one program per tile (AMAX_PROGRAMS_PER_SM = 0; the default loops
        # 4 programs per SM over row tiles and reduces along axis 0 once, 2026-12-01), and the
        # amax pass alone: what the two-pass casts spend before the cast pass
        ("float8 tensorwise, amax one program per tile", lambda: _with_setting(
            "amax", "AMAX_PROGRAMS_PER_SM", 0, lambda: cast_float8.quantize_float8(x, "float8_e4m3fn")),
            2 * n + n),
        # tensorwise x and x.T from one cast pass (QTRAIN_TENSORWISE_TRANSPOSE=cast): against
        # the tensorwise cast plus the tiled transpose of its payload (the default path)
        ("float8 tensorwise, both layouts", lambda: cast_float8.quantize_float8_tensorwise_both(
            x, "float8_e4m3fn"), 4 * n),
        ("float8 tensorwise + transpose copy", lambda: transpose_bytes(
            cast_float8.quantize_float8(x, "float8_e4m3fn")[0]), 4 * n),
        ("amax pass alone, tensor", lambda: amax_bits_2d(x, tensor=True), 2 * n),
        ("amax pass alone, columns", lambda: amax_bits_2d(x, cols=True), 2 * n + 4 * K),
        ("amax pass alone, rows+columns", lambda: amax_bits_2d(x, rows=True, cols=True), 2 * n + 4 * (M + K)),
        ("float8 columnwise.T", lambda: cast_float8.quantize_float8_columnwise(x, "float8_e4m3fn", True, True),
         3 * n + 4 * K),
        # the casts whose block amax is a reduction along axis 0 of the tile (across warps):
        # other tiles and warp counts (cast_mx.DIM0_TILE_T, cast_blockwise.COLUMN_BLOCKS_T_TILE)
        *[(f"mx dim0 transposed, tile {t}", lambda t=t: _with_setting("cast_mx", "DIM0_TILE_T", t, lambda:
            cast_mx.quantize_mx_dim0(x, "float8_e4m3fn", 32, "rceil", True)), 3 * n + n // 32)
          for t in ((64, 128, 2), (64, 64, 1), (64, 64, 2), (32, 64, 1), (32, 128, 2), (64, 128, 4),
                    (32, 256, 4), (128, 64, 8))],
        *[(f"blockwise 128x1.T, tile {t}", lambda t=t: _with_setting("cast_blockwise", "COLUMN_BLOCKS_T_TILE", t, lambda:
            cast_blockwise.quantize_blockwise_t(x, (1, 128))), 3 * n + n // 32)
          for t in ((64, 4), (32, 1), (32, 2), (16, 1), (128, 4), (128, 8), (256, 8))],
        # taller tiles for the passes that write x.T: longer contiguous rows of x.T per tile
        *[(f"float8 tensorwise.T, tile {t[0]}x{t[1]}", lambda t=t: _with_setting("cast_float8", "TILE_T", t, lambda:
            cast_float8.quantize_float8_tensorwise(x, "float8_e4m3fn", False, True)), 3 * n)
          for t in tall_tiles],
        *[(f"float8 dual row+col.T, tile {t[0]}x{t[1]}", lambda t=t: _with_setting("cast_float8", "TILE_DUAL", t, lambda:
            cast_float8.quantize_float8_dual(x, "float8_e4m3fn", True)), 4 * n + scale_b + 4 * K)
          for t in tall_tiles],
        *[(f"int8 columnwise.T rne, tile {t[0]}x{t[1]}", lambda t=t: _with_setting("cast_int8", "TILE_T", t, lambda:
            cast_int8.quantize_int8(x, 0, transposed=True)), 3 * n + 4 * K)
          for t in tall_tiles],
        # a float8 payload read transposed (tensorwise x and g): torch's copy of the transposed
        # view against the tiled kernel the eager path now uses (fast/transpose.py)
        ("transpose fp8, torch .t().contiguous()", lambda: mx_p.t().contiguous(), 2 * n),
        *[(f"transpose fp8, tiles {t[0]}x{t[1]}", lambda t=t: _with_setting("transpose", "TILE", t, lambda:
            transpose_bytes(mx_p)), 2 * n) for t in ((64, 64), (32, 128), (128, 128), (128, 64))],
        # the MX bf16-GEMM route's operand: e4m3 codes and (1, 32) fp32 factors -> bf16
        ("dequant mx (1,32) -> bf16", lambda: dequant_blocks(mx_p, mx_d, torch.bfloat16), 3 * n + n // 8),
    ]
    graph_copy_gbs = 2 * x.numel() * 2 / bench_graph(lambda: y.copy_(x)) / 1e6
    record("torch copy_, CUDA graph", "bf16", (M, K), "GB/s", f"{graph_copy_gbs:.0f}")
    for name, fn, nbytes in cases:
        def one():
            ms = bench(fn)
            gbs = nbytes / ms / 1e6
            record("cast " + name, "bf16 in", (M, K), "GB/s (%copy)",
                   f"{gbs:.0f} ({100 * gbs / copy_gbs:.0f}%) {ms * 1e3:.0f}us")
            # the same call as a CUDA-graph replay: GPU time only (see bench_graph)
            ms = bench_graph(fn)
            gbs = nbytes / ms / 1e6
            record("cast " + name + " [graph]", "bf16 in", (M, K), "GB/s (%copy)",
                   f"{gbs:.0f} ({100 * gbs / graph_copy_gbs:.0f}%) {ms * 1e3:.0f}us")
        guarded("cast " + name, "bf16 in", (M, K), one)


def time_products():
    from qtrain.fast.scaled_mm import scaled_mm_nt, scaled_mm_nt_triton
    M = N = K = 8192
    flop = 2 * M * N * K
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b.t())
    bf16_tf = flop / ms / 1e9
    record("torch mm", "bf16", (M, N, K), "TFLOP/s", f"{bf16_tf:.0f}")
    del a, b
    for kind in ("tensorwise", "rowwise", "mx", "blockwise", "int8"):
        def one():
            ops = product_operands(kind, M, N, K)
            runs = [("routed", lambda od: scaled_mm_nt(*ops, od))]
            if kind in ("mx", "blockwise", "tensorwise"):
                runs.append(("triton", lambda od: scaled_mm_nt_triton(*ops, od)))
            for name, fn in runs:
                for od in (torch.bfloat16, torch.float32):
                    LOG.record_product_rate(f"{kind} {name}", od, (M, N, K),
                                            bench(lambda: fn(od)), bf16_tf)
        guarded("scaled_mm_nt time", kind, (M, N, K), one)


def host_profile():
    """Where the host time of one cast call goes (H200 host, 2026-11-29: a bare Triton launch
    22 us, the fast rowwise cast 110 us, of which qtrain's own Python is ~9 us on the dev CPU):
    wall time per call, then cProfile's top functions over the same calls."""
    import cProfile
    import pstats
    from qtrain.fast import cast_float8
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    calls = {
        "float8 rowwise": lambda: cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True),
        "float8 tensorwise": lambda: cast_float8.quantize_float8(x, "float8_e4m3fn"),
    }
    n = 500
    for name, fn in calls.items():
        host_us = host_us_per_call(fn, n, warmup=20)
        record("host time per call " + name, "bf16 in", (64, 256), "us", f"{host_us:.1f}")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        print(f"\ncProfile, {n} calls of {name}: top functions by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main():
    if not torch.cuda.is_available():
        print("gpu_fast_check: no CUDA device; nothing to do")
        return 0
    import triton
    gpu = torch.cuda.get_device_name()
    print(f"gpu_fast_check on {gpu}, torch {torch.__version__}, triton {triton.__version__}")
    from qtrain.fast.backend import FastBackend
    ok, reason = FastBackend().available()
    record("FastBackend.available", "", "", "ok", ok, "ok" if ok else f"FAIL: {reason}")
    sections = (host_profile, time_casts, time_products, check_products, check_casts)  # cheap first
    chosen = sys.argv[1].split(",") if len(sys.argv) > 1 else [f.__name__ for f in sections]
    unknown = set(chosen) - {f.__name__ for f in sections}
    if unknown:
        print(f"gpu_fast_check: unknown section(s) {sorted(unknown)}; choose from "
              f"{[f.__name__ for f in sections]}")
        return 2
    for section in sections:
        if section.__name__ in chosen:
            guarded(section.__name__, "", "", section)
    LOG.write_out_csv("gpu_fast_check.csv")
    print("\n=== summary (failures and timings) ===")
    for r in ROWS:
        if r["status"] != "ok" or r["metric"] not in ("mismatches", "MM4 ratio p23/p13"):
            print(f"{r['op'][:30]:30s} {r['recipe'][:28]:28s} {r['shape']:20s} {r['metric']:16s} "
                  f"{r['value']!s:24s} {r['status']}")
    n_fail = sum(r["status"].startswith("FAIL") for r in ROWS)
    print(f"{len(ROWS)} rows, {n_fail} failures, {time.time() - T0:.0f}s")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
