"""Tensor / sequence parallel worker bodies (P-COL, P-ROW, SP float8 input, FSDP x TP)."""
import torch
from torch.distributed.tensor import Shard

from distributed_tests import models
from distributed_tests.fsdp_workers import _cpu, count_collectives


def layer_inputs(recipe, dtype, seed=3, rows=32):
    """x (rows, K) and grad_output (rows, N) for one layer of tiny_mlp's first width pair."""
    k, n, _ = models.widths(recipe)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g).to(dtype), torch.randn(rows, n, generator=g).to(dtype)


def single_layer(recipe, dtype, seed=0):
    """Layer 0 of tiny_mlp (a QuantizedLinear, or nn.Linear for recipe None)."""
    return models.tiny_mlp(recipe, dtype, seed=seed)[0]


def layer_run(layer, x, g):
    """Forward + backward of one layer; returns out, grad_input, grad_weight, grad_bias."""
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.backward(g)
    return {"out": models.full(out).detach(), "grad_input": x.grad.detach(),
            "grad_weight": models.full(layer.weight.grad).detach(),
            "grad_bias": models.full(layer.bias.grad).detach()}


def tp_layers(ctx, recipes, dtype):
    """For each recipe: layer 0 column-parallel and (separately) row-parallel on all ranks."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from qtrain.tensor_parallel import QuantizedColwiseParallel, QuantizedRowwiseParallel
    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    res = {}
    for recipe in recipes:
        x, g = (t.to(ctx.device) for t in layer_inputs(recipe, dtype))
        n = g.shape[1]
        col = parallelize_module(single_layer(recipe, dtype).to(ctx.device), mesh,
                                 QuantizedColwiseParallel())
        # colwise output is the local N shard; feed the matching grad_output shard
        r_col = layer_run(col, x, g.chunk(ctx.world_size, dim=1)[ctx.rank])
        r_col["out"] = torch.cat(_gather(r_col["out"], ctx), dim=1)
        row = parallelize_module(single_layer(recipe, dtype).to(ctx.device), mesh,
                                 QuantizedRowwiseParallel())
        k = x.shape[1]
        r_row = layer_run(row, x.chunk(ctx.world_size, dim=1)[ctx.rank], g)
        r_row["grad_input"] = torch.cat(_gather(r_row["grad_input"], ctx), dim=1)
        res[recipe] = {"col": r_col, "row": r_row, "n": n, "k": k}
    return _cpu(res)


def _gather(t, ctx):
    import torch.distributed as dist
    out = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t.contiguous())
    return out


def sp_mlp(ctx, recipe, dtype, float8_input, steps=2):
    """tiny_mlp under sequence parallel: x (B, S, K) sharded on S; layer 0 column-parallel
    (optionally with the float8 all-gather of its input), layer 2 row-parallel back to S."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from qtrain.tensor_parallel import (Float8SequenceParallelInput, QuantizedColwiseParallel,
                                        QuantizedRowwiseParallel)
    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    model = models.tiny_mlp(recipe, dtype).to(ctx.device)
    parallelize_module(model, mesh, {
        "0": QuantizedColwiseParallel(input_layouts=Shard(1)),
        "2": QuantizedRowwiseParallel(output_layouts=Shard(1))})
    if float8_input:
        parallelize_module(model[0], mesh, Float8SequenceParallelInput())
    data = [(x.to(ctx.device), y.to(ctx.device)) for x, y in seq_batches(recipe, steps, dtype)]
    with count_collectives() as counts:
        res = train_seq(model, data, shard=(ctx.rank, ctx.world_size))
    res.update(counts)
    return _cpu(res)


def seq_batches(recipe, steps, dtype, batch=2, seq=16, seed=5):
    d0, _, d2 = models.widths(recipe)
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, seq, d0, generator=g).to(dtype),
             torch.randn(batch, seq, d2, generator=g).to(dtype)) for _ in range(steps)]


def train_seq(model, data, shard=None, lr=0.05):
    """SGD with loss = sum((out - y)^2) / numel of the FULL batch, so per-rank sequence shards
    add up to the single-process loss. `shard` = (rank, world) splits dim 1 (sequence)."""
    import torch.distributed as dist
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, grads = [], []
    for x, y in data:
        numel = y.numel()
        if shard is not None:
            x, y = x.chunk(shard[1], dim=1)[shard[0]], y.chunk(shard[1], dim=1)[shard[0]]
        opt.zero_grad(set_to_none=True)
        loss = (model(x).float() - y.float()).square().sum() / numel
        loss.backward()
        total = loss.detach().clone()
        if shard is not None:
            dist.all_reduce(total)
        losses.append(total)
        grads.append({n: models.plain(p.grad) for n, p in model.named_parameters()})
        opt.step()
    return {"loss": losses, "grads": grads,
            "params": {n: models.plain(p) for n, p in model.named_parameters()}}


def fsdp_tp_many(ctx, recipes, dtype):
    return {r: fsdp_tp_mlp(ctx, r, dtype) for r in recipes}


def fsdp_tp_mlp(ctx, recipe, dtype, steps=2):
    """2-D mesh (dp, tp): TP inside each dp group, FSDP2 over dp; replicated batch over dp."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    from qtrain.tensor_parallel import QuantizedColwiseParallel, QuantizedRowwiseParallel
    mesh = init_device_mesh(ctx.device_type, (2, ctx.world_size // 2), mesh_dim_names=("dp", "tp"))
    model = models.tiny_mlp(recipe, dtype).to(ctx.device)
    parallelize_module(model, mesh["tp"], {"0": QuantizedColwiseParallel(),
                                           "2": QuantizedRowwiseParallel()})
    for i in ("0", "2"):
        fully_shard(model.get_submodule(i), mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    data = [(x.to(ctx.device), y.to(ctx.device)) for x, y in seq_batches(recipe, steps, dtype)]
    return _cpu(train_seq(model, data))


def sp_pair(ctx, recipe, dtype):
    """sp_mlp with and without the float8 input all-gather, in one launch."""
    return {"float8": sp_mlp(ctx, recipe, dtype, True), "hp": sp_mlp(ctx, recipe, dtype, False)}
