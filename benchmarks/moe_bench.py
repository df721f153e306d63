"""MoE grouped products on a GPU (issue 6): fast vs reference on small uneven groups (per-group
float8 cast bit for bit; products and gradients close), then fwd+bwd time of one expert
product at E=8, 16384 tokens, K=4096, N=2048: bf16 torch._grouped_mm vs qtrain float8 rowwise
(torch._scaled_grouped_mm), mxfp8 emulated, and torchao's float8 rowwise grouped mm if it
imports; each of them also captured whole in one CUDA graph (GPU time alone, MOE_CAPTURED=0
leaves those rows out). Appends rows to benchmarks/results/results.csv (and
$OUT/moe_bench.csv when OUT is set), prints a table last. About a minute on one H200; MOE_ROUNDS (3) rounds over the cases in
turn, MOE_REPS (10) timed steps each, a case's time the median over its rounds.

    python benchmarks/moe_bench.py
"""
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import append_rows, capture_cuda_graph, format_table, time_fn  # noqa: E402

ROWS = []
SHAPE = dict(E=8, M=16384, K=4096, N=2048)


def record(op, backend, recipe, shape, metric, value):
    ROWS.append(dict(op=op, backend=backend, recipe=recipe, shape=str(shape), metric=metric,
                     value=value))
    print(f"{op:22s} {backend:14s} {recipe:22s} {str(shape):26s} {metric:18s} {value}", flush=True)


def guarded(name, fn):
    try:
        fn()
    except Exception as e:    # noqa: BLE001 (report, not crash)
        record(name, "-", "-", "-", "error", f"FAIL {type(e).__name__}: {str(e)[:200]}")
        traceback.print_exc(limit=4)


def _setup_backends():
    from qtrain import backend as qbackend
    from qtrain.fast.backend import FastBackend
    import qtrain.reference_backend  # noqa: F401  (registers "reference")
    qbackend.register_backend("fast-moe-bench", FastBackend)
    return "fast-moe-bench"


def _run(fn_backend, x, w, offs, g, plan):
    from qtrain.qgrouped_mm import _QuantizedGroupedMMFn
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = _QuantizedGroupedMMFn.apply(x, w, offs, plan, fn_backend)
    y.backward(g)
    return y.detach().float().cpu(), x.grad.float().cpu(), w.grad.float().cpu()


def check_fast_vs_reference(fast):
    """Uneven groups incl. empty and non-16-aligned; tail rows past offs[-1]."""
    import qtrain
    from qtrain.fast import cast_grouped as fg
    from qtrain.reference_backend import ReferenceBackend
    torch.manual_seed(0)
    m, e, k, n = 300, 4, 256, 128
    offs_list = [37, 37, 190, 290]
    shape = f"M{m} E{e} K{k} N{n} offs{offs_list}"
    offs = torch.tensor(offs_list, dtype=torch.int32, device="cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(e, n, k, device="cuda") * 0.05).to(torch.bfloat16)
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    got = fg.quantize_float8_grouped_t(x, offs, 16, "float8_e4m3fn", True)
    want = ReferenceBackend().quantize_float8_grouped_t(x.cpu(), offs.cpu(), 16, "float8_e4m3fn", True)
    same = (torch.equal(got[0].cpu().view(torch.uint8), want[0].view(torch.uint8))
            and torch.equal(got[1].cpu(), want[1]))
    record("grouped_cast_f8_cols", "fast", "rowwise", shape, "bitexact", same)
    for name, config in (("rowwise", qtrain.Float8LinearConfig(recipe="rowwise")),
                         ("mxfp8-rceil", qtrain.MXLinearConfig(scale_mode="rceil"))):
        plan = config.plan(grouped=True)
        fast_res = _run(fast, x, w, offs, g, plan)
        ref_res = _run("reference", x.cpu(), w.cpu(), offs.cpu(), g.cpu(), plan)
        for what, a, b in zip(("out", "grad_input", "grad_weight"), fast_res, ref_res):
            rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            record("grouped_mm_vs_ref", "fast", name, shape, f"{what} maxrel",
                   f"{rel:.2e} {'ok' if rel < 2 ** -6 else 'FAIL'}")


def moe_inputs(seed=0):
    """The timed MoE problem on the GPU: x (M, K), w (E, N, K) (std 0.02), g (M, N), all bf16,
    and offs (E groups of M / E tokens). Shared by moe_bench, moe_profile and the grouped-mm
    gate (tests/test_benchmarks_cpu.py)."""
    E, M, K, N = SHAPE["E"], SHAPE["M"], SHAPE["K"], SHAPE["N"]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, generator=gen, device="cuda").to(torch.bfloat16)
    w = (torch.randn(E, N, K, generator=gen, device="cuda") * 0.02).to(torch.bfloat16)
    g = torch.randn(M, N, generator=gen, device="cuda").to(torch.bfloat16)
    offs = torch.arange(M // E, M + 1, M // E, device="cuda", dtype=torch.int32)
    return x, w, g, offs


def _variants():
    """(label, config) of the timed qtrain variants: the default (RC-15: every grouped product
    may accumulate fast), the gradient products promoted, mxfp8 emulated."""
    import qtrain
    return (("float8 rowwise", qtrain.Float8LinearConfig(recipe="rowwise")),
            ("float8 rowwise, promoted grads",
             qtrain.Float8LinearConfig(recipe="rowwise", fast_accum_grads=False)),
            ("mxfp8 emulated", qtrain.MXLinearConfig(scale_mode="rceil")))


def _sqnr_db(approx, exact):
    err = (approx.double() - exact.double()).square().sum()
    return float(10 * torch.log10(exact.double().square().sum() / err))


def sqnr_at_scale(fast):
    """Output and gradient SQNR (dB) against fp32 products (per group, no TF32) on the timed
    MoE problem: bf16, each qtrain float8 variant, torchao's. Fast accumulation is a hardware
    effect, so only a GPU run can say what it costs here (RC-15's default)."""
    from qtrain.qgrouped_mm import _QuantizedGroupedMMFn
    E, M, K, N = SHAPE["E"], SHAPE["M"], SHAPE["K"], SHAPE["N"]
    shape = f"E{E} M{M} K{K} N{N}"
    x, w, g, offs = moe_inputs(seed=1)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ends = offs.tolist()
        groups = list(enumerate(zip([0] + ends[:-1], ends)))
        xf, wf, gf = x.float(), w.float(), g.float()
        want_out = torch.cat([xf[s:e] @ wf[i].t() for i, (s, e) in groups])
        want_gx = torch.cat([gf[s:e] @ wf[i] for i, (s, e) in groups])
        want_gw = torch.stack([gf[s:e].t() @ xf[s:e] for _, (s, e) in groups])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32

    def run(fn):
        xi, wi = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        out = fn(xi, wi)
        out.backward(g)
        return out, xi.grad, wi.grad

    runs = {"bf16": lambda a, b: torch._grouped_mm(a, b.transpose(-2, -1), offs=offs)}
    for name, config in _variants():
        if "float8" in name:
            runs[f"qtrain {name}"] = (lambda a, b, plan=config.plan(grouped=True):
                                      _QuantizedGroupedMMFn.apply(a, b, offs, plan, fast))
    try:
        from torchao.prototype.moe_training import _to_fp8_rowwise_then_scaled_grouped_mm as ao
        runs["torchao fp8 rowwise"] = lambda a, b: ao(a, b.transpose(-2, -1), offs=offs,
                                                      out_dtype=torch.bfloat16,
                                                      pad_token_groups_for_grouped_mm=False)
    except Exception as e:    # noqa: BLE001
        print(f"torchao grouped mm SQNR not measured: {type(e).__name__}: {e}")
    table = []
    for label, fn in runs.items():
        got = run(fn)
        dbs = [_sqnr_db(a, b) for a, b in zip(got, (want_out, want_gx, want_gw))]
        for what, db in zip(("out", "grad_input", "grad_weight"), dbs):
            record("moe_sqnr_vs_fp32", label, "-", shape, f"{what} sqnr_db", f"{db:.2f}")
        table.append([label] + [f"{db:.2f}" for db in dbs])
    return table


def bench(fast):
    E, M, K, N = SHAPE["E"], SHAPE["M"], SHAPE["K"], SHAPE["N"]
    shape = f"E{E} M{M} K{K} N{N}"
    flops = 3 * 2 * M * K * N
    xr, w, g, offs = moe_inputs()
    xr.requires_grad_()
    w.requires_grad_()
    from qtrain.qgrouped_mm import _QuantizedGroupedMMFn

    def step(fn):
        def run():
            xr.grad = None
            w.grad = None
            fn().backward(g)
        return run

    bf16 = lambda: torch._grouped_mm(xr, w.transpose(-2, -1), offs=offs)
    cases = {"bf16 torch._grouped_mm": ("torch", "bf16", step(bf16))}
    variants = {}
    for name, config in _variants():
        plan = config.plan(grouped=True)
        variants[f"qtrain {name}"] = ("qtrain-fast", config.short_id, (
            lambda plan=plan: _QuantizedGroupedMMFn.apply(xr, w, offs, plan, fast)))
    try:
        from torchao.prototype.moe_training import _to_fp8_rowwise_then_scaled_grouped_mm as ao
        # groups here are 2048 tokens (multiples of 16): torchao's padding is not needed, and
        # its default (pad_token_groups_for_grouped_mm=True) raises in 0.18
        variants["torchao fp8 rowwise"] = ("torchao", "rowwise", lambda: ao(
            xr, w.transpose(-2, -1), offs=offs, out_dtype=torch.bfloat16,
            pad_token_groups_for_grouped_mm=False))
    except Exception as e:    # noqa: BLE001
        print(f"torchao grouped mm not timed: {type(e).__name__}: {e}")
    cases.update({k: (b, r, step(f)) for k, (b, r, f) in variants.items()})
    from qtrain import _dispatch

    def via_dispatcher(fn):        # the same calls through torch.library's dispatcher
        def run():
            _dispatch.DIRECT = False
            try:
                fn()
            finally:
                _dispatch.DIRECT = True
        return run
    if os.environ.get("MOE_CAPTURED", "1") == "1":
        # the whole step captured in one CUDA graph (MOE_CAPTURED=1): the GPU work alone, with
        # neither the eager host nor the copies torch.compile's CUDA graphs make of inputs that
        # are not parameters (x, w and g here, replayed into static buffers every step)
        for label, (backend, recipe, fn) in list(cases.items()):
            try:
                graph, _ = capture_cuda_graph(fn, (xr, w))
                cases[f"{label}, one CUDA graph"] = (backend + "-cudagraph", recipe, graph.replay)
            except Exception as e:    # noqa: BLE001 (a variant that cannot be captured)
                record("moe_fwd_bwd", backend + "-cudagraph", recipe, shape, "error",
                       f"capture: {type(e).__name__}: {e}"[:200])
    b, r, f = variants["qtrain float8 rowwise"]
    cases["qtrain float8 rowwise, custom-op dispatch"] = (b + "-dispatcher", r, via_dispatcher(step(f)))
    if os.environ.get("MOE_COMPILE", "1") == "1":
        # MOE_COMPILE_MODE: a torch.compile mode (reduce-overhead: CUDA graphs, for the
        # host-bound grouped layer; set QTRAIN_FAST_AUTOTUNE=0 with it)
        mode = os.environ.get("MOE_COMPILE_MODE") or None
        tag = "-compiled" + (f"-{mode}" if mode else "")      # the CSV rows name the mode
        cases["bf16 compiled"] = ("torch" + tag, "bf16", step(torch.compile(bf16, mode=mode)))
        for k, (b, r, f) in variants.items():    # mxfp8 too: its values route traces whole
            cases[f"{k} compiled"] = (b + tag, r, step(torch.compile(f, mode=mode)))
    # MOE_ROUNDS rounds over every case in turn, MOE_REPS timed steps each; a case's time is
    # the median over all its rounds. The eager rows are host-bound and the host drifts within
    # a call (twenty-second session: the same tree's rowwise row at 1.23 and 2.20 ms), so
    # interleaving keeps that drift from landing on one case.
    rounds = int(os.environ.get("MOE_ROUNDS", "3"))
    reps = int(os.environ.get("MOE_REPS", "10"))
    times, failed = {label: [] for label in cases}, set()
    for _ in range(rounds):
        for label, (backend, recipe, fn) in cases.items():
            if label in failed:
                continue
            try:
                times[label] += time_fn(fn, warmup=3, reps=reps, device="cuda")["times"]
            except Exception as e:    # noqa: BLE001
                failed.add(label)
                record("moe_fwd_bwd", backend, recipe, shape, "error",
                       f"{type(e).__name__}: {e}"[:200])
    table, base = [], None
    for label, (backend, recipe, fn) in cases.items():
        if label in failed:
            continue
        t = statistics.median(times[label])
        base = t if base is None else base
        tflops = flops / (t * 1e-3) / 1e12
        record("moe_fwd_bwd", backend, recipe, shape, "median_ms", f"{t:.3f}")
        record("moe_fwd_bwd", backend, recipe, shape, "tflops", f"{tflops:.0f}")
        table.append([label, f"{t:.3f}", f"{tflops:.0f}", f"{base / t:.2f}x"])
    return table


def main():
    if not torch.cuda.is_available():
        print("moe_bench: no CUDA device; skipped")
        return 0
    t0 = time.time()
    fast = _setup_backends()
    guarded("check", lambda: check_fast_vs_reference(fast))
    table = []
    sqnr = []
    guarded("sqnr", lambda: sqnr.extend(sqnr_at_scale(fast)))
    guarded("bench", lambda: table.extend(bench(fast)))
    append_rows(ROWS)
    if os.environ.get("OUT"):
        append_rows(ROWS, os.path.join(os.environ["OUT"], "moe_bench.csv"))
    print(f"\nmoe_bench done in {time.time() - t0:.0f}s on {torch.cuda.get_device_name()}")
    print(format_table(["SQNR dB vs fp32", "out", "grad_input", "grad_weight"], sqnr))
    print(format_table(["fwd+bwd, one expert product", "ms", "TFLOP/s", "vs bf16"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
