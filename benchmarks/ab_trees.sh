#!/usr/bin/env bash
# A/B of two source trees in one GPU call: this tree ("new") against an older commit ("old"),
# alternately, so that both run on the same host and GPU (hosts differ between leases by up to
# ~2x per op: benchmarks/NOTES.md, twelfth session).
# Locally: git archive OLD_COMMIT -o ab_old.tar (excluded from git; carry it). On the device:
#   AB_ROUNDS=2 bash benchmarks/ab_trees.sh 'python3 -m benchmarks.block_profile --csv /dev/null'
# Each run's log goes to $OUT/ab_<tree>_<round>_<AB_NAME>.log; the last AB_TAIL lines print.
# The inductor cache is cleared before each run: code cached against one tree's op schemas
# must not replay in the other (pytorch/pytorch#187319).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
[ -f ab_old.tar ] || { echo "ab_trees.sh: ab_old.tar missing (git archive OLD -o ab_old.tar)"; exit 2; }
here=$(pwd)
rm -rf /tmp/ab_old && mkdir -p /tmp/ab_old && tar xf ab_old.tar -C /tmp/ab_old
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1
for r in $(seq "${AB_ROUNDS:-2}"); do
  for tree in old new; do
    dir=$here; [ "$tree" = old ] && dir=/tmp/ab_old
    (cd "$dir" && python3 -m pip install -q --no-build-isolation --no-deps -e . > /dev/null 2>&1) \
      || { echo "install of $tree failed"; exit 3; }
    rm -rf "/tmp/torchinductor_$(whoami)"
    log="$OUT/ab_${tree}_${r}_${AB_NAME:-run}.log"
    echo "=== $tree, round $r"
    (cd "$dir" && timeout "${AB_LIMIT_S:-240}" bash -c "$1") > "$log" 2>&1
    echo "rc=$?"; grep -v -i warn "$log" | tail -n "${AB_TAIL:-8}"
  done
done
(cd "$here" && python3 -m pip install -q --no-build-isolation --no-deps -e . > /dev/null 2>&1)
