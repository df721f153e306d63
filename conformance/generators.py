"""Input generators named by case files: {kind, seed, params} -> a NumPy array (values live in the cases)."""
import numpy as np

from qtrain.formats import FLOAT8_FORMATS

from . import bits

GENERATORS = {}


def generator(kind):
    def register(fn):
        GENERATORS[kind] = fn
        return fn
    return register


def _num(value):
    """A number from a case file: JSON number or hex-float string ("0x1p-133")."""
    return float.fromhex(value) if isinstance(value, str) else float(value)


def _fmt_max(params):
    return FLOAT8_FORMATS[params["fmt"]].max


def _blocks(shape, block):
    """(row slice, col slice) of each block of a 2-D tiling, in row-major block order."""
    rows, cols = shape
    br, bc = block
    return [(slice(r, r + br), slice(c, c + bc))
            for r in range(0, rows, br) for c in range(0, cols, bc)]


def _one_per_row(x, rng, value):
    """Put +-value at one random position of every row (last axis)."""
    flat = x.reshape(-1, x.shape[-1])
    cols = rng.integers(0, flat.shape[1], size=flat.shape[0])
    signs = rng.choice([-1.0, 1.0], size=flat.shape[0])
    flat[np.arange(flat.shape[0]), cols] = signs * value
    return flat.reshape(x.shape)


@generator("normal")
def _normal(shape, rng, p):
    return rng.normal(0.0, _num(p.get("std", 1.0)), size=shape)


@generator("uniform")
def _uniform(shape, rng, p):
    return rng.uniform(_num(p["low"]), _num(p["high"]), size=shape)


@generator("outliers")
def _outliers(shape, rng, p):
    """Normal data with one huge value per row: the row's scale is set by the outlier alone."""
    return _one_per_row(_normal(shape, rng, p), rng, _num(p["outlier"]))


@generator("at_max")
def _at_max(shape, rng, p):
    """One value per row at factor * the format's max (factor 1: exactly max; > 1: past max)."""
    return _one_per_row(_normal(shape, rng, p), rng, _fmt_max(p) * _num(p.get("factor", 1.0)))


@generator("zeros")
def _zeros(shape, rng, p):
    """All zero; a fraction of them -0 (signs must survive, F8-6, MX-5)."""
    neg = rng.random(size=shape) < float(p.get("negative_fraction", 0.5))
    return np.where(neg, -0.0, 0.0)


@generator("zeros_group")
def _zeros_group(shape, rng, p):
    """Normal data where every `every`-th block of `block` is all zero (some of them -0)."""
    x = _normal(shape, rng, p)
    for i, (rs, cs) in enumerate(_blocks(shape, p["block"])):
        if i % int(p.get("every", 2)) == 0:
            x[rs, cs] = np.where(rng.random(size=x[rs, cs].shape) < 0.5, -0.0, 0.0)
    return x


@generator("subnormals")
def _subnormals(shape, rng, p):
    """+-k * unit, k uniform in [1, max_multiple]: tiny values (fp32/bf16/float8 subnormals)."""
    k = rng.integers(1, int(p.get("max_multiple", 8)) + 1, size=shape)
    return rng.choice([-1.0, 1.0], size=shape) * k * _num(p["unit"])


@generator("nan_inf_group")
def _nan_inf_group(shape, rng, p):
    """Normal data; one element NaN in each block listed in nan_blocks, +-Inf in inf_blocks."""
    x = _normal(shape, rng, p)
    tiles = _blocks(shape, p["block"])
    for key, value in (("nan_blocks", np.nan), ("inf_blocks", np.inf), ("neg_inf_blocks", -np.inf)):
        for i in p.get(key, []):
            rs, cs = tiles[i]
            sub = x[rs, cs]
            sub[tuple(rng.integers(0, n) for n in sub.shape)] = value
    return x


@generator("just_below_pow2")
def _just_below_pow2(shape, rng, p):
    """Every row's amax is the fp32 value `ulps` below 2^e (e cycling through `exps`): the scale
    then sits just off a power of two, where floor/ceil of log2 and pow2 rounding turn."""
    exps = p["exps"]
    rows = int(np.prod(shape[:-1]))
    x = rng.uniform(-0.5, 0.5, size=(rows, shape[-1]))
    peaks = np.array([np.float32(2.0 ** exps[r % len(exps)]) for r in range(rows)], dtype=np.float32)
    peak_bits = peaks.view(np.uint32) - np.uint32(int(p.get("ulps", 1)))
    peaks = peak_bits.view(np.float32).astype(np.float64)
    x = x * peaks[:, None]
    cols = rng.integers(0, x.shape[1], size=rows)
    x[np.arange(rows), cols] = rng.choice([-1.0, 1.0], size=rows) * peaks
    return x.reshape(shape)


@generator("all_codes")
def _all_codes(shape, rng, p):
    """Every non-NaN code of a float8 format (decoded), tiled over the shape in a shuffled order.
    With the format max present, the tensorwise quant_scale is exactly 1 (F8-2) so the payload
    must reproduce each code: every encoding is exercised."""
    import ml_dtypes
    codes = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, p["fmt"])).astype(np.float64)
    codes = codes[~np.isnan(codes)]
    size = int(np.prod(shape))
    reps = -(-size // codes.size)
    tiled = np.tile(codes, reps)
    keep = np.concatenate([codes, rng.permutation(tiled)[: max(size - codes.size, 0)]])[:size]
    return rng.permutation(keep) * 2.0 ** int(p.get("shift", 0))


@generator("all_bytes")
def _all_bytes(shape, rng, p):
    """0..255 in order, tiled: every e8m0 / float8 code (decoded by the op, FMT-7)."""
    return np.resize(np.arange(256), shape)


def make_input(spec: dict, shape, dtype_name: str) -> np.ndarray:
    """Build one case input: literal {"bits": [...], "pad"} or generated {"kind", "seed", "params"}."""
    if "bits" in spec:
        return bits.from_hex(spec["bits"], dtype_name, shape, spec.get("pad"))
    if spec["kind"] not in GENERATORS:
        raise ValueError(f"qtrain.conformance.generators: unknown kind {spec['kind']!r}; "
                         f"known: {sorted(GENERATORS)}")
    rng = np.random.default_rng(int(spec["seed"]))
    x = np.asarray(GENERATORS[spec["kind"]](tuple(shape), rng, spec.get("params", {})), dtype=np.float64)
    # fp64 -> fp32 -> target: the generated value set is defined by the fp32 (then bf16) rounding.
    if spec.get("abs"):
        x = np.abs(x)
    if dtype_name == "uint8":
        return x.astype(np.uint8)
    x32 = x.astype(np.float32)
    return x32 if dtype_name == "float32" else x32.astype(bits.value_dtype(dtype_name))
