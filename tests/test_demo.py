"""The quick-start demo (issue 3) and its pieces: corpus, model, table, PNG, exit codes."""
import torch

from qtrain import demo
from qtrain.text_corpus import StdlibCorpus, stdlib_source_files
from qtrain.tiny_llama import TinyLlama, TinyLlamaConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_tiny_run_prints_table_and_writes_png(tmp_path, capsys):
    out = tmp_path / "loss.png"
    rc = demo.main(["--steps", "3", "--recipes", "tensorwise", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "recipe" in text and "val loss" in text and "tokens/s" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(("bf16 ", "tensorwise "))}
    assert set(rows) == {"bf16", "tensorwise"}, text
    assert "reference" in rows["tensorwise"] or "fast" in rows["tensorwise"]
    assert "\r" in text                                   # the live progress line
    header = text.splitlines()[0]
    assert header.endswith("baseline bf16"), header       # no compile mode printed without --compile
    assert str(out) in text
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_demo_nonfinite_loss_exits_1(tmp_path, monkeypatch, capsys):
    real_loss = demo._loss
    monkeypatch.setattr(demo, "_loss", lambda *a: real_loss(*a) * float("nan"))
    rc = demo.main(["--steps", "2", "--recipes", "none", "--device", "cpu", "--out", str(tmp_path / "x.png")])
    assert rc == 1
    assert "diverged" in capsys.readouterr().out


def test_parse_recipes():
    assert demo.parse_recipes("all") == list(demo.RECIPES)
    assert demo.parse_recipes("none") == []
    assert demo.parse_recipes("int8, mxfp8") == ["int8", "mxfp8"]


def test_lr_schedule_warms_up_then_decays():
    s = demo.default_settings("cpu", steps=100)
    lrs = [demo.lr_at(i, s) for i in range(100)]
    assert lrs[0] < lrs[9] == s.lr and lrs[-1] < lrs[50] < s.lr and min(lrs) >= 0.1 * s.lr - 1e-12


def test_presets_keep_every_linear_eligible_for_every_recipe():
    # K and N multiples of 128 (blockwise's 128x128 weight blocks; also covers float8's 16, MX's 32).
    for name in demo.PRESETS:
        model = TinyLlama(demo.PRESETS[name]["model"])
        for fqn, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and fqn != "output":
                assert mod.in_features % 128 == 0 and mod.out_features % 128 == 0, (name, fqn)


def test_tiny_llama_forward_backward_with_gqa():
    cfg = TinyLlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=16)
    model = TinyLlama(cfg)
    tokens = torch.randint(0, 256, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 256)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_tiny_llama_is_causal():
    torch.manual_seed(0)
    model = TinyLlama(TinyLlamaConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=128, max_seq_len=8))
    a = torch.randint(0, 256, (1, 8))
    b = a.clone()
    b[0, -1] = (a[0, -1] + 1) % 256
    assert torch.equal(model(a)[:, :-1], model(b)[:, :-1])


def test_corpus_is_deterministic_with_held_out_files():
    root, files = stdlib_source_files()
    assert files == sorted(files) and files
    assert not any(f.startswith(("test/", "site-packages/")) for f in files)
    corpus = StdlibCorpus(max_bytes=200_000)
    assert corpus.n_val_files > 0 and corpus.val.numel() > 0
    x1, y1 = next(corpus.train_batches(4, 32, seed=7))
    x2, y2 = next(corpus.train_batches(4, 32, seed=7))
    assert torch.equal(x1, x2) and x1.shape == (4, 32) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])             # targets are inputs shifted by one
    v = corpus.val_batches(4, 32, n_batches=3)
    assert len(v) == 3 and torch.equal(v[0][0], corpus.val_batches(4, 32, n_batches=3)[0][0])


def test_demo_recipe_that_raises_is_reported_and_exits_1(tmp_path, monkeypatch, capsys):
    real_build = demo.build_model

    def build(settings, recipe=None):
        if recipe is not None:
            raise RuntimeError("backend exploded")
        return real_build(settings, recipe)
    monkeypatch.setattr(demo, "build_model", build)
    rc = demo.main(["--steps", "2", "--recipes", "int8", "--device", "cpu", "--out", str(tmp_path / "x.png")])
    captured = capsys.readouterr()
    assert rc == 1
    assert any(line.startswith("int8") and "failed" in line for line in captured.out.splitlines())
    assert "backend exploded" in captured.err


def test_compile_flag_takes_an_optional_mode():
    from qtrain.demo import compile_mode, parse_args
    assert parse_args([]).compile is False
    assert parse_args(["--compile"]).compile is True and compile_mode(True) is None
    assert parse_args(["--compile", "reduce-overhead"]).compile == "reduce-overhead"
    assert compile_mode("reduce-overhead") == "reduce-overhead"
