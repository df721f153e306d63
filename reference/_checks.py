"""Input checks shared by the reference ops: fp32/bf16 inputs (F8-1, MX-7), TypeError/ValueError texts."""
import ml_dtypes
import numpy as np

_INPUT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
OUT_DTYPES = (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


def as_float32(x, where):
    """FMT-5: the exact fp32 value of a float32, bfloat16 or float16 array; TypeError otherwise."""
    x = np.asarray(x)
    if x.dtype not in _INPUT_DTYPES:
        raise TypeError(
            f"qtrain.reference.{where}: input has dtype {x.dtype}; "
            "expected float32, ml_dtypes.bfloat16 or float16 (convert other types first)")
    return x.astype(np.float32)


def check_choice(value, choices, what, where):
    if value not in choices:
        raise ValueError(
            f"qtrain.reference.{where}: unknown {what} {value!r}; expected one of {list(choices)}")
    return value


def normalize_axis(axis, shape, where):
    if not isinstance(axis, (int, np.integer)) or not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"qtrain.reference.{where}: axis {axis!r} is out of range for shape {tuple(shape)}")
    return int(axis) % len(shape)


def check_block_divides(shape, axis, block, where):
    if block <= 0 or shape[axis] % block:
        raise ValueError(
            f"qtrain.reference.{where}: shape {tuple(shape)} has length {shape[axis]} along axis "
            f"{axis}, which is not a multiple of the block size {block}")


def check_out_dtype(out_dtype, where):
    """FMT-6: outputs are float32 or bfloat16; anything else is a TypeError."""
    try:
        dt = np.dtype(out_dtype)
    except TypeError:
        dt = None
    if dt not in OUT_DTYPES:
        raise TypeError(f"qtrain.reference.{where}: unsupported out_dtype {out_dtype!r}; "
                        "expected float32 or ml_dtypes.bfloat16")
    return dt
