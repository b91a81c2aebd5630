#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a short lease on a GPU machine.
#
# Why one script: a GPU machine is lent for minutes, so every check runs in one call, each
# under its own time limit, and a check that fails or hangs does not cost the ones after it.
# What it runs:
#   1. the machine: GPU, driver, torch and ONNX Runtime (with its execution providers);
#   2. `search run --device cuda` with the default runtime (ONNX Runtime): one clear line
#      and exit 2 where ONNX Runtime has no CUDA provider, a search where it has;
#   3. the tests marked gpu (tests/conftest.py runs them only where PyTorch sees a GPU);
#   4. a `--device cuda --runtime torch` search on the built-in digits task, and its trials;
#   5. the TensorRT path: why ONNX Runtime's TensorRT provider cannot run, or a search on it;
#   6. with the time left, the default test suite on that machine.
# Logs go to $OUT (the device tool's folder) or ./gpu-check-logs.
#
# Python packages the machine lacks travel as cp312 wheels in .whl/ (the device tool's
# README says how to fetch them); carry .whl, studies/cache and tests/fixtures/.cache.
set -u
OUT=${OUT:-./gpu-check-logs}
mkdir -p "$OUT"
REPO=$(pwd)
START=$SECONDS
left() { echo $((${BUDGET_S:-540} - (SECONDS - START))); }
step() { echo; echo "=== $1 ($(($SECONDS - START)) s in, $(left) s left)"; }

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO
fi
export PYTHONUNBUFFERED=1
search() { python3 -m search.cli "$@"; }

step "machine"
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nproc; python3 --version
python3 - <<'EOF'
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.get_available_providers())
import optuna, mlflow, torch_pruning, thop
print("optuna", optuna.__version__, "mlflow", mlflow.__version__, "torch_pruning", torch_pruning.__version__)
from search.measure.onnx_runtime import tensorrt_available
print("tensorrt:", tensorrt_available() or "available")
EOF

HOME_DIR=/tmp/cuda-home
mkdir -p "$HOME_DIR/studies"
[ -d studies/cache ] && cp -r studies/cache "$HOME_DIR/studies/"
cd "$HOME_DIR" || exit 1

step "search run --device cuda (default runtime: ONNX Runtime)"
timeout 120 python3 -m search.cli run --latency-budget 0.5x --device cuda --trials 2 \
  --study cuda-ort 2>&1 | tee "$OUT/run-ort.log" | tail -25
echo "exit ${PIPESTATUS[0]}"

cd "$REPO" || exit 1
step "tests marked gpu"
timeout 260 python3 -m pytest -m gpu -q -p no:cacheprovider --durations=15 2>&1 \
  | tee "$OUT/gpu-tests.log" | tail -40
echo "exit ${PIPESTATUS[0]}"

cd "$HOME_DIR" || exit 1
step "search run --device cuda --runtime torch"
timeout 170 python3 -m search.cli run --latency-budget 0.5x --device cuda --runtime torch \
  --trials 8 --timeout 110 --seed 0 --study cuda-torch 2>&1 | tee "$OUT/run-torch.log" | tail -40
echo "exit ${PIPESTATUS[0]}"
timeout 60 python3 - <<'EOF' 2>&1 | tee "$OUT/trials.log"
import optuna
storage = "sqlite:///studies/optuna.db"
for summary in optuna.get_all_study_summaries(storage):
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    print(summary.study_name, "hardware:", study.user_attrs.get("hardware"))
    print("study attrs:", sorted(study.user_attrs))
    for t in study.trials:
        lat = t.user_attrs.get("latency") or {}
        print(t.number, t.state.name, t.values, {k: lat.get(k) for k in
              ("device", "runtime", "p50_ms", "p95_ms", "peak_memory_mb")},
              t.user_attrs.get("scheme"), t.user_attrs.get("phase_seconds"),
              t.user_attrs.get("fail_reason") or t.user_attrs.get("stop_reason") or "")
EOF
ls -la studies mlruns 2>/dev/null | head -20
tar czf "$OUT/cuda-home.tgz" studies/*.db mlruns/mlflow.db 2>/dev/null

step "TensorRT"
python3 -c "from search.measure.onnx_runtime import tensorrt_available as t; print(t() or 'available')"

cd "$REPO" || exit 1
remaining=$(left)
if [ "$remaining" -gt 90 ]; then
  step "default test suite (xdist, $((remaining - 30)) s)"
  timeout $((remaining - 30)) python3 -m pytest -q -p no:cacheprovider -n 14 \
    --durations=5 2>&1 | tee "$OUT/suite.log" | tail -30
  echo "exit ${PIPESTATUS[0]}"
fi
step "done"
