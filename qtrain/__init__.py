"""qtrain: low-precision training for PyTorch (public API; see spec/ for the rules)."""
# Attributes load lazily (PEP 562) so `import qtrain.reference` pulls in NumPy and ml_dtypes only.
import importlib

__version__ = "0.1.0"

_LAZY = {
    # backend selection (qtrain/backend.py)
    "register_backend": ".backend", "get_backend": ".backend", "list_backends": ".backend",
    # configs (qtrain/config.py)
    "Float8LinearConfig": ".config", "MXLinearConfig": ".config", "Int8LinearConfig": ".config",
    "BlockwiseLinearConfig": ".config", "recipe_config": ".config", "RECIPE_NAMES": ".config",
    # training modules (qtrain/qlinear.py, qtrain/convert.py)
    "linear": ".qlinear", "QuantizedLinear": ".qlinear",
    "convert_to_quantized_training": ".convert",
    # MoE grouped products (qtrain/qgrouped_mm.py, qtrain/moe.py)
    "grouped_mm": ".qgrouped_mm", "convert_moe_to_quantized_training": ".moe",
    # serving (qtrain/inference.py)
    "to_inference": ".inference", "InferenceLinear": ".inference",
    # distributed (qtrain/fsdp.py, qtrain/tensor_parallel.py, qtrain/dist_checkpoint.py)
    "precompute_float8_weight_scales": ".fsdp", "enable_float8_all_gather": ".fsdp",
    "fully_shard_model": ".fsdp",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qtrain' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
