#!/bin/bash
# Run the quality_v3 study with N workers (one per core, one torch thread each), in priority
# order, from a checkout pinned at the study's code version. Each worker claims the next
# unfinished run (an atomic mkdir under CLAIMS), runs it with `--only`, then commits its JSON
# (under a lock, so two workers never commit at once). Restartable: finished runs are skipped,
# and a claim left by a killed worker is cleared by deleting CLAIMS (nothing else runs then).
#
#   bash bench/quality_v3_workers.sh STUDY_CHECKOUT PYTHON [N=2]
#   e.g. bash bench/quality_v3_workers.sh /work/study /work/main/.venv/bin/python 2
# Logs: STUDY_CHECKOUT/runs/quality_v3_w<i>.log; each run's own output under runs/bench_quality_v3/.
set -euo pipefail
study=$(cd "${1:?give the study checkout}" && pwd)
py=${2:?give the python of a venv holding smore-gnn}
py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")  # absolute, links kept (a venv)
n=${3:-2}
claims=$study/runs/claims
rm -rf "$claims" && mkdir -p "$claims"
worker() {
  cd "$study"
  export PYTHONPATH=$study OMP_NUM_THREADS=1
  local out=bench/results/quality_v3
  while true; do
    local id=""
    for run in $("$py" -m bench.quality_v3 --dry-run | awk '$2=="todo"{print $1}'); do
      if mkdir "$claims/$run" 2>/dev/null; then id=$run && break; fi
    done
    [ -z "$id" ] && break
    echo "$(date -u +%T) worker $1 starts $id"
    "$py" -m bench.quality_v3 --only "$id" || true
    if [ -f "$out/$id.json" ]; then
      (
        flock 9
        "$py" -c "from bench.quality_v3 import OUT_DIR, settings_for, write_lr_choice as w
w(OUT_DIR, settings_for())"
        git add -- "$out/$id.json" "$out/lr_choice.json"
        git commit -q -m "bench.quality_v3: $id finished" -- "$out/$id.json" "$out/lr_choice.json"
      ) 9>"$claims/.git.lock"
    fi
  done
  echo "$(date -u +%T) worker $1 done"
}
mkdir -p "$study/runs"
for i in $(seq 1 "$n"); do
  worker "$i" >> "$study/runs/quality_v3_w$i.log" 2>&1 &
  sleep 3
done
wait
