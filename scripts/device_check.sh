#!/usr/bin/env bash
# The GPU checks, as one call on a lent GPU machine (under 10 minutes on one H100/H200):
#   1. the env pool with one env per visible GPU (scripts/check_devices.py): model and data on
#      the worker's device, epoch time, env-steps/s;
#   2. the population env on CUDA equals HyperTuneEnvs on CUDA (the `cuda` cases of
#      tests/pool/test_population.py::test_member_trajectory_equals_hypertune_env);
#   3. env-steps/s of populations against one HyperTuneEnv on that GPU
#      (scripts/bench_population.py --device cuda; issue 12's target is >= 20x): MLP draws always
#      batched (K = 64, 256, 1024), then every family with the planner's choice (K = 64).
#
#   bash scripts/device_check.sh                  # on the GPU machine, results under $OUT
#   DEV=cpu KS_MLP="4" KS_REST="4" bash scripts/device_check.sh   # dry run of the script on a CPU
#
# Packages the GPU image lacks travel as wheels in .whl/ (see the device tool's README); they
# are installed into /tmp/site when that folder exists.
set -u
OUT=${OUT:-/tmp/device_check}
DEV=${DEV:-cuda}
KS_MLP=${KS_MLP:-64 256 1024}
KS_REST=${KS_REST:-64}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
  nproc; } 2>&1 | tee "$OUT/machine.txt"
t0=$SECONDS
echo "== 1. pool, one env per device"
timeout 60 python3 scripts/check_devices.py --devices auto --steps 10 --json "$OUT/check_devices.json" 2>&1 | tail -25
echo "== 2. population on $DEV equals HyperTuneEnv on $DEV ($((SECONDS - t0)) s)"
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/pool/test_population.py -k "trajectory and $DEV" 2>&1 | tail -25
echo "== 3. populations vs one env: MLP draws, always batched ($((SECONDS - t0)) s)"
# shellcheck disable=SC2086
timeout 200 python3 scripts/bench_population.py --device "$DEV" --families mlp --mode batched --ks $KS_MLP \
    --json "$OUT/population_mlp_batched.json" 2>&1 | tee "$OUT/population_mlp_batched.log"
echo "== 4. populations vs one env: every family, the planner's choice ($((SECONDS - t0)) s)"
# shellcheck disable=SC2086
timeout 170 python3 scripts/bench_population.py --device "$DEV" --ks $KS_REST --steps 3 --warmup 2 \
    --json "$OUT/population_auto.json" 2>&1 | tee "$OUT/population_auto.log"
echo "== done in $((SECONDS - t0)) s"
