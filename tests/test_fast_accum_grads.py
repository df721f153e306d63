"""RC-15: which products may accumulate fast (the config's fast_accum_grads), and that the
linear and grouped layers hand exactly that permission to the backend, product by product."""
import pytest
import torch

import qtrain
from qtrain import backend as qbackend
from qtrain.reference_backend import ReferenceBackend


@pytest.mark.parametrize("setting, dense, grouped", [(None, False, True), (True, True, True),
                                                     (False, False, False)])
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_plan_permissions_RC_15(recipe, setting, dense, grouped):
    config = qtrain.Float8LinearConfig(recipe=recipe, fast_accum_grads=setting)
    for plan, want in ((config.plan(), dense), (config.plan(grouped=True), grouped)):
        assert plan.fast_accum_output is True                     # RC-3, whatever the setting
        assert plan.fast_accum_grads is want
        assert plan.output == config.plan().output                # operands never change
        assert plan.grad_input == config.plan().grad_input
        assert plan.grad_weight == config.plan().grad_weight


def test_short_id_names_the_setting_and_bad_values_name_the_field():
    assert qtrain.Float8LinearConfig(recipe="rowwise").short_id == "rowwise"
    assert qtrain.Float8LinearConfig(recipe="rowwise", fast_accum_grads=True).short_id == \
        "rowwise-fastgrads"
    assert qtrain.Float8LinearConfig(fast_accum_grads=False).short_id == "tensorwise-promotedgrads"
    with pytest.raises(ValueError, match="fast_accum_grads"):
        qtrain.Float8LinearConfig(fast_accum_grads="yes")
    with pytest.raises(ValueError, match="fast_accum_grads"):
        qtrain.Float8LinearConfig(fast_accum_grads=1)
    assert qtrain.MXLinearConfig().plan(grouped=True) == qtrain.MXLinearConfig().plan()


class _Recording(ReferenceBackend):
    """The reference backend, recording the use_fast_accum permission of every product."""
    takes_fast_accum = True
    seen = []

    def scaled_mm_nt(self, a, a_dequant, b, b_dequant, out_dtype, use_fast_accum=False):
        self.seen.append(use_fast_accum)
        return super().scaled_mm_nt(a, a_dequant, b, b_dequant, out_dtype)

    def scaled_grouped_mm(self, a, a_dequant, b, b_dequant, offs, out_dtype, group_align=1,
                          use_fast_accum=False):
        self.seen.append(use_fast_accum)
        return super().scaled_grouped_mm(a, a_dequant, b, b_dequant, offs, out_dtype, group_align)


@pytest.fixture
def recording():
    qbackend.register_backend("fast-accum-recording", _Recording)
    _Recording.seen = []
    return _Recording


@pytest.mark.parametrize("setting, want", [(None, [True, False, False]),
                                           (True, [True, True, True]),
                                           (False, [True, False, False])])
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_linear_hands_each_product_its_permission(recording, recipe, setting, want):
    """Output, grad_input, grad_weight in that order; rowwise_with_gw_hp's grad_weight is hp
    (no quantized product)."""
    torch.manual_seed(0)
    config = qtrain.Float8LinearConfig(recipe=recipe, fast_accum_grads=setting,
                                       backend="fast-accum-recording")
    x = torch.randn(32, 64, requires_grad=True)
    w = torch.randn(48, 64, requires_grad=True)
    qtrain.linear(x, w, config=config).square().sum().backward()
    assert recording.seen == (want[:2] if recipe == "rowwise_with_gw_hp" else want)


@pytest.mark.parametrize("setting, want", [(None, [True, True, True]),
                                           (True, [True, True, True]),
                                           (False, [True, False, False])])
def test_grouped_layer_hands_each_product_its_permission(recording, setting, want):
    """qtrain.grouped_mm: RC-15's default lets all three grouped products accumulate fast
    (torchao's float8 grouped mm does); False promotes the two gradient products."""
    torch.manual_seed(0)
    config = qtrain.Float8LinearConfig(recipe="rowwise", fast_accum_grads=setting,
                                       backend="fast-accum-recording")
    x = torch.randn(40, 64, requires_grad=True)
    w = torch.randn(3, 32, 64, requires_grad=True)
    offs = torch.tensor([7, 7, 33], dtype=torch.int32)
    qtrain.grouped_mm(x, w, offs, config).square().sum().backward()
    assert recording.seen == want


def test_permission_changes_no_reference_result():
    """The reference accumulates exactly whatever the permission: the three settings give the
    same bits there (the permission is FREE for a backend to use, RC-3)."""
    torch.manual_seed(1)
    x = torch.randn(40, 64)
    w = torch.randn(3, 32, 64) / 8
    g = torch.randn(40, 32)
    offs = torch.tensor([7, 7, 33], dtype=torch.int32)
    results = []
    for setting in (None, True, False):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        config = qtrain.Float8LinearConfig(recipe="rowwise", fast_accum_grads=setting,
                                           backend="reference")
        qtrain.grouped_mm(xi, wi, offs, config).backward(g)
        results.append((xi.grad, wi.grad))
    for gx, gw in results[1:]:
        assert torch.equal(gx, results[0][0]) and torch.equal(gw, results[0][1])
