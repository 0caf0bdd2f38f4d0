#!/usr/bin/env bash
# The accelerator check, run in one call on a lent GPU machine (see README "On a GPU"):
# the benchmark table, the quick Figure-1 reproduction and the test suite, each under its
# own time limit, with everything written to $OUT. The machine's own python3 is used (its
# JAX has the CUDA plugin); adamjax is imported from this checkout, not installed. The
# native CPU kernel is not built there (it is not used on a GPU).
#   DATA=<dir holding mnist/*.gz> OUT=<results dir> bash benchmarks/device_check.sh
set -u
OUT=${OUT:-/tmp/adamjax_device_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ADAMJAX_DATA_DIR=${DATA:-$PWD/.gpu_data}
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
  python3 -c "import sys, jax, jaxlib, optax, flax, torch; print(sys.version); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'optax', optax.__version__, 'flax', flax.__version__, 'torch', torch.__version__); print(jax.devices())"
  nproc
} 2>&1 | tee "$OUT/env.txt"
t0=$(date +%s)
timeout "${BENCH_S:-240}" python3 -m benchmarks --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench.log" | grep -v "^  "
echo "benchmarks: $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
timeout "${FIG1_S:-90}" python3 -m experiments fig1_logreg --quick --out /tmp/fig1 > "$OUT/fig1.log" 2>&1
echo "fig1 exit $?: $(( $(date +%s) - t0 )) s"; tail -4 "$OUT/fig1.log"
cp /tmp/fig1/results.json "$OUT/fig1_results.json" 2>/dev/null
cp /tmp/fig1/*.png "$OUT/" 2>/dev/null
t0=$(date +%s)
timeout "${TEST_S:-200}" python3 -m pytest tests -q --maxfail=25 --ignore=tests/native -p no:cacheprovider \
  -n "${WORKERS:-6}" --durations=10 > "$OUT/pytest.log" 2>&1
echo "pytest exit $?: $(( $(date +%s) - t0 )) s"; tail -25 "$OUT/pytest.log"
