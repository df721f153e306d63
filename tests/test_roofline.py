"""The roofline model of benchmarks/roofline.py (issue 8): invariants, the casts against spec/07's
recipe tables (RC-4..RC-9), the missing-row fallback. CPU only, no GPU, well under 5 s."""
import csv
import os
import re

import pytest

from benchmarks import roofline

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec",
                    "07-recipes.md")
CONTRACTION = {"output": "K", "grad_input": "N", "grad_weight": "M"}   # RC-1
M, K, N = 8192, 4096, 14336


@pytest.fixture(scope="module")
def rates():
    return roofline.load_rates()


def spec_quantizations(recipe):
    """{(tensor, key)} of the distinct quantizations in the recipe's RC table: key is the
    contraction axis, or "free" for an axis-free one (tensorwise, 128x128 block) that serves
    both of its tensor's products. Products marked hp add nothing; default options only."""
    text = open(SPEC).read()
    section = re.search(r"\*\*RC-\d+\*\* \(`" + re.escape(recipe) + r"`\)(.*?)(?=\*\*RC-\d+\*\*)",
                        text, re.S).group(1)
    out = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or cells[0] not in CONTRACTION:
            continue                     # header, rule, or an option row ("grad_weight (...)")
        for cell in cells[1:3]:
            if cell.startswith("hp"):     # "hp", or "hp: g.T @ x in the model dtype"
                continue
            free = "tensorwise" in cell.lower() or "(128, 128)" in cell
            out.add((cell[0], "free" if free else CONTRACTION[cells[0]]))
    return out


def model_quantizations(recipe):
    out = set()
    for c in roofline.WORK[recipe].casts:
        out |= {(c.tensor, "free")} if c.axis_free else {(c.tensor, a) for a in c.axes}
    return out


@pytest.mark.parametrize("recipe", roofline.RECIPES)
def test_casts_match_spec07_table(recipe):
    """RC-4..RC-9: the model quantizes exactly the (tensor, axis) pairs of the recipe table."""
    expected = spec_quantizations(recipe)
    assert expected, f"no RC table parsed for {recipe}"
    assert model_quantizations(recipe) == expected


@pytest.mark.parametrize("recipe", roofline.RECIPES)
def test_cast_bytes_match_spec07_table(recipe):
    """Payload bytes written: 1 byte per element per distinct quantization in the table; every
    cast reads its bf16 tensor once (2 bytes per element), a dual cast too (one read)."""
    work = roofline.WORK[recipe]
    written = sum(c.payloads * roofline.numel(c.tensor, M, K, N) for c in work.casts)
    assert written == sum(roofline.numel(t, M, K, N) for t, _ in spec_quantizations(recipe))
    for c in work.casts:
        n = roofline.numel(c.tensor, M, K, N)
        assert c.min_bytes(n) == 2 * n + c.payloads * n


def test_axis_free_weight_is_cast_again_in_backward_RC_14():
    """RC-14's default: the recipes whose w is axis free cast it a second time in backward (the
    same quantization, so not a new payload in the RC tables above); the others never do."""
    for recipe, work in roofline.WORK.items():
        again = {(c.tensor, c.axis_free) for c in work.recasts}
        assert again == ({("w", True)} if recipe in ("tensorwise", "blockwise") else set()), recipe


def test_products_follow_spec07():
    """RC-6: rowwise_with_gw_hp's grad_weight runs in bf16; every other product is quantized."""
    for recipe, work in roofline.WORK.items():
        hp = [p for p, k in zip(CONTRACTION, work.gemms) if k == "bf16"]
        assert hp == (["grad_weight"] if recipe == "rowwise_with_gw_hp" else []), recipe


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_float8_speedup_rises_with_size(recipe, rates):
    """Casts are O(MK + NK + MN), products O(MNK): the speedup rises with K and N toward the
    product-rate ratio and never passes it."""
    sizes = roofline.SWEEP
    diag = [roofline.predict(recipe, 8192, s, s, rates).speedup for s in sizes]
    assert all(a < b for a, b in zip(diag, diag[1:])), diag
    for s in sizes[:-1]:
        assert (roofline.predict(recipe, 8192, s, 4096, rates).speedup
                < roofline.predict(recipe, 8192, sizes[-1], 4096, rates).speedup)
    ceiling = rates.gemm_tflops[roofline.WORK[recipe].gemms[0]] / rates.gemm_tflops["bf16"]
    assert diag[-1] < ceiling


def test_prediction_parts(rates):
    """bf16 of a compute-bound shape is 3 * 2MNK / rate; parts are positive and add up."""
    bf16 = roofline.bf16_ms(M, K, N, rates)
    assert bf16 == pytest.approx(3 * 2 * M * N * K / (rates.gemm_tflops["bf16"] * 1e9))
    for recipe in roofline.RECIPES:
        p = roofline.predict(recipe, M, K, N, rates)
        assert p.gemm_ms > 0 and p.cast_ms > 0 and p.copy_ms >= 0
        assert p.speedup == pytest.approx(bf16 / (p.gemm_ms + p.cast_ms + p.copy_ms))


def test_rates_read_from_csvs(rates):
    """The committed H200 CSVs hold every row the model needs (no fallback, no warning)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", roofline.MissingRateWarning)
        again = roofline.load_rates()
    assert again == rates
    assert rates.gemm_tflops["float8_rowwise"] > rates.gemm_tflops["bf16"]
    assert set(rates.cast_gbs) == set(roofline.CAST_ROWS)


def test_missing_row_falls_back_with_warning(tmp_path):
    """A CSV without the int8 product row and the MX dim0 cast row: those two take the stated
    defaults, with a MissingRateWarning naming each; the others are still read."""
    src = roofline.DEFAULT_CSVS[0]
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if not (r["recipe"] == "int8 triton tuned bfloat16"
                                          or r["op"] == "cast mx dim0 transposed")]
        fields = reader.fieldnames
    path = tmp_path / "partial.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.warns(roofline.MissingRateWarning) as record:
        partial = roofline.load_rates((str(path),))
    messages = " ".join(str(w.message) for w in record)
    assert "int8 triton tuned" in messages and "mx dim0 transposed" in messages
    assert len(record) == 2
    assert partial.gemm_tflops["int8"] == roofline.GEMM_ROWS["int8"][2]
    assert partial.cast_gbs["mx dim0 transposed"] == roofline.DEFAULT_CAST_GBS
    assert partial.gemm_tflops["float8_rowwise"] != roofline.GEMM_ROWS["float8_rowwise"][2]


def test_missing_file_warns(tmp_path):
    with pytest.warns(roofline.MissingRateWarning) as record:
        rates = roofline.load_rates((str(tmp_path / "absent.csv"),))
    assert "not found" in str(record[0].message)
    assert len(record) == 1 + len(roofline.GEMM_ROWS) + len(roofline.CAST_ROWS) + 1   # + copy
    assert rates.copy_gbs == roofline.DEFAULT_COPY_GBS


def test_predict_cli_writes_png(tmp_path, capsys):
    """--predict runs without a GPU: the table prints and the heat-map PNG is written."""
    pytest.importorskip("matplotlib")
    assert roofline.main(["--predict", "--out-dir", str(tmp_path),
                          "--recipes", "tensorwise,rowwise"]) == 0
    pngs = list(tmp_path.glob("*-roofline-predicted.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "llama3-8b gate,up" in out and "tensorwise" in out


def test_measured_rows_table_and_png(tmp_path, rates):
    """Measure mode's output side on a made-up measurement (the timing itself needs CUDA): CSV
    rows with both metrics, the side-by-side table, the measured heat map."""
    pytest.importorskip("matplotlib")
    recipes = ("tensorwise", "rowwise")
    fake = {(8192, 1024, 1024): {"bf16": 0.08, "tensorwise": 0.1, "rowwise": "failed: X"},
            (8192, 1024, 4096): {"bf16": 0.3, "tensorwise": 0.25, "rowwise": 0.3},
            (8192, 4096, 1024): {"bf16": "time budget spent", "tensorwise": "time budget spent",
                                 "rowwise": "time budget spent"},
            (8192, 4096, 4096): {"bf16": 1.2, "tensorwise": 0.8, "rowwise": 0.9}}
    rows = roofline.measured_rows(fake, recipes, rates)
    assert {r["op"] for r in rows} == {"roofline"}
    metrics = [(r["shape"], r["recipe"], r["metric"]) for r in rows]
    assert ("M8192xK4096xN4096", "tensorwise", "speedup_measured") in metrics
    assert ("M8192xK1024xN1024", "rowwise", "speedup_measured") not in metrics
    assert sum(m == "speedup_predicted" for *_, m in metrics) == len(fake) * len(recipes)
    measured = {(r["shape"], r["recipe"]): float(r["value"]) for r in rows
                if r["metric"] == "speedup_measured"}
    assert measured[("M8192xK4096xN4096", "tensorwise")] == pytest.approx(1.5)
    table = roofline.side_by_side_table(fake, recipes, rates)
    assert "/1.50" in table and "/-" in table
    png = roofline.heatmaps(str(tmp_path / "m.png"), "t", (1024, 4096), recipes,
                            lambda r, K, N: roofline.measured_speedup(fake[(8192, K, N)], r),
                            lambda r, K, N: "(1.00)")
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_measure_mode_skips_without_cuda(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: measure mode would run")
    assert roofline.main(["--out-dir", str(tmp_path), "--recipes", "tensorwise"]) == 0
    assert "measure mode needs CUDA" in capsys.readouterr().err
