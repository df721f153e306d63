"""Conversion of MoE expert layers to quantized grouped products (spec/07 RC-13).

The module pattern recognized ("grouped experts", as in torchtitan-style MoE layers):
- the module holds its expert weights as 3-D Parameters (E, N, K), one nn.Linear-style
  (out_features, in_features) matrix per expert, and
- its forward runs them with `torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)` on 2-D
  tokens x (M, K) sorted by expert, offs int32 (E,) cumulative ends.
Such a module is found by `is_grouped_experts` (a 3-D Parameter and no child modules holding
Parameters of their own; override with `filter_fn`). Converting it replaces each 3-D Parameter
by a GroupedExpertsWeight Parameter (qtrain/moe_weight.py) over the same storage: every 2d x 3d
`torch._grouped_mm` call with offs on that weight runs `qtrain.grouped_mm(x, w, offs, config)`,
in eager mode and traced by torch.compile alike (no graph break, so CUDA graphs of a compiled
model take the experts in). Other calls run in high precision (said once in a log line): 2d x 2d
products, 3d x 3d (bmm-like, no offs). Routers and shared experts written as nn.Linear: convert
those with qtrain.convert_to_quantized_training. Convert before building the optimizer (its
param groups must hold the converted Parameters) and before sharding; a model built on the
meta device converts there and keeps the converted weights through to_empty and in-place init.
state_dict keeps plain tensors and its keys.
"""
import torch

from .moe_weight import LAYER, GroupedExpertsWeight
from .qgrouped_mm import _check


def is_converted_experts(module):
    """Whether convert_moe_to_quantized_training converted this module."""
    return getattr(module, "_qtrain_grouped_config", None) is not None


def is_grouped_experts(module):
    """The default filter: a module with a 3-D Parameter of its own and no child holding
    Parameters (the experts' container itself, not the MoE block around it)."""
    own_3d = any(p.dim() == 3 for p in module.parameters(recurse=False))
    child_params = any(True for c in module.children() for _ in c.parameters())
    return own_3d and not child_params


def _check_weights(fqn, module, config):
    for name, p in module.named_parameters(recurse=False):
        if p.dim() == 3 and type(p) not in (torch.Tensor, torch.nn.Parameter):
            raise ValueError(f"{LAYER}: cannot convert {fqn or '<root>'}.{name}: it is a "
                             f"{type(p).__name__}, not a plain Parameter; convert the model "
                             f"before fully_shard / parallelize_module (FSDP2 then shards the "
                             f"converted weight)")
        if p.dim() == 3:
            probe_x = p.new_empty((0, p.shape[2]), device="meta")
            probe_offs = torch.zeros(p.shape[0], dtype=torch.int32, device="meta")
            try:
                _check(probe_x, p.to("meta"), probe_offs, config)
            except (ValueError, NotImplementedError) as e:
                raise ValueError(f"{LAYER}: cannot convert {fqn or '<root>'}.{name} "
                                 f"{tuple(p.shape)}: {e}") from None


def convert_moe_to_quantized_training(model, config, filter_fn=None):
    """Make every grouped-experts module of `model` (see the module docstring) run its
    grouped products through qtrain.grouped_mm with `config`. `filter_fn(module, fqn) -> bool`
    replaces the default `is_grouped_experts`. Modifies `model` in place and returns it."""
    for fqn, module in model.named_modules():
        chosen = filter_fn(module, fqn) if filter_fn is not None else is_grouped_experts(module)
        if not chosen or is_converted_experts(module):
            continue
        _check_weights(fqn, module, config)
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 3:
                wrapped = GroupedExpertsWeight(p.detach(), config)
                setattr(module, name, torch.nn.Parameter(wrapped, p.requires_grad))
        module._qtrain_grouped_config = config
        module.register_state_dict_post_hook(_plain_state_dict)
    return model


def _plain_state_dict(module, state_dict, prefix, local_metadata):
    """state_dict() of a converted module holds the plain weights (state_dict(keep_vars=True)
    still gives the Parameters themselves)."""
    for name, p in module.named_parameters(recurse=False):
        key = prefix + name
        v = state_dict.get(key)
        if isinstance(v, GroupedExpertsWeight) and v is not p:
            state_dict[key] = v._hp
