"""Public API: configs, conversion and filters, state_dict / deepcopy / pickle, inference
hand-off, QTRAIN_CHECK_FINITE."""
import copy
import io
import logging
import pickle

import pytest
import torch
from torch import nn

import qtrain
from qtrain.qlinear import QuantizedLinear


def _mlp(k=64, hidden=128, n=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, hidden), nn.GELU(), nn.Sequential(nn.Linear(hidden, n)))


# ---- configs -------------------------------------------------------------------------------
def test_recipe_config_names_and_short_ids():
    ids = [qtrain.recipe_config(n).short_id for n in qtrain.RECIPE_NAMES]
    assert ids == list(qtrain.RECIPE_NAMES)
    assert qtrain.MXLinearConfig(scale_mode="rceil", grad_weight_hp=True).short_id == \
        "mxfp8-rceil-gwhp"
    assert qtrain.Int8LinearConfig(output=False, stochastic_grad_output=True).short_id == \
        "int8-gi+gw-sr"
    assert "recipe='rowwise'" in repr(qtrain.Float8LinearConfig.from_recipe_name("rowwise"))


@pytest.mark.parametrize("make, field", [
    (lambda: qtrain.Float8LinearConfig.from_recipe_name("delayed"), "recipe"),
    (lambda: qtrain.Float8LinearConfig(e4m3_format="float8_e5m2"), "e4m3_format"),
    (lambda: qtrain.MXLinearConfig(elem_format="float8_e4m3fnuz"), "elem_format"),
    (lambda: qtrain.MXLinearConfig(block_size=30), "block_size"),
    (lambda: qtrain.MXLinearConfig(scale_mode="nearest"), "scale_mode"),
    (lambda: qtrain.Int8LinearConfig(output=False, grad_input=False, grad_weight=False), "all"),
    (lambda: qtrain.Int8LinearConfig(seed=-1), "seed"),
    (lambda: qtrain.BlockwiseLinearConfig(block=100), "block"),
    (lambda: qtrain.recipe_config("fp4"), "recipe"),
])
def test_config_validation_names_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_config_frozen():
    with pytest.raises(Exception):
        qtrain.MXLinearConfig().block_size = 64


# ---- conversion ----------------------------------------------------------------------------
def test_convert_keeps_parameters_and_is_post_order():
    m = _mlp()
    params = [id(p) for p in m.parameters()]
    out = qtrain.convert_to_quantized_training(m, qtrain.recipe_config("rowwise"))
    assert out is m and [id(p) for p in m.parameters()] == params
    assert isinstance(m[0], QuantizedLinear) and isinstance(m[2][0], QuantizedLinear)
    assert m[2][0].fqn == "2.0"
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config("int8"))   # idempotent
    assert m[0].config.short_id == "rowwise"


def test_convert_root_linear_returns_new_module():
    lin = nn.Linear(32, 32)
    q = qtrain.convert_to_quantized_training(lin, qtrain.recipe_config("tensorwise"))
    assert isinstance(q, QuantizedLinear) and q.weight is lin.weight


def test_default_filter_skips_ineligible_with_one_log_line(caplog):
    m = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 64), nn.Linear(64, 24))
    with caplog.at_level(logging.INFO, logger="qtrain"):
        qtrain.convert_to_quantized_training(m, qtrain.recipe_config("mxfp8"))
    assert [type(x) for x in m] == [nn.Linear] * 3
    lines = [r.getMessage() for r in caplog.records if "high precision" in r.getMessage()]
    assert len(lines) == 1 and "0(48, 64)" in lines[0] and "2(24, 64)" in lines[0]
    m = nn.Sequential(nn.Linear(64, 48), nn.Linear(48, 24))
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config("rowwise"))
    assert [type(x) for x in m] == [QuantizedLinear, nn.Linear]


def test_filter_fn_selects_and_forcing_ineligible_raises():
    m = _mlp()
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config("int8"),
                                         module_filter_fn=lambda mod, fqn: fqn != "0")
    assert type(m[0]) is nn.Linear and isinstance(m[2][0], QuantizedLinear)
    m = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 40))
    with pytest.raises(ValueError, match=r"'1'.*\(40, 64\).*multiples of 32"):
        qtrain.convert_to_quantized_training(m, qtrain.recipe_config("mxfp8"),
                                             module_filter_fn=lambda mod, fqn: True)


# ---- state_dict, deepcopy, pickle ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_original_dtype(dtype):
    m = _mlp().to(dtype)
    plain = copy.deepcopy(m)
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config("rowwise"))
    sd = m.state_dict()
    assert set(sd) == set(plain.state_dict()) and all(v.dtype == dtype for v in sd.values())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    plain.load_state_dict(m.state_dict())                    # converted -> unconverted
    fresh = qtrain.convert_to_quantized_training(_mlp().to(dtype),
                                                 qtrain.recipe_config("rowwise"))
    fresh.load_state_dict(plain.state_dict())                # unconverted -> converted
    x = torch.randn(4, 64, dtype=dtype)
    assert torch.equal(fresh(x), m(x))


def test_deepcopy_and_pickle():
    m = qtrain.convert_to_quantized_training(_mlp(), qtrain.recipe_config("mxfp8"))
    x = torch.randn(4, 64)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert isinstance(clone[0], QuantizedLinear) and clone[0].config == m[0].config
        assert torch.equal(clone(x), m(x))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), m(x))


# ---- inference hand-off --------------------------------------------------------------------
@pytest.mark.parametrize("recipe", qtrain.RECIPE_NAMES)
def test_to_inference_matches_training_forward(recipe):
    k = 128 if recipe == "blockwise" else 64
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(k, 128), nn.GELU(), nn.Linear(128, 128))
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config(recipe))
    x = torch.randn(3, 5, k)
    with torch.no_grad():
        want = m(x)
    inf = qtrain.to_inference(copy.deepcopy(m).eval())
    assert isinstance(inf[0], qtrain.InferenceLinear)
    with torch.no_grad():
        assert torch.equal(inf(x), want)      # same quantization, same product, same backend
    plain = nn.Sequential(nn.Linear(k, 128))
    assert isinstance(qtrain.to_inference(plain, recipe=recipe)[0], qtrain.InferenceLinear)


def test_to_inference_dtype_matches_autocast_training_forward():
    # fp32 master weights trained under bf16 autocast: the training forward quantizes w.to(bf16),
    # so serving with dtype=torch.bfloat16 gives the same bits.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    qtrain.convert_to_quantized_training(m, qtrain.recipe_config("rowwise"))
    x = torch.randn(4, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = m(x)
        got = qtrain.to_inference(copy.deepcopy(m).eval(), dtype=torch.bfloat16)(x)
    assert torch.equal(got, want)


# ---- QTRAIN_CHECK_FINITE -------------------------------------------------------------------
def test_check_finite_names_layer_and_tensor(monkeypatch):
    m = qtrain.convert_to_quantized_training(_mlp(), qtrain.recipe_config("tensorwise"))
    x = torch.randn(4, 64)
    x[1, 3] = float("nan")
    m(x)                                                    # off by default: NaN flows (F8-5)
    monkeypatch.setenv("QTRAIN_CHECK_FINITE", "1")
    with pytest.raises(FloatingPointError, match=r"layer '0', tensor input"):
        m(x)
    with torch.no_grad():
        m[2][0].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"layer '2.0', tensor weight"):
        m(torch.randn(4, 64))
    m = qtrain.convert_to_quantized_training(_mlp(), qtrain.recipe_config("tensorwise"))
    out = m(torch.randn(4, 64))
    with pytest.raises(FloatingPointError, match=r"layer '2.0', tensor grad_output"):
        out.backward(torch.full_like(out, float("nan")))
