"""Distributed checkpoints (torch.distributed.checkpoint) of sharded / parallel quantized models.

- Weights are saved in their ORIGINAL dtype (fp32 or bf16): the weight wrappers (the float8
  all-gather's qtrain.fsdp.Float8AllGatherWeight, converted MoE experts'
  qtrain.moe_weight.GroupedExpertsWeight) are saved as the high-precision shards they wrap;
  float8 payloads and scales are derived state and never written.
- Atomic: every rank writes into `<path>.tmp-<id>`; after a barrier rank 0 writes the marker file
  COMPLETE (json: world size, step, user metadata) and renames the folder to `<path>`. A run
  killed at any point leaves either a complete `<path>` or no `<path>` (only a tmp folder);
  `load_checkpoint` refuses a folder without the marker (IncompleteCheckpointError).
"""
import json
import os
import shutil
import uuid

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

MARKER = "COMPLETE"


class IncompleteCheckpointError(RuntimeError):
    """The folder is not a finished checkpoint (killed writer, partial copy, wrong path)."""


def _plain(sd):
    """Replace weight wrappers (locals of DTensors too) by the high-precision tensor they wrap
    (the same memory, so an in-place load lands in the parameter)."""
    from .fsdp import Float8AllGatherWeight
    from .moe_weight import GroupedExpertsWeight
    wrappers = (Float8AllGatherWeight, GroupedExpertsWeight)
    out = {}
    for k, v in sd.items():
        if isinstance(v, DTensor) and isinstance(v._local_tensor, wrappers):
            v = DTensor.from_local(v._local_tensor._hp, v.device_mesh, v.placements,
                                   shape=v.shape, stride=v.stride(), run_check=False)
        elif isinstance(v, wrappers):
            v = v._hp
        elif isinstance(v, dict):
            v = _plain(v)
        out[k] = v
    return out


def _state(model, optimizer):
    opts = [] if optimizer is None else [optimizer]
    model_sd, optim_sd = get_state_dict(model, opts)
    return {"model": _plain(model_sd), "optim": optim_sd if optimizer is not None else {}}


def _broadcast(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(path, model, optimizer=None, *, step=None, extra=None):
    """Collective: every rank calls it. Writes `path` atomically (see module docstring)."""
    path = os.path.abspath(path)
    tmp = _broadcast(f"{path}.tmp-{uuid.uuid4().hex[:12]}")
    state = _state(model, optimizer)
    dcp.save(state, checkpoint_id=tmp)
    _barrier()                        # every rank's files are written
    if not dist.is_initialized() or dist.get_rank() == 0:
        world = dist.get_world_size() if dist.is_initialized() else 1
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"world_size": world, "step": step, "extra": extra or {}}, f)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if os.path.exists(path):      # keep the old checkpoint until the new one is in place
            old = f"{path}.old-{uuid.uuid4().hex[:12]}"
            os.rename(path, old)
        os.rename(tmp, path)          # the commit point
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return path


def checkpoint_info(path):
    """The marker's content; raises IncompleteCheckpointError when `path` is not complete."""
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        parent = os.path.dirname(os.path.abspath(path))
        tmps = [p for p in (os.listdir(parent) if os.path.isdir(parent) else [])
                if p.startswith(os.path.basename(path) + ".tmp-")]
        hint = f"; unfinished writes found: {tmps}" if tmps else ""
        raise IncompleteCheckpointError(
            f"qtrain.dist_checkpoint: {path!r} has no {MARKER} marker: the writer did not "
            f"finish (killed or still running) or this is not a qtrain checkpoint{hint}. "
            f"Load an earlier complete checkpoint instead.")
    with open(marker) as f:
        return json.load(f)


def load_checkpoint(path, model, optimizer=None):
    """Collective: load a complete checkpoint into `model` (and `optimizer`) in place, in the
    parameters' own dtype. Returns the marker info (step, extra, world size)."""
    info = checkpoint_info(path)
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=path)
    opts = [] if optimizer is None else [optimizer]
    set_state_dict(model, opts, model_state_dict=state["model"],
                   optim_state_dict=state["optim"] if optimizer is not None else {})
    return info


def saved_dtypes(path):
    """{fqn: dtype} of every tensor stored in the checkpoint (from its metadata)."""
    checkpoint_info(path)
    meta = dcp.FileSystemReader(path).read_metadata()
    out = {}
    for fqn, m in meta.state_dict_metadata.items():
        props = getattr(m, "properties", None)
        if props is not None and isinstance(getattr(props, "dtype", None), torch.dtype):
            out[fqn] = props.dtype
    return out
