"""NumPy <-> torch crossings for the harness, bit for bit (bf16 via int16, float8 via uint8 views)."""
import ml_dtypes
import numpy as np
import torch

from qtrain.formats import FLOAT8_FORMATS

_FLOAT8 = {name: (getattr(ml_dtypes, name), getattr(torch, name)) for name in FLOAT8_FORMATS}

TORCH_DTYPES = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64, "float16": torch.float16,
    "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
    **{name: pair[1] for name, pair in _FLOAT8.items()},
}


def to_torch(a: np.ndarray, device) -> torch.Tensor:
    a = np.ascontiguousarray(a).copy()
    name = a.dtype.name
    if name == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif name in _FLOAT8:
        t = torch.from_numpy(a.view(np.uint8)).view(_FLOAT8[name][1])
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"qtrain.conformance: a backend returned {type(t).__name__}, expected a torch.Tensor")
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    for np_dtype, torch_dtype in _FLOAT8.values():
        if t.dtype == torch_dtype:
            return t.view(torch.uint8).numpy().view(np_dtype)
    return t.numpy()


def torch_dtype(name: str):
    return TORCH_DTYPES[name]
