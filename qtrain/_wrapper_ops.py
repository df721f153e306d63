"""The aten ops after which a weight wrapper subclass (qtrain.fsdp's Float8AllGatherWeight,
qtrain.moe_weight's GroupedExpertsWeight) still wraps its result: the same weight seen
differently, as FSDP2 shards, pads and views it, and as nn.Module.to / deepcopy / Parameter
creation copy and detach it. Every other op answers with a plain tensor."""
import torch

aten = torch.ops.aten

KEEP_WRAPPED = frozenset({
    aten.detach.default, aten.alias.default, aten.view.default, aten._unsafe_view.default,
    aten.as_strided.default, aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default,
    aten.chunk.default, aten.empty_like.default, aten.new_zeros.default, aten.new_empty.default,
    aten.clone.default, aten.copy_.default, aten._to_copy.default, aten._pin_memory.default,
    aten.select.int,
})
