"""Tiny models, batches and the training loop shared by the single-process and sharded runs.

Models and batches are always built on the CPU (seeded) and then moved: the ranks move them to
their device, a single-process reference to `launch.reference_device()` (`reference_model`,
`on_reference`), and every result is brought back with `to_cpu` before it is compared."""
import torch
from torch import nn

from distributed_tests.launch import reference_device

# Layer widths per recipe: the smallest that every recipe's shape rule accepts (MX needs
# multiples of 32, blockwise of its 128 block), kept tiny for 2-core CI.
WIDTHS = {"blockwise": (128, 128, 128)}
DEFAULT_WIDTHS = (32, 64, 32)


def widths(recipe):
    return WIDTHS.get(recipe, DEFAULT_WIDTHS)


def tiny_mlp(recipe, dtype=torch.float32, seed=0, bias=True, dims=None, backend=None):
    """Linear -> ReLU -> Linear, deterministic from `seed`, converted for `recipe` (None: hp)."""
    d0, d1, d2 = dims or widths(recipe)
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d0, d1, bias=bias), nn.ReLU(), nn.Linear(d1, d2, bias=bias))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    model = model.to(dtype)
    if recipe is not None:
        import qtrain
        cfg = qtrain.recipe_config(recipe, backend=backend)
        model = qtrain.convert_to_quantized_training(model, cfg)
    return model


def tiny_moe(recipe, dtype=torch.float32, seed=0):
    """tests/moe_layer.py's MoEBlock (dim 64, 4 experts of hidden 96, top-2), deterministic from
    `seed`, its experts converted for `recipe` ("rowwise", "mxfp8"; None: hp)."""
    import sys
    from pathlib import Path
    tests_dir = str(Path(__file__).resolve().parents[1] / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from moe_layer import MoEBlock
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MoEBlock().to(dtype)
    if recipe is not None:
        import qtrain
        qtrain.convert_moe_to_quantized_training(model, qtrain.recipe_config(recipe))
    return model


def moe_batches(steps, rows=16, dim=64, dtype=torch.float32, seed=1):
    """`steps` (x, target) pairs for tiny_moe."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, dim, generator=g).to(dtype),
             torch.randn(rows, dim, generator=g).to(dtype)) for _ in range(steps)]


def batches(recipe, steps, rows=16, dtype=torch.float32, seed=1):
    """`steps` (x, target) pairs with fresh random values (seeded)."""
    d0, _, d2 = widths(recipe)
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, d0, generator=g).to(dtype), torch.randn(rows, d2, generator=g).to(dtype))
            for _ in range(steps)]


def on(pairs, device):
    """(x, target) pairs moved to `device`."""
    return [(x.to(device), y.to(device)) for x, y in pairs]


def on_reference(pairs):
    """(x, target) pairs on the single-process reference's device (cuda:0 under nccl)."""
    return on(pairs, reference_device())


def reference_model(model):
    """A model built here (on the CPU, as every rank builds it) moved to the reference device."""
    return model.to(reference_device())


def to_cpu(obj):
    """Tensors (in dicts, lists, tuples) detached and on the CPU; other values unchanged."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def loss_fn(out, target):
    return (out.float() - target.float()).square().mean()


def full(t):
    """A plain tensor from a DTensor (gathered) or a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def plain(t):
    """Strip qtrain's weight wrappers so results compare as ordinary tensors."""
    t = full(t).detach()
    return t._hp.clone() if hasattr(t, "_hp") else t.clone()


def train(model, data, lr=0.05, after_step=None, micro=1):
    """SGD over `data`; returns {"loss": [...], "grads": [{name: g}], "params": {name: p}}.
    `micro` > 1 splits each batch into micro-batches and accumulates (sum of micro means/micro)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, grads = [], []
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            loss = loss_fn(model(xs), ys) / micro
            loss.backward()
            total += loss.detach()
        losses.append(total)
        grads.append({n: plain(p.grad) for n, p in model.named_parameters()})
        opt.step()
        if after_step is not None:
            after_step(model)
    return {"loss": losses, "grads": grads,
            "params": {n: plain(p) for n, p in model.named_parameters()}}
