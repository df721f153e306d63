"""Model conversion: swap eligible nn.Linear modules for QuantizedLinear in place (post-order).

Eligibility (spec/07-recipes.md): K (in_features) and N (out_features) multiples of the
config's `min_multiple` (16 for float8/int8, the block for MX and blockwise).
"""
import logging

from torch import nn

from .qlinear import QuantizedLinear

log = logging.getLogger("qtrain")


def eligibility_error(module, config):
    """None when `module`'s shape suits `config`, else the rule it breaks, in words."""
    m = config.min_multiple
    k, n = module.in_features, module.out_features
    if k % m or n % m:
        return (f"{config.short_id} needs in_features (K) and out_features (N) to be "
                f"multiples of {m}")
    return None


def ineligible_layer(module, fqn, rule):
    """The ValueError for a layer explicitly picked for a recipe whose rule it breaks."""
    kind = "nn.Linear" if type(module) is nn.Linear else type(module).__name__
    return ValueError(
        f"layer {fqn or '<root>'!r} ({kind}, weight shape "
        f"{tuple(module.weight.shape)} = (N, K), dtype {module.weight.dtype}) "
        f"cannot be converted: {rule}; leave it out in module_filter_fn")


def log_kept_in_high_precision(skipped, config):
    """One log line listing the layers (fqn + weight shape) left unconverted by the rule."""
    if skipped:
        log.info("qtrain: %d layer(s) kept in high precision (%s rule: multiples of %d): %s",
                 len(skipped), config.short_id, config.min_multiple, ", ".join(skipped))


def kept_label(module, fqn):
    return f"{fqn or '<root>'}{tuple(module.weight.shape)}"


def swap_post_order(model, swap):
    """Replace every module m of `model` (children first, the root last) by swap(m, fqn); return
    the new root. The one traversal behind conversion and to_inference."""
    def visit(module, fqn):
        for name, child in list(module.named_children()):
            new = visit(child, f"{fqn}.{name}" if fqn else name)
            if new is not child:
                setattr(module, name, new)
        return swap(module, fqn)
    return visit(model, "")


def convert_to_quantized_training(model, config, module_filter_fn=None):
    """Swap every eligible nn.Linear of `model` (not already converted) for a QuantizedLinear
    sharing its Parameters; return the model (a new module when `model` itself is a Linear).

    `module_filter_fn(module, fqn) -> bool` picks the layers (fqn "" is the root). Without one,
    ineligible shapes stay in high precision, listed in one log line. A filter that picks an
    ineligible layer raises a ValueError naming the layer, its shape and the rule.
    """
    skipped = []

    def swap(module, fqn):
        if type(module) is not nn.Linear:      # subclasses (incl. converted) are left alone
            return module
        rule = eligibility_error(module, config)
        if module_filter_fn is not None:
            if not module_filter_fn(module, fqn):
                return module
            if rule is not None:
                raise ineligible_layer(module, fqn, rule)
        elif rule is not None:
            skipped.append(kept_label(module, fqn))
            return module
        return QuantizedLinear.from_float(module, config, fqn=fqn)

    model = swap_post_order(model, swap)
    log_kept_in_high_precision(skipped, config)
    return model
