"""FSDP2 over a converted MoE block (qtrain.moe): the experts' GroupedExpertsWeight shards,
all-gathers (qtrain/moe_weight.py's hooks) and stays routed to qtrain.grouped_mm, so two ranks
on a replicated batch train bit for bit as one process does (P-FSDP for grouped products)."""
import pytest
import torch

from distributed_tests import models, parity
from distributed_tests.fsdp_workers import fsdp_moe_many
from distributed_tests.launch import run_workers

RECIPES = ["rowwise", "mxfp8", None]   # None: high precision, run to show the others differ


@pytest.fixture(scope="module")
def moe_runs():
    return run_workers(fsdp_moe_many, 2, RECIPES, timeout_s=150)


def _single_process(recipe):
    return models.to_cpu(models.train(models.reference_model(models.tiny_moe(recipe)),
                                      models.on_reference(models.moe_batches(2))))


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_fsdp_moe_bit_identical_P_FSDP(moe_runs, recipe):
    want = _single_process(recipe)
    for rank in (0, 1):
        got = moe_runs[rank][RECIPES.index(recipe)]
        for i, (a, b) in enumerate(zip(got["loss"], want["loss"])):
            parity.assert_bitwise(f"rank {rank} loss[{i}]", a, b)
        for i, (ga, gb) in enumerate(zip(got["grads"], want["grads"])):
            assert ga.keys() == gb.keys()
            for k in gb:
                parity.assert_bitwise(f"rank {rank} step {i} grad {k}", ga[k], gb[k])
        for k in want["params"]:
            parity.assert_bitwise(f"rank {rank} param {k}", got["params"][k], want["params"][k])
    # the sharded experts ran quantized, not in high precision (torch's own fp32 grouped
    # product, whose sums on the gathered weight need not match one process bit for bit)
    hp = moe_runs[0][RECIPES.index(None)]
    assert not torch.equal(moe_runs[0][RECIPES.index(recipe)]["loss"][0], hp["loss"][0])


def test_fsdp_moe_compiled_experts_bit_identical(moe_runs):
    """The sharded experts compiled (fullgraph, after fully_shard): the same bits as the
    eager sharded run, so the gathered GroupedExpertsWeight stays routed under compile."""
    compiled = run_workers(fsdp_moe_many, 2, ["rowwise"], 2, True, timeout_s=150)
    eager = moe_runs[0][RECIPES.index("rowwise")]
    got = compiled[0][0]
    for i, (a, b) in enumerate(zip(got["loss"], eager["loss"])):
        parity.assert_bitwise(f"compiled loss[{i}]", a, b)
    for k in eager["params"]:
        parity.assert_bitwise(f"compiled param {k}", got["params"][k], eager["params"][k])


def test_fsdp_moe_mixed_precision_gathers_routed_bf16_weights():
    """FSDP2 with param_dtype=bf16 over fp32 shards: the experts' shards are cast to bf16
    before the all-gather (fsdp_pre_all_gather) and gathered as GroupedExpertsWeight, so the
    first step's loss is the bits of one process running the bf16-cast model on bf16 inputs
    (quantized: not the high-precision bf16 model's)."""
    runs = run_workers(fsdp_moe_many, 2, ["rowwise"], 2, False, torch.bfloat16, timeout_s=150)
    (x, y), = models.moe_batches(1)
    losses = {}
    for recipe in ("rowwise", None):
        model = models.tiny_moe(recipe).to(torch.bfloat16)
        losses[recipe] = models.loss_fn(model(x.to(torch.bfloat16)), y).detach()
    for rank in (0, 1):
        parity.assert_bitwise(f"rank {rank} loss[0]", runs[rank][0]["loss"][0], losses["rowwise"])
        assert torch.isfinite(runs[rank][0]["loss"][1])
    assert not torch.equal(losses["rowwise"], losses[None])
