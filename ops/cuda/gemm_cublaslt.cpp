// ops/cuda/gemm_cublaslt.cpp — the Linear GEMMs on cuBLASLt, with fused epilogues.
//
// Row-major to column-major. cuBLASLt is column-major; a row-major R×C buffer is a
// column-major C×R matrix. So every product is computed transposed (../shared/docs/REFERENCE.md §3):
//
//   kind             row-major meaning            A (stored, op)   B (stored, op)   m  n  k   epilogue
//   forward          y = act(x·wᵀ + b)            w  I×O, T        x  I×B, N        O  B  I   [RELU_AUX_]BIAS
//   backward_input   dx = (dy·w) ⊙ relu'(prev)    w  I×O, N        dy O×B, N        I  B  O   DRELU[_BGRAD]
//   backward_weight  dw = dyᵀ·x                   x  I×B, N        dy O×B, T        I  O  B   BGRADB
//
// D is m×n column-major with ld = m, i.e. exactly the row-major output buffer. Bias vectors
// have length m (BIAS, DRELU_BGRAD) or n (BGRADB). The ReLU mask has one column per sample
// and ld = roundup(rows, 128) bits. With N models each matrix, bias and mask advances by its
// batch stride.
//
// Plans (descriptors, layouts and the heuristic's algorithm) are built once per shape and
// cached: a heuristic query costs tens of microseconds, a training step a few hundred
// nanoseconds of host time per GEMM. If cuBLASLt offers no algorithm for a fused epilogue,
// the GEMM runs with the DEFAULT epilogue followed by our own epilogue kernels
// (ops/cuda/epilogue.cu), and the fallback is reported once.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <compare>
#include <cstdint>
#include <map>
#include <set>

#include "engine/cuda/check.h"
#include "engine/cuda/runtime.h"
#include "ops/cuda/gemm_cuda.h"

namespace subliminal::cuda {
namespace {

enum class Kind { forward, backward_input, backward_weight };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::forward:
      return "forward";
    case Kind::backward_input:
      return "backward_input";
    case Kind::backward_weight:
      return "backward_weight";
  }
  return "?";
}

const char* epilogue_name(cublasLtEpilogue_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT:
      return "DEFAULT";
    case CUBLASLT_EPILOGUE_BIAS:
      return "BIAS";
    case CUBLASLT_EPILOGUE_RELU_AUX:
      return "RELU_AUX";
    case CUBLASLT_EPILOGUE_RELU_AUX_BIAS:
      return "RELU_AUX_BIAS";
    case CUBLASLT_EPILOGUE_DRELU:
      return "DRELU";
    case CUBLASLT_EPILOGUE_DRELU_BGRAD:
      return "DRELU_BGRAD";
    case CUBLASLT_EPILOGUE_BGRADB:
      return "BGRADB";
    default:
      return "other";
  }
}

// Largest power of two (≤ 256) dividing the address: cuBLASLt picks kernels by alignment.
uint32_t alignment_of(const void* p) {
  if (!p) return 256;
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 1;
  while (align < 256 && (a & (2 * align - 1)) == 0) align *= 2;
  return align;
}

struct PlanKey {
  Kind kind;
  int64_t models, batch, in, out;
  cublasLtEpilogue_t epilogue;
  bool accumulate, tf32;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;
  auto operator<=>(const PlanKey&) const = default;
};

// Where the operands of one kind sit, in column-major terms.
struct Geometry {
  cublasOperation_t op_a, op_b;
  int64_t m, n, k;
  int64_t a_rows, a_cols, b_rows, b_cols;  // as stored, before op
  int64_t stride_a, stride_b, stride_d;    // elements between consecutive models
  int64_t bias_stride;                     // elements between models' bias vectors
  int64_t aux_rows;                        // features the ReLU mask covers (rows of its matrix)
};

Geometry geometry(Kind kind, const gemm::Dims& d) {
  const int64_t B = d.batch, I = d.in, O = d.out;
  switch (kind) {
    case Kind::forward:
      return {CUBLAS_OP_T, CUBLAS_OP_N, O, B, I, I, O, I, B, O * I, B * I, B * O, O, O};
    case Kind::backward_input:
      return {CUBLAS_OP_N, CUBLAS_OP_N, I, B, O, I, O, O, B, O * I, B * O, B * I, I, I};
    case Kind::backward_weight:
      return {CUBLAS_OP_N, CUBLAS_OP_T, I, O, B, I, B, O, B, B * I, B * O, O * I, O, 0};
  }
  throw Error("bad GEMM kind");
}

// The device pointers of one GEMM call, in cuBLASLt's operand order.
struct Operands {
  const float* a;
  const float* b;
  float* d;
  const void* bias;
  const void* aux;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool supported = false;
};

template <class V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

cublasLtMatrixLayout_t make_layout(int64_t rows, int64_t cols, int64_t models, int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, uint64_t(rows), uint64_t(cols), rows));
  if (models > 1) {
    int32_t count = int32_t(models);
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                  &stride, sizeof(stride)));
  }
  return layout;
}

bool has_bias(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_BIAS || e == CUBLASLT_EPILOGUE_RELU_AUX_BIAS ||
         e == CUBLASLT_EPILOGUE_DRELU_BGRAD || e == CUBLASLT_EPILOGUE_BGRADB;
}
bool has_aux(cublasLtEpilogue_t e) {
  return e == CUBLASLT_EPILOGUE_RELU_AUX || e == CUBLASLT_EPILOGUE_RELU_AUX_BIAS ||
         e == CUBLASLT_EPILOGUE_DRELU || e == CUBLASLT_EPILOGUE_DRELU_BGRAD;
}

class PlanCache {
 public:
  // The plan for `key`, built on first use from this call's operands: the heuristic takes
  // A, B and D's alignment from the preference below and the bias and aux pointers' from the
  // descriptor (cublasLt.h: it reads their values, not what they point at); autotuning runs
  // the candidates on them.
  Plan& get(const PlanKey& key, const gemm::Dims& dims, const Operands& ops) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    return plans_.emplace(key, build(key, dims, ops)).first->second;
  }

  void note_fallback(const PlanKey& key) {
    fallbacks_.insert(std::string("cuBLASLt offers no ") + epilogue_name(key.epilogue) + " algorithm for " +
                      kind_name(key.kind) + " (N=" + std::to_string(key.models) +
                      ", B=" + std::to_string(key.batch) + ", I=" + std::to_string(key.in) +
                      ", O=" + std::to_string(key.out) + "): plain GEMM + separate epilogue kernels");
  }
  std::string report() const {
    std::string r;
    for (const std::string& line : fallbacks_) r += line + "\n";
    return r;
  }

 private:
  Plan build(const PlanKey& key, const gemm::Dims& dims, const Operands& ops) {
    const void* bias = ops.bias;
    const void* aux = ops.aux;
    Runtime& rt = Runtime::get();
    Geometry g = geometry(key.kind, dims);
    Plan p;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(
        &p.desc, key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(g.op_a));
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(g.op_b));
    set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, key.epilogue);
    if (has_bias(key.epilogue)) {
      set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
      if (key.models > 1) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, g.bias_stride);
    }
    if (has_aux(key.epilogue)) {
      int64_t ld_bits = gemm::mask_row_bits(g.aux_rows);
      set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
      set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, ld_bits);
      if (key.models > 1)
        set_desc(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, ld_bits * dims.batch);
    }
    p.a = make_layout(g.a_rows, g.a_cols, key.models, g.stride_a);
    p.b = make_layout(g.b_rows, g.b_cols, key.models, g.stride_b);
    p.d = make_layout(g.m, g.n, key.models, g.stride_d);

    cublasLtMatmulPreference_t pref = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t workspace = rt.workspace_bytes();
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &workspace, sizeof(workspace)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attr, value] : alignments)
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));

    cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
    int returned = 0;
    // An unsupported epilogue/shape shows up as NOT_SUPPORTED or zero results: not an error.
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(rt.cublaslt(), p.desc, p.a, p.b, p.d, p.d, pref,
                                                           kCandidates, results, &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) CUBLAS_CHECK(status);
    if (status != CUBLAS_STATUS_SUCCESS || returned == 0) return p;
    p.supported = true;
    p.algo = results[0].algo;
    if (returned > 1 && gemm::settings().autotune && !rt.capturing())
      p.algo = fastest(p, results, returned, key, dims, ops);
    return p;
  }

  // Autotuning: the heuristic ranks algorithms by a model; for these small, latency-bound
  // GEMMs its first choice is often not the fastest (too few thread blocks for 132 SMs,
  // no split-K). Time each candidate a few times on this call's operands — writing into a
  // scratch output, so an accumulating GEMM's real output is untouched (bias-gradient and mask
  // outputs are written, and then overwritten by the real call) — and keep the best.
  cublasLtMatmulAlgo_t fastest(Plan& p, const cublasLtMatmulHeuristicResult_t* results, int count,
                               const PlanKey& key, const gemm::Dims& dims, const Operands& ops) {
    Runtime& rt = Runtime::get();
    Geometry g = geometry(key.kind, dims);
    const size_t d_bytes = size_t(g.m * g.n * key.models) * sizeof(float);
    // The scratch output and the two events, released however the timing ends (a failed check
    // throws out of the loop).
    struct TimingResources {
      cudaStream_t stream;
      void* scratch = nullptr;
      cudaEvent_t start = nullptr, stop = nullptr;
      ~TimingResources() {
        if (start) cudaEventDestroy(start);
        if (stop) cudaEventDestroy(stop);
        if (scratch) cudaFreeAsync(scratch, stream);
      }
    } timing{rt.stream()};
    CUDA_CHECK(cudaMallocAsync(&timing.scratch, d_bytes, rt.stream()));
    CUDA_CHECK(cudaMemsetAsync(timing.scratch, 0, d_bytes, rt.stream()));
    CUDA_CHECK(cudaEventCreate(&timing.start));
    CUDA_CHECK(cudaEventCreate(&timing.stop));
    void* const scratch = timing.scratch;
    const cudaEvent_t start = timing.start, stop = timing.stop;
    const float alpha = 1.0f, beta = key.accumulate ? 1.0f : 0.0f;
    float best_ms = 0;
    int best = -1;
    for (int i = 0; i < count; ++i) {
      auto launch = [&] {
        return cublasLtMatmul(rt.cublaslt(), p.desc, &alpha, ops.a, p.a, ops.b, p.b, &beta, scratch, p.d,
                              scratch, p.d, &results[i].algo, rt.workspace(), rt.workspace_bytes(),
                              rt.stream());
      };
      if (launch() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that cannot run is skipped
      CUDA_CHECK(cudaEventRecord(start, rt.stream()));
      bool ran = true;
      for (int r = 0; r < kTimingRuns; ++r) ran = ran && launch() == CUBLAS_STATUS_SUCCESS;
      CUDA_CHECK(cudaEventRecord(stop, rt.stream()));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (ran && (best < 0 || ms < best_ms)) best_ms = ms, best = i;
    }
    if (best < 0) best = 0;  // nothing ran: keep the heuristic's choice; the real call reports why
    tuned_.push_back(std::string(kind_name(key.kind)) + " " + epilogue_name(key.epilogue) +
                     " N=" + std::to_string(key.models) + " B=" + std::to_string(key.batch) +
                     " I=" + std::to_string(key.in) + " O=" + std::to_string(key.out) + ": candidate " +
                     std::to_string(best + 1) + " of " + std::to_string(count) + ", " +
                     std::to_string(1000.0 * best_ms / kTimingRuns) + " us");
    return results[best].algo;
  }

 public:
  const std::vector<std::string>& tuned() const { return tuned_; }

 private:
  static constexpr int kCandidates = 8;
  static constexpr int kTimingRuns = 10;
  std::vector<std::string> tuned_;

  std::map<PlanKey, Plan> plans_;
  std::set<std::string> fallbacks_;
};

PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache;  // lives as long as the runtime (never destroyed)
  return *cache;
}

// Runs one GEMM of `kind` with `epilogue` if cuBLASLt supports it; returns false otherwise
// (nothing was queued). a/b are the operand pointers in cuBLASLt's order (see the table).
bool try_matmul(Kind kind, cublasLtEpilogue_t epilogue, const float* a, const float* b, float* d,
                bool accumulate, const void* bias, const void* aux, const gemm::Dims& dims,
                const gemm::Settings& s) {
  PlanKey key{kind,
              dims.models,
              dims.batch,
              dims.in,
              dims.out,
              epilogue,
              accumulate,
              s.tf32,
              alignment_of(a),
              alignment_of(b),
              alignment_of(d),
              alignment_of(bias),
              alignment_of(aux)};
  PlanCache& cache = plan_cache();
  Plan& plan = cache.get(key, dims, Operands{a, b, d, bias, aux});
  if (!plan.supported) {
    if (epilogue != CUBLASLT_EPILOGUE_DEFAULT) cache.note_fallback(key);
    return false;
  }
  // The cached descriptor still holds the pointers of the call that built it; a plan is keyed
  // by their alignment, not their address, so each call sets its own (A, B and D are arguments).
  if (has_bias(epilogue)) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  if (has_aux(epilogue)) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
  Runtime& rt = Runtime::get();
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(rt.cublaslt(), plan.desc, &alpha, a, plan.a, b, plan.b, &beta, d, plan.d, d,
                              plan.d, &plan.algo, rt.workspace(), rt.workspace_bytes(), rt.stream()));
  return true;
}

void plain_matmul(Kind kind, const float* a, const float* b, float* d, bool accumulate,
                  const gemm::Dims& dims, const gemm::Settings& s) {
  if (!try_matmul(kind, CUBLASLT_EPILOGUE_DEFAULT, a, b, d, accumulate, nullptr, nullptr, dims, s))
    throw DeviceError(std::string("cuBLASLt offers no algorithm for the plain ") + kind_name(kind) +
                      " GEMM (N=" + std::to_string(dims.models) + ", B=" + std::to_string(dims.batch) +
                      ", I=" + std::to_string(dims.in) + ", O=" + std::to_string(dims.out) + ")");
}

}  // namespace

// With --gemm cudnn, each GEMM asks cuDNN first. The cuDNN forward graph keeps no ReLU
// mask, so one small kernel derives it from y (y > 0 exactly where the pre-activation was):
// a backward GEMM that cuDNN cannot run then still finds the mask cuBLASLt needs.
static bool use_cudnn(const gemm::Settings& s) {
#ifdef SUBLIMINAL_HAS_CUDNN
  return s.engine == gemm::GpuEngine::cudnn;
#else
  return false;
#endif
}

// With --gemm tiled, our own kernels do the products; with --fusion none they still run the
// epilogue pieces as separate kernels, so the unfused path stays the same reference.
static bool use_tiled(const gemm::Settings& s) { return s.engine == gemm::GpuEngine::tiled; }

void linear_forward(const float* x, const float* w, const float* bias, bool relu, float* y, uint8_t* mask,
                    gemm::Dims d, const gemm::Settings& s) {
  if (use_tiled(s)) {
    if (s.fuse_epilogues) return tiled_linear_forward(x, w, bias, relu, y, mask, d);
    tiled_linear_forward(x, w, nullptr, false, y, nullptr, d);
    if (bias || relu) bias_activation(y, bias, relu, mask, d.models, d.batch, d.out);
    return;
  }
  // cuDNN's forward graph always adds a bias: a layer without one goes to cuBLASLt.
  if (use_cudnn(s) && bias && cudnn_linear_forward(x, w, bias, relu, y, d)) {
    if (relu) bias_activation(y, nullptr, true, mask, d.models, d.batch, d.out);
    return;
  }
  cublasLtEpilogue_t epilogue = relu ? (bias ? CUBLASLT_EPILOGUE_RELU_AUX_BIAS : CUBLASLT_EPILOGUE_RELU_AUX)
                                     : (bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT);
  if (s.fuse_epilogues && try_matmul(Kind::forward, epilogue, w, x, y, false, bias, mask, d, s)) return;
  plain_matmul(Kind::forward, w, x, y, false, d, s);
  if (bias || relu) bias_activation(y, bias, relu, mask, d.models, d.batch, d.out);
}

void linear_backward_input(const float* dy, const float* w, const uint8_t* prev_mask,
                           const float* prev_output, float* dx, float* dbias_prev, bool accumulate,
                           gemm::Dims d, const gemm::Settings& s) {
  if (use_tiled(s)) {
    if (s.fuse_epilogues) return tiled_linear_backward_input(dy, w, prev_mask, dx, dbias_prev, accumulate, d);
    tiled_linear_backward_input(dy, w, nullptr, dx, nullptr, accumulate, d);
    if (prev_mask) apply_relu_mask(dx, prev_mask, d.models, d.batch, d.in);
    if (dbias_prev) bias_gradient(dx, dbias_prev, d.models, d.batch, d.in);
    return;
  }
  if (use_cudnn(s) && prev_mask && prev_output && !accumulate &&
      cudnn_linear_backward_input(dy, w, prev_output, dx, dbias_prev, d))
    return;
  // An epilogue applies to α·A·B + β·C as a whole, so DRELU would gate what dx already holds
  // too: it fuses an overwrite only. An accumulating call never brings a mask here anyway
  // (ops/gemm.cpp computes that one into a temporary and adds it), so neither does the
  // fallback's apply_relu_mask below gate old contents.
  if (prev_mask && !accumulate) {
    cublasLtEpilogue_t epilogue = dbias_prev ? CUBLASLT_EPILOGUE_DRELU_BGRAD : CUBLASLT_EPILOGUE_DRELU;
    if (s.fuse_epilogues &&
        try_matmul(Kind::backward_input, epilogue, w, dy, dx, false, dbias_prev, prev_mask, d, s))
      return;
  }
  plain_matmul(Kind::backward_input, w, dy, dx, accumulate, d, s);
  if (prev_mask) apply_relu_mask(dx, prev_mask, d.models, d.batch, d.in);
  if (dbias_prev) bias_gradient(dx, dbias_prev, d.models, d.batch, d.in);
}

void linear_backward_weight(const float* dy, const float* x, float* dw, bool accumulate, float* dbias,
                            gemm::Dims d, const gemm::Settings& s) {
  if (use_tiled(s)) {
    tiled_linear_backward_weight(dy, x, dw, accumulate, s.fuse_epilogues ? dbias : nullptr, d);
    if (dbias && !s.fuse_epilogues) bias_gradient(dy, dbias, d.models, d.batch, d.out);
    return;
  }
  if (use_cudnn(s) && cudnn_linear_backward_weight(dy, x, dw, accumulate, dbias, d)) return;
  if (dbias && s.fuse_epilogues &&
      try_matmul(Kind::backward_weight, CUBLASLT_EPILOGUE_BGRADB, x, dy, dw, accumulate, dbias, nullptr, d,
                 s))
    return;
  plain_matmul(Kind::backward_weight, x, dy, dw, accumulate, d, s);
  if (dbias) bias_gradient(dy, dbias, d.models, d.batch, d.out);
}

std::string gemm_fallback_report() { return plan_cache().report() + cudnn_report(); }

std::string gemm_tuning_report() {
  std::string r;
  for (const std::string& line : plan_cache().tuned()) r += line + "\n";
  return r;
}

}  // namespace subliminal::cuda
