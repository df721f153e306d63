"""Expert-parallel sharding of converted MoE experts: a GroupedExpertsWeight distributed along
the expert dimension (DTensor Shard(0)) keeps its local shard routed to qtrain.grouped_mm, so
each rank's experts give the single-process products and gradients bit for bit."""
import pytest
import torch

import qtrain
from distributed_tests import parity
from distributed_tests.ep_workers import expert_shard_run
from distributed_tests.launch import run_workers

SIZES = [5, 0, 19, 12]          # uneven, one empty group; experts 0-1 on rank 0, 2-3 on rank 1


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_expert_sharded_weight_stays_routed(recipe):
    results = run_workers(expert_shard_run, 2, recipe, SIZES, timeout_s=120)
    r0 = results[0]
    w, x, g = r0["w"], r0["x"], r0["g"]
    config = qtrain.recipe_config(recipe)
    xs = x.clone().requires_grad_()
    wp = w.clone().requires_grad_()
    offs = torch.tensor(SIZES).cumsum(0).to(torch.int32)
    want = qtrain.grouped_mm(xs, wp, offs, config)
    want.backward(g)
    for rank, res in enumerate(results):
        assert res["local_type"] == "GroupedExpertsWeight"
        first = 2 * rank
        rows = slice(sum(SIZES[:first]), sum(SIZES[:first + 2]))
        parity.assert_bitwise(f"rank {rank} output", res["out"], want.detach()[rows])
        parity.assert_bitwise(f"rank {rank} grad_x", res["grad_x"], xs.grad[rows])
        parity.assert_bitwise(f"rank {rank} grad_w", res["grad_w"], wp.grad[first:first + 2])
