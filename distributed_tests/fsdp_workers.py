"""FSDP2 worker bodies (run on every rank by launch.run_workers; also `python -m` runnable)."""
import contextlib

import torch
import torch.distributed as dist

from distributed_tests import models


@contextlib.contextmanager
def count_collectives():
    """Count all-gather bytes (what each rank puts on the wire) and all-reduce calls by
    wrapping torch.distributed's functions, which FSDP2 and qtrain.fsdp call by attribute."""
    counts = {"all_gather_bytes": 0, "all_gathers": 0, "all_reduces": 0}
    saved = {}

    def gather(orig):
        def wrapped(output_tensor, input_tensor, *a, **k):
            counts["all_gather_bytes"] += input_tensor.numel() * input_tensor.element_size()
            counts["all_gathers"] += 1
            return orig(output_tensor, input_tensor, *a, **k)
        return wrapped

    def reduce(orig):
        def wrapped(*a, **k):
            counts["all_reduces"] += 1
            return orig(*a, **k)
        return wrapped

    for name, wrap in (("all_gather_into_tensor", gather), ("all_gather_single", gather),
                       ("all_reduce", reduce)):
        if hasattr(dist, name):
            saved[name] = getattr(dist, name)
            setattr(dist, name, wrap(saved[name]))
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def fsdp_run(ctx, recipe, dtype, float8_all_gather=False, steps=2, precompute=False,
             split_batch=False, bias=True, rows=16):
    """Shard tiny_mlp over all ranks and train; replicated batch unless `split_batch`."""
    from torch.distributed.device_mesh import init_device_mesh

    import qtrain
    from qtrain.fsdp import fully_shard_model
    torch.manual_seed(0)
    model = models.tiny_mlp(recipe, dtype, bias=bias).to(ctx.device)
    mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    fully_shard_model(model, mesh, float8_all_gather=float8_all_gather)
    data = models.batches(recipe, steps, rows=rows, dtype=dtype)
    if split_batch:   # each rank its own micro-batch (data parallel)
        data = [(x.chunk(ctx.world_size)[ctx.rank], y.chunk(ctx.world_size)[ctx.rank])
                for x, y in data]
    data = [(x.to(ctx.device), y.to(ctx.device)) for x, y in data]
    step_reduces = []

    def after_step(m):
        if precompute:
            with count_collectives() as c:
                qtrain.precompute_float8_weight_scales(m)
            step_reduces.append(c["all_reduces"])

    with count_collectives() as counts:
        res = models.train(model, data, after_step=after_step)
    res.update(counts)
    res["precompute_all_reduces"] = step_reduces
    if split_batch:
        res["loss"] = [_mean_over_ranks(v) for v in res["loss"]]
    return _cpu(res)


def _mean_over_ranks(v):
    t = v.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


_cpu = models.to_cpu   # results travel to the parent as CPU tensors


def fsdp_many(ctx, configs):
    """Several fsdp_run configurations in one launch (process start-up dominates on CI)."""
    return [fsdp_run(ctx, **cfg) for cfg in configs]


def fsdp_moe_many(ctx, recipes, steps=2, compile_experts=False, param_dtype=None):
    """tiny_moe under FSDP2 (router, experts and the block each a unit; replicated batch), one
    run per recipe in `recipes`; `compile_experts`: the sharded experts module compiled
    (torch.compile(backend="aot_eager") after fully_shard, as per-block compilation does);
    `param_dtype`: FSDP2 mixed precision (fp32 shards, params gathered in that dtype)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from qtrain.fsdp import fully_shard_model
    out = []
    for recipe in recipes:
        model = models.tiny_moe(recipe).to(ctx.device)
        mp = MixedPrecisionPolicy(param_dtype=param_dtype) if param_dtype else None
        fully_shard_model(model, init_device_mesh(ctx.device_type, (ctx.world_size,)),
                          mp_policy=mp)
        if compile_experts:
            model.experts.compile(backend="aot_eager", fullgraph=True)
        out.append(_cpu(models.train(model, models.on(models.moe_batches(steps), ctx.device))))
    return out


def fsdp_saved_bytes(ctx, configs):
    """Bytes that autograd holds for backward once the forward is done, per rank, under FSDP2
    (every Linear its own unit, resharded after forward). A saved tensor counts by the live
    size of its storage at that moment: the unsharded parameters FSDP2 freed count 0 (it
    gathers them again for the backward), a copy made from them counts in full. Each config:
    dict(recipe=..., keep_quantized_weight=bool)."""
    from torch.distributed.device_mesh import init_device_mesh

    import qtrain
    from qtrain.fsdp import fully_shard_model
    out = []
    for cfg in configs:
        d0, d1, d2 = models.widths(cfg["recipe"])
        model = models.tiny_mlp(None, torch.float32, dims=(d0, d1, d2), bias=False)
        config = qtrain.recipe_config(cfg["recipe"],
                                      keep_quantized_weight=cfg["keep_quantized_weight"])
        qtrain.convert_to_quantized_training(model, config)
        model = model.to(ctx.device)
        fully_shard_model(model, init_device_mesh(ctx.device_type, (ctx.world_size,)))
        x = torch.randn(128, d0, generator=torch.Generator().manual_seed(1)).to(ctx.device)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1],
                                                      lambda t: t):
            loss = models.loss_fn(model(x), torch.zeros(128, d2, device=ctx.device))
        storages = {}
        for t in saved:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()        # freed unsharded params: 0 bytes
        held = sum(storages.values())
        loss.backward()                                # the backward still runs (and re-gathers)
        out.append({"held_bytes": held, "loss": loss.detach().cpu()})
    return out
