"""Multi-process launcher for the distributed tests: gloo on CPU by default, NCCL on GPUs unchanged.

`QTRAIN_DIST_BACKEND` = gloo | nccl (default: gloo). `run_workers(fn, world_size, ...)` spawns one
process per rank, rendezvous through a TCPStore the parent opens on a free port (port 0, so no
port guessing and no race), and returns each rank's result. A rank that raises or dies makes the
launcher kill the other ranks it started and raise `WorkerFailed` naming that rank and its
traceback; a run past `timeout_s` is killed the same way, so no test can hang CI. Process groups
carry their own timeout (`pg_timeout_s`) too, so a rank left waiting on a dead peer fails by itself
even when launched by `torchrun` instead of this file.

Under `torchrun` (RANK/WORLD_SIZE/MASTER_* in the environment) a script calls `init_from_env()`
and then the same worker function with the Ctx it returns.
"""
import datetime
import io
import multiprocessing as mp
import os
import queue
import time
import traceback

ENV_BACKEND = "QTRAIN_DIST_BACKEND"
BACKENDS = ("gloo", "nccl")


class WorkerFailed(RuntimeError):
    """A rank raised, died or ran past the launcher's deadline. `failures` = [(rank, text)]
    (rank -1: the launcher's own deadline)."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


def dist_backend():
    """The process-group backend from $QTRAIN_DIST_BACKEND (default gloo)."""
    name = os.environ.get(ENV_BACKEND, "gloo").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"distributed_tests.launch: {ENV_BACKEND}={name!r}; expected one of "
                         f"{list(BACKENDS)}")
    return name


class Ctx:
    """What a worker function gets: its rank, the world size, the backend and its device."""

    def __init__(self, rank, world_size, backend):
        import torch
        self.rank, self.world_size, self.backend = rank, world_size, backend
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", rank))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.device_type = self.device.type

    def __repr__(self):
        return f"Ctx(rank={self.rank}, world={self.world_size}, {self.backend}, {self.device})"


def _pack(obj):
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data):
    import torch
    return torch.load(io.BytesIO(data), weights_only=False)


def _worker(fn, rank, world_size, backend, host, port, pg_timeout_s, args, results):
    import torch
    import warnings

    import torch.distributed as dist
    torch.set_num_threads(1)  # CI has 2 cores shared by every rank
    # FSDP2 warns for every module output that is a view (reshape); the tests never modify
    # outputs in place, so the warning is noise here.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR=host, MASTER_PORT=str(port))
    try:
        ctx = Ctx(rank, world_size, backend)
        store = dist.TCPStore(host, port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=pg_timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=pg_timeout_s))
        try:
            out = fn(ctx, *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, _pack(out)))
    except BaseException:  # report every failure to the parent, then exit non-zero
        results.put((rank, False, traceback.format_exc()))
        raise SystemExit(1)


def run_workers(fn, world_size, *args, timeout_s=120.0, pg_timeout_s=60.0, backend=None,
                kill_on_failure=True):
    """Run `fn(ctx, *args)` on `world_size` spawned ranks; return [result of rank 0, 1, ...].

    `fn` must be importable (module level). Results travel back through torch.save, so tensors
    are fine. Raises WorkerFailed on the first failing rank (after killing the others unless
    `kill_on_failure=False`, which lets the survivors hit their own process-group timeout) or
    when `timeout_s` passes.
    """
    import torch.distributed as dist
    backend = backend or dist_backend()
    host = "127.0.0.1"
    # The parent hosts the rendezvous store on port 0: the OS picks a free port.
    store = dist.TCPStore(host, 0, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=pg_timeout_s))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"qtrain-rank{r}", daemon=True,
                         args=(fn, r, world_size, backend, host, store.port, pg_timeout_s,
                               args, results))
             for r in range(world_size)]
    for p in procs:
        p.start()
    got, failures = {}, []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                rank = None
            if rank is not None:
                if ok:
                    got[rank] = _unpack(payload)
                else:
                    failures.append((rank, payload))
                    if kill_on_failure:
                        break
            dead = [r for r, p in enumerate(procs)
                    if p.exitcode not in (None, 0) and r not in got]
            if dead and rank is None and results.empty():
                if not failures:
                    failures.append((dead[0], f"rank {dead[0]} exited with code "
                                               f"{procs[dead[0]].exitcode} and no report"))
                if kill_on_failure or len(failures) + len(got) >= world_size:
                    break
                if all(p.exitcode is not None for p in procs):
                    break
            if time.monotonic() > deadline:
                failures.append((-1, f"launcher deadline of {timeout_s}s passed; "
                                     f"ranks done: {sorted(got)}"))
                break
    finally:
        _stop(procs)
        store = None
    if failures:
        rank, text = failures[0]
        raise WorkerFailed(f"distributed_tests.launch: rank {rank} failed "
                           f"({len(failures)} failure(s), world {world_size}, {backend}):\n{text}",
                           failures)
    return [got[r] for r in range(world_size)]


def _stop(procs):
    """Terminate, then kill, only the processes this launcher started."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(2)


def init_from_env(pg_timeout_s=60.0):
    """For scripts under torchrun: init the default group from the environment; return a Ctx."""
    import torch.distributed as dist
    backend = dist_backend()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ctx = Ctx(rank, world, backend)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=pg_timeout_s))
    return ctx
