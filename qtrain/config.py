"""Frozen training configs, one per recipe family (spec/07-recipes.md); each builds its plan.

Every setting is a field; `__post_init__` validates and names the bad field. `short_id` is the
compact label benchmark rows use. `backend=None` defers to $QTRAIN_BACKEND.
"""
from dataclasses import dataclass
from typing import Optional

from .formats import FLOAT8_FORMATS, MX_ELEM_FORMATS, MX_SCALE_MODES
from .recipes import QuantSpec, RecipePlan

FLOAT8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")
RECIPE_NAMES = FLOAT8_RECIPES + ("mxfp8", "int8", "blockwise")


def _check_backend(cls, backend):
    if backend is not None and not isinstance(backend, str):
        raise ValueError(f"{cls}.backend must be a str or None, got {backend!r}")


def _check_bool(cls, field, value):
    if not isinstance(value, bool):
        raise ValueError(f"{cls}.{field} must be a bool, got {value!r}")


def _check_block(cls, field, value, spec_value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % 16:
        raise ValueError(f"{cls}.{field} must be a positive multiple of 16 "
                         f"({spec_value}), got {value!r}")


def _suffix(backend):
    return "" if backend is None else f"@{backend}"


@dataclass(frozen=True)
class Float8LinearConfig:
    """Float8 recipes: tensorwise (e4m3fn x/w, e5m2 g), rowwise and rowwise_with_gw_hp
    (every operand e4m3fn, pow2 scales). Build one with `from_recipe_name`."""
    recipe: str = "tensorwise"
    e4m3_format: str = "float8_e4m3fn"   # float8_e4m3fnuz on hardware that wants fnuz
    e5m2_format: str = "float8_e5m2"     # tensorwise grad_output only
    keep_quantized_weight: bool = False  # tensorwise only: RC-14
    # RC-15: the gradient products may accumulate fast; None: linears promote, grouped
    # products (MoE) accumulate fast, as torchao's dense and grouped float8 paths do
    fast_accum_grads: Optional[bool] = None
    backend: str = None

    def __post_init__(self):
        if self.recipe not in FLOAT8_RECIPES:
            raise ValueError(f"Float8LinearConfig.recipe must be one of {FLOAT8_RECIPES}, "
                             f"got {self.recipe!r}")
        for field, ebits in (("e4m3_format", 4), ("e5m2_format", 5)):
            name = getattr(self, field)
            if name not in FLOAT8_FORMATS or FLOAT8_FORMATS[name].ebits != ebits:
                choices = [n for n, f in FLOAT8_FORMATS.items() if f.ebits == ebits]
                raise ValueError(f"Float8LinearConfig.{field} must be one of {choices}, "
                                 f"got {name!r}")
        _check_bool("Float8LinearConfig", "keep_quantized_weight", self.keep_quantized_weight)
        if self.keep_quantized_weight and self.recipe != "tensorwise":
            raise ValueError(f"Float8LinearConfig.keep_quantized_weight applies to the "
                             f"tensorwise recipe only (RC-14: {self.recipe} quantizes w along "
                             f"a different axis for grad_input), got recipe {self.recipe!r}")
        if self.fast_accum_grads is not None:
            _check_bool("Float8LinearConfig", "fast_accum_grads", self.fast_accum_grads)
        _check_backend("Float8LinearConfig", self.backend)

    @classmethod
    def from_recipe_name(cls, name, **kwargs):
        return cls(recipe=getattr(name, "value", name), **kwargs)

    @property
    def pow2_scale(self):
        return self.recipe != "tensorwise"

    @property
    def grad_output_format(self):
        return self.e5m2_format if self.recipe == "tensorwise" else self.e4m3_format

    @property
    def min_multiple(self):
        return 16

    @property
    def short_id(self):
        fnuz = "-fnuz" if self.e4m3_format.endswith("fnuz") else ""
        keep = "-keepw" if self.keep_quantized_weight else ""
        grads = {None: "", True: "-fastgrads", False: "-promotedgrads"}[self.fast_accum_grads]
        return f"{self.recipe}{fnuz}{keep}{grads}{_suffix(self.backend)}"

    def plan(self, grouped=False):
        """The recipe table; grouped: for grouped products (RC-13), which changes only RC-15's
        default accumulation of the gradient products."""
        e4m3, p2 = self.e4m3_format, self.pow2_scale
        fast_grads = grouped if self.fast_accum_grads is None else self.fast_accum_grads
        accum = dict(fast_accum_output=True, fast_accum_grads=fast_grads)        # RC-3, RC-15
        if self.recipe == "tensorwise":
            xw = QuantSpec("float8", e4m3, tensorwise=True)
            g = QuantSpec("float8", self.e5m2_format, tensorwise=True)
            return RecipePlan((xw, xw), (g, xw), (g, xw), **accum,
                              keep_quantized_weight=self.keep_quantized_weight)
        row = QuantSpec("float8", e4m3, pow2_scale=p2)
        if self.recipe == "rowwise":
            return RecipePlan((row, row), (row, row), (row, row), **accum)
        # rowwise_with_gw_hp: grad_input's w is TENSORWISE; grad_weight in high precision.
        return RecipePlan((row, row), (row, QuantSpec("float8", e4m3, True, p2)), None, **accum)


@dataclass(frozen=True)
class MXLinearConfig:
    """mxfp8: every operand MX-quantized along its contraction axis (MX-*)."""
    elem_format: str = "float8_e4m3fn"
    block_size: int = 32
    scale_mode: str = "floor"
    grad_weight_hp: bool = False
    backend: str = None

    def __post_init__(self):
        if self.elem_format not in MX_ELEM_FORMATS:
            raise ValueError(f"MXLinearConfig.elem_format must be one of {MX_ELEM_FORMATS}, "
                             f"got {self.elem_format!r}")
        _check_block("MXLinearConfig", "block_size", self.block_size, "spec default 32")
        if self.scale_mode not in MX_SCALE_MODES:
            raise ValueError(f"MXLinearConfig.scale_mode must be one of {MX_SCALE_MODES}, "
                             f"got {self.scale_mode!r}")
        _check_bool("MXLinearConfig", "grad_weight_hp", self.grad_weight_hp)
        _check_backend("MXLinearConfig", self.backend)

    @property
    def min_multiple(self):
        return self.block_size

    @property
    def short_id(self):
        parts = ["mxfp8"]
        if self.elem_format != "float8_e4m3fn":
            parts.append(self.elem_format.replace("float8_", ""))
        if self.block_size != 32:
            parts.append(f"b{self.block_size}")
        if self.scale_mode != "floor":
            parts.append(self.scale_mode)
        if self.grad_weight_hp:
            parts.append("gwhp")
        return "-".join(parts) + _suffix(self.backend)

    def plan(self, grouped=False):
        """The recipe table (the same for grouped products: MX products promote at every
        block, RC-3)."""
        s = QuantSpec("mx", self.elem_format, block_size=self.block_size,
                      scale_mode=self.scale_mode)
        return RecipePlan((s, s), (s, s), None if self.grad_weight_hp else (s, s))


@dataclass(frozen=True)
class Int8LinearConfig:
    """int8: rowwise symmetric along each contraction axis (I8-*); the three flags say which
    products run in int8 (the others in high precision). `stochastic_grad_output` rounds g
    stochastically (I8-5) with noise from a generator seeded by `seed` and the call index."""
    output: bool = True
    grad_input: bool = True
    grad_weight: bool = True
    stochastic_grad_output: bool = False
    seed: int = 0
    backend: str = None

    def __post_init__(self):
        for field in ("output", "grad_input", "grad_weight", "stochastic_grad_output"):
            _check_bool("Int8LinearConfig", field, getattr(self, field))
        if not (self.output or self.grad_input or self.grad_weight):
            raise ValueError("Int8LinearConfig: output, grad_input and grad_weight are all "
                             "False; leave the layer unconverted instead")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"Int8LinearConfig.seed must be an int >= 0, got {self.seed!r}")
        _check_backend("Int8LinearConfig", self.backend)

    @property
    def min_multiple(self):
        return 16

    @property
    def short_id(self):
        parts = ["int8"]
        if not (self.output and self.grad_input and self.grad_weight):
            parts.append("+".join(n for n, on in (("out", self.output), ("gi", self.grad_input),
                                                  ("gw", self.grad_weight)) if on))
        if self.stochastic_grad_output:
            parts.append("sr")
        return "-".join(parts) + _suffix(self.backend)

    def plan(self):
        s = QuantSpec("int8")
        g = QuantSpec("int8", stochastic=self.stochastic_grad_output)
        return RecipePlan((s, s) if self.output else None,
                          (g, s) if self.grad_input else None,
                          (g, s) if self.grad_weight else None)


@dataclass(frozen=True)
class BlockwiseLinearConfig:
    """DeepSeek-style blockwise float8 (BW-*): x 1 x block along K, w block x block (axis
    free: re-quantized in backward, or kept from the forward with keep_quantized_weight,
    RC-14), g 1 x block; grad_weight operands block x 1 along M."""
    block: int = 128
    fmt: str = "float8_e4m3fn"
    keep_quantized_weight: bool = False
    backend: str = None

    def __post_init__(self):
        _check_block("BlockwiseLinearConfig", "block", self.block, "spec: 128")
        if self.fmt not in FLOAT8_FORMATS:
            raise ValueError(f"BlockwiseLinearConfig.fmt must be one of "
                             f"{sorted(FLOAT8_FORMATS)}, got {self.fmt!r}")
        _check_bool("BlockwiseLinearConfig", "keep_quantized_weight", self.keep_quantized_weight)
        _check_backend("BlockwiseLinearConfig", self.backend)

    @property
    def min_multiple(self):
        return self.block

    @property
    def short_id(self):
        b = "" if self.block == 128 else f"-b{self.block}"
        keep = "-keepw" if self.keep_quantized_weight else ""
        return f"blockwise{b}{keep}{_suffix(self.backend)}"

    def plan(self):
        b = self.block
        act = QuantSpec("blockwise", self.fmt, block=(1, b))
        wgt = QuantSpec("blockwise", self.fmt, block=(b, b))
        return RecipePlan((act, wgt), (act, wgt), (act, act),
                          keep_quantized_weight=self.keep_quantized_weight)


def recipe_config(name, **kwargs):
    """The default config for any recipe name in RECIPE_NAMES."""
    if name in FLOAT8_RECIPES:
        return Float8LinearConfig.from_recipe_name(name, **kwargs)
    factories = {"mxfp8": MXLinearConfig, "int8": Int8LinearConfig,
                 "blockwise": BlockwiseLinearConfig}
    if name not in factories:
        raise ValueError(f"unknown recipe {name!r}; expected one of {RECIPE_NAMES}")
    return factories[name](**kwargs)
