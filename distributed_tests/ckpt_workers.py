"""Checkpoint and fault worker bodies (resume bit-identity, killed writers, failing ranks)."""
import os
import time

import torch

from distributed_tests import models
from distributed_tests.fsdp_workers import _cpu


def _sharded(ctx, recipe, dtype, float8_all_gather, moe=False):
    from torch.distributed.device_mesh import init_device_mesh

    from qtrain.fsdp import fully_shard_model
    model = (models.tiny_moe(recipe, dtype) if moe else models.tiny_mlp(recipe, dtype))
    model = model.to(ctx.device)
    fully_shard_model(model, init_device_mesh(ctx.device_type, (ctx.world_size,)),
                      float8_all_gather=float8_all_gather)
    return model


def ckpt_run(ctx, recipe, dtype, path, steps, save_at=None, resume=False, kill_in_save=False,
             float8_all_gather=False, moe=False):
    """Train steps [start, steps) with Adam (state that must survive a resume); save after
    `save_at` steps and go on (the same run is the never-stopped reference); `resume` loads
    `path` first. `kill_in_save`: rank 0 dies after its shard
    files are written but before the checkpoint is committed. `moe`: models.tiny_moe (its
    experts converted for `recipe`) instead of tiny_mlp."""
    import qtrain
    from qtrain import dist_checkpoint as dck
    model = _sharded(ctx, recipe, dtype, float8_all_gather, moe)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pairs = models.moe_batches(steps, dtype=dtype) if moe else models.batches(recipe, steps,
                                                                              dtype=dtype)
    data = models.on(pairs, ctx.device)
    start = 0
    if resume:
        start = dck.load_checkpoint(path, model, opt)["step"]
    if kill_in_save:
        real_save = dck.dcp.save

        def dying_save(*a, **k):
            real_save(*a, **k)
            if ctx.rank == 0:
                os._exit(17)          # killed mid-checkpoint, after writing its shards
        dck.dcp.save = dying_save
    losses = []
    for i in range(start, steps):
        if i == save_at:
            dck.save_checkpoint(path, model, opt, step=save_at)
        x, y = data[i]
        opt.zero_grad(set_to_none=True)
        loss = models.loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if float8_all_gather:
            qtrain.precompute_float8_weight_scales(model)
        losses.append(loss.detach())
    return _cpu({"loss": losses, "start": start,
                 "params": {n: models.plain(p) for n, p in model.named_parameters()}})


def failing_step(ctx, fail_rank, steps=3):
    """Every rank trains; `fail_rank` raises in the middle of step 1 (after the forward, before
    the backward), so the others wait in a collective that never completes. Each step ends by
    reading the loss on the host, as a training loop that logs it does: under NCCL, whose
    collectives are asynchronous, that is where a survivor waits (gloo waits inside the
    collective itself)."""
    model = _sharded(ctx, None, torch.float32, False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for i, (x, y) in enumerate(models.batches(None, steps)):
        x, y = x.to(ctx.device), y.to(ctx.device)
        loss = models.loss_fn(model(x), y)
        if i == 1 and ctx.rank == fail_rank:
            raise RuntimeError(f"injected failure on rank {ctx.rank} at step {i}")
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return time.time()


def torn_down_survivor(ctx, fail_rank, after_s=1.0):
    """A stand-in, runnable under gloo, for what the NCCL watchdog does to a rank left waiting
    on a dead peer (TORCH_NCCL_ASYNC_ERROR_HANDLING=3): `fail_rank` raises; every other rank
    is killed by a signal a moment later without reporting anything (SIGKILL here rather than
    the watchdog's SIGABRT, which could leave a core file)."""
    import signal
    if ctx.rank == fail_rank:
        raise RuntimeError(f"injected failure on rank {ctx.rank}")
    time.sleep(after_s)
    os.kill(os.getpid(), signal.SIGKILL)
