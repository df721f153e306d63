"""Expert-parallel sharding worker (run on every rank by launch.run_workers): converted expert
weights distributed along the expert dimension with DTensor."""
import torch


def expert_shard_run(ctx, recipe, sizes, seed=0):
    """Each rank holds E / world experts of one GroupedExpertsWeight (distribute_tensor,
    Shard(0)) and runs the tokens of its own experts (as an all-to-all would hand them over)
    through torch._grouped_mm on `to_local()`; returns the local output and the gradients of
    its tokens and of its experts (their rows of the full weight's grad)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import qtrain
    from qtrain.moe_weight import GroupedExpertsWeight
    gen = torch.Generator().manual_seed(seed)
    n_experts = len(sizes)
    w = torch.randn(n_experts, 32, 64, generator=gen) / 8
    x = torch.randn(sum(sizes), 64, generator=gen)
    g = torch.randn(sum(sizes), 32, generator=gen)
    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    weight = torch.nn.Parameter(GroupedExpertsWeight(w, qtrain.recipe_config(recipe)))
    sharded = distribute_tensor(weight, mesh, [Shard(0)])
    local = sharded.to_local()
    per_rank = n_experts // ctx.world_size
    first = ctx.rank * per_rank
    rows = slice(sum(sizes[:first]), sum(sizes[:first + per_rank]))
    offs = torch.tensor(sizes[first:first + per_rank]).cumsum(0).to(torch.int32)
    xs = x[rows].clone().requires_grad_()
    out = torch._grouped_mm(xs, local.transpose(-2, -1), offs=offs)
    out.backward(g[rows])
    return {"local_type": type(local).__name__, "out": out.detach(), "grad_x": xs.grad,
            "grad_w": sharded.grad.to_local() if sharded.grad is not None else None,
            "w": w, "x": x, "g": g}
