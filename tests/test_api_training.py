"""End to end: a 50-step training run per recipe tracks fp32 (and bf16) within the stated
margin; a Hugging Face LlamaForCausalLM built from a tiny config converts and trains."""
import copy

import pytest
import torch
from torch import nn

import qtrain
from linear_helpers import TOLERANCES

STEPS, D, BATCH = 50, 128, 32


def _train(recipe, dtype=torch.float32):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(D, D), nn.Tanh(), nn.Linear(D, D))
    model = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D)).to(dtype)
    if recipe is not None:
        qtrain.convert_to_quantized_training(model, qtrain.recipe_config(recipe))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.randn(BATCH, D, generator=gen)
        with torch.no_grad():
            y = teacher(x)
        loss = (model(x.to(dtype)).float() - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[-5:]) / 5, losses[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: thread start-up and spinning cost more than they save on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def baseline():
    return _train(None)[0]


@pytest.mark.parametrize("recipe", qtrain.RECIPE_NAMES)
def test_fifty_steps_track_fp32(recipe, baseline):
    final, first = _train(recipe)
    assert final < 0.5 * first, (recipe, first, final)                 # it learns
    margin = TOLERANCES["train_loss_rel_margin"]
    assert abs(final - baseline) <= margin * baseline, (recipe, final, baseline)


def test_bf16_model_tracks_bf16(baseline):
    hp, _ = _train(None, torch.bfloat16)
    q, _ = _train("rowwise", torch.bfloat16)
    margin = TOLERANCES["train_loss_rel_margin"]
    assert abs(q - hp) <= margin * hp and abs(hp - baseline) <= margin * baseline


@pytest.mark.parametrize("recipe", ["rowwise", "mxfp8"])
def test_hf_llama_converts_and_trains(recipe):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ref = copy.deepcopy(model)
    qtrain.convert_to_quantized_training(model, qtrain.recipe_config(recipe))
    n_q = sum(isinstance(m, qtrain.QuantizedLinear) for m in model.modules())
    assert n_q == 2 * 7 + 1                     # q,k,v,o,gate,up,down per layer + lm_head
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ref_loss = ref(input_ids=ids, labels=ids).loss.item()
    assert abs(losses[0] - ref_loss) < 0.05 * ref_loss           # same starting point
    assert losses[-1] < losses[0], losses
    ref.load_state_dict(model.state_dict())                      # hands back to plain HF
