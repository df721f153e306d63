"""What qtrain's weight wrapper subclasses (qtrain.fsdp's Float8AllGatherWeight,
qtrain.moe_weight's GroupedExpertsWeight) share: KEEP_WRAPPED, the aten ops after which a
wrapper still wraps its result (the same weight seen differently, as FSDP2 shards, pads and
views it, and as nn.Module.to / deepcopy / Parameter creation copy and detach it; every other
op answers with a plain tensor; VIEW_OPS and COPY_OPS apart), and flat_args."""
import torch

aten = torch.ops.aten

# results that are views of the wrapped memory ...
VIEW_OPS = frozenset({
    aten.detach.default, aten.alias.default, aten.view.default, aten._unsafe_view.default,
    aten.as_strided.default, aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default,
    aten.chunk.default, aten.select.int,
})
# ... and results that are new memory holding the same weight (or its shape, to be filled)
COPY_OPS = frozenset({
    aten.empty_like.default, aten.new_zeros.default, aten.new_empty.default, aten.clone.default,
    aten.copy_.default, aten._to_copy.default, aten._pin_memory.default,
})
KEEP_WRAPPED = VIEW_OPS | COPY_OPS


def flat_args(args, kwargs):
    """An op's arguments, lists and tuples opened one level (a wrapper finds itself in them)."""
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a
