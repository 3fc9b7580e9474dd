#!/usr/bin/env bash
# Everything a GPU machine lent briefly should measure, in one run of under 6 minutes:
# tests/test_cuda.py, the op and kernel counts, one (4-4) and one L=3 layer at d=2048 and
# 4096 tokens, training steps at SmolLM2-135M and Llama-3.2-1B shapes (random init), and
# greedy decoding at batch 1 and 8. Results: bench/results/gpu/*.json.
#
#   bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run  # print the commands, then run CPU-sized ones (no GPU)
#
# PYTHON (default: .venv/bin/python, else python3) runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT=bench/results/gpu
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
if [ $# -gt 1 ] || { [ $# -eq 1 ] && [ $DRY -eq 0 ]; }; then
  echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2
  exit 2
fi

if [ $DRY -eq 0 ]; then
  DEV=cuda D=2048 N=4096 SHAPE1=smollm2 SHAPE2=llama1b BATCH=8 SEQ=512 NEW=64 ROUNDS=5
  TESTS=(env SMORE_GNN_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py)
else
  DEV=cpu D=64 N=128 SHAPE1=tiny SHAPE2=tiny BATCH=2 SEQ=16 NEW=4 ROUNDS=1
  OUT=$(mktemp -d)
  TESTS=(env SMORE_GNN_TEST_DEVICE=cpu "$PY" -m pytest -q -p no:cacheprovider -x
         tests/test_cuda.py -k both_residual~or~autocast~or~per_device)
fi
mkdir -p "$OUT"

COMMANDS=(
  "${TESTS[*]}"
  "$PY -m bench.op_count --device $DEV --d $D --tokens $N --json $OUT/op_count.json"
  "$PY -m bench.adapter_speed --device $DEV --case (4-4) $D $N --rounds $((ROUNDS * 3)) --json $OUT/layer_44.json"
  "$PY -m bench.adapter_speed --device $DEV --case L=3~(4-4-4) $D $N --rounds $((ROUNDS * 3)) --json $OUT/layer_l3.json"
  "$PY -m bench.train_step --device $DEV --shape $SHAPE1 --batch $BATCH --seq $SEQ --steps $ROUNDS --warmup 2 --rounds 1 --methods lora smore --json $OUT/train_$SHAPE1.json"
  "$PY -m bench.train_step --device $DEV --shape $SHAPE2 --batch $BATCH --seq $SEQ --steps $ROUNDS --warmup 2 --rounds 1 --methods lora smore --json $OUT/train_$SHAPE2.json"
  "$PY -m bench.generate --device $DEV --shape $SHAPE1 --methods lora smore --batches 1 8 --new-tokens $NEW --rounds $ROUNDS --json $OUT/generate.json"
)

echo "# commands (device $DEV; results in $OUT):"
for cmd in "${COMMANDS[@]}"; do echo "  $cmd"; done

run() {  # one word per argument; "~" stands for a space inside one (a config name)
  local args=()
  for word in $1; do args+=("${word//\~/ }"); done
  echo "+ $1"
  "${args[@]}"
}

status=0
for cmd in "${COMMANDS[@]}"; do
  start=$(date +%s)
  if ! run "$cmd"; then status=1; echo "FAILED: $cmd" >&2; fi
  echo "  ($(( $(date +%s) - start )) s)"
done
exit $status
