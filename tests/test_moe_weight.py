"""A converted experts module's GroupedExpertsWeight (qtrain/moe_weight.py): its products are
qtrain.grouped_mm's, bit for bit, in eager mode and under torch.compile (fullgraph), and the
weight behaves as the plain one for optimizers, state_dict, torch.save, .to() and deepcopy."""
import copy
import io
import logging

import pytest
import torch
import torch.nn.functional as F

import qtrain
import qtrain.moe_weight
from qtrain.moe import convert_moe_to_quantized_training
from qtrain.moe_weight import GroupedExpertsWeight

from moe_layer import GroupedExperts

CONFIGS = {
    "rowwise": lambda: qtrain.Float8LinearConfig(recipe="rowwise", backend="reference"),
    "mxfp8": lambda: qtrain.MXLinearConfig(scale_mode="rceil", backend="reference"),
}
SIZES = [5, 0, 11, 16]                     # uneven and empty groups
NAMES = ("w1", "w2", "w3")


class DirectExperts(GroupedExperts):
    """The same experts written against qtrain.grouped_mm by hand: what conversion must equal."""

    def __init__(self, experts, config):
        super().__init__(*experts.w1.shape[:1], experts.w1.shape[2], experts.w1.shape[1])
        self.config = config
        for name in NAMES:
            w = getattr(experts, name)
            getattr(self, name).data = (w._hp if isinstance(w, GroupedExpertsWeight) else w).clone()

    def forward(self, x, offs):
        def mm(t, w):
            return qtrain.grouped_mm(t, w, offs, self.config)
        return mm(F.silu(mm(x, self.w1)) * mm(x, self.w3), self.w2)


def _inputs(dtype=torch.float32):
    x = torch.randn(sum(SIZES), 64, dtype=dtype)
    offs = torch.tensor(SIZES, dtype=torch.int32).cumsum(0).to(torch.int32)
    return x, offs


def _step(module, x, offs, g):
    """Forward, backward with the output gradient g; returns (out, grad_x, weight grads)."""
    x = x.clone().requires_grad_(True)
    out = module(x, offs)
    out.backward(g)
    grads = [getattr(module, n).grad for n in NAMES]
    for n in NAMES:
        getattr(module, n).grad = None
    return [out.detach(), x.grad] + grads


def _assert_equal_runs(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        assert type(a) is torch.Tensor and a.dtype == b.dtype, (i, type(a), a.dtype, b.dtype)
        assert torch.equal(a, b), f"tensor {i} of (out, grad_x, grad_w1, grad_w2, grad_w3)"


@pytest.mark.parametrize("recipe", sorted(CONFIGS))
def test_converted_experts_equal_direct_grouped_mm_eager(recipe, seed):
    config = CONFIGS[recipe]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    assert all(type(getattr(q, n)) is GroupedExpertsWeight for n in NAMES)
    assert all(isinstance(getattr(q, n), torch.nn.Parameter) for n in NAMES)
    direct = DirectExperts(q, config)
    x, offs = _inputs()
    g = torch.randn(x.shape[0], 64)
    got, want = _step(q, x, offs, g), _step(direct, x, offs, g)
    _assert_equal_runs(got, want)
    # and the products are quantized: the high-precision experts give another answer
    hp = GroupedExperts(4, 64, 96)
    for n in NAMES:
        getattr(hp, n).data = getattr(direct, n).detach().clone()
    assert not torch.equal(hp(x, offs), got[0])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_converted_experts_compile_fullgraph(backend, seed):
    """No graph break (fullgraph) and the same bits as the hand-written qtrain.grouped_mm
    experts: aot_eager against eager; inductor (which fuses SwiGLU's elementwise ops in fp32)
    against the direct experts compiled the same way. On torch 2.11 this caught compiled
    grouped_mm losing its gradients (qgrouped_mm._as_dtype)."""
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96).to(torch.bfloat16), config)
    direct = DirectExperts(q, config).to(torch.bfloat16)
    x, offs = _inputs(torch.bfloat16)
    g = torch.randn(x.shape[0], 64, dtype=torch.bfloat16)
    torch._dynamo.reset()
    got = _step(torch.compile(q, fullgraph=True, backend=backend), x, offs, g)
    want = _step(direct if backend == "aot_eager" else
                 torch.compile(direct, fullgraph=True, backend=backend), x, offs, g)
    _assert_equal_runs(got, want)
    _assert_equal_runs(_step(q, x, offs, g), _step(direct, x, offs, g))    # eager too


@pytest.mark.parametrize("foreach", [False, True])
def test_optimizer_step_updates_the_routed_weight(foreach, seed):
    """AdamW on the converted Parameters: same values as on plain ones given the same grads;
    the Parameters stay GroupedExpertsWeight, their optimizer state is plain."""
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    plain = DirectExperts(q, config)
    opt_q = torch.optim.AdamW(q.parameters(), lr=1e-2, foreach=foreach)
    opt_p = torch.optim.AdamW(plain.parameters(), lr=1e-2, foreach=foreach)
    x, offs = _inputs()
    for _ in range(2):
        q(x, offs).square().mean().backward()
        for n in NAMES:
            assert type(getattr(q, n).grad) is torch.Tensor
            getattr(plain, n).grad = getattr(q, n).grad.clone()
        opt_q.step(), opt_p.step()
        opt_q.zero_grad(), opt_p.zero_grad()
    for n in NAMES:
        w = getattr(q, n)
        assert type(w) is GroupedExpertsWeight and isinstance(w, torch.nn.Parameter)
        assert torch.equal(w._hp, getattr(plain, n).detach()), n
        assert all(type(v) is torch.Tensor for v in opt_q.state[w].values()
                   if isinstance(v, torch.Tensor))


def test_state_dict_is_plain_and_loads_back(seed):
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    sd = q.state_dict()
    assert list(sd) == list(GroupedExperts(4, 64, 96).state_dict())
    assert all(type(v) is torch.Tensor for v in sd.values())
    assert all(type(v) is GroupedExpertsWeight for v in q.state_dict(keep_vars=True).values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    fresh = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    fresh.load_state_dict(loaded)
    assert all(type(getattr(fresh, n)) is GroupedExpertsWeight for n in NAMES)
    x, offs = _inputs()
    assert torch.equal(fresh(x, offs), q(x, offs))
    plain = GroupedExperts(4, 64, 96)
    plain.load_state_dict(q.state_dict())              # a checkpoint for unconverted models
    assert torch.equal(plain.w2, q.w2._hp)


def test_to_dtype_and_deepcopy_stay_routed(seed):
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config).to(torch.bfloat16)
    assert all(type(getattr(q, n)) is GroupedExpertsWeight for n in NAMES)
    assert all(getattr(q, n).dtype == torch.bfloat16 and getattr(q, n).is_leaf for n in NAMES)
    c = copy.deepcopy(q)
    assert all(type(getattr(c, n)) is GroupedExpertsWeight for n in NAMES)
    assert c.w1._hp.data_ptr() != q.w1._hp.data_ptr()
    x, offs = _inputs(torch.bfloat16)
    direct = DirectExperts(q, config).to(torch.bfloat16)
    assert torch.equal(c(x, offs), direct(x, offs))


def test_other_grouped_mm_forms_run_high_precision_and_say_so(caplog, monkeypatch):
    """A 3d x 3d product (no offs) with a converted weight runs torch's own, one log line."""
    monkeypatch.setattr(qtrain.moe_weight, "_LOGGED_PASS_THROUGH", set())
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96).to(torch.bfloat16),
                                          CONFIGS["rowwise"]())
    a = torch.randn(4, 8, 64, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="qtrain"):
        got = torch._grouped_mm(a, q.w1.transpose(-2, -1))
        torch._grouped_mm(a, q.w1.transpose(-2, -1))
    assert type(got) is torch.Tensor
    assert torch.equal(got, torch._grouped_mm(a, q.w1._hp.transpose(-2, -1)))
    notes = [r for r in caplog.records if "high precision" in r.getMessage()]
    assert len(notes) == 1 and "B 3-D, offs absent" in notes[0].getMessage()


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_recomputes_the_quantized_experts(use_reentrant, seed):
    """torch.utils.checkpoint around the converted experts: the recomputed forward is routed
    too, so output and gradients equal the plain (uncheckpointed) step bit for bit."""
    from torch.utils.checkpoint import checkpoint
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    x, offs = _inputs()
    g = torch.randn(x.shape[0], 64)

    class Checkpointed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, offs):
            return checkpoint(self.inner, x, offs, use_reentrant=use_reentrant)

    wrapped = Checkpointed(q)
    for n in NAMES:                       # the wrapper's parameters are the experts' own
        setattr(wrapped, n, getattr(q, n))
    _assert_equal_runs(_step(wrapped, x, offs, g), _step(DirectExperts(q, config), x, offs, g))


def test_meta_device_init_flow(seed):
    """Build on the meta device, convert, to_empty, initialize in place (torchtitan's order):
    the weights stay routed."""
    config = CONFIGS["rowwise"]()
    with torch.device("meta"):
        q = GroupedExperts(4, 64, 96)
    convert_moe_to_quantized_training(q, config)
    q.to_empty(device="cpu")
    with torch.no_grad():
        for p in q.parameters():
            torch.nn.init.trunc_normal_(p, std=0.05)
    assert all(type(getattr(q, n)) is GroupedExpertsWeight and getattr(q, n).device.type == "cpu"
               for n in NAMES)
    x, offs = _inputs()
    assert torch.equal(q(x, offs), DirectExperts(q, config)(x, offs))


def test_converting_a_sharded_weight_is_refused():
    """A weight that is already a tensor subclass (a DTensor after fully_shard, say) is refused
    with the order to follow."""
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), CONFIGS["rowwise"]())
    other = GroupedExperts(4, 64, 96)
    other.w1 = q.w1                        # stands in for a DTensor: a subclass Parameter
    with pytest.raises(ValueError, match="w1: it is a GroupedExpertsWeight.*before fully_shard"):
        convert_moe_to_quantized_training(other, CONFIGS["mxfp8"]())


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="this torch has no F.grouped_mm")
def test_public_grouped_mm_and_a_k_major_weight_are_routed(seed):
    """torch.nn.functional.grouped_mm (it calls torch._grouped_mm with bias=None and
    out_dtype=None) is routed like torch._grouped_mm; so is a weight stored (E, K, N) and
    passed untransposed (older torchtitan layouts): the same bits as qtrain.grouped_mm."""
    config = CONFIGS["rowwise"]()
    x, offs = _inputs()

    class KMajor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 64, 96) / 8)     # (E, K, N)

        def forward(self, x, offs):
            return F.grouped_mm(x, self.w, offs=offs)

    m = convert_moe_to_quantized_training(KMajor(), config)
    want = qtrain.grouped_mm(x, m.w._hp.transpose(-2, -1).contiguous(), offs, config)
    assert torch.equal(m(x, offs), want)


def test_compiled_experts_follow_changing_token_counts(seed):
    """Token counts change from step to step (dynamic shapes after the first recompile): each
    compiled call gives the eager module's output and input gradient bit for bit."""
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96).to(torch.bfloat16),
                                          CONFIGS["rowwise"]())
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    for sizes in ([5, 0, 11, 16], [8, 8, 8, 24], [1, 2, 3, 4], [0, 0, 0, 40]):
        x = torch.randn(sum(sizes), 64, dtype=torch.bfloat16)
        offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
        g = torch.randn(x.shape[0], 64, dtype=torch.bfloat16)
        _assert_equal_runs(_step(compiled, x, offs, g), _step(q, x, offs, g))


def test_frozen_experts_under_cuda_graph_capture_read_the_kept_operand(seed, monkeypatch,
                                                                       caplog):
    """While a CUDA graph captures (a stand-in here: capture needs a GPU;
    tests/test_gpu_cuda_graphs.py replays one), frozen experts read their kept operands, which
    in-place writes refresh in place, so no weight is quantized inside the graph; without a
    kept operand the weight is quantized inside the graph (one log line); same bits both
    ways."""
    import qtrain.qgrouped_mm as Q
    config = CONFIGS["rowwise"]()
    x, offs = _inputs()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    qtrain.to_inference(q)
    want = q(x, offs)                            # eager: the kept operands are made
    fresh = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    fresh.load_state_dict(q.state_dict())
    qtrain.to_inference(fresh)
    for n in NAMES:                      # as for tokens of another dtype than the weight's
        getattr(fresh, n)._serving["entries"].clear()
    calls = []
    real = Q._weight_operand
    monkeypatch.setattr(Q, "_weight_operand", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(Q, "_capturing", lambda t: True)
    monkeypatch.setattr(Q, "_LOGGED_CAPTURE", [])
    with caplog.at_level(logging.INFO, logger="qtrain"):
        assert torch.equal(q(x, offs), want) and not calls
        for _ in range(2):                       # no kept operand yet: quantized inside
            assert torch.equal(fresh(x, offs), want)
    assert len(calls) == 6
    assert not any(getattr(fresh, n)._serving["entries"] for n in NAMES)
    assert sum("CUDA-graph capture" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("recipe", list(CONFIGS))
def test_compiled_frozen_experts_read_the_kept_operand(seed, recipe, backend, monkeypatch):
    """torch.compile of frozen experts (fullgraph): the kept quantized weights are inputs of
    the graph (GroupedExpertsWeight.__tensor_flatten__), so no compiled call quantizes a
    weight; an eager in-place write refreshes them in place and the same graph serves the
    new weight's bits; a weight without a current kept operand is quantized in the graph
    (recompiled on the change of state); the eager frozen bits throughout."""
    from qtrain import backend as qb
    config = CONFIGS[recipe]()
    x, offs = _inputs()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    qtrain.to_inference(q)
    ref = type(qb._instance("reference"))
    method = "quantize_float8" if recipe == "rowwise" else "quantize_mx"
    casts = []
    real = getattr(ref, method)
    monkeypatch.setattr(ref, method, lambda self, t, *a, **k: casts.append(t.shape[0]) or
                        real(self, t, *a, **k))
    torch._dynamo.reset()
    compiled = torch.compile(q, backend=backend, fullgraph=True)
    weight_rows = {w.shape[0] * w.shape[1] for w in (q.w1, q.w2)}   # (E * N, K) views
    with torch.no_grad():
        for _ in range(2):
            want = q(x, offs)
            casts.clear()
            assert torch.equal(compiled(x, offs), want)
            assert not weight_rows & set(casts), casts
        q.w2.mul_(-2)
        want = q(x, offs)
        casts.clear()
        assert torch.equal(compiled(x, offs), want) and not weight_rows & set(casts)
        q.w1._serving["entries"].clear()          # no kept operand: quantized in the graph
        casts.clear()
        assert torch.equal(compiled(x, offs), q(x, offs))
        assert q.w1.shape[0] * q.w1.shape[1] in casts


def test_frozen_copy_made_ahead_gives_way_to_the_tokens_dtype(seed):
    """to_inference keeps a quantized copy for tokens in the weight's dtype; fp32 weights
    serving bf16 tokens make their own on the first call, which replaces the unread one (so
    the weight keeps one copy, the one a compiled graph takes)."""
    config = CONFIGS["rowwise"]()
    x, offs = _inputs()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    qtrain.to_inference(q)
    (key,) = q.w1._serving["entries"]
    assert key[3] == torch.float32
    xb = x.to(torch.bfloat16)
    with torch.no_grad():
        want = DirectExperts(q, config)(xb, offs)
    assert torch.equal(q(xb, offs), want)
    (key,) = q.w1._serving["entries"]
    assert key[3] == torch.bfloat16 and q.w1._kept() is not None
    assert torch.equal(q(x, offs), DirectExperts(q, config)(x, offs).detach())
    assert len(q.w1._serving["entries"]) == 2 and q.w1._kept() is None   # both read: both kept


def test_experts_under_inference_mode(seed):
    """Converted experts run under torch.inference_mode (the transposed view of the weight in
    their forward raised "Cannot set version_counter for inference tensor" before), frozen or
    not, with no_grad's bits; kept operands made there (inference tensors) take the refresh
    of a later write outside it (load_state_dict), with the new weight's bits."""
    config = CONFIGS["rowwise"]()
    x, offs = _inputs()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    with torch.no_grad():
        want = q(x, offs)
    with torch.inference_mode():
        assert torch.equal(q(x, offs), want)
    qtrain.to_inference(q)
    with torch.inference_mode():
        q(x, offs)
    other = GroupedExperts(4, 64, 96)
    q.load_state_dict(other.state_dict())
    with torch.no_grad():
        want = DirectExperts(q, config)(x, offs)
    with torch.inference_mode():
        assert torch.equal(q(x, offs), want)


def test_to_inference_freezes_experts_which_quantize_once_per_version(seed, monkeypatch):
    """qtrain.to_inference on a model with converted experts: the weights take no gradient,
    serve the training forward's bits, quantize once (not per call), and again after an
    in-place update; a deepcopy is frozen on its own."""
    import qtrain.qgrouped_mm as Q
    config = CONFIGS["rowwise"]()
    q = convert_moe_to_quantized_training(GroupedExperts(4, 64, 96), config)
    x, offs = _inputs()
    with torch.no_grad():
        want = q(x, offs)
    calls = []
    real = Q._weight_operand
    monkeypatch.setattr(Q, "_weight_operand", lambda *a: calls.append(1) or real(*a))
    qtrain.to_inference(q)
    assert all(not getattr(q, n).requires_grad for n in NAMES)
    for _ in range(3):
        assert torch.equal(q(x, offs), want)
    assert len(calls) == 3                      # w1, w3, w2 once each, not once per call
    (entry,) = q.w2._serving["entries"].values()
    kept = [t.data_ptr() for t in entry.operand]
    calls.clear()
    with torch.no_grad():
        q.w2.mul_(2)
    assert len(calls) == 1                      # w2 again, alone, at the write
    assert [t.data_ptr() for t in entry.operand] == kept        # in place: graphs read it
    with torch.no_grad():
        want = DirectExperts(q, config)(x, offs)
    calls.clear()
    assert torch.equal(q(x, offs), want) and not calls
    c = copy.deepcopy(q)                 # frozen too, its own version counter and kept copy
    assert c.w1._serving["frozen"] and c.w1._serving is not q.w1._serving
    (ce,), (qe,) = (list(w._serving["entries"].values()) for w in (c.w1, q.w1))
    assert torch.equal(ce.operand[0], qe.operand[0])
    assert ce.operand[0].data_ptr() != qe.operand[0].data_ptr()
    with torch.no_grad():
        c.w2.zero_()
    assert torch.count_nonzero(c(x, offs)) == 0 and torch.equal(q(x, offs), want)
    # load_state_dict writes in place: quantized again, new numbers
    other = GroupedExperts(4, 64, 96)
    q.load_state_dict(other.state_dict())
    with torch.no_grad():
        want = DirectExperts(q, config)(x, offs)
    assert torch.equal(q(x, offs), want)
    # torch.save of the module: frozen on load, without the quantized copies in the file (the
    # loaded weight makes its own)
    assert not q.w1.__getstate__()["_serving"]["entries"]
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    r = torch.load(buf, weights_only=False)
    assert r.w1._serving["frozen"] and r.w1._serving["entries"]
    assert torch.equal(r(x, offs), want)
    # tokens that need a gradient still get it (the autograd path), frozen weights or not
    xg = x.clone().requires_grad_()
    q(xg, offs).sum().backward()
    assert xg.grad is not None and q.w1.grad is None
