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

NCCL: one rank per GPU (rank r on cuda:r). `run_workers` refuses a world larger than
torch.cuda.device_count() up front (`TooFewGPUs`, whose message `gpu_shortfall` gives; tests
skip with it through `skip_if_too_few_gpus`), and every NCCL rank gets NCCL_NVLS_ENABLE=0 and
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 unless the environment says otherwise (NVLink multicast
stays off). The single-process runs the tests compare with run on `reference_device()`: the
device of rank 0 (cuda:0 under nccl, cpu under gloo), so that both sides use the same kernels.
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
# Set (setdefault) in every NCCL rank before init_process_group: NVLink multicast (NVLS, and
# the symmetric-memory multicast object) must stay off on the GPU hosts these tests run on.
NCCL_ENV_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}
# The launcher's deadline (`timeout_s`) is a cap against hangs, sized for gloo on 2 CPU cores.
# NCCL ranks start CUDA and NCCL, and on a fresh machine each rank JIT-compiles the fast
# backend's Triton kernels on first use; the cap is this many times longer there.
DEADLINE_SCALE = {"gloo": 1.0, "nccl": 3.0}


class WorkerFailed(RuntimeError):
    """A rank raised, died or ran past the launcher's deadline. `failures` = [(rank, text)]
    (rank -1: the launcher's own deadline)."""

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class TooFewGPUs(RuntimeError):
    """NCCL runs one rank per GPU: a world larger than the visible GPU count cannot start."""


def dist_backend():
    """The process-group backend from $QTRAIN_DIST_BACKEND (default gloo)."""
    name = os.environ.get(ENV_BACKEND, "gloo").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"distributed_tests.launch: {ENV_BACKEND}={name!r}; expected one of "
                         f"{list(BACKENDS)}")
    return name


def reference_device(backend=None):
    """Where a single-process reference run goes: rank 0's device, so that it uses the ranks'
    kernels (and, through QTRAIN_BACKEND=auto, the same qtrain backend). cuda:0 under nccl,
    cpu under gloo. The one place this choice is made; results come back to the CPU
    (models.to_cpu) before they are compared with the ranks' (which travel as CPU tensors)."""
    import torch
    backend = backend or dist_backend()
    return torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")


def gpu_shortfall(world_size, backend=None):
    """None when `world_size` ranks can start; else why not (nccl: one GPU per rank)."""
    backend = backend or dist_backend()
    if backend != "nccl":
        return None
    import torch
    present = torch.cuda.device_count()
    if world_size > present:
        return (f"needs {world_size} GPUs for {world_size} NCCL ranks, {present} present "
                f"(one rank per GPU)")
    return None


def skip_if_too_few_gpus(world_size, backend=None):
    """pytest.skip (with gpu_shortfall's reason) when `world_size` ranks cannot start here."""
    reason = gpu_shortfall(world_size, backend)
    if reason is not None:
        import pytest
        pytest.skip(f"{ENV_BACKEND}={backend or dist_backend()}: {reason}")


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


def _nccl_env():
    for k, v in NCCL_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def _worker(fn, rank, world_size, backend, host, port, pg_timeout_s, args, results):
    import sys
    import torch
    import warnings

    import torch.distributed as dist
    torch.set_num_threads(1)  # CI has 2 cores shared by every rank (gloo computes on them)
    # FSDP2 warns for every module output that is a view (reshape); the tests never modify
    # outputs in place, so the warning is noise here.
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR=host, MASTER_PORT=str(port))
    if backend == "nccl":
        _nccl_env()
    try:   # a rank torn down by a signal (the NCCL watchdog aborts) leaves no core file here
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    try:
        ctx = Ctx(rank, world_size, backend)
        store = dist.TCPStore(host, port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=pg_timeout_s))
        extra = {"device_id": ctx.device} if backend == "nccl" else {}
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=pg_timeout_s), **extra)
        out = fn(ctx, *args)
        payload = _pack(out)
        # Success is reported only after the group is torn down: under NCCL collectives run
        # asynchronously, and destroy waits for this rank's outstanding ones.
        dist.destroy_process_group()
    except BaseException:
        # Report first, then leave at once: tearing the group down could wait for peers
        # that are gone (NCCL), and the report must reach the parent either way.
        results.put((rank, False, traceback.format_exc()))
        results.close()
        results.join_thread()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    results.put((rank, True, payload))


def run_workers(fn, world_size, *args, timeout_s=120.0, pg_timeout_s=60.0, backend=None,
                kill_on_failure=True):
    """Run `fn(ctx, *args)` on `world_size` spawned ranks; return [result of rank 0, 1, ...].

    `fn` must be importable (module level). Results travel back through torch.save, so tensors
    are fine. Raises WorkerFailed on the first failing rank (after killing the others unless
    `kill_on_failure=False`, which lets the survivors hit their own process-group timeout) or
    when `timeout_s` (times DEADLINE_SCALE[backend]) passes. Under nccl a world larger than the
    GPU count raises TooFewGPUs before anything starts.
    """
    import torch.distributed as dist
    backend = backend or dist_backend()
    shortfall = gpu_shortfall(world_size, backend)
    if shortfall is not None:
        raise TooFewGPUs(f"distributed_tests.launch: world {world_size} under {backend} "
                         f"{shortfall}; skip it or run on a host with more GPUs")
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
    got, failures, failed = {}, [], set()
    timeout_s = timeout_s * DEADLINE_SCALE[backend]
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) + len(failed) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                rank = None
            if rank is not None:
                if ok:
                    got[rank] = _unpack(payload)
                else:
                    failures.append((rank, payload))
                    failed.add(rank)
                    if kill_on_failure:
                        break
                continue
            # Nothing queued. A rank that exited before this check put its report (if any) in
            # the queue before exiting, so an empty queue now means it died without one (a
            # signal, os._exit, the NCCL watchdog tearing the process down).
            dead = [r for r, p in enumerate(procs)
                    if p.exitcode is not None and r not in got and r not in failed]
            if dead and results.empty():
                for r in dead:
                    failures.append((r, f"rank {r} exited with code {_exit_text(procs[r].exitcode)} "
                                        f"and no report"))
                    failed.add(r)
                if kill_on_failure:
                    break
                continue
            if time.monotonic() > deadline:
                failures.append((-1, f"launcher deadline of {timeout_s}s passed; "
                                     f"ranks done: {sorted(got)}, failed: {sorted(failed)}"))
                break
    finally:
        _stop(procs)
        store = None
    if failures:
        failures.sort(key=lambda f: f[0] == -1)   # the launcher's deadline last
        rank, text = failures[0]
        raise WorkerFailed(f"distributed_tests.launch: rank {rank} failed "
                           f"({len(failures)} failure(s), world {world_size}, {backend}):\n{text}",
                           failures)
    return [got[r] for r in range(world_size)]


def _exit_text(code):
    if code is not None and code < 0:
        import signal
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


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
    if backend == "nccl":
        _nccl_env()
    ctx = Ctx(rank, world, backend)
    extra = {"device_id": ctx.device} if backend == "nccl" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=pg_timeout_s), **extra)
    return ctx
