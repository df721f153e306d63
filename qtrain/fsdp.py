"""FSDP2 (`fully_shard`) for converted models, with an optional float8 weight all-gather for the
tensorwise recipe (spec/02-float8-scaling.md F8-1..F8-7 applied to a sharded weight).

How the float8 all-gather works (FSDP2's tensor-subclass extension hooks):
- `enable_float8_all_gather(model)` (before `fully_shard`) wraps each tensorwise
  QuantizedLinear weight in `Float8AllGatherWeight`, a wrapper subclass that behaves exactly like
  its high-precision tensor (optimizer, state_dict, sharding) and adds two hooks.
- `fsdp_pre_all_gather` (on each rank's shard): amax of the shard's fp32 values, all-reduce MAX
  over the FSDP group (so every rank holds the GLOBAL amax: tensorwise amax is a max, and a max
  of maxes is exact), quant_scale from it (F8-2), then the shard is cast (F8-4) and sent as
  1-byte elements (viewed as uint8, which every backend, gloo included, can move).
- `fsdp_post_all_gather` wraps the gathered bytes in `Float8GatheredWeight`. When the quantized
  linear asks the backend to quantize that weight tensorwise (`qtrain::quantize_float8`, axis
  None, same format, no pow2) the subclass answers with the gathered payload and scale instead.
  Because every element was cast with the same global scale, the payload is bit-identical to
  quantizing the full weight in one process. Any other op sees the dequantized weight (F8-8).
- `precompute_float8_weight_scales(model)` after `optimizer.step()`: every weight's local amax
  in one stacked tensor, ONE all-reduce MAX, quant_scales stored on the shards; the next
  all-gathers use them and skip their own all-reduce. A stored scale is used only while the
  shard is unchanged (its version counter), so a forgotten call can never use a stale scale.
"""
import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map_only

from ._wrapper_ops import KEEP_WRAPPED, flat_args
from .formats import EPS_AMAX, FLOAT8_FORMATS

aten = torch.ops.aten


def _fsdp_group(mesh):
    """The group FSDP shards over: the mesh itself, or its last dim (HSDP: replicate, shard)."""
    return mesh.get_group() if mesh.ndim == 1 else mesh.get_group(mesh.ndim - 1)


def padded_shard(data, outer_size, mesh):
    """A shard for fsdp_pre_all_gather, contiguous, with zero rows appended up to FSDP2's padded
    shard size (uneven sharding). The rows are joined as bytes: torch.cat takes no float8."""
    data = data.contiguous()
    rows = -(-outer_size[0] // _fsdp_group(mesh).size())
    if data.shape[0] >= rows:
        return data
    pad = data.new_zeros((rows - data.shape[0],) + tuple(data.shape[1:]))
    return torch.cat([data.view(torch.uint8), pad.view(torch.uint8)]).view(data.dtype)


def quant_scale_from_amax(amax, fmt):
    """F8-2 with F8-5: fp32(fp64(max) / max(fp64(amax), 1e-12)); non-finite amax -> NaN."""
    amax64 = amax.to(torch.float64)
    qs = (FLOAT8_FORMATS[fmt].max / torch.clamp(amax64, min=EPS_AMAX)).to(torch.float32)
    return torch.where(torch.isfinite(amax64), qs, torch.full_like(qs, float("nan")))


def cast_with_quant_scale(x, quant_scale, fmt):
    """F8-4: rne(clamp(fp32(fp32(x) * quant_scale), -max, max)); a NaN scale gives NaN (F8-5).
    The clamp is explicit (FMT-3); torch's float -> float8 cast rounds to nearest even (FMT-4)."""
    fmax = FLOAT8_FORMATS[fmt].max
    scaled = x.to(torch.float32) * quant_scale
    return torch.clamp(scaled, -fmax, fmax).to(getattr(torch, fmt))


def local_amax(t):
    """amax of |t| on fp32 values (F8-1). NaN maps to +inf so an all-reduce MAX (whose NaN
    handling differs by backend) still marks the group non-finite (F8-5)."""
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    a = t.detach().to(torch.float32).abs().amax()
    return torch.where(torch.isnan(a), torch.full_like(a, float("inf")), a)


class Float8AllGatherWeight(torch.Tensor):
    """A high-precision weight (shard) that FSDP2 all-gathers in float8 with a global scale."""

    @staticmethod
    def __new__(cls, hp, fmt):
        return torch.Tensor._make_wrapper_subclass(
            cls, hp.size(), strides=hp.stride(), storage_offset=hp.storage_offset(),
            dtype=hp.dtype, layout=hp.layout, device=hp.device, requires_grad=hp.requires_grad)

    def __init__(self, hp, fmt):
        self._hp = hp
        self._fmt = fmt
        self._precomputed = None      # (global amax, version of _hp when computed)

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"Float8AllGatherWeight({self._fmt}, {self._hp!r})"

    def __tensor_flatten__(self):
        return ["_hp"], (self._fmt,)

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return Float8AllGatherWeight(inner["_hp"], meta[0])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fmt = next(a._fmt for a in flat_args(args, kwargs) if isinstance(a, cls))
        out = func(*tree_map_only(cls, lambda t: t._hp, args),
                   **tree_map_only(cls, lambda t: t._hp, kwargs))
        if func in KEEP_WRAPPED:
            return tree_map_only(torch.Tensor, lambda t: cls(t, fmt), out)
        return out

    def set_precomputed_amax(self, amax):
        self._precomputed = (amax, self._hp._version)

    def _quant_scale(self, hp, mesh):
        if self._precomputed is not None and self._precomputed[1] == self._hp._version:
            # Rounding is monotone and sign-symmetric, so the amax of the param_dtype-cast
            # weight is the cast of the amax: one stored amax serves any param_dtype.
            amax = self._precomputed[0].to(hp.dtype).to(torch.float32)
        else:
            amax = local_amax(hp)
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=_fsdp_group(mesh))  # global amax
        return quant_scale_from_amax(amax, self._fmt)

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        hp = self._hp
        param_dtype = getattr(mp_policy, "param_dtype", None)
        if param_dtype is not None and param_dtype != hp.dtype:
            hp = hp.to(param_dtype)   # the single-process run quantizes the param_dtype weight
        quant_scale = self._quant_scale(hp, mesh)
        data = padded_shard(cast_with_quant_scale(hp, quant_scale, self._fmt), outer_size, mesh)
        return (data.view(torch.uint8),), (quant_scale, hp.dtype)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        (gathered,) = all_gather_outputs
        quant_scale, dtype = metadata
        if out is not None:            # later iterations: the bytes landed in out's storage
            out._quant_scale = quant_scale
            return None
        data = gathered.view(getattr(torch, self._fmt))
        full = data.view(-1, *self._hp.shape[1:])
        return Float8GatheredWeight(full, quant_scale, self._fmt, dtype), (gathered,)


class Float8GatheredWeight(torch.Tensor):
    """The unsharded weight as FSDP2 sees it after a float8 all-gather: payload + quant_scale,
    with the dtype of the high-precision weight. Answers tensorwise quantization with its own
    payload; every other op runs on the dequantized weight (F8-8)."""

    @staticmethod
    def __new__(cls, data, quant_scale, fmt, dtype):
        return torch.Tensor._make_wrapper_subclass(
            cls, data.size(), strides=data.stride(), storage_offset=data.storage_offset(),
            dtype=dtype, device=data.device, requires_grad=False)

    def __init__(self, data, quant_scale, fmt, dtype):
        self._data, self._quant_scale, self._fmt = data, quant_scale, fmt

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"Float8GatheredWeight({self._fmt}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def dequantize(self):
        return (self._data.to(torch.float64) / self._quant_scale.to(torch.float64)).to(self.dtype)

    def _rewrap(self, data):
        return Float8GatheredWeight(data, self._quant_scale, self._fmt, self.dtype)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        me = args[0] if args and isinstance(args[0], cls) else None
        if func is torch.ops.qtrain.quantize_float8.default and me is not None:
            x, fmt, axis, pow2_scale = args[:4]
            transposed = args[5] if len(args) > 5 else kwargs.get("transposed", False)
            if axis is None and fmt == me._fmt and not pow2_scale:
                # same bits as quantizing the full weight (or, for grad_input, its transpose:
                # a tensorwise scale is axis free, RC-14)
                data = me._data.t().contiguous() if transposed else me._data
                return data, me._quant_scale
        if me is not None and func in (aten.detach.default, aten.alias.default):
            return me._rewrap(me._data)
        if me is not None and func in (aten.as_strided.default, aten.view.default):
            return me._rewrap(func(me._data, *args[1:], **kwargs))
        return func(*tree_map_only(cls, lambda t: t.dequantize(), args),
                    **tree_map_only(cls, lambda t: t.dequantize(), kwargs))


# ---- model-level API ------------------------------------------------------------------------
def _float8_fmt(module):
    cfg = getattr(module, "config", None)
    if getattr(cfg, "recipe", None) != "tensorwise":
        name = getattr(cfg, "short_id", type(cfg).__name__)
        raise ValueError(f"qtrain.fsdp: float8 all-gather needs the tensorwise recipe (one "
                         f"scale per weight, F8-7); layer {getattr(module, 'fqn', '?')!r} uses "
                         f"{name}. Leave float8_all_gather off for it.")
    return cfg.e4m3_format


def enable_float8_all_gather(model):
    """Wrap every tensorwise QuantizedLinear weight (call before fully_shard); return count."""
    from .qlinear import QuantizedLinear
    n = 0
    for mod in model.modules():
        if isinstance(mod, QuantizedLinear) and not isinstance(_local(mod.weight),
                                                               Float8AllGatherWeight):
            fmt = _float8_fmt(mod)
            w = mod.weight
            mod.weight = torch.nn.Parameter(Float8AllGatherWeight(w.data, fmt),
                                            requires_grad=w.requires_grad)
            n += 1
    return n


def fully_shard_model(model, mesh, *, float8_all_gather=False, mp_policy=None,
                      reshard_after_forward=True):
    """fully_shard each QuantizedLinear / nn.Linear child and each converted MoE experts
    module (qtrain.moe), then the root (FSDP2 units)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .moe import is_converted_experts
    if float8_all_gather:
        enable_float8_all_gather(model)
    kw = dict(mesh=mesh, reshard_after_forward=reshard_after_forward,
              mp_policy=mp_policy or MixedPrecisionPolicy())
    for mod in list(model.modules())[1:]:
        if isinstance(mod, torch.nn.Linear) or is_converted_experts(mod):
            fully_shard(mod, **kw)
    fully_shard(model, **kw)
    return model


def _local(t):
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def precompute_float8_weight_scales(model):
    """After optimizer.step(): every float8-all-gather weight's quant_scale from its global
    amax, with ONE all-reduce MAX for the whole model. Returns the number of weights."""
    weights = [p for p in model.parameters() if isinstance(_local(p), Float8AllGatherWeight)]
    if not weights:
        return 0
    locals_ = [_local(p) for p in weights]
    amaxes = torch.stack([local_amax(w._hp) for w in locals_])
    mesh = getattr(weights[0], "device_mesh", None)
    if mesh is not None:
        # FSDP x TP params live on a (dp, tp) mesh; FSDP gathers over dp (dim 0) only, so the
        # scale is per TP shard, exactly what the all-gather path computes on its own.
        group = mesh.get_group() if mesh.ndim == 1 else mesh.get_group(0)
        dist.all_reduce(amaxes, op=dist.ReduceOp.MAX, group=group)      # the ONE all-reduce
    for w, a in zip(locals_, amaxes.unbind(0)):
        w.set_precomputed_amax(a.clone())
    return len(weights)
