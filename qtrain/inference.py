"""Serving a trained model quantized: `to_inference` swaps (Quantized)Linear layers for
`InferenceLinear`, whose weight is quantized once and stored (payload + dequant factors) and
whose activation is quantized on every call, exactly as the training forward does (the
`output` product of the recipe table, spec/07-recipes.md), through the same backend. Converted
MoE experts (qtrain.moe) stay as they are with their weights frozen: each quantizes once,
keeps the result (refreshed in place by in-place writes) and serves the training forward's
bits (qtrain.moe_weight.freeze).

The forward matches the training-mode forward of the same recipe bit for bit on a given
backend (same quantization, same scaled_mm_nt) when the weight is quantized in the dtype the
training forward computed in: `to_inference(..., dtype=torch.bfloat16)` for a model trained
with fp32 master weights under bf16 autocast (the training forward casts w to bf16 first). Recipes whose output product is high
precision (int8 with output=False) serve with int8 rowwise x and w.
"""
import torch
from torch import nn

from .backend import BackendBound, resolve_backend_name
from .config import recipe_config
from .convert import (eligibility_error, ineligible_layer, kept_label,
                      log_kept_in_high_precision, swap_post_order)
from .qlinear import QuantizedLinear, _compute_dtype, _scaled_mm
from .recipes import QOperand, QuantSpec, quantize_operand

_INT8 = QuantSpec("int8")


class InferenceLinear(BackendBound, nn.Module):
    """y = x @ w.T + b with w pre-quantized (buffers) and x quantized dynamically."""
    BACKEND_TENSOR = "weight_payload"

    def __init__(self, weight, bias, config, fqn=""):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.config, self.fqn = config, fqn
        self.bind_backend(config.backend, weight.device)
        specs = config.plan().output or (_INT8, _INT8)
        self.x_spec, w_spec = specs
        self.w_pow2 = w_spec.pow2_factors
        with torch.no_grad():
            q = quantize_operand(weight.detach(), w_spec, 1,
                                 resolve_backend_name(config.backend, weight.device))
        self.register_buffer("weight_payload", q.payload.contiguous())
        self.register_buffer("weight_dequant", q.dequant.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    def forward(self, input):
        dtype = _compute_dtype(input)
        x = input.to(dtype).reshape(-1, self.in_features)
        backend = self.backend_for_input(x.device)
        with torch.autocast(x.device.type, enabled=False):
            qx = quantize_operand(x, self.x_spec, 1, backend)
            qw = QOperand(self.weight_payload, self.weight_dequant, self.w_pow2)
            out = _scaled_mm(qx, qw, dtype, backend)
            out = out.reshape(*input.shape[:-1], self.out_features)
            if self.bias is not None:
                out = out + self.bias.to(dtype)
        return out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"recipe={self.config.short_id}, backend={self.backend}")


def to_inference(model, recipe=None, module_filter_fn=None, dtype=None):
    """Swap QuantizedLinear layers (their own config) and, when `recipe` (a recipe name or a
    config) is given, eligible plain nn.Linear layers too, for InferenceLinear; in place.

    Call it on a trained model in eval mode; the result has no weight gradients. `recipe`
    overrides the configs of QuantizedLinear layers when given (a QuantizedLinear whose shape
    breaks its rule raises a ValueError; ineligible plain nn.Linear layers stay as they are,
    listed in one log line, as in convert_to_quantized_training). `dtype`: quantize each weight
    after casting it to this dtype (the compute dtype of training, e.g. bf16 under autocast);
    None keeps the weight's own dtype. Converted MoE experts are frozen in place (their own
    config; `recipe` and `dtype` do not apply: they quantize in the tokens' dtype, as trained).
    """
    config = recipe_config(recipe) if isinstance(recipe, str) else recipe
    skipped = []

    def swap(module, fqn):
        if isinstance(module, QuantizedLinear):
            cfg = config or module.config
        elif type(module) is nn.Linear and config is not None:
            if eligibility_error(module, config):
                skipped.append(kept_label(module, fqn))
                return module
            cfg = config
        else:
            return module
        if module_filter_fn is not None and not module_filter_fn(module, fqn):
            return module
        rule = None if config is None else eligibility_error(module, config)
        if rule is not None:                 # a QuantizedLinear overridden by `recipe`
            raise ineligible_layer(module, fqn, rule)
        weight = module.weight if dtype is None else module.weight.to(dtype)
        return InferenceLinear(weight, module.bias, cfg, fqn)

    model = swap_post_order(model, swap)
    log_kept_in_high_precision(skipped, config)
    _freeze_experts(model, module_filter_fn)
    return model


def _freeze_experts(model, module_filter_fn):
    """Converted MoE experts (qtrain.moe) keep their module and config; their weights are
    frozen so that each quantizes once and keeps the result (qtrain.moe_weight.freeze)."""
    from .moe import is_converted_experts
    from .moe_weight import GroupedExpertsWeight, freeze
    for fqn, module in model.named_modules():
        if not is_converted_experts(module):
            continue
        if module_filter_fn is not None and not module_filter_fn(module, fqn):
            continue
        for p in module.parameters(recurse=False):
            if isinstance(p, GroupedExpertsWeight):
                freeze(p)
