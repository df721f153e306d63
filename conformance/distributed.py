"""Distributed cases (distributed_tests/README.md: P-FSDP, P-F8AG, P-DP, P-COL, P-ROW, SP-F8, 2-D,
CKPT): distributed_tests' workers on `ranks` processes, the backend under test in every rank.

The harness holds no worker code: it launches `distributed_tests/*_workers.py` through
`distributed_tests/launch.py` (process-group backend from $QTRAIN_DIST_BACKEND: gloo ranks on
CPU, nccl ranks one per GPU) and judges what they return against the same recipe run in this
process on the same backend (`expected: single_process`), the SP run that gathers in the model
dtype (`hp_all_gather`, SP-F8) or the run that never stopped (`uninterrupted`, CKPT). Bitwise
where the claim says bit-identical; within `distributed_tests/parity.py`'s bounds (its
TOLERANCES table, with reasons) where it says within a bound. The workers build their models with
backend=None, so each rank rebuilds the backend from its name or import path and answers it
through $QTRAIN_BACKEND. Widths and seeds are fixed by the workers (models.WIDTHS, layer_inputs,
seq_batches); a case's `shape` states them and is checked against them.
"""
import os
import shutil
import tempfile
from dataclasses import dataclass

from .compare import Check, bitwise, bound
from .ops import OpMissing
from .torch_io import to_numpy, torch_dtype

@dataclass(frozen=True)
class Scenario:
    """What a scenario checks: the claim of distributed_tests/README.md, what it is compared
    against, which output kinds have a bound, and the rank counts it runs on."""
    claim: str
    expected: str
    bounded: frozenset           # output kinds with a bound (compare "bound" / within_bound)
    ranks: tuple = (2, 4)


_RUN = frozenset({"loss", "grad"})
_LAYER = frozenset({"out", "grad_input", "grad_weight"})
SCENARIOS = {
    "fsdp": Scenario("P-FSDP", "single_process", frozenset()),
    "fsdp_float8_all_gather": Scenario("P-F8AG", "single_process", frozenset()),
    "fsdp_data_parallel": Scenario("P-DP", "single_process", _RUN),
    "tp_colwise": Scenario("P-COL", "single_process", _LAYER),
    "tp_rowwise": Scenario("P-ROW", "single_process", _LAYER),
    "sp_float8_input": Scenario("SP-F8", "hp_all_gather", frozenset()),
    "sp": Scenario("SP", "single_process", _RUN),     # test_sp_matches_single_process_within_bound
    "fsdp_tp_2d": Scenario("2-D", "single_process", _RUN, ranks=(4,)),
    "checkpoint_resume": Scenario("CKPT", "uninterrupted", frozenset()),
}
EXPECTED = tuple(sorted({s.expected for s in SCENARIOS.values()}))
REQUIRED = ("scenario", "claim", "recipe", "ranks", "dtype")
LAUNCH_TIMEOUT_S = 300.0
_LAUNCHES = {}   # one launch serves every case that reads it (tp_colwise + tp_rowwise, sp pair)


def validate(case):
    """Load-time checks of a distributed case's fields (cases.py wraps errors as CaseError)."""
    sc = SCENARIOS.get(case["scenario"])
    if sc is None:
        raise ValueError(f"unknown scenario {case['scenario']!r}; known: {sorted(SCENARIOS)}")
    if case["claim"] != sc.claim:
        raise ValueError(f"scenario {case['scenario']!r} checks claim {sc.claim!r}, "
                         f"the case says {case['claim']!r}")
    if case["expected"] != sc.expected:
        raise ValueError(f"scenario {case['scenario']!r} compares against {sc.expected!r}, "
                         f"the case says expected {case['expected']!r}")
    if case["ranks"] not in sc.ranks:
        raise ValueError(f"scenario {case['scenario']!r} runs on {list(sc.ranks)} ranks, "
                         f"the case says {case['ranks']}")
    if case["dtype"] not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {case['dtype']!r}")
    wanted = set(case.get("within_bound", ())) | (set(_kinds(case)) if case["compare"] == "bound" else set())
    if wanted - sc.bounded:
        raise ValueError(f"scenario {case['scenario']!r} defines bounds for {sorted(sc.bounded)} "
                         f"only; the case asks one for {sorted(wanted - sc.bounded)}")


def _kinds(case):
    return {"tp_colwise": _LAYER, "tp_rowwise": _LAYER}.get(case["scenario"], _RUN)


# ---- in each rank ------------------------------------------------------------------------
def _in_rank(ctx, spec, fn, args, kwargs):
    """Runs in every spawned rank: rebuild the backend under test from `spec` (a registry name
    or pkg.module:factory), make the registry answer it through $QTRAIN_BACKEND (the workers
    call recipe_config with backend=None), then run the worker."""
    from qtrain.backend import ENV_VAR

    from .backends import registry_name, resolve
    os.environ[ENV_VAR] = registry_name(resolve(spec))
    return fn(ctx, *args, **kwargs)


# ---- in this process ---------------------------------------------------------------------
@dataclass
class Env:
    spec: str            # how a rank rebuilds the backend
    name: str            # the registry name qtrain.linear reaches it by, here
    dev: object          # the ranks' device type: the single-process run uses it too
    case: dict

    @property
    def recipe(self):
        r = self.case["recipe"]
        return None if r == "hp" else r

    @property
    def dtype(self):
        return torch_dtype(self.case["dtype"])

    def model(self, bias=True):
        from distributed_tests import models
        return models.tiny_mlp(self.recipe, self.dtype, bias=bias, backend=self.name).to(self.dev)

    def on(self, pairs):
        return [(x.to(self.dev), y.to(self.dev)) for x, y in pairs]


def _modules():
    try:
        from distributed_tests import ckpt_workers, fsdp_workers, launch, models, parity
        from distributed_tests import tp_workers
    except ImportError as e:
        raise OpMissing(f"distributed_tests/ is not importable ({e}): it ships with the "
                        f"repository, not the package; run from the repository root") from None
    return dict(C=ckpt_workers, F=fsdp_workers, L=launch, M=models, P=parity, T=tp_workers)


def _launch(env, fn, *args, cache=True, **kwargs):
    from distributed_tests.launch import dist_backend, run_workers
    key = (fn.__module__, fn.__name__, env.case["ranks"], repr(args), repr(sorted(kwargs.items())),
           env.spec, dist_backend())
    if cache and key in _LAUNCHES:
        return _LAUNCHES[key]
    out = run_workers(_in_rank, env.case["ranks"], env.spec, fn, args, kwargs,
                      timeout_s=LAUNCH_TIMEOUT_S)
    if cache:
        _LAUNCHES[key] = out
    return out


def _check_shape(case, shape):
    if list(case["shape"]) != list(shape):
        raise ValueError(f"qtrain.conformance.distributed: case {case['name']!r} states shape "
                         f"{case['shape']}, but the workers run {list(shape)} (widths and rows "
                         f"are fixed by distributed_tests/models.py and tp_workers.py)")


def _run_rows(prefix, got, want, steps=None, params=True, bounds=None):
    """(name, kind, got, want, bound) for a training run's losses, grads per step and params."""
    bounds = bounds or {}
    n = len(want["loss"]) if steps is None else steps
    rows = [(f"{prefix} loss[{i}]", "loss", got["loss"][i], want["loss"][i],
             bounds.get(("loss", i))) for i in range(len(want["loss"]))]
    for i in range(n):
        rows += [(f"{prefix} step{i} grad {k}", "grad", got["grads"][i][k], w,
                  bounds.get(("grad", i, k))) for k, w in want["grads"][i].items()]
    if params:
        rows += [(f"{prefix} param {k}", "param", got["params"][k], w, None)
                 for k, w in want["params"].items()]
    return rows


def _fsdp(env, m):
    c = env.case
    steps, rows, bias = c.get("steps", 2), c.get("rows", 16), c.get("bias", True)
    _check_shape(c, [rows, *m["M"].widths(env.recipe)])
    kw = dict(recipe=env.recipe, dtype=env.dtype, steps=steps, rows=rows, bias=bias,
              float8_all_gather=c["scenario"] == "fsdp_float8_all_gather",
              precompute=c.get("precompute", False))
    ranks = _launch(env, m["F"].fsdp_run, **kw)
    want = m["M"].train(env.model(bias), env.on(m["M"].batches(env.recipe, steps, rows=rows,
                                                                dtype=env.dtype)))
    return [r for i, got in enumerate(ranks) for r in _run_rows(f"rank{i}", got, want)]


def _data_parallel(env, m):
    """P-DP: one step, a micro-batch per rank, against one process accumulating the same
    micro-batches; within parity.sum_order_bound (only the order of the sum differs)."""
    c, M, P = env.case, m["M"], m["P"]
    rows, bias, world = c.get("rows", 16), c.get("bias", True), c["ranks"]
    _check_shape(c, [rows, *M.widths(env.recipe)])
    ranks = _launch(env, m["F"].fsdp_run, recipe=env.recipe, dtype=env.dtype, steps=1,
                    rows=rows, bias=bias, split_batch=True,
                    float8_all_gather=c.get("float8_all_gather", False))
    (x, y), = env.on(M.batches(env.recipe, 1, rows=rows, dtype=env.dtype))
    terms, losses = {}, []
    for xs, ys in zip(x.chunk(world), y.chunk(world)):
        model = env.model(bias)
        loss = M.loss_fn(model(xs), ys) / world
        loss.backward()
        losses.append(loss.detach())
        for k, p in model.named_parameters():
            terms.setdefault(k, []).append(p.grad.detach().clone())
    want = {"loss": [sum(losses)], "grads": [{k: sum(t) for k, t in terms.items()}]}
    bounds = {("loss", 0): P.sum_order_bound(losses),
              **{("grad", 0, k): P.sum_order_bound(t) for k, t in terms.items()}}
    return [r for i, got in enumerate(ranks)
            for r in _run_rows(f"rank{i}", got, want, params=False, bounds=bounds)]


def _tensor_parallel(env, m):
    """P-COL / P-ROW: layer 0 of tiny_mlp split along N (colwise) or K (rowwise)."""
    T, P = m["T"], m["P"]
    x, g = T.layer_inputs(env.recipe, env.dtype)
    _check_shape(env.case, [x.shape[0], x.shape[1], g.shape[1]])
    ranks = _launch(env, T.tp_layers, [env.recipe], env.dtype)
    layer = env.model()[0]
    w = layer.weight.detach().clone().cpu()
    want = T.layer_run(layer, x.to(env.dev), g.to(env.dev))
    bounds = P.layer_bounds(env.recipe, x, w, g)
    mode = "col" if env.case["scenario"] == "tp_colwise" else "row"
    return [(f"rank{i} {k}", k, got[env.recipe][mode][k], want[k], bounds.get(k))
            for i, got in enumerate(ranks) for k in ("out", "grad_input", "grad_weight", "grad_bias")]


def _model_bounds(env, m, want):
    """2-D and SP against one process: TOLERANCES["model_*"] relative to the reference's max."""
    tol = m["P"].TOLERANCES
    rel = tol["model_hp" if env.recipe is None else "model_quantized"]["rel"]
    out = {("loss", i): tol["model_loss"]["rel"] * want["loss"][i].abs()
           for i in range(len(want["loss"]))}
    out.update({("grad", 0, k): rel * w.abs().max() for k, w in want["grads"][0].items()})
    return out


def _sequence_parallel(env, m):
    T, M = m["T"], m["M"]
    (x, _), = T.seq_batches(env.recipe, 1, env.dtype)
    _check_shape(env.case, [*x.shape[:2], *M.widths(env.recipe)])
    ranks = _launch(env, T.sp_pair, env.recipe, env.dtype)
    if env.case["scenario"] == "sp_float8_input":     # SP-F8: the float8 gather vs the bf16 one
        return [r for i, got in enumerate(ranks)
                for r in _run_rows(f"rank{i}", got["float8"], got["hp"])]
    want = T.train_seq(env.model(), env.on(T.seq_batches(env.recipe, 2, env.dtype)))
    bounds = _model_bounds(env, m, want)
    return [r for i, got in enumerate(ranks)
            for r in _run_rows(f"rank{i}", got["hp"], want, steps=1, params=False, bounds=bounds)]


def _fsdp_tp_2d(env, m):
    T, M = m["T"], m["M"]
    (x, _), = T.seq_batches(env.recipe, 1, env.dtype)
    _check_shape(env.case, [*x.shape[:2], *M.widths(env.recipe)])
    ranks = _launch(env, T.fsdp_tp_many, [env.recipe], env.dtype)
    want = T.train_seq(env.model(), env.on(T.seq_batches(env.recipe, 2, env.dtype)))
    bounds = _model_bounds(env, m, want)
    return [r for i, got in enumerate(ranks)
            for r in _run_rows(f"rank{i}", got[env.recipe], want, steps=1, params=False,
                               bounds=bounds)]


def _checkpoint_resume(env, m):
    """CKPT: save after `save_at` steps on the way through `steps`, then fresh ranks load it and
    run the rest: same losses and final weights as the run that never stopped."""
    import torch
    c, C = env.case, m["C"]
    steps, save_at, f8ag = c.get("steps", 4), c.get("save_at", 2), c.get("float8_all_gather", False)
    _check_shape(c, [16, *m["M"].widths(env.recipe)])
    folder = tempfile.mkdtemp(prefix="qtrain-conformance-ckpt-")
    try:
        path = os.path.join(folder, "ckpt")
        args = (env.recipe, env.dtype, path, steps)
        straight = _launch(env, C.ckpt_run, *args, save_at, False, False, f8ag, cache=False)
        resumed = _launch(env, C.ckpt_run, *args, None, True, False, f8ag, cache=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = []
    for i, (got, want) in enumerate(zip(resumed, straight)):
        rows.append((f"rank{i} start", "start", torch.tensor(got["start"], dtype=torch.int32),
                     torch.tensor(save_at, dtype=torch.int32), None))
        rows += [(f"rank{i} loss[{save_at + j}]", "loss", a, b, None)
                 for j, (a, b) in enumerate(zip(got["loss"], want["loss"][save_at:]))]
        rows += [(f"rank{i} param {k}", "param", got["params"][k], w, None)
                 for k, w in want["params"].items()]
    return rows


RUNNERS = {"fsdp": _fsdp, "fsdp_float8_all_gather": _fsdp,
           "fsdp_data_parallel": _data_parallel, "tp_colwise": _tensor_parallel,
           "tp_rowwise": _tensor_parallel, "sp_float8_input": _sequence_parallel,
           "sp": _sequence_parallel, "fsdp_tp_2d": _fsdp_tp_2d,
           "checkpoint_resume": _checkpoint_resume}


class _Limit:
    """An absolute per-element bound from distributed_tests/parity.py, in compare.bound's form."""

    def __init__(self, limit):
        self._limit = to_numpy(limit.double()) if hasattr(limit, "double") else float(limit)

    def limit(self):
        return self._limit


def _same_backend(a, b):
    return type(a) is type(b) and getattr(a, "name", None) == getattr(b, "name", None)


def _env(case, backend, subject):
    from .backends import BackendUnavailable, registry_name, resolve
    m = _modules()
    dist = m["L"].dist_backend()
    dev = m["L"].reference_device(dist)      # rank 0's device: cuda:0 under nccl, else cpu
    shortfall = m["L"].gpu_shortfall(case["ranks"], dist)
    if shortfall is not None:                # nccl: one GPU per rank
        raise OpMissing(f"{m['L'].ENV_BACKEND}={dist}: {shortfall}")
    try:
        again = resolve(subject)
    except (BackendUnavailable, ImportError, RuntimeError, ValueError) as e:
        raise OpMissing(f"each rank rebuilds the backend from its registry name or import path; "
                        f"{subject!r} does not resolve ({e})") from None
    if not _same_backend(again, backend):
        raise OpMissing(f"{subject!r} resolves to another backend than the one under test")
    if hasattr(backend, "runnable_on"):
        ok, reason = backend.runnable_on(dev)
        if not ok:
            raise OpMissing(f"{dist} ranks run on {dev.type} and the backend cannot ({reason}); "
                            f"QTRAIN_DIST_BACKEND=nccl puts one rank on each GPU")
    return Env(subject, registry_name(backend), dev, case), m


def run(case, backend, device, subject):
    """Every output of every rank, judged: [Check]. `device` (the harness's --device) is not
    used: the ranks' device follows $QTRAIN_DIST_BACKEND, and the single-process run follows it."""
    env, m = _env(case, backend, subject)
    try:
        rows = RUNNERS[case["scenario"]](env, m)
    except m["L"].WorkerFailed as e:
        text = str(e).strip().splitlines()
        return [Check("ranks", subject, False, 1, 1,
                      first_bad=" | ".join(text[:1] + text[-3:]))]
    bounded = set(case.get("within_bound", ()))
    checks = []
    for name, kind, got, want, limit in rows:
        if case["compare"] == "bound" or kind in bounded:
            if limit is None:   # validate() keeps cases from asking; a scenario bug if reached
                raise ValueError(f"no bound for {name} in scenario {case['scenario']!r}")
            checks.append(bound(name, subject, to_numpy(got), to_numpy(want), _Limit(limit)))
        else:
            checks.append(bitwise(name, subject, to_numpy(got), to_numpy(want)))
    return checks
