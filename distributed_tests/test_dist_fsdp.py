"""FSDP2 parity (P-FSDP, P-F8AG, P-DP) and the float8 all-gather's bytes and all-reduces."""
import pytest
import torch

from distributed_tests import models, parity
from distributed_tests.fsdp_workers import fsdp_many, fsdp_saved_bytes
from distributed_tests.launch import run_workers, skip_if_too_few_gpus

RECIPES = ["tensorwise", "rowwise", "rowwise_with_gw_hp", "mxfp8", "int8", "blockwise", None]


def _reference(recipe, dtype, steps=2, bias=True):
    """The single-process run on launch.reference_device() (the ranks' kernels), on the CPU."""
    return models.to_cpu(models.train(
        models.reference_model(models.tiny_mlp(recipe, dtype, bias=bias)),
        models.on_reference(models.batches(recipe, steps, dtype=dtype))))


def _assert_same_run(name, got, want):
    for i, (a, b) in enumerate(zip(got["loss"], want["loss"])):
        parity.assert_bitwise(f"{name} loss[{i}]", a, b)
    for i, (ga, gb) in enumerate(zip(got["grads"], want["grads"])):
        for k in gb:
            parity.assert_bitwise(f"{name} step {i} grad {k}", ga[k], gb[k])
    for k in want["params"]:
        parity.assert_bitwise(f"{name} param {k}", got["params"][k], want["params"][k])


@pytest.fixture(scope="module")
def replicated_runs():
    """One 2-rank launch: every recipe sharded (replicated batch), plus the float8 all-gather
    runs in fp32 and bf16 (bias-free, so all-gathered bytes are weights only)."""
    configs = [dict(recipe=r, dtype=torch.float32) for r in RECIPES]
    configs += [
        dict(recipe="tensorwise", dtype=torch.float32, float8_all_gather=True),
        dict(recipe="tensorwise", dtype=torch.float32, float8_all_gather=True, precompute=True),
        dict(recipe="tensorwise", dtype=torch.float32, bias=False),
        dict(recipe="tensorwise", dtype=torch.float32, float8_all_gather=True, bias=False),
        dict(recipe="tensorwise", dtype=torch.bfloat16, bias=False),
        dict(recipe="tensorwise", dtype=torch.bfloat16, float8_all_gather=True, bias=False,
             precompute=True),
    ]
    results = run_workers(fsdp_many, 2, configs, timeout_s=150)
    return configs, results


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r or "hp")
def test_fsdp_replicated_bit_identical_P_FSDP(replicated_runs, recipe):
    configs, results = replicated_runs
    i = RECIPES.index(recipe)
    want = _reference(recipe, torch.float32)
    for rank in (0, 1):
        _assert_same_run(f"P-FSDP {recipe} rank {rank}", results[rank][i], want)


@pytest.mark.parametrize("variant", ["on_the_fly", "precomputed", "bf16_precomputed"])
def test_fsdp_float8_all_gather_bit_identical_P_F8AG(replicated_runs, variant):
    """The gathered float8 weight is exactly the full-tensor tensorwise quantization: the
    whole run (losses, grads, updated weights) equals the single-process run bit for bit."""
    configs, results = replicated_runs
    i = {"on_the_fly": 7, "precomputed": 8, "bf16_precomputed": 12}[variant]
    cfg = configs[i]
    want = _reference("tensorwise", cfg["dtype"], bias=cfg.get("bias", True))
    _assert_same_run(f"P-F8AG {variant}", results[0][i], want)


@pytest.mark.parametrize("dtype,ratio", [(torch.float32, 4), (torch.bfloat16, 2)],
                         ids=["fp32", "bf16"])
def test_fsdp_float8_all_gather_bytes(replicated_runs, dtype, ratio):
    """Counted on the wire: a float8 all-gather moves 1 byte per weight element."""
    configs, results = replicated_runs
    hp_i, f8_i = {torch.float32: (9, 10), torch.bfloat16: (11, 12)}[dtype]
    hp, f8 = results[0][hp_i], results[0][f8_i]
    assert hp["all_gathers"] == f8["all_gathers"] > 0
    assert f8["all_gather_bytes"] * ratio == hp["all_gather_bytes"], (hp, f8)
    n_weights = sum(p.numel() for p in models.tiny_mlp("tensorwise", dtype, bias=False).parameters())
    # each rank sends its half of every weight once per all-gather of that layer
    assert f8["all_gather_bytes"] % (n_weights // 2) == 0


def test_precompute_uses_one_all_reduce(replicated_runs):
    configs, results = replicated_runs
    on_fly, pre = results[0][7], results[0][8]
    assert pre["precompute_all_reduces"] == [1, 1]       # one per call, for all weights
    # after the first step every all-gather uses the precomputed amax: no per-weight reduces
    per_step_on_fly = on_fly["all_reduces"] // 2
    assert pre["all_reduces"] == per_step_on_fly + 2, (on_fly["all_reduces"], pre["all_reduces"])


DP_RECIPES = [None, "tensorwise"]


@pytest.fixture(scope="module")
def dp_runs():
    skip_if_too_few_gpus(4)
    configs = [dict(recipe=r, dtype=torch.float32, steps=1, split_batch=True,
                    float8_all_gather=r is not None) for r in DP_RECIPES]
    return run_workers(fsdp_many, 4, configs, timeout_s=150)[0]


@pytest.mark.parametrize("recipe", DP_RECIPES, ids=["hp", "tensorwise-f8ag"])
def test_fsdp_data_parallel_4_ranks_within_bound_P_DP(dp_runs, recipe):
    """Distinct micro-batch per rank: equals one process accumulating the same micro-batches
    (same scaling groups: one micro-batch per group) up to the order of the gradient sum."""
    world = 4
    got = dp_runs[DP_RECIPES.index(recipe)]
    (x, y), = models.on_reference(models.batches(recipe, 1))
    terms, losses = {}, []
    for xs, ys in zip(x.chunk(world), y.chunk(world)):
        model = models.reference_model(models.tiny_mlp(recipe, torch.float32))
        loss = models.loss_fn(model(xs), ys) / world
        loss.backward()
        losses.append(loss.detach().cpu())
        for n, p in model.named_parameters():
            terms.setdefault(n, []).append(p.grad.detach().cpu().clone())
    parity.assert_within("P-DP loss", got["loss"][0], sum(losses),
                         parity.sum_order_bound(losses))
    for n, ts in terms.items():
        parity.assert_within(f"P-DP grad {n}", got["grads"][0][n], sum(ts),
                             parity.sum_order_bound(ts))


def test_fsdp_requantized_weight_holds_no_unsharded_copy_RC_14():
    """RC-14 under FSDP2: by default nothing derived from the unsharded weight survives the
    forward (FSDP2 frees the gathered weight and gathers it again for the backward); with
    keep_quantized_weight the float8 copy of every layer's FULL weight (not 1/world of it)
    stays on every rank until the backward. Same loss either way."""
    configs = [dict(recipe=r, keep_quantized_weight=k)
               for r in ("tensorwise", "blockwise") for k in (False, True)]
    results = run_workers(fsdp_saved_bytes, 2, configs, timeout_s=150)
    for rank in (0, 1):
        res = results[rank]
        for i in (0, 2):
            recipe = configs[i]["recipe"]
            d0, d1, d2 = models.widths(recipe)
            if recipe == "tensorwise":          # payload + the scalar fp32 scale, per layer,
                # less the 4-byte amax that the default keeps instead for the one layer that
                # casts w.T (the second: the first layer's input needs no gradient)
                kept = (d1 * d0 + 4) + (d2 * d1 + 4) - 4
            else:                               # payload + one fp32 scale per 128x128 block
                kept = (d1 * d0 + 4 * (d1 // 128) * (d0 // 128)) + \
                       (d2 * d1 + 4 * (d2 // 128) * (d1 // 128))
            default, keep = res[i]["held_bytes"], res[i + 1]["held_bytes"]
            assert keep - default == kept, (
                f"rank {rank} {recipe}: keeping the weight held {keep - default} more bytes, "
                f"expected the full unsharded float8 weights, {kept}")
            parity.assert_bitwise(f"rank {rank} {recipe} loss", res[i]["loss"], res[i + 1]["loss"])
