#!/usr/bin/env bash
# Figures 2 (a, b) and 4 at the paper's scale, in one call on a lent GPU machine: all 60,000
# MNIST training images, the shipped full grids (configs/fig2_mlp.toml: 200 epochs;
# configs/fig4_bias_correction.toml: 100 epochs, reported after 10 and 100), each under its
# own time limit. Writes into $OUT (at most 8 files, no subfolders, as the device tool
# returns them): <fig>_results.json (claims and grid-edge flags included), the PNGs, one
# curves.tar.gz of every CSV, and one log per figure.
#   DATA=<dir holding mnist/> OUT=<results dir> bash experiments/paper_scale.sh
# Dry run on a CPU (tiny, proves the plumbing):
#   FIG2_EPOCHS=1 FIG4_EPOCHS=2 TRAIN_SUBSET=256 PY=.venv/bin/python bash experiments/paper_scale.sh
set -u
OUT=${OUT:-/tmp/adamjax_paper_scale}
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/adamjax_paper_runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ADAMJAX_DATA_DIR=${DATA:-${ADAMJAX_DATA_DIR:-$PWD/.gpu_data}}
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
subset=()
if [ "${TRAIN_SUBSET:-0}" != 0 ]; then subset=(--train-subset "$TRAIN_SUBSET" --test-subset "$TRAIN_SUBSET"); fi

run() {  # run <name> <epochs> <time limit s>
  local name=$1 epochs=$2 limit=$3 t0
  t0=$(date +%s)
  # --resume: a second call on a still-warm machine continues from the last epoch checkpoint
  timeout "$limit" "$PY" -m experiments "$name" --epochs "$epochs" "${subset[@]}" --resume \
    --out "$RUNS/$name" > "$OUT/$name.log" 2>&1
  echo "$name exit $? after $(( $(date +%s) - t0 )) s"
  grep -E "^(PASS|FAIL|N/A|WARNING|grid edges|done in)" "$OUT/$name.log"
  cp "$RUNS/$name/results.json" "$OUT/${name}_results.json" 2>/dev/null
  cp "$RUNS/$name"/*.png "$OUT/" 2>/dev/null
}

"$PY" -c "import jax; print(jax.devices())" 2>&1 | tee "$OUT/env.txt"
run fig2_mlp "${FIG2_EPOCHS:-200}" "${FIG2_S:-270}"
run fig4_bias_correction "${FIG4_EPOCHS:-100}" "${FIG4_S:-270}"
curves=$(cd "$RUNS" && ls -d */curves 2>/dev/null)
if [ -n "$curves" ]; then tar -czf "$OUT/curves.tar.gz" -C "$RUNS" $curves; fi
ls -la "$OUT"
