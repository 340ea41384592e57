#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (CI has no GPU; run this on a machine that has one):
#   1. the trainer test suite, whose CUDA-only tests run only there (sparse products, the model contract on
#      CUDA, LUDP and SAND on CUDA), with the test skips listed;
#   2. the main job on CUDA: SAND fitted on ml-100k-mm with --device cuda, exported, and its test metrics
#      recomputed from the bundle (`trainer evaluate`);
#   3. SAND's epoch time against LightGCN's on the GPU (tests/benchmarks/bench_sand.py --device cuda);
#   4. every model of the ML-100K comparison (scripts/compare_ml100k.sh's first `compare`, current presets)
#      trained on CUDA, seeds 1-3, several runs at once, test metrics recomputed from each bundle.
# Logs go to RESULTS_DIR (one file per step); runs to RUNS_DIR (default: a temporary directory).
#   usage: [STEPS="tests main bench compare"] [JOBS=9] [MAX_SECONDS=300] scripts/gpu_checks.sh RESULTS_DIR [RUNS_DIR]
# Needs data/ml-100k-mm (`python -m trainer features`) and the shared datasets (MODALREC_SHARED_DATASETS).
set -uo pipefail
cd "$(dirname "$0")/.."
results=$(realpath -m "$1")
runs=${2:-$(mktemp -d)}
python=${PYTHON:-python3}
steps=" ${STEPS:-tests main bench compare} "
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=trainer/configs/ml-100k-mm
mkdir -p "$results" "$runs"
status=0
step() {  # name, then the command; its output goes to RESULTS_DIR/<name>.log and the terminal
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$results/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}
step env "$python" -c "import torch, platform; print(platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to check"; exit 1; }
if [[ $steps == *" tests "* ]]; then
  step pytest_trainer "$python" -m pytest tests/trainer -q -p no:cacheprovider -rs
fi
if [[ $steps == *" main "* ]]; then
  step fit_sand_cuda "$python" -m trainer fit --model sand --dataset data/ml-100k-mm --out "$runs/sand-cuda" \
    --device cuda --seed 1 --quiet
  step evaluate_sand_cuda "$python" -m trainer evaluate --run "$runs/sand-cuda"
fi
if [[ $steps == *" bench "* ]]; then
  step bench_sand_cuda "$python" tests/benchmarks/bench_sand.py --device cuda --rounds 5 \
    --models lightgcn sand_l2 sand_mi sand_l2_bf16 sand_mi_bf16
fi
if [[ $steps == *" compare "* ]]; then
  step compare_cuda "$python" -W ignore -m trainer compare --dataset data/ml-100k-mm --out "$runs/compare" \
    --seeds 1 2 3 --jobs "${JOBS:-9}" --max-epochs 200 --max-seconds "${MAX_SECONDS:-300}" --device cuda --resume \
    --variant LightGCN=lightgcn --variant LUDP=ludp --variant SAND=sand \
    --variant "SAND+ID=sand:$C/sand_idgraph.yaml" --variant KGAT=kgat --variant Multi-KG4Rec=multikg4rec
  cp "$runs/compare/compare.md" "$results/compare_cuda.md" 2>/dev/null
  cp "$runs/compare/compare.json" "$results/compare_cuda.json" 2>/dev/null
fi
exit $status
