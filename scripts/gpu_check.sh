#!/usr/bin/env bash
# scripts/gpu_check.sh — everything worth checking on a GPU machine, in one command:
# configure and build there, run the whole test suite, the default experiment on the GPU
# (CUDA graphs on and off, cuBLASLt and cuDNN engines), the paper preset, parity with PyTorch
# and the benchmark table, then print a short summary. Logs and JSON land in $OUT (default
# ./gpu-out).
#
#   scripts/gpu_check.sh              the full check
#   scripts/gpu_check.sh --sanitize   also the GPU tests under compute-sanitizer (memcheck, racecheck)
#   scripts/gpu_check.sh --quick      build the app and the GPU tests, run those tests in one
#                                     process, the default experiment (graphs on and off) and parity
#
# On a machine without package registries, first run scripts/gpu_bundle.sh where one is, and
# bring .gpu/ and third_party/cudnn-frontend/ along: this script uses them when present.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# Logs go to a work folder; at exit they are packed into $OUT/logs.tgz beside $OUT/summary.txt
# (a few files come back more reliably than dozens).
final="${OUT:-$root/gpu-out}"
OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$final"
trap 'tar czf "$final/logs.tgz" -C "$OUT" . 2>/dev/null' EXIT
sanitize=0
quick=0
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=1 ;;
    --quick) quick=1 ;;
    *) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
summary="$final/summary.txt"   # written as we go: it comes back even if the run is cut short
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
stage() { echo; echo "=== $* ($(date +%T))"; }
t0=$(date +%s)

gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$gpu" ] || { echo "gpu_check.sh: nvidia-smi finds no GPU" >&2; exit 1; }
arch=$(echo "$gpu" | awk -F', ' '{gsub(/\./,"",$2); print $2}')
say "GPU: $gpu (building for sm_$arch)"

cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$arch")
if [ -d .gpu/deps ]; then
  deps="$root/.gpu/deps/usr"
  cmake_args+=("-DCMAKE_PREFIX_PATH=$deps")
  export LD_LIBRARY_PATH="$deps/lib/x86_64-linux-gnu/openblas-pthread:$deps/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
if [ -z "${MNIST_DIR:-}" ]; then
  for d in .gpu/mnist ../shared/mnist data/mnist; do [ -d "$d" ] && export MNIST_DIR="$root/$d" && break; done
fi
say "MNIST_DIR=${MNIST_DIR:-unset}"

stage "configure + build"
if ! cmake -S . -B build-gpu "${cmake_args[@]}" > "$OUT/configure.log" 2>&1; then
  tail -30 "$OUT/configure.log"; say "configure FAILED (see configure.log)"; exit 1
fi
grep "subliminal:" "$OUT/configure.log" | tee -a "$summary"
targets=()
[ "$quick" = 1 ] && targets=(--target subliminal test_cuda)
if ! cmake --build build-gpu -j "$(nproc)" "${targets[@]}" > "$OUT/build.log" 2>&1; then
  grep -E "error|Error" "$OUT/build.log" | head -30; say "build FAILED (see build.log)"; exit 1
fi
say "build: ok ($(( $(date +%s) - t0 )) s)"
app=build-gpu/apps/subliminal

stage "tests"
if [ "$quick" = 1 ]; then
  # One process: quick, but a sticky CUDA error would cascade; the full check uses ctest.
  timeout 240 build-gpu/tests/test_cuda > "$OUT/test_cuda.log" 2>&1
  say "test_cuda: exit $? — $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|tests? from .* ran' "$OUT/test_cuda.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]" "$OUT/test_cuda.log" | head -30 | tee -a "$summary"
else
  (cd build-gpu && timeout 240 ctest -j "$(nproc)" --timeout 200 --output-on-failure) > "$OUT/ctest.log" 2>&1
  grep -E "tests passed|tests failed" "$OUT/ctest.log" | tee -a "$summary"
  grep -E "\*\*\*Failed|\*\*\*Exception|Timeout" "$OUT/ctest.log" | head -20 | tee -a "$summary"
  echo "skipped: $(grep -c 'Skipped' "$OUT/ctest.log" || true)" | tee -a "$summary"
fi

run_app() {  # name, args...
  local name=$1; shift
  if timeout 300 "$app" --data "$MNIST_DIR" --no-progress --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1; then
    python3 - "$OUT/$name.json" "$name" <<'PY' | tee -a "$summary"
import json, sys
r = json.load(open(sys.argv[1])); name = sys.argv[2]
accs = " ".join(f"{k}={r[k]['test_acc']:.4f}" for k in ["reference", "teacher", "student", "student_all_logits",
        "cross_init", "cross_init_all_logits"] if k in r)
g = r.get("gpu_seconds", {}); us = r.get("us_per_step", {}); k = r.get("graph_kernels_per_step", {})
print(f"{name}: {accs} | total {r['seconds']['total']:.2f} s, GPU training {g.get('training', 0):.3f} s, "
      f"us/step {', '.join(f'{p}={v:.1f}' for p, v in us.items())}, kernels/step {k}")
PY
  else
    say "$name: FAILED (exit $?): $(tail -3 "$OUT/$name.log" | tr '\n' ' ')"
  fi
}

# The full check runs inside a time budget (GPU_CHECK_BUDGET seconds, default 480): stages
# are ordered by what they prove, and one that would start past the budget is skipped, named.
budget=${GPU_CHECK_BUDGET:-480}
time_left() {
  if [ $(( $(date +%s) - t0 )) -ge "$budget" ]; then say "skipped (time budget): $*"; return 1; fi
  return 0
}

stage "experiments"
run_app default --device cuda
run_app no_graphs --device cuda --no-graphs
if [ "$quick" = 1 ]; then
  timeout 90 python3 bench/parity.py --engine "$app" --data "$MNIST_DIR" --device cuda --json "$OUT/parity.json" \
    > "$OUT/parity.log" 2>&1
  say "parity: exit $? — $(tail -6 "$OUT/parity.log" | tr '\n' ' ')"
  say "total $(( $(date +%s) - t0 )) s"
  exit 0
fi
time_left "paper preset" && run_app paper --device cuda --preset paper
if [ -f scripts/plot.py ] && [ -f "$OUT/paper.json" ]; then
  python3 scripts/plot.py "$OUT/paper.json" --out "$final/paper_fig.png" > "$OUT/plot.log" 2>&1 || say "plot FAILED"
fi
time_left "models10" && run_app models10 --device cuda --models 10
time_left "tf32" && run_app tf32 --device cuda --tf32
time_left "autotune" && run_app autotune --device cuda --autotune

if time_left "layer benchmark"; then
  stage "layer benchmark"
  timeout 120 build-gpu/bench/bench_layers --json "$OUT/layers.json" > "$OUT/layers.log" 2>&1
  say "bench_layers: exit $?"
  cat "$OUT/layers.log" | tee -a "$summary"
fi
time_left "cudnn run" && run_app cudnn --device cuda --gemm cudnn
time_left "unfused run" && run_app unfused --device cuda --fusion none

if time_left "PyTorch comparison"; then
  stage "parity + benchmark"
  timeout 90 python3 bench/parity.py --engine "$app" --data "$MNIST_DIR" --device cuda --json "$OUT/parity.json" \
    > "$OUT/parity.log" 2>&1
  say "parity: exit $? — $(tail -3 "$OUT/parity.log" | tr '\n' ' ')"
  timeout 240 python3 bench/compare.py --engine "$app" --data "$MNIST_DIR" --device cuda --repeats 1 \
    --faithful-epochs 1 --variants engine,faithful,fast,fast+cuda-graphs --timeout 150 \
    --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  say "bench: exit $?"
  tail -15 "$OUT/bench.log" | tee -a "$summary"
fi

if [ "$sanitize" = 1 ] && time_left "compute-sanitizer"; then
  stage "compute-sanitizer"
  # memcheck over GEMMs, noise, losses and graph replay; racecheck (much slower) over the
  # kernels that share memory between threads: the per-model loss reductions.
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/test_cuda \
    --gtest_filter='*CudaGemm.ForwardMatchesCpu/N1_B37*:*CudaGemm.BackwardInputMatchesCpu/N3_B37*:*CudaOps.UniformNoise*:*CudaOps.CrossEntropy*:*CudaOps.DistillKl*:*CudaStepGraph*' \
    > "$OUT/sanitize_memcheck.log" 2>&1
  say "compute-sanitizer memcheck: exit $? — $(grep -h 'ERROR SUMMARY' "$OUT/sanitize_memcheck.log" | sort | uniq -c | tr '\n' ' ')"
  timeout 240 compute-sanitizer --tool racecheck --error-exitcode 9 build-gpu/tests/test_cuda \
    --gtest_filter='CudaOps.CrossEntropyMatchesCpu:CudaOps.DistillKlMatchesCpu:CudaOps.KlDivMatchesCpu' \
    > "$OUT/sanitize_racecheck.log" 2>&1
  say "compute-sanitizer racecheck: exit $? — $(grep -h 'ERROR SUMMARY' "$OUT/sanitize_racecheck.log" | sort | uniq -c | tr '\n' ' ')"
fi
say "total $(( $(date +%s) - t0 )) s"
