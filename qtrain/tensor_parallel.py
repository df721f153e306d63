"""Tensor and sequence parallel styles for quantized linears (torch.distributed.tensor.parallel).

The quantized products run on LOCAL tensors (the qtrain custom ops have no DTensor sharding
rules): each style redistributes the input DTensor, takes local shards of input and weight,
runs the layer's quantized linear on them, and wraps the local result back with the placement
that the split implies. The weight's scaling groups are therefore those of the local shard.

Parity with one process (spec/07-recipes.md; distributed_tests/README.md lists the proofs):
- column-parallel splits the weight along N (rows of w): the output and grad_weight of an
  axiswise-along-K recipe (rowwise, rowwise_with_gw_hp, mxfp8, int8) use exactly the scaling
  groups of the full run and are BIT-IDENTICAL. grad_input contracts over N, split across ranks
  and summed: within the bound (and its grad_output groups along N are per shard).
- row-parallel splits K: every quantization group along K (rowwise, MX blocks across the split,
  tensorwise) sees only its shard, and the partial outputs are summed: within the bound.
- tensorwise: one scale per LOCAL weight shard (a finer grouping than the full run): within the
  bound. `Float8SequenceParallelInput` casts a sequence-sharded activation to float8 with the
  GLOBAL amax (all-reduce MAX) before its all-gather, so the gathered activation is bit-identical
  to quantizing the full one and half the bytes (bf16) cross the wire.
"""
import types

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle


def _local_linear(module, x, weight, bias):
    """The layer's own math (quantized for a QuantizedLinear) on local tensors."""
    from .qlinear import QuantizedLinear
    if isinstance(module, QuantizedLinear):
        return module.forward_with(x, weight, bias)
    return F.linear(x, weight, bias)


def _check_linear(style, module):
    if not isinstance(module, nn.Linear):
        raise ValueError(f"qtrain.tensor_parallel.{style}: expects an nn.Linear or "
                         f"QuantizedLinear, got {type(module).__name__}")


def _as_dtensor(x, mesh, layouts):
    return x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, layouts,
                                                               run_check=False)


def _distribute_param(module, name, mesh, placements):
    p = getattr(module, name)
    if p is None or isinstance(p, DTensor):
        return
    module.register_parameter(name, nn.Parameter(distribute_tensor(p.data, mesh, placements),
                                                 requires_grad=p.requires_grad))


class QuantizedColwiseParallel(ParallelStyle):
    """Weight (N, K) sharded along N; input Replicate (or Shard(1) for sequence parallel, then
    all-gathered); output Shard(-1) (local by default)."""

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output=True):
        super().__init__()
        self.input_layouts = (input_layouts or Replicate(),)
        self.output_layouts = (output_layouts or Shard(-1),)
        self.use_local_output = use_local_output

    def _apply(self, module, device_mesh):
        _check_linear("QuantizedColwiseParallel", module)
        _distribute_param(module, "weight", device_mesh, [Shard(0)])
        _distribute_param(module, "bias", device_mesh, [Shard(0)])
        style = self

        def forward(mod, x):
            from .fsdp import Float8GatheredWeight
            if isinstance(x, Float8GatheredWeight):   # gathered in float8 already
                x_full = x
            else:
                x_dt = _as_dtensor(x, device_mesh, style.input_layouts)
                # grad of x is partial on each rank (contraction over the local N shard).
                x_full = x_dt.redistribute(placements=[Replicate()]).to_local(
                    grad_placements=[Partial()])
            bias = None if mod.bias is None else mod.bias.to_local()
            out = _local_linear(mod, x_full, mod.weight.to_local(), bias)
            out_dt = DTensor.from_local(out, device_mesh, [Shard(-1)], run_check=False)
            if style.output_layouts[0] != Shard(-1):
                out_dt = out_dt.redistribute(placements=list(style.output_layouts))
            return out_dt.to_local() if style.use_local_output else out_dt

        module.forward = types.MethodType(forward, module)
        return module


class QuantizedRowwiseParallel(ParallelStyle):
    """Weight (N, K) sharded along K; input Shard(-1); the partial outputs are summed into
    Replicate (all-reduce) or Shard(1) (reduce-scatter, sequence parallel); bias added once,
    after the sum, in high precision."""

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output=True):
        super().__init__()
        self.input_layouts = (input_layouts or Shard(-1),)
        self.output_layouts = (output_layouts or Replicate(),)
        self.use_local_output = use_local_output

    def _apply(self, module, device_mesh):
        _check_linear("QuantizedRowwiseParallel", module)
        _distribute_param(module, "weight", device_mesh, [Shard(1)])
        _distribute_param(module, "bias", device_mesh, [Replicate()])
        style = self

        def forward(mod, x):
            x_dt = _as_dtensor(x, device_mesh, style.input_layouts)
            x_local = x_dt.redistribute(placements=[Shard(-1)]).to_local()
            out = _local_linear(mod, x_local, mod.weight.to_local(), None)
            out_dt = DTensor.from_local(out, device_mesh, [Partial()], run_check=False)
            out_dt = out_dt.redistribute(placements=list(style.output_layouts))
            if mod.bias is not None:
                # A sharded output holds part of the rows: its bias grad is partial.
                sharded = style.output_layouts[0] != Replicate()
                b = mod.bias.to_local(grad_placements=[Partial()] if sharded else None)
                out_dt = DTensor.from_local(out_dt.to_local() + b.to(out.dtype), device_mesh,
                                            list(style.output_layouts), run_check=False)
            return out_dt.to_local() if style.use_local_output else out_dt

        module.forward = types.MethodType(forward, module)
        return module


class _Float8AllGatherInput(torch.autograd.Function):
    """x shard (sequence dim 1) -> float8 with the global amax -> all-gather of 1-byte elements
    -> a Float8GatheredWeight (answers tensorwise quantization with the gathered payload).
    Backward: the gradient of an all-gather is a reduce-scatter (sum) along the same dim."""

    @staticmethod
    def forward(ctx, x, fmt, group, dim):
        from .fsdp import Float8GatheredWeight, cast_with_quant_scale, local_amax, \
            quant_scale_from_amax
        world = dist.get_world_size(group)
        amax = local_amax(x)
        dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)          # F8-1, global
        quant_scale = quant_scale_from_amax(amax, fmt)                       # F8-2
        data = cast_with_quant_scale(x, quant_scale, fmt)                    # F8-4
        src = data.movedim(dim, 0).contiguous().view(torch.uint8)
        out = torch.empty((world * src.shape[0],) + tuple(src.shape[1:]), dtype=torch.uint8,
                          device=x.device)
        # all_gather_single is the newer name (torch 2.13); 2.11 only has the older one.
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, src, group=group)
        full = out.view(getattr(torch, fmt)).movedim(0, dim).contiguous()
        ctx.group, ctx.dim = group, dim
        return Float8GatheredWeight(full, quant_scale, fmt, x.dtype)

    @staticmethod
    def backward(ctx, grad):
        world = dist.get_world_size(ctx.group)
        chunks = [c.contiguous() for c in grad.chunk(world, dim=ctx.dim)]
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks, group=ctx.group)
        return out, None, None, None


class Float8SequenceParallelInput(ParallelStyle):
    """Input preparation for a column-parallel tensorwise QuantizedLinear under sequence
    parallel: the Shard(1) activation is cast to float8 (global amax) BEFORE the all-gather."""

    def __init__(self, *, seq_dim=1):
        super().__init__()
        self.seq_dim = seq_dim

    def _apply(self, module, device_mesh):
        cfg = getattr(module, "config", None)
        if getattr(cfg, "recipe", None) != "tensorwise":
            raise ValueError("qtrain.tensor_parallel.Float8SequenceParallelInput: needs a "
                             "tensorwise QuantizedLinear (one scale for the whole activation); "
                             f"got {getattr(cfg, 'short_id', type(module).__name__)}")
        group, fmt, dim = device_mesh.get_group(), cfg.e4m3_format, self.seq_dim

        def pre_hook(mod, args):
            x = args[0]
            if isinstance(x, DTensor):
                x = x.to_local()
            return (_Float8AllGatherInput.apply(x, fmt, group, dim),) + tuple(args[1:])

        module.register_forward_pre_hook(pre_hook)
        return module
