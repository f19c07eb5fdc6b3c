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
#                                     process, the experiments stage (both step designs, graphs
#                                     on and off) and parity
#   scripts/gpu_check.sh --only a,b   only these stages of the full check (after the build), from:
#                                     tests experiments paper latency cluster layers cpu cudnn unfused parity bench
#                                     profile stalls memcheck racecheck   (these four: only when
#                                     asked, or memcheck/racecheck with --sanitize)
#   scripts/gpu_check.sh --baseline DIR
#                                     also build the app from DIR, the source of an earlier
#                                     revision, and time its default run against this one's,
#                                     alternating, 3 runs each (the "ab" stage, right after the
#                                     build: timings move ~10% between GPU sessions, so a change
#                                     is measured against its baseline in the same one). Make DIR
#                                     here and carry it:  mkdir -p .baseline &&
#                                     git archive REV | tar -x -C .baseline
#
# On a machine without package registries, first run scripts/gpu_bundle.sh where one is, and
# bring .gpu/ and third_party/cudnn-frontend/ along: this script uses them when present.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sanitize=0
quick=0
only=""
baseline=""
stages="tests experiments paper latency cluster layers cpu cudnn unfused parity bench profile stalls memcheck racecheck"
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --quick) quick=1 ;;
    --baseline)
      [ $# -ge 2 ] && [ -f "$2/CMakeLists.txt" ] || { echo "gpu_check.sh: --baseline needs a source tree (a folder with CMakeLists.txt)" >&2; exit 2; }
      baseline=$(cd "$2" && pwd)
      shift ;;
    --only)
      [ $# -ge 2 ] || { echo "gpu_check.sh: --only needs a comma-separated list of stages" >&2; exit 2; }
      # Split at commas and blanks, without glob expansion (set -f: a '*' is refused as itself,
      # not matched against file names). `only` is rebuilt from the words as ",a,b," for want():
      # kept verbatim, "tests, parity" would never match ",parity,". No word at all (" ", ",")
      # selects nothing: refused here, not found after a build that then runs no stage.
      only=","
      set -f
      for s in ${2//,/ }; do
        case " $stages " in *" $s "*) ;; *) echo "gpu_check.sh: --only: unknown stage '$s' (stages: $stages)" >&2; exit 2 ;; esac
        only+="$s,"
      done
      set +f
      [ "$only" != "," ] || { echo "gpu_check.sh: --only names no stage, only commas and blanks (stages: $stages)" >&2; exit 2; }
      shift ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# The full check runs inside a time budget (GPU_CHECK_BUDGET seconds, default 480, counted from
# before the build): stages are ordered by what they prove, and one that would start past the
# budget is skipped, named — except the first ones, which always run: the A/B timing against
# --baseline, the tests, and the experiments' default, fused, cluster, tiled and no-graphs runs.
budget=${GPU_CHECK_BUDGET:-480}
[[ "$budget" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: GPU_CHECK_BUDGET must be whole seconds, got '$budget'" >&2; exit 2; }
# want STAGE: true when the stage is part of this check.
want() {
  if [ -n "$only" ]; then [[ "$only" == *",$1,"* ]]; return; fi
  case "$1" in memcheck | racecheck) [ "$sanitize" = 1 ] ;; profile | stalls) false ;; *) true ;; esac
}
gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null | head -1)
[ -n "$gpu" ] || { echo "gpu_check.sh: nvidia-smi finds no GPU" >&2; exit 2; }

# Logs go to a work folder; at exit they are packed into $OUT/logs.tgz beside $OUT/summary.txt
# (a few files come back more reliably than dozens).
final="${OUT:-$root/gpu-out}"
OUT=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$final" || { echo "gpu_check.sh: cannot create OUT=$final" >&2; exit 2; }
trap 'tar czf "$final/logs.tgz" -C "$OUT" . 2>/dev/null' EXIT
summary="$final/summary.txt"   # written as we go: it comes back even if the run is cut short
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
stage() { echo; echo "=== $* ($(date +%T))"; }
t0=$(date +%s)
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
# Every stage after the build needs MNIST: found now, not after minutes of building.
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -e "${MNIST_DIR:-/nonexistent}/$f" ] || [ -e "${MNIST_DIR:-/nonexistent}/$f.gz" ] || {
    say "gpu_check.sh: no MNIST: MNIST_DIR=${MNIST_DIR:-unset} lacks $f[.gz] (unset, it is the first of .gpu/mnist, ../shared/mnist, data/mnist that exists); set it, or carry .gpu/mnist (scripts/gpu_bundle.sh)"
    exit 2
  }
done
say "MNIST_DIR=$MNIST_DIR"

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
"$app" --version | tee -a "$summary"   # the commit ("unknown" in a copy without .git) and the toolchain

# The cluster design (--step cluster) had never run on a GPU when this was written: its tests
# for one case run first, alone and under a short timeout, so that a hang or a refused launch
# costs a minute here rather than every cluster run's timeout below. If they fail, the cluster
# runs, tests and timings below are skipped, saying so (on a GPU without clusters they skip).
cluster_ok=1
if [ "$quick" = 1 ] || want tests || want experiments || want layers || want stalls; then
  stage "cluster smoke test"
  timeout 60 build-gpu/tests/test_cuda --gtest_filter='*CudaFusedStep.*/mnist_N1_B256_cluster' \
    > "$OUT/cluster_smoke.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    say "cluster smoke test: $(grep -E '^\[  PASSED  \]' "$OUT/cluster_smoke.log" | head -1)"
  else
    cluster_ok=0
    say "cluster smoke test: FAILED (exit $rc) — cluster runs skipped below: $(grep -m5 -E 'FAILED|rror' \
      "$OUT/cluster_smoke.log" | tr '\n' ' ' | cut -c1-600)"
  fi
fi
# cluster_runs NAME: true when the cluster design may run (else says why NAME is skipped).
cluster_runs() {
  [ "$cluster_ok" = 1 ] && return 0
  say "skipped (cluster smoke test failed): $1"
  return 1
}

# A/B: the baseline's default run and this one's, alternating so that drift hits both alike.
if [ -n "$baseline" ]; then
  stage "ab: baseline $baseline"
  # A fresh build folder (one left by a call with another DIR would not configure), the app
  # only. The baseline's source has no third_party/ (git archive), so no cuDNN engine: the
  # default run does not use it.
  rm -rf build-baseline
  if cmake -S "$baseline" -B build-baseline "${cmake_args[@]}" -DBUILD_TESTING=OFF > "$OUT/baseline_build.log" 2>&1 &&
     cmake --build build-baseline -j "$(nproc)" --target subliminal >> "$OUT/baseline_build.log" 2>&1; then
    for i in 1 2 3; do
      for side in baseline current; do
        bin=$app; [ "$side" = baseline ] && bin=build-baseline/apps/subliminal
        timeout 120 "$bin" --data "$MNIST_DIR" --no-progress --device cuda --json "$OUT/ab_${side}_$i.json" \
          > "$OUT/ab_${side}_$i.log" 2>&1 || say "ab: $side run $i FAILED: $(tail -2 "$OUT/ab_${side}_$i.log" | tr '\n' ' ')"
      done
    done
    python3 scripts/ab_summary.py "$OUT"/ab_baseline_*.json -- "$OUT"/ab_current_*.json | tee -a "$summary"
  else
    say "ab: baseline build FAILED (see baseline_build.log): $(grep -m3 -E 'error|Error' "$OUT/baseline_build.log" | tr '\n' ' ')"
  fi
fi

if [ "$quick" = 1 ]; then
  stage "tests"
  # One process: quick, but a sticky CUDA error would cascade; the full check uses ctest.
  filter=()
  [ "$cluster_ok" = 1 ] || filter=(--gtest_filter='-*_cluster')
  timeout 240 build-gpu/tests/test_cuda "${filter[@]}" > "$OUT/test_cuda.log" 2>&1
  say "test_cuda: exit $? — $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]|tests? from .* ran' "$OUT/test_cuda.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED  \]" "$OUT/test_cuda.log" | head -30 | tee -a "$summary"
elif want tests; then
  stage "tests"
  exclude=()
  [ "$cluster_ok" = 1 ] || exclude=(-E '_cluster$')
  # (Each test's own TIMEOUT property outranks ctest's --timeout, so the stage's limit is the outer
  # one; a run it kills prints no "tests passed/failed" line, so its exit status is said.)
  (cd build-gpu && timeout 240 ctest -j "$(nproc)" --output-on-failure "${exclude[@]}") > "$OUT/ctest.log" 2>&1
  rc=$?
  say "ctest: exit $rc$([ "$rc" = 124 ] && echo ' (killed at 240 s: see ctest.log for the tests still running)')"
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
mem = r.get("graph_memory_nodes_per_step", {})
print(f"{name}: {accs} | total {r['seconds']['total']:.2f} s, GPU training {g.get('training', 0):.3f} s, "
      f"us/step {', '.join(f'{p}={v:.1f}' for p, v in us.items())} "
      f"(steady {', '.join(f'{p}={v:.1f}' for p, v in r.get('us_per_step_steady', {}).items())}), "
      f"kernels/step {k}, memory nodes/step {mem}")
PY
  else
    say "$name: FAILED (exit $?): $(tail -3 "$OUT/$name.log" | tr '\n' ' ')"
  fi
}

time_left() {
  if [ $(( $(date +%s) - t0 )) -ge "$budget" ]; then say "skipped (time budget): $*"; return 1; fi
  return 0
}

if [ "$quick" = 1 ] || want experiments; then
  stage "experiments"
  run_app default --device cuda
  run_app fused --device cuda --step fused
  # The last-item fix-up instead of bands: the same sums in the same order, so the same bits —
  # and the way to keep going should the band fix-up misbehave on this GPU.
  run_app fused_last --device cuda --step fused --fused-split 8,2,last
  if [ -f "$OUT/fused.json" ] && [ -f "$OUT/fused_last.json" ]; then
    python3 - "$OUT/fused.json" "$OUT/fused_last.json" <<'PY' | tee -a "$summary"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
keys = [k for k in a if isinstance(a[k], dict) and "per_model" in a[k]]
same = all(a[k]["per_model"] == b.get(k, {}).get("per_model") for k in keys)
print("fused step, bands vs last-item fix-up: " + ("same accuracies to the digit" if same else "ACCURACIES DIFFER"))
PY
  fi
  # The cluster design of the fused step (ops/cuda/cluster_step.cu, docs/PERFORMANCE.md), then
  # both designs alternating, three runs each, as the A/B above: its first timings.
  if cluster_runs "the cluster design's runs"; then
    run_app cluster --device cuda --step cluster
    for i in 1 2 3; do
      for design in fused cluster; do
        timeout 120 "$app" --data "$MNIST_DIR" --no-progress --device cuda --step "$design" \
          --json "$OUT/design_${design}_$i.json" > "$OUT/design_${design}_$i.log" 2>&1 ||
          say "designs: $design run $i FAILED: $(tail -2 "$OUT/design_${design}_$i.log" | tr '\n' ' ')"
      done
    done
    say "designs: --step fused (A) against --step cluster (B)"
    python3 scripts/ab_summary.py "$OUT"/design_fused_*.json -- "$OUT"/design_cluster_*.json | tee -a "$summary"
  fi
  run_app tiled --device cuda --gemm tiled
  run_app no_graphs --device cuda --no-graphs
fi
if [ "$quick" = 1 ]; then
  timeout 90 python3 bench/parity.py --engine "$app" --data "$MNIST_DIR" --device cuda --json "$OUT/parity.json" \
    > "$OUT/parity.log" 2>&1
  say "parity: exit $? — $(tail -6 "$OUT/parity.log" | tr '\n' ' ')"
  say "total $(( $(date +%s) - t0 )) s"
  exit 0
fi
if want experiments; then
  time_left "models10" && run_app models10 --device cuda --models 10
  time_left "tf32" && run_app tf32 --device cuda --tf32
  time_left "tiled_deterministic" && run_app tiled_deterministic --device cuda --gemm tiled --deterministic
  time_left "fused_no_graphs" && run_app fused_no_graphs --device cuda --step fused --no-graphs
  time_left "fused_models10" && run_app fused_models10 --device cuda --step fused --models 10
  # Jensen–Shannon distillation through the fused step's loss rows (on the CPU, seed 0: 64.31%)
  time_left "js" && run_app js --device cuda --divergence js
  time_left "cluster_models10" && cluster_runs "cluster_models10" &&
    run_app cluster_models10 --device cuda --step cluster --models 10
  time_left "cluster_no_graphs" && cluster_runs "cluster_no_graphs" &&
    run_app cluster_no_graphs --device cuda --step cluster --no-graphs
fi
if want paper; then
  time_left "paper preset" && run_app paper --device cuda --preset paper
  time_left "paper preset, fused" && run_app paper_fused --device cuda --preset paper --step fused
  time_left "paper preset, tiled" && run_app paper_tiled --device cuda --preset paper --gemm tiled
  for name in paper paper_fused paper_tiled; do
    if [ -f scripts/plot.py ] && [ -f "$OUT/$name.json" ]; then
      python3 scripts/plot.py "$OUT/$name.json" --out "$final/${name}_fig.png" > "$OUT/plot_$name.log" 2>&1 ||
        say "plot $name FAILED"
    fi
  done
fi

# What the fused step's building blocks cost here (bench/latency.cu): L2 round trips, fences,
# the split-K hand-off, grid.sync(), a K chunk of the tile. A few seconds.
if want latency && time_left "latency benchmark"; then
  stage "latency benchmark"
  timeout 60 build-gpu/bench/bench_latency --json "$OUT/latency.json" > "$OUT/latency.log" 2>&1
  say "bench_latency: exit $?"
  tee -a "$summary" < "$OUT/latency.log"
fi
# What the cluster design of docs/PERFORMANCE.md would cost here (bench/cluster.cu): cluster
# barriers, distributed shared memory, the reduce-scatter's L2 passes, an SM's arithmetic.
if want cluster && time_left "cluster benchmark"; then
  stage "cluster benchmark"
  timeout 60 build-gpu/bench/bench_cluster --json "$OUT/cluster.json" > "$OUT/cluster.log" 2>&1
  say "bench_cluster: exit $?"
  tee -a "$summary" < "$OUT/cluster.log"
fi
if want layers && time_left "layer benchmark"; then
  stage "layer benchmark"
  layers_args=(--json "$OUT/layers.json")
  cluster_runs "bench_layers' cluster design" || layers_args+=(--no-cluster)
  timeout 150 build-gpu/bench/bench_layers "${layers_args[@]}" > "$OUT/layers.log" 2>&1
  say "bench_layers: exit $?"
  grep -v "^forward\|^backward" "$OUT/layers.log" | tee -a "$summary"
fi
# The host's CPU cores, while we have them (the development machine has 2): the GEMMs of a step
# as the engine's slabs against OpenBLAS's own threads at 1, 2, 4, … threads (bench/cpu_gemm.cpp).
if want cpu && time_left "CPU GEMM benchmark"; then
  stage "CPU GEMM benchmark"
  timeout 90 build-gpu/bench/bench_cpu_gemm --json "$OUT/cpu_gemm.json" > "$OUT/cpu_gemm.log" 2>&1
  say "bench_cpu_gemm: exit $?"
  tee -a "$summary" < "$OUT/cpu_gemm.log"
fi
want cudnn && time_left "cudnn run" && run_app cudnn --device cuda --gemm cudnn
if want unfused && time_left "unfused run"; then
  run_app unfused --device cuda --fusion none
  run_app unfused_tiled --device cuda --fusion none --gemm tiled
fi

if want parity && time_left "parity"; then
  stage "parity"
  for engine in cublaslt tiled; do
    timeout 90 python3 bench/parity.py --engine "$app" --data "$MNIST_DIR" --device cuda --engine-args "--gemm $engine" \
      --json "$OUT/parity_$engine.json" > "$OUT/parity_$engine.log" 2>&1
    say "parity ($engine): exit $? — $(tail -3 "$OUT/parity_$engine.log" | tr '\n' ' ')"
  done
fi
if want bench && time_left "PyTorch comparison"; then
  stage "benchmark against PyTorch"
  timeout 240 python3 bench/compare.py --engine "$app" --data "$MNIST_DIR" --device cuda --repeats 1 \
    --faithful-epochs 1 --variants engine,faithful,fast,fast+cuda-graphs --timeout 150 \
    --engine-args="${GPU_CHECK_ENGINE_ARGS:-}" --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
  say "bench: exit $?"
  tail -15 "$OUT/bench.log" | tee -a "$summary"
fi

# Nsight Systems, where installed: every kernel of a 1+1-epoch run (graph nodes traced one by
# one), summed per kernel name, for each GEMM engine: where a training step's time goes.
if want profile && time_left "profile"; then
  stage "profile"
  if command -v nsys > /dev/null; then
    for engine in cublaslt tiled; do
      timeout 120 nsys profile --force-overwrite true --trace cuda --cuda-graph-trace node \
        --output "$OUT/profile_$engine" "$app" --data "$MNIST_DIR" --no-progress --device cuda --gemm "$engine" \
        --epochs-teacher 1 --epochs-distill 1 > "$OUT/profile_$engine.log" 2>&1
      timeout 60 nsys stats --force-export true --report cuda_gpu_kern_sum --format csv \
        --output "$OUT/profile_$engine" "$OUT/profile_$engine.nsys-rep" >> "$OUT/profile_$engine.log" 2>&1
      csv=$(ls "$OUT"/profile_"$engine"*kern_sum*.csv 2>/dev/null | head -1)
      if [ -n "$csv" ]; then
        cp "$csv" "$final/profile_$engine.csv"
        say "profile ($engine), top kernels by GPU time (1+1 epochs):"
        python3 - "$csv" <<'PY' | tee -a "$summary"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
total = sum(float(r["Total Time (ns)"]) for r in rows)
for r in rows[:14]:
    t = float(r["Total Time (ns)"])
    print(f"  {100 * t / total:5.1f}%  {int(r['Instances']):6d} x {float(r['Avg (ns)']) / 1000:7.2f} us  {r['Name'][:90]}")
print(f"  total {total / 1e9:.3f} s of kernel time in {sum(int(r['Instances']) for r in rows)} launches")
PY
      else
        say "profile ($engine): no kernel summary (see profile_$engine.log)"
      fi
    done
  else
    say "profile: nsys is not installed here"
  fi
fi

# Nsight Compute, where installed: why the fused step's warps wait. One teacher step at batch 256
# (bench_layers --fused-only's sixth launch), the warp-state breakdown per issued instruction:
# long_scoreboard is waiting on L2/memory loads, barrier on __syncthreads or the grid barrier's,
# membar on the release side of the split-K hand-off and of the grid barrier.
# docs/PERFORMANCE.md's phase table says where the time goes; this says what the warps are
# doing meanwhile.
if want stalls && time_left "stalls"; then
  stage "stalls (ncu)"
  if command -v ncu > /dev/null; then
    timeout 240 ncu --kernel-name regex:fused_step_kernel --launch-skip 5 --launch-count 1 \
      --section LaunchStats --section Occupancy --section WarpStateStats \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      build-gpu/bench/bench_layers --fused-only > "$OUT/stalls.log" 2>&1
    say "stalls: exit $?"
    grep -E "stalled_|Warp Cycles Per Issued|Registers Per Thread|Achieved Occupancy|Block Limit" "$OUT/stalls.log" |
      head -40 | tee -a "$summary"
    # The same for the cluster design's first kernel (bench_layers' designs table: a teacher
    # step at batch 256), on GPUs that have clusters.
    if time_left "stalls, cluster design" && cluster_runs "stalls, cluster design"; then
      timeout 120 ncu --kernel-name regex:cluster_rows_kernel --launch-skip 5 --launch-count 1 \
        --section LaunchStats --section Occupancy --section WarpStateStats \
        --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
        build-gpu/bench/bench_layers --fused-only > "$OUT/stalls_cluster.log" 2>&1
      say "stalls (cluster design): exit $?"
      grep -E "stalled_|Warp Cycles Per Issued|Registers Per Thread|Achieved Occupancy|Block Limit" \
        "$OUT/stalls_cluster.log" | head -40 | tee -a "$summary"
    fi
  else
    say "stalls: ncu is not installed here"
  fi
fi

# compute-sanitizer: memcheck over GEMMs (both engines), noise, losses and graph replay (not
# CudaOps.OutOfMemoryNamesTheBytes: its deliberate failed cudaMallocAsync counts as an API error);
# racecheck (much slower) over the kernels that share memory between threads: the per-model
# loss reductions, the tiled GEMM and the fused step.
sanitize() {  # tool, gtest filter
  local tool=$1 filter=$2
  stage "compute-sanitizer $tool"
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 build-gpu/tests/test_cuda \
    --gtest_filter="$filter" > "$OUT/sanitize_$tool.log" 2>&1
  say "compute-sanitizer $tool: exit $? — $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" |
    sort | uniq -c | tr '\n' ' ')"
}
want memcheck && time_left "compute-sanitizer memcheck" && sanitize memcheck \
  '*CudaGemm.ForwardMatchesCpu/N1_B37*:*CudaGemm.BackwardInputMatchesCpu/N3_B37*:*CudaOps.UniformNoise*:*CudaOps.CrossEntropy*:*CudaOps.Distill*:*CudaStepGraph*:*CudaTiledGemm*:*CudaOps.BatchPastTheEnd*:*CudaFusedStep*odd_N3*'
want racecheck && time_left "compute-sanitizer racecheck" && sanitize racecheck \
  'CudaOps.CrossEntropyMatchesCpu:CudaOps.DistillMatchesCpu:CudaOps.KlDivMatchesCpu:CudaTiledGemm.*:*CudaGemm.*/N3_B37_I53_O29_tiled:*CudaFusedStep.*odd_N3_B37_*'
say "total $(( $(date +%s) - t0 )) s"
