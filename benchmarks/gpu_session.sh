#!/usr/bin/env bash
# One batched GPU session (device tool): install, check fast against the reference, time.
# Usage on the GPU machine:  bash benchmarks/gpu_session.sh STEP[,STEP...]
#   steps: checks (GPU tests, CPU compile tests, conformance), pytest (the GPU tests alone; PYTEST_FILES picks),
#          compilecpu (the CPU torch.compile tests under this machine's torch: CI runs 2.13 only, and
#          torch 2.11 once lost compiled grouped_mm gradients), fastcheck (gpu_fast_check), tuning (kernel_tuning),
#          block, keepw (RC-14: tensorwise/blockwise with and without the kept weight, time and
#          peak memory; mxfp8 too, for its bf16-GEMM products), graphs (reduce-overhead CUDA graphs: MoE and block), moe, moeprof
#          (profiler table), moeblock (benchmarks/moe_block.py, MOEBLOCK_ARGS, then benchmarks/moe_serving.py), profile (block_profile: host vs GPU time per step; PROFILE_ARGS),
#          hostprof (benchmarks.block_host_profile per recipe in HOSTPROF_RECIPES; HOSTPROF_ARGS),
#          amaxab (tensorwise block compiled with QTRAIN_COMPILED_AMAX=kernel, then =torch),
#          transposeab (tensorwise block eager with QTRAIN_FAST_TRANSPOSE=torch, then =tiles),
#          layoutab (tensorwise block with QTRAIN_TENSORWISE_TRANSPOSE=copy, then =cast; AB_BUDGET_S for the A/B steps),
#          dequantab (tensorwise, rowwise, blockwise block with QTRAIN_FAST_CAST_DEQUANT=0, then =1),
#          groupsweep (settings of the per-group column cast, benchmarks/group_cast_sweep.py; SWEEP_ARGS),
#          moeab (MoE step as CUDA-graph replays with QTRAIN_FAST_GROUPED_GEMM=torch, then =auto),
#          gemmprobe (benchmarks/grouped_gemm_probe.py: the Triton grouped product against torch's; PROBE_ARGS),
#          rooflinegraphs (the roofline sweep timed as CUDA-graph replays), nccl (distributed_tests
#          and the distributed conformance cases on NCCL, every GPU; run it alone), gates (pytest-benchmark GPU gates), roofline, demo (GPU preset,
#          short), convergence (medium model; CONV_ARGS adds arguments)
# Logs and reports go to $OUT (or ./out). Each step has its own time limit so one stuck step
# cannot eat the session; a short summary prints last.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
what=",${1:-checks,tuning,block,moe},"
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
if [ -z "${QTRAIN_SESSION_INSTALLED:-}" ]; then  # gpu_parallel.sh installs once for all GPUs
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1 || { echo "install failed"; tail "$OUT/install.log"; }
fi
summary=()
step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? t1=$(date +%s)
  summary+=("$(printf '%-28s rc=%-3s %4ss' "$name" "$rc" "$((t1 - t0))")")
  echo "=== $name (rc=$rc, $((t1 - t0)) s): last lines"; tail -n 15 "$OUT/$name.log"
}
has() { case "$what" in *,$1,*) return 0;; esac; return 1; }
if has checks || has pytest; then
  step pytest_gpu ${PYTEST_LIMIT_S:-240} python3 -m pytest -q -p no:cacheprovider ${PYTEST_FILES:-tests/test_gpu_fast_linear.py tests/test_gpu_fast_moe.py tests/test_grouped_mm_sm90.py tests/test_gpu_cuda_graphs.py tests/test_fast_common.py tests/test_fast_casts.py tests/test_fast_scaled_mm.py}
fi
if has checks || has compilecpu; then   # the CPU compile tests on this machine's torch (CI runs another)
  step compile_cpu ${COMPILECPU_LIMIT_S:-200} python3 -m pytest -q -p no:cacheprovider tests/test_api_compile.py tests/test_moe_grouped_mm.py tests/test_moe_weight.py tests/test_moe_layer.py
fi
if has checks; then
  step conformance ${CONF_LIMIT_S:-200} python3 -m qtrain.conformance --backend fast --device cuda --report "$OUT/conformance-fast.json" ${CONF_ARGS:-}
fi
if has nccl; then   # every GPU of the machine, one NCCL rank each; NVLink multicast stays off
  nccl_env="QTRAIN_DIST_BACKEND=nccl NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1"
  step dist_nccl ${NCCL_LIMIT_S:-240} env $nccl_env python3 -m pytest -q -p no:cacheprovider -rs distributed_tests
  step conformance_nccl ${NCCL_CONF_LIMIT_S:-120} env $nccl_env python3 -m qtrain.conformance --backend fast --device cuda --cases distributed --report "$OUT/conformance-nccl.json"
fi
if has fastcheck; then
  step gpu_fast_check ${FASTCHECK_LIMIT_S:-240} python3 benchmarks/gpu_fast_check.py ${FASTCHECK_ARGS:-}
fi
if has tuning; then
  step kernel_tuning 270 python3 benchmarks/kernel_tuning.py
fi
if has block; then
  step block ${BLOCK_LIMIT_S:-420} python3 -m benchmarks.block --recipes all --compile ${BLOCK_COMPILE:-both} --budget-s ${BLOCK_BUDGET_S:-360} ${BLOCK_ARGS:-}
fi
if has keepw; then
  step block_keepw ${KEEPW_LIMIT_S:-300} python3 -m benchmarks.block --recipes ${KEEPW_RECIPES:-tensorwise,blockwise,mxfp8} --keep-weight-variants --large-only --no-torchao --compile ${KEEPW_COMPILE:-both} --budget-s ${KEEPW_BUDGET_S:-240}
fi
if has graphs; then
  step moe_graphs ${GRAPHS_MOE_LIMIT_S:-180} env QTRAIN_FAST_AUTOTUNE=0 MOE_COMPILE_MODE=reduce-overhead python3 benchmarks/moe_bench.py
  step block_graphs ${GRAPHS_BLOCK_LIMIT_S:-200} env QTRAIN_FAST_AUTOTUNE=0 python3 -m benchmarks.block --recipes rowwise,tensorwise --compile compiled --compile-mode reduce-overhead --large-only --no-torchao --budget-s 150
fi
block_ab() {  # block_ab NAME ENV_VAR "MODE MODE" LIMIT_S BLOCK_ARGS...: the block once per mode
  local name=$1 var=$2 modes=$3 limit=$4 mode; shift 4
  for mode in $modes; do
    step block_${name}_$mode "$limit" env "$var=$mode" python3 -m benchmarks.block --large-only --no-torchao "$@"
  done
}
if has amaxab; then   # QTRAIN_COMPILED_AMAX: tensorwise block compiled, amax pass vs a fusable torch reduction
  block_ab amax QTRAIN_COMPILED_AMAX "kernel torch" ${AMAXAB_LIMIT_S:-200} --recipes tensorwise --compile compiled --budget-s ${AB_BUDGET_S:-160}
fi
if has transposeab; then   # QTRAIN_FAST_TRANSPOSE: eager tensorwise block, torch's copy vs the tiled kernel
  block_ab transpose QTRAIN_FAST_TRANSPOSE "torch tiles" ${TRANSPOSEAB_LIMIT_S:-150} --recipes tensorwise --compile eager --budget-s 120
fi
if has layoutab; then   # QTRAIN_TENSORWISE_TRANSPOSE: tensorwise block, payload copied transposed vs cast into both layouts
  block_ab layout QTRAIN_TENSORWISE_TRANSPOSE "copy cast" ${LAYOUTAB_LIMIT_S:-200} --recipes tensorwise --compile ${LAYOUTAB_COMPILE:-both} --budget-s ${AB_BUDGET_S:-160}
fi
if has dequantab; then   # QTRAIN_FAST_CAST_DEQUANT: dequant factors by torch.reciprocal (0) vs written by the casts (1)
  block_ab dequant QTRAIN_FAST_CAST_DEQUANT "0 1" ${DEQUANTAB_LIMIT_S:-240} --recipes ${DEQUANTAB_RECIPES:-tensorwise,rowwise,blockwise} --compile ${DEQUANTAB_COMPILE:-both} --budget-s ${AB_BUDGET_S:-200}
fi
if has profile; then
  step block_profile ${PROFILE_LIMIT_S:-200} python3 -m benchmarks.block_profile ${PROFILE_ARGS:-}
fi
if has hostprof; then   # where the host's time goes in a block step (cProfile + profiler's CPU table)
  for r in ${HOSTPROF_RECIPES:-tensorwise}; do
    step host_profile_$r ${HOSTPROF_LIMIT_S:-200} python3 -m benchmarks.block_host_profile --recipe $r ${HOSTPROF_ARGS:-}
  done
fi
if has rooflinegraphs; then
  step roofline_graphs ${ROOFLINE_LIMIT_S:-200} python3 -m benchmarks.roofline --cuda-graphs ${ROOFLINE_ARGS:-}
fi
if has groupsweep; then
  step group_cast_sweep ${SWEEP_LIMIT_S:-200} python3 -m benchmarks.group_cast_sweep ${SWEEP_ARGS:-}
fi
if has moeab; then   # QTRAIN_FAST_GROUPED_GEMM: every MoE product on torch vs the Triton forward
  for route in torch auto; do
    step moe_graphs_$route ${MOEAB_LIMIT_S:-180} env QTRAIN_FAST_GROUPED_GEMM=$route QTRAIN_FAST_AUTOTUNE=0 MOE_COMPILE_MODE=reduce-overhead python3 benchmarks/moe_bench.py
  done
fi
if has gemmprobe; then
  step grouped_gemm_probe ${PROBE_LIMIT_S:-180} python3 -m benchmarks.grouped_gemm_probe ${PROBE_ARGS:-}
fi
if has moe; then
  step moe_bench ${MOE_LIMIT_S:-150} python3 benchmarks/moe_bench.py
fi
if has moeblock; then   # the whole MoE block (modes, torchao probed apart) and its served forward
  step moe_block ${MOEBLOCK_LIMIT_S:-300} python3 benchmarks/moe_block.py ${MOEBLOCK_ARGS:-}
  step moe_serving ${SERVING_LIMIT_S:-120} python3 benchmarks/moe_serving.py
fi
if has moeprof; then
  step moe_profile ${MOEPROF_LIMIT_S:-120} python3 benchmarks/moe_profile.py
fi
if has gates; then
  step gates ${GATES_LIMIT_S:-300} python3 -m pytest -q -p no:cacheprovider tests/test_benchmarks_cpu.py -k "${GATES_K:-gpu_gate}"
fi
if has roofline; then
  step roofline ${ROOFLINE_LIMIT_S:-200} python3 -m benchmarks.roofline ${ROOFLINE_ARGS:-}
fi
if has demo; then
  step demo ${DEMO_LIMIT_S:-240} python3 -m qtrain.demo --steps ${DEMO_STEPS:-200} --out "$OUT/demo_loss.png"
fi
if has convergence; then
  step convergence ${CONV_LIMIT_S:-540} python3 -m benchmarks.convergence --size medium ${CONV_ARGS:-}
fi
# the rows the steps appended to results.csv come back with the logs (merge them locally:
# python -m benchmarks.merge_results $OUT/results.csv)
cp benchmarks/results/results.csv "$OUT/results.csv" 2>/dev/null
# the device tool returns at most 8 files from $OUT: past that, the logs travel as one archive
if [ "$(find "$OUT" -maxdepth 1 -type f | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar czf logs.tar.gz ./*.log && rm -f ./*.log)
fi
echo; echo "=== summary"; printf '%s\n' "${summary[@]}"
