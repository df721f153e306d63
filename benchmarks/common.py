"""Shared benchmark plumbing: the one long results CSV, environment facts, timing and table helpers."""
import contextlib
import csv
import datetime
import os
import statistics
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RESULTS_CSV = os.path.join(RESULTS_DIR, "results.csv")
CSV_COLUMNS = ("op", "backend", "recipe", "shape", "metric", "value",
               "gpu", "torch", "triton", "date")


def environment():
    """The facts every CSV row carries: device name, torch and Triton versions, UTC date."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def append_rows(rows, path=RESULTS_CSV):
    """Append dict rows (op, backend, recipe, shape, metric, value) to the CSV, header if new."""
    if not rows:
        return path
    env = environment()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new_file = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new_file:
            writer.writeheader()
        for row in rows:
            missing = {"op", "backend", "recipe", "shape", "metric", "value"} - set(row)
            if missing:
                raise ValueError(f"benchmarks.common.append_rows: row {row} lacks {sorted(missing)}")
            writer.writerow({**env, **row})
    return path


def read_rows(path=RESULTS_CSV):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def time_fn(fn, warmup=3, reps=20, device="cpu"):
    """Per-call times in ms of `fn()`: CUDA events around each call on a GPU, perf_counter on CPU.

    Returns {"median", "p20", "p80", "min", "times"}; the spread is p20..p80.
    """
    for _ in range(warmup):
        fn()
    times = []
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else times * 4
    return {"median": statistics.median(times), "p20": q[0], "p80": q[-1], "min": min(times),
            "times": times}


def host_us_per_call(fn, n=200, warmup=5):
    """Host microseconds one call of fn() takes to enqueue its GPU work (no synchronization
    inside the timed calls; the GPU is drained before and after)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    host_us = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return host_us


def format_table(header, rows):
    """Left-aligned first column, right-aligned others; rows are lists of already-formatted strings."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    out = [fmt(header), "-" * len(fmt(header))]
    out += [fmt(r) for r in rows]
    return "\n".join(out)


def fast_operand_pair(kind, x, w, tensorwise_b_fmt="float8_e4m3fn"):
    """(a, a_dequant, b, b_dequant) of x (M, K) and w (N, K) quantized by the qtrain.fast casts
    in NT form, for each MM-1 block pattern: "tensorwise" (b in `tensorwise_b_fmt`), "rowwise"
    (pow2 scales), "mx" (1x32 rceil), "blockwise" (1x128 x 128x128), anything else int8 rowwise.
    Shared by the GPU check scripts and the CPU (interpreter) product tests."""
    from qtrain.fast import cast_blockwise, cast_float8, cast_int8, cast_mx
    if kind == "tensorwise":
        a, sa = cast_float8.quantize_float8(x, "float8_e4m3fn")
        b, sb = cast_float8.quantize_float8(w, tensorwise_b_fmt)
        return a, (1 / sa).reshape(1, 1), b, (1 / sb).reshape(1, 1)
    if kind == "rowwise":
        a, sa = cast_float8.quantize_float8(x, "float8_e4m3fn", -1, True)
        b, sb = cast_float8.quantize_float8(w, "float8_e4m3fn", -1, True)
        return a, 1 / sa, b, 1 / sb
    if kind == "mx":
        a, sa = cast_mx.quantize_mx(x, "float8_e4m3fn", 32, -1, "rceil")
        b, sb = cast_mx.quantize_mx(w, "float8_e4m3fn", 32, -1, "rceil")
        return a, torch.exp2(sa.float() - 127), b, torch.exp2(sb.float() - 127)
    if kind == "blockwise":
        a, sa = cast_blockwise.quantize_blockwise(x, (1, 128))
        b, sb = cast_blockwise.quantize_blockwise(w, (128, 128))
        return a, 1 / sa, b, 1 / sb
    a, da = cast_int8.quantize_int8(x, -1)
    b, db = cast_int8.quantize_int8(w, -1)
    return a, da, b, db


def capture_cuda_graph(step, params, warmup=3):
    """Warm `step` up on a side stream (compiles kernels, fills caches), clear the grads of
    `params`, then capture one call of it in a CUDA graph. Returns (graph, what the captured
    call returned): replaying the graph rewrites those tensors and the params' .grad."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    return graph, static


def graph_replay_us(fn, reps=50, rounds=7):
    """Median GPU time of one call of fn() in microseconds, as CUDA-graph replays (the kernels
    alone, not the host's launch work): `rounds` timings of `reps` replays each."""
    graph, _ = capture_cuda_graph(fn, params=())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def time_against_first(x, variants, moved_bytes_per_elem, label):
    """Rows [label, name, us, fraction of copy, bits] for each (name, fn) in `variants` on x,
    the first variant's output the reference for the bits of the others (tuples of tensors,
    compared as bytes), and torch's copy of x first; and the number of failures (an error or
    other bits). Times are CUDA-graph replays; a variant's fraction counts
    moved_bytes_per_elem bytes per element of x against the copy's (x read and written)."""
    y = torch.empty_like(x)
    copy_us = graph_replay_us(lambda: y.copy_(x))
    rows, failures, ref = [[label, "torch copy_", f"{copy_us:.1f}", "1.00", ""]], 0, None
    for name, fn in variants:
        try:
            got = fn(x)
        except Exception as e:                             # noqa: BLE001 (a finding, not a stop)
            rows.append([label, name, "-", "-", f"error {type(e).__name__}: {str(e)[:80]}"])
            failures += 1
            continue
        ref = got if ref is None else ref
        same = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                   for a, b in zip(got, ref))
        failures += not same
        us = graph_replay_us(lambda: fn(x))
        frac = (moved_bytes_per_elem / us) / (2 * x.element_size() / copy_us)
        rows.append([label, name, f"{us:.1f}", f"{frac:.2f}",
                     "same bits" if same else "DIFFERENT BITS"])
    return rows, failures


def time_shapes_against_first(shapes, make_x, cases):
    """Print time_against_first's table for each "RxC" of the comma list `shapes`: x =
    make_x(R, C) (seeded once), then every (x_case, variants, moved_bytes_per_elem) of
    cases(x); returns 1 if any variant failed (an error or other bits), else 0."""
    rows, failures = [], 0
    torch.manual_seed(0)
    for shape in shapes.split(","):
        x = make_x(*(int(v) for v in shape.split("x")))
        for x_case, variants, moved in cases(x):
            got_rows, got_failures = time_against_first(x_case, variants, moved, shape)
            rows += got_rows
            failures += got_failures
    print(format_table(["shape", "variant", "us (graph)", "of copy", "bits vs shipped"], rows))
    return 1 if failures else 0


@contextlib.contextmanager
def module_settings(module, **values):
    """Module-level tuning settings (e.g. fast.amax's AMAX_TILE) set to `values` inside the
    block and restored after it, for the benchmarks that time a kernel under other settings."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
