#!/bin/bash
# The Triton sm90 grouped product (fast/grouped_mm_sm90.py) checked and timed on the GPU in one
# call (ninth session): its tests, the grouped conformance cases, the kernel probe (PROBE=1),
# the MoE step with QTRAIN_FAST_GROUPED_GEMM=torch then auto, each in its own process
# (results.csv keeps the auto run's rows only), and the MoE profile with auto.
# Run from the repository root; logs to $OUT (or ./out).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . > /dev/null 2>&1
echo "=== pytest"; timeout 240 python3 -m pytest -q tests/test_grouped_mm_sm90.py tests/test_gpu_fast_moe.py 2>&1 | tail -4
echo "=== conformance"; timeout 200 python3 -m qtrain.conformance --backend fast --device cuda --cases "grouped*" --report "$OUT/conformance-grouped.json" 2>&1 | tail -14
if [ "${PROBE:-0}" = 1 ]; then
  echo "=== probe"; timeout 150 python3 -m benchmarks.grouped_gemm_probe --budget-s ${PROBE_BUDGET_S:-90} > "$OUT/probe.log" 2>&1; tail -22 "$OUT/probe.log"
fi
cp benchmarks/results/results.csv /tmp/results_before.csv
for route in torch auto; do
  echo "=== MoE, QTRAIN_FAST_GROUPED_GEMM=$route"
  QTRAIN_FAST_GROUPED_GEMM=$route QTRAIN_FAST_AUTOTUNE=0 MOE_COMPILE_MODE=reduce-overhead timeout 170 python3 benchmarks/moe_bench.py > "$OUT/moe_$route.log" 2>&1
  tail -10 "$OUT/moe_$route.log"
  [ "$route" = torch ] && cp /tmp/results_before.csv benchmarks/results/results.csv
done
cp benchmarks/results/results.csv "$OUT/results.csv"
echo "=== MoE profile (auto)"; timeout 120 python3 benchmarks/moe_profile.py > "$OUT/moe_profile.log" 2>&1
grep -E "===|_kernel|cutlass|scaled_grouped|Self CUDA" "$OUT/moe_profile.log" | cut -c1-60,100-200 | head -40
