"""Bit views of the arrays the harness compares: hex parsing, NaN tests, sign/exponent/mantissa split."""
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from qtrain.formats import FLOAT8_FORMATS


@dataclass(frozen=True)
class BitLayout:
    name: str          # the NumPy / ml_dtypes dtype name
    dtype: object      # the value dtype
    uint: object       # the unsigned integer dtype of the same width (the bit view)
    ebits: int         # 0 for integer types
    mbits: int
    signed: bool       # has a sign bit (e8m0 and uint8 do not)


def _layouts():
    rows = [
        BitLayout("float64", np.dtype(np.float64), np.uint64, 11, 52, True),
        BitLayout("float32", np.dtype(np.float32), np.uint32, 8, 23, True),
        BitLayout("float16", np.dtype(np.float16), np.uint16, 5, 10, True),
        BitLayout("bfloat16", np.dtype(ml_dtypes.bfloat16), np.uint16, 8, 7, True),
        BitLayout("float8_e8m0fnu", np.dtype(ml_dtypes.float8_e8m0fnu), np.uint8, 8, 0, False),
        BitLayout("int8", np.dtype(np.int8), np.uint8, 0, 7, True),
        BitLayout("uint8", np.dtype(np.uint8), np.uint8, 0, 8, False),
        BitLayout("int32", np.dtype(np.int32), np.uint32, 0, 31, True),
    ]
    for fmt in FLOAT8_FORMATS.values():
        rows.append(BitLayout(fmt.name, np.dtype(getattr(ml_dtypes, fmt.name)), np.uint8,
                              fmt.ebits, fmt.mbits, True))
    return {row.name: row for row in rows}


LAYOUTS = _layouts()


def layout(dtype) -> BitLayout:
    name = np.dtype(dtype).name
    if name not in LAYOUTS:
        raise TypeError(f"qtrain.conformance.bits: no bit layout for dtype {name!r}; "
                        f"known: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def value_dtype(name: str):
    """The NumPy dtype for a dtype name used in case files ("float32", "bfloat16", ...)."""
    if name not in LAYOUTS:
        raise TypeError(f"qtrain.conformance.bits: unknown dtype name {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[name].dtype


def to_bits(arr: np.ndarray) -> np.ndarray:
    # ascontiguousarray makes a 0-d array (a loss) 1-d: keep the shape, so indices stay valid
    return np.ascontiguousarray(arr).view(layout(arr.dtype).uint).reshape(np.shape(arr))


def from_hex(words, dtype_name: str, shape=None, pad=None) -> np.ndarray:
    """Literal bits ("0x40600001", ...) -> array of dtype_name; `pad` fills up to prod(shape)."""
    lay = LAYOUTS[dtype_name]
    words = [int(w, 16) for w in words]
    if shape is not None:
        size = int(np.prod(shape))
        if len(words) > size:
            raise ValueError(f"{len(words)} literal words for shape {tuple(shape)}")
        if len(words) < size:
            if pad is None:
                raise ValueError(f"{len(words)} literal words for shape {tuple(shape)} and no 'pad'")
            words = words + [int(pad, 16)] * (size - len(words))
    bits = np.array(words, dtype=lay.uint)
    out = bits.view(lay.dtype)
    return out.reshape(shape) if shape is not None else out


def is_nan(arr: np.ndarray) -> np.ndarray:
    """NaN test on any compared dtype; integer types never hold NaN."""
    lay = layout(arr.dtype)
    if lay.ebits == 0:
        return np.zeros(arr.shape, dtype=bool)
    return np.isnan(arr.astype(np.float64))


def hex_word(arr_item_bits: int, lay: BitLayout) -> str:
    width = np.dtype(lay.uint).itemsize * 2
    return f"0x{int(arr_item_bits):0{width}x}"


def split_fields(bits: int, lay: BitLayout) -> str:
    """'s=0 e=10000110 m=0000000' for a float layout; the plain binary word for integers."""
    width = np.dtype(lay.uint).itemsize * 8
    word = f"{int(bits):0{width}b}"
    if lay.ebits == 0:
        return f"bits={word}"
    head = 1 if lay.signed else 0
    sign = f"s={word[0]} " if head else ""
    return f"{sign}e={word[head:head + lay.ebits]} m={word[head + lay.ebits:] or '-'}"


def describe(arr: np.ndarray, index) -> str:
    """One element as value, hex bits and field split."""
    lay = layout(arr.dtype)
    item = arr[index]
    bits = int(np.asarray(item).view(lay.uint))
    value = float(np.asarray(item).astype(np.float64)) if lay.ebits else int(item)
    return f"{value!r} ({hex_word(bits, lay)}; {split_fields(bits, lay)})"
