"""Conversion of MoE expert layers to quantized grouped products (spec/07 RC-13).

The module pattern recognized ("grouped experts", as in torchtitan-style MoE layers):
- the module holds its expert weights as 3-D Parameters (E, N, K), one nn.Linear-style
  (out_features, in_features) matrix per expert, and
- its forward runs them with `torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)` on 2-D
  tokens x (M, K) sorted by expert, offs int32 (E,) cumulative ends.
Such a module is found by `is_grouped_experts` (a 3-D Parameter and no child modules holding
Parameters of their own; override with `filter_fn`). Converting it wraps its forward so that
every 2d x 3d `torch._grouped_mm` call with offs made inside that forward runs
`qtrain.grouped_mm(x, w, offs, config)` instead (a TorchFunctionMode scoped to the call;
Parameters, state_dict and optimizer state are untouched). Under torch.compile that
forward runs eager (a graph break); qtrain.grouped_mm itself compiles. Other calls pass through: 2d x 2d
products, 3d x 3d (bmm-like, no offs), and grouped products in other modules (routers,
shared experts written as nn.Linear: convert those with qtrain.convert_to_quantized_training).
"""
import logging
import types

import torch
from torch.overrides import TorchFunctionMode

from .qgrouped_mm import _check, grouped_mm

LAYER = "qtrain.moe"
log = logging.getLogger("qtrain")


class _GroupedMMMode(TorchFunctionMode):
    """Routes torch._grouped_mm(x 2-D, w_t 3-D, offs=...) to qtrain.grouped_mm."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._grouped_mm:
            a, b = args[0], args[1]
            offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
            extra = {k: v for k, v in kwargs.items() if k != "offs" and v is not None}
            if offs is not None and a.dim() == 2 and b.dim() == 3 and not extra and len(args) <= 3:
                return grouped_mm(a, b.transpose(-2, -1), offs, self.config)
        return func(*args, **kwargs)


def is_grouped_experts(module):
    """The default filter: a module with a 3-D Parameter of its own and no child holding
    Parameters (the experts' container itself, not the MoE block around it)."""
    own_3d = any(p.dim() == 3 for p in module.parameters(recurse=False))
    child_params = any(True for c in module.children() for _ in c.parameters())
    return own_3d and not child_params


def _check_weights(fqn, module, config):
    for name, p in module.named_parameters(recurse=False):
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
        if not chosen or getattr(module, "_qtrain_grouped_config", None) is not None:
            continue
        _check_weights(fqn, module, config)
        module._qtrain_grouped_config = config
        _wrap_forward(module)
    return model


# torch.compile does not apply a TorchFunctionMode entered inside the compiled region (it would
# trace the plain torch._grouped_mm), so the experts' forward stays eager under torch.compile:
# one graph break around it; the rest of the model compiles. The first such call of each module
# says so in a log line: its launches stay outside a compiled graph, CUDA graphs included.
def _quantized_forward(module, *args, **kwargs):
    return _eager_forward(module, torch.compiler.is_compiling(), *args, **kwargs)


@torch.compiler.disable
def _eager_forward(module, traced, *args, **kwargs):
    if traced and not getattr(module, "_qtrain_logged_graph_break", False):
        module._qtrain_logged_graph_break = True
        log.info("%s: %s runs eager under torch.compile (a graph break: the torch function mode "
                 "that routes its torch._grouped_mm calls to qtrain.grouped_mm is not traced), "
                 "so mode='reduce-overhead' leaves it out of the CUDA graph; for a graph of it "
                 "use torch.cuda.make_graphed_callables on the module, or call qtrain.grouped_mm "
                 "in the forward", LAYER, type(module).__name__)
    with _GroupedMMMode(module._qtrain_grouped_config):
        return module._qtrain_inner_forward(*args, **kwargs)


def _wrap_forward(module):
    # Bound methods, not a closure: copy.deepcopy rebinds them to the copy, so a copied module
    # runs its own weights (a closure would keep calling the original module's forward).
    module._qtrain_inner_forward = module.forward
    module.forward = types.MethodType(_quantized_forward, module)
