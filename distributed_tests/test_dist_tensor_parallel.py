"""Tensor / sequence parallel parity (P-COL bit-identical, P-ROW within bound), the float8
sequence-parallel all-gather, and a 2-D FSDP x TP mesh on 4 ranks."""
import pytest
import torch

from distributed_tests import models, parity
from distributed_tests import tp_workers as T
from distributed_tests.launch import run_workers, skip_if_too_few_gpus

# blockwise is left out of TP here: its 128 x 128 weight blocks need shards of 128 or more
# (width 256 on 2 ranks), too slow for the NumPy reference on 2-core CI.
RECIPES = ["rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "tensorwise", None]

# Which results are bit-identical to one process (P-COL); everything else is checked against
# parity.layer_bounds (P-ROW). grad_bias is a plain fp32 sum over identical rows: bitwise.
BITWISE = {
    "col": {"out", "grad_weight", "grad_bias"},
    "row": {"grad_input", "grad_weight", "grad_bias"},
}
# tensorwise: one scale per LOCAL weight shard, so the column-split output and grad_weight are
# within the bound only; the row split's local x and grad_input groups differ too.
NOT_BITWISE = {("tensorwise", "col", "out"), ("tensorwise", "col", "grad_weight"),
               ("tensorwise", "row", "grad_input"), ("tensorwise", "row", "grad_weight")}


@pytest.fixture(scope="module")
def layer_results():
    return run_workers(T.tp_layers, 2, RECIPES, torch.float32, timeout_s=150)


@pytest.mark.parametrize("mode", ["col", "row"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r or "hp")
def test_tp_layer_parity_P_COL_P_ROW(layer_results, recipe, mode):
    x, g = T.layer_inputs(recipe, torch.float32)
    layer = T.single_layer(recipe, torch.float32)
    w = layer.weight.detach().clone()
    want = models.to_cpu(T.layer_run(models.reference_model(layer), *models.on_reference([(x, g)])[0]))
    bounds = parity.layer_bounds(recipe, x, w, g)         # from the CPU inputs: device-free
    for rank in (0, 1):
        got = layer_results[rank][recipe][mode]
        for key in ("out", "grad_input", "grad_weight", "grad_bias"):
            name = f"{recipe} {mode}-parallel {key} rank {rank}"
            if key in BITWISE[mode] and (recipe, mode, key) not in NOT_BITWISE:
                parity.assert_bitwise("P-COL " + name, got[key], want[key])
            else:
                parity.assert_within("P-ROW " + name, got[key], want[key], bounds[key])


@pytest.fixture(scope="module")
def sp_results():
    # 2 ranks: tensorwise SP with the float8 input all-gather and with the hp all-gather, bf16
    return run_workers(T.sp_pair, 2, "tensorwise", torch.bfloat16, timeout_s=150)


def test_sp_float8_input_all_gather_bit_identical_and_half_bytes(sp_results):
    """Casting the sequence shard with the global amax before the all-gather gives the same
    bits as gathering in bf16 and quantizing the full activation; half the bytes move."""
    f8, hp = sp_results[0]["float8"], sp_results[0]["hp"]
    for i in range(len(hp["loss"])):
        parity.assert_bitwise(f"SP loss[{i}]", f8["loss"][i], hp["loss"][i])
        for k in hp["grads"][i]:
            parity.assert_bitwise(f"SP step {i} grad {k}", f8["grads"][i][k], hp["grads"][i][k])
    # Counted on the wire: each step all-gathers each rank's (B, S/2, K) shard once, 1 byte per
    # element; the bf16 path (DTensor redistribute) moves 2 bytes per element of the same shard.
    (x, _), = T.seq_batches("tensorwise", 1, torch.bfloat16)
    shard_numel = x.numel() // 2
    steps = len(hp["loss"])
    assert f8["all_gathers"] == steps
    assert f8["all_gather_bytes"] == steps * shard_numel
    assert f8["all_gather_bytes"] * 2 == steps * shard_numel * x.element_size()


def test_sp_matches_single_process_within_bound(sp_results):
    got = sp_results[1]["hp"]
    model = models.reference_model(models.tiny_mlp("tensorwise", torch.bfloat16))
    want = models.to_cpu(T.train_seq(model, models.on_reference(
        T.seq_batches("tensorwise", 2, torch.bfloat16))))
    # the loss of a bf16 model with a per-shard tensorwise weight scale: a loose relative check
    for a, b in zip(got["loss"], want["loss"]):
        assert abs(float(a) - float(b)) <= parity.TOLERANCES["model_loss"]["rel"] * abs(float(b))


@pytest.fixture(scope="module")
def results_2d():
    skip_if_too_few_gpus(4)
    return run_workers(T.fsdp_tp_many, 4, [None, "rowwise"], torch.float32, timeout_s=150)


@pytest.mark.parametrize("recipe", [None, "rowwise"], ids=["hp", "rowwise"])
def test_fsdp_x_tp_2d_mesh_4_ranks(results_2d, recipe):
    got = [r[recipe] for r in results_2d]
    want = models.to_cpu(T.train_seq(models.reference_model(models.tiny_mlp(recipe, torch.float32)),
                                     models.on_reference(T.seq_batches(recipe, 2, torch.float32))))
    for rank in range(4):
        for i, (a, b) in enumerate(zip(got[rank]["loss"], want["loss"])):
            parity.assert_within(f"2-D loss[{i}] rank {rank}", a, b,
                                 parity.TOLERANCES["model_loss"]["rel"] * abs(float(b)))
        for k, w in want["grads"][0].items():
            tol = parity.TOLERANCES["model_hp" if recipe is None else "model_quantized"]["rel"]
            parity.assert_within(f"2-D grad {k} rank {rank}", got[rank]["grads"][0][k], w,
                                 tol * float(w.abs().max()))
