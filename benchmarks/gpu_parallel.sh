#!/usr/bin/env bash
# Several gpu_session.sh step lists at once, one GPU each (a machine of several GPUs), after one
# install. Usage:  bash benchmarks/gpu_parallel.sh "STEPS_FOR_GPU0" "STEPS_FOR_GPU1" ...
# Each list's logs go to $OUT/gpuI/; everything (logs, changed benchmarks/results files) is packed
# into $OUT/session.tgz, since the device tool returns at most 8 files. Steps that time kernels
# share the host with the other GPU's steps: say so next to any number they produce.
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
touch "$OUT/.t0"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1 || { echo "install failed"; tail "$OUT/install.log"; }
export QTRAIN_SESSION_INSTALLED=1
if [ -n "${PRE_STEPS:-}" ]; then   # steps that need every GPU (nccl) run first, alone
  mkdir -p "$OUT/all"
  OUT="$OUT/all" bash benchmarks/gpu_session.sh "$PRE_STEPS" > "$OUT/all/session.log" 2>&1
fi
pids=(); i=0
for steps in "$@"; do
  mkdir -p "$OUT/gpu$i"
  CUDA_VISIBLE_DEVICES=$i OUT="$OUT/gpu$i" bash benchmarks/gpu_session.sh "$steps" > "$OUT/gpu$i/session.log" 2>&1 &
  pids+=($!); i=$((i + 1))
done
for p in "${pids[@]}"; do wait "$p"; done
for d in "$OUT"/all "$OUT"/gpu*; do [ -d "$d" ] || continue; echo "##### $d"; sed 's/.*\r//' "$d/session.log"; done  # progress lines: last state
changed=$(find benchmarks/results -newer "$OUT/.t0" -type f)
tar czf "$OUT/session.tgz" -C "$OUT" $(cd "$OUT" && ls -d all gpu* install.log 2>/dev/null) ${changed:+-C "$PWD" $changed}
ls -la "$OUT/session.tgz"
