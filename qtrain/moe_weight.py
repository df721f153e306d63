"""The expert weight of a converted MoE module (spec/07 RC-13): `GroupedExpertsWeight`.

A Parameter that holds the high-precision (E, N, K) expert weight and carries the config.
`torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)` with such a weight (x 2-D, the weight
3-D, offs given, nothing else) runs `qtrain.grouped_mm(x, w, offs, config)`; every other op
sees the plain weight. It is a traceable wrapper subclass (`__tensor_flatten__`), so
torch.compile traces that routing into the graph (fullgraph, CUDA graphs included) instead of
breaking the graph around the experts.

Everything else behaves as the plain weight does:
- views (transposes included), copies, detach, `.to()`, deepcopy keep the wrapper
  (qtrain/_wrapper_ops.py), so the transposed view in the forward, `module.to(...)` and
  FSDP2's shards stay routed;
- an in-place op (optimizer steps, load_state_dict's copy_) writes the plain weight and returns
  the wrapper; other results (optimizer state made with zeros_like, arithmetic) are plain;
- gradients are plain tensors (autograd accumulates them into the wrapper's .grad);
- state_dict holds plain tensors (moe.py's hook), so checkpoints load without qtrain and with
  `torch.load(weights_only=True)`;
- FSDP2 all-gathers the plain shard (in mp_policy.param_dtype) and re-wraps the gathered
  weight (fsdp_pre_all_gather / fsdp_post_all_gather).
Serving (`freeze`, qtrain.to_inference): a frozen weight quantizes itself once and keeps the
result, which in-place writes refresh in place.
"""
import contextlib
import copy
import hashlib
import logging

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils._pytree import tree_map_only

from ._wrapper_ops import COPY_OPS, VIEW_OPS, flat_args

aten = torch.ops.aten
LAYER = "qtrain.moe"
log = logging.getLogger("qtrain")
_LOGGED_PASS_THROUGH = set()
# The forward's w.transpose(-2, -1) must stay routed too. Views of the same memory share the
# weight's serving state (see `freeze`); copies start their own.
_VIEWS = VIEW_OPS | {aten.transpose.int, aten.t.default, aten.permute.default}
_KEEP = _VIEWS | COPY_OPS


class GroupedExpertsWeight(torch.Tensor):
    """A high-precision expert weight whose torch._grouped_mm products run quantized."""

    @staticmethod
    def __new__(cls, hp, config, serving=None):
        return torch.Tensor._make_wrapper_subclass(
            cls, hp.size(), strides=hp.stride(), storage_offset=hp.storage_offset(),
            dtype=hp.dtype, layout=hp.layout, device=hp.device, requires_grad=hp.requires_grad)

    def __init__(self, hp, config, serving=None):
        self._hp = hp
        self.config = config
        # {"frozen", "epoch" (in-place writes so far), "entries"}: shared with views of this
        # weight (see `freeze`)
        self._serving = _new_serving() if serving is None else serving

    def __repr__(self):
        return f"GroupedExpertsWeight({self.config.short_id}, {self._hp!r})"

    def __deepcopy__(self, memo):
        """A copy with its own memory and its own serving state (frozen if this one is, with
        its own quantized copy)."""
        if id(self) in memo:
            return memo[id(self)]
        new = GroupedExpertsWeight(copy.deepcopy(self._hp, memo), self.config)
        if getattr(self, "_is_param", False):
            new = torch.nn.Parameter(new, self.requires_grad)
        else:
            new.requires_grad_(self.requires_grad)
        if self.grad is not None:
            new.grad = copy.deepcopy(self.grad, memo)
        if self._serving["frozen"]:
            freeze(new)
        memo[id(self)] = new
        return new

    def __getstate__(self):
        """Pickled (torch.save of a module) without the quantized copies of a frozen weight."""
        state = dict(self.__dict__)
        state["_serving"] = {**_new_serving(), "frozen": self._serving["frozen"]}
        return state

    def __setstate__(self, state):
        """Unpickled: a frozen weight makes its kept copy again (as freeze does)."""
        self.__dict__.update(state)
        if self._serving["frozen"]:
            freeze(self)

    def _kept(self):
        """(key, tensors) of a frozen weight's one current kept operand (its products under
        torch.compile read it: __tensor_flatten__), else None."""
        serving = self._serving
        if not serving["frozen"] or len(serving["entries"]) != 1:
            return None
        ((key, entry),) = serving["entries"].items()
        if entry.version != serving["epoch"]:
            return None
        return key, operand_tensors(entry.operand)

    def __getattr__(self, name):
        # the inner tensors "_kept0", "_kept1" that __tensor_flatten__ names
        if name.startswith("_kept") and name[5:].isdigit():
            kept = self._kept()
            if kept is not None and int(name[5:]) < len(kept[1]):
                return kept[1][int(name[5:])]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __tensor_flatten__(self):
        """The plain weight; for a frozen weight with a current kept operand also that
        operand's tensors, so that a compiled graph takes them as inputs (refreshed in place by
        eager writes) instead of quantizing the weight on every call."""
        kept = self._kept()
        if kept is None:
            return ["_hp"], self.config
        key, tensors = kept
        return (["_hp"] + [f"_kept{i}" for i in range(len(tensors))],
                (self.config, key, len(tensors)))

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        if not isinstance(ctx, tuple):
            return GroupedExpertsWeight(inner["_hp"], ctx)
        config, key, n = ctx
        tensors = tuple(inner[f"_kept{i}"] for i in range(n))
        serving = {**_new_serving(), "frozen": True,
                   "entries": {key: _Kept(tensors[0] if n == 1 else tensors)}}
        return GroupedExpertsWeight(inner["_hp"], config, serving)

    def _stable_hash_for_caching(self):
        """torch.compile's cache key (AOT autograd): the config, the weight's metadata and
        qtrain's version (the routing is traced into the cached graph)."""
        from . import __version__
        hp = self._hp
        kept = self._kept()
        key = repr((type(self).__name__, __version__, self.config, tuple(hp.shape),
                    tuple(hp.stride()), str(hp.dtype), hp.device.type,
                    None if kept is None else (kept[0], len(kept[1]))))
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._grouped_mm:
            routed = _route_grouped_mm(cls, args, kwargs)
            if routed is not None:
                return routed
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*tree_map_only(cls, lambda t: t._hp, args),
                   **tree_map_only(cls, lambda t: t._hp, kwargs))
        if func._schema.is_mutable:
            for a in flat_args(args, kwargs):   # written (or maybe): a frozen weight's kept
                if isinstance(a, cls):          # operands are made again
                    _written(a)
            if args and isinstance(args[0], cls):
                return args[0]                  # in place: the plain weight was written
        if func in _KEEP:
            src = next(a for a in flat_args(args, kwargs) if isinstance(a, cls))
            serving = src._serving if func in _VIEWS else None     # copies start unfrozen
            # a view of a normal tensor is a normal tensor, in inference mode too (torch then
            # gives it the base's version counter, which an inference tensor refuses)
            normal = (serving is not None and torch.is_inference_mode_enabled()
                      and not src.is_inference())
            with torch.inference_mode(False) if normal else contextlib.nullcontext():
                return tree_map_only(torch.Tensor, lambda t: cls(t, src.config, serving), out)
        return out

    # FSDP2's extension hooks: the shard travels plain, the gathered weight is wrapped again.
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        from .fsdp import padded_shard
        hp = self._hp
        param_dtype = getattr(mp_policy, "param_dtype", None)
        if param_dtype is not None and param_dtype != hp.dtype:
            hp = hp.to(param_dtype)
        return (padded_shard(hp, outer_size, mesh),), None

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        (gathered,) = all_gather_outputs
        if out is not None:           # later iterations: gathered into out's storage
            return None
        return GroupedExpertsWeight(gathered, self.config), (gathered,)


def freeze(w):
    """Serving: w (a GroupedExpertsWeight Parameter) takes no gradient from now on, and while
    neither it nor the tokens need one, its products read a quantized copy of w kept from
    here on (made now for tokens in w's dtype, on first use for others), which every in-place
    write of w refreshes in place, instead of quantizing on every call; the same bits as
    before (qgrouped_mm.grouped_mm_frozen). A CUDA graph reads the kept copy and stays right
    across writes; under torch.compile it is an input of the graph (__tensor_flatten__).
    Costs one quantized copy of w (1 byte per element plus scales, or the MX-10 values in w's
    dtype). Called by qtrain.to_inference. Copies made by
    ops (module.to(), clone) start unfrozen, so move the model before freezing it (a moved
    frozen weight keeps its numbers and quantizes on every call again); deepcopy keeps it."""
    w.requires_grad_(False)
    w._serving["frozen"] = True
    from .qgrouped_mm import keep_frozen_operand              # it imports this module
    keep_frozen_operand(w, w.config, w._serving["entries"], w._serving["epoch"])


def _written(w):
    """After an in-place write through w: a new epoch, and the kept operands of a frozen weight
    refreshed in place right away (a CUDA graph may read them). Not while tracing (a dispatch
    mode, fake, functional or meta tensors) or capturing: those leave the operands behind the
    epoch, to be refreshed by the next eager call."""
    serving = w._serving
    serving["epoch"] += 1
    if not serving["entries"] or torch.compiler.is_compiling():
        return
    hp = w._hp
    if (_get_current_dispatch_mode() is not None or type(hp) is not torch.Tensor
            or hp.device.type == "meta" or capturing(hp)):
        return
    for entry in serving["entries"].values():
        entry.refresh(serving["epoch"])


class _Kept:
    """A kept operand as a traced frozen weight sees it (__tensor_unflatten__): current."""

    def __init__(self, operand):
        self.operand, self.version = operand, 0


def _new_serving():
    # the epoch counts in-place writes through the weight or any view of it (__torch_dispatch__
    # sees them all; torch's version counters of views made below autograd count apart)
    return {"frozen": False, "epoch": 0, "entries": {}}


def capturing(t):
    """Whether t's CUDA stream is capturing a CUDA graph."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def operand_tensors(operand):
    """A product operand's tensors: (values,) or (payload, factors)."""
    return (operand,) if isinstance(operand, torch.Tensor) else tuple(operand)


def plain(w):
    """The high-precision tensor under a GroupedExpertsWeight (w itself otherwise)."""
    return w._hp if isinstance(w, GroupedExpertsWeight) else w


def _route_grouped_mm(cls, args, kwargs):
    """qtrain.grouped_mm for torch._grouped_mm(x 2-D, w_t 3-D GroupedExpertsWeight, offs=...)
    with no other argument; None for any other call (it runs plain, said once in a log line)."""
    a, b = args[0], args[1]
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    extra = {k: v for k, v in kwargs.items() if k != "offs" and v is not None}
    if (isinstance(b, cls) and not isinstance(a, cls) and offs is not None and a.dim() == 2
            and b.dim() == 3 and not extra and len(args) <= 3):
        from .qgrouped_mm import grouped_mm, grouped_mm_frozen   # they import this module
        serving = b._serving
        if (serving["frozen"]
                and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))):
            return grouped_mm_frozen(a, b.transpose(-2, -1), offs, b.config,
                                     serving["entries"], serving["epoch"])
        return grouped_mm(a, b.transpose(-2, -1), offs, b.config)
    form = (a.dim(), b.dim(), offs is not None, tuple(sorted(extra)), isinstance(a, cls))
    if form not in _LOGGED_PASS_THROUGH:
        _LOGGED_PASS_THROUGH.add(form)
        log.info("%s: torch._grouped_mm with a converted expert weight in a form other than "
                 "(x 2-D, w.transpose(-2, -1) 3-D, offs=...) runs in high precision "
                 "(A %d-D, B %d-D, offs %s, other arguments %s)", LAYER, a.dim(), b.dim(),
                 "given" if offs is not None else "absent", list(extra) or "none")
    return None
