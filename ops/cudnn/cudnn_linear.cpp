// ops/cudnn/cudnn_linear.cpp — every line of cuDNN code in the project (one translation unit,
// because cudnn_frontend.h takes ~10 s to compile on its own).
//
// How a call runs, e.g. linear_forward(x, w, bias, y, n, b, i, o, relu):
//   1. The op key ("forward[n1 b256 i784 o256 relu fp32]") is looked up in `ops`. The first time,
//      resolve() walks the op's *plans* in order — the most fused first — and builds every graph a
//      plan needs: validate → build_operation_graph → create_execution_plans(heuristics A) → drop
//      engines whose numerical notes we refuse → check_support → build the engine configs in
//      heuristic order, keeping the first that builds (and, in fp32 mode, passes the TF32 probe);
//      if none does, all of that once more with the FALLBACK heuristics. The first plan whose
//      graphs all build is kept; if none does, the op is marked unsupported and every later call
//      returns false at once. Built graphs are cached by shape and shared between ops.
//   2. Each graph of the kept plan is executed on the engine's stream with a variant pack
//      {uid → device pointer}; tensors carry fixed integer UIDs (enum Uid below).
//
// Plans tried, most fused first (see plans_for_*):
//   forward           fused:  y = act(matmul(x, wᵀ) + bias)                     1 graph
//                     split:  y = matmul(x, wᵀ);  y = act(y + bias)              matmul + pointwise-only
//   backward_input    fused:  dx = drelu(matmul(dy, w), y_prev) [; dbias = Σ_b dx as a reduction
//                             epilogue in the same graph]
//                     then the same without the reduction epilogue, the column sum done as its own
//                     graph; then split (matmul, pointwise-only drelu).
//   backward_weight   beta 0: dw = matmul(dyᵀ, x)                              1 graph
//                     beta 1: fused-accumulate: copy dw → scratch, dw = matmul(dyᵀ, x) + scratch
//                             split-accumulate: scratch = matmul(dyᵀ, x); dw = dw + scratch
//   column sums (dbias of either backward op, when asked for):
//                     reduce: a reduction-only graph (SUM over b);
//                     ones:   a matmul ones[n,1,b] · in[n,b,c] — needs only matmul support.
//
// What an H100 and an H200 with cuDNN 9.14 said (the test's describe_support() line):
//   TF32: every fused graph is supported (runtime-fusion engines eng4 / eng7, one kernel each).
//   fp32: no fused graph is: the matmul+pointwise engines all carry the TENSOR_CORE note. The plain
//         matmul engine eng0 builds, but for b = 256 it rounds to TF32 anyway (caught by the probe
//         below); for b = 37 it is true fp32. Pointwise-only graphs: "No execution plans support
//         the graph"; reduction-only graphs: "No valid engine configs" — as expected on Hopper.
//         With NVIDIA_TF32_OVERRIDE=0 in the environment eng0 is true fp32 at every shape tested,
//         and the runtime-fusion engines disappear ("No valid engine configs").
//   So in practice this engine is a TF32 engine on Hopper; fp32 falls back to cuBLASLt, except
//   the plain dw = dyᵀ·x (+ the ones-matmul column sum) at shapes where eng0 is true fp32.
//
// Aliasing: the split plans run pointwise graphs in place (in and out are the same buffer, bound to
// two UIDs). Each output element depends only on the same element of the inputs, so an elementwise
// kernel reads it before writing it. The fused-accumulate plan does NOT alias dw (it copies dw to a
// scratch buffer first): a matmul kernel that splits K could write a partial result before another
// part reads the old value.
//
// TF32: cuDNN has no TF32 data type; fp32 graphs may run on TF32 tensor cores, which cuDNN marks with
// the TENSOR_CORE numerical note. With Options::tf32 false we deselect those engines (as PyTorch does
// for allow_tf32 = false) and, because a note is not a guarantee, run each remaining fp32 matmul
// graph once on a probe that TF32 cannot get right (computes_in_fp32) before trusting it.
// DOWN_CONVERT_INPUTS and REDUCED_PRECISION_REDUCTION engines are always deselected.
#include "ops/cudnn/cudnn_linear.h"

// The CUDA 13 overloads must be declared before the frontend is parsed (separate include blocks, so
// that clang-format keeps this order).
#include "ops/cudnn/cuda13_compat.h"

#include <cudnn_frontend.h>  // cudnn_frontend::graph::Graph, Tensor_attributes, *_attributes

#include <cuda_runtime_api.h>  // cudaMallocAsync, cudaMemcpyAsync, device properties
#include <cudnn.h>             // cudnnHandle_t, cudnnGetVersion

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/cuda/check.h"  // CUDA_CHECK, CUDNN_CHECK → DeviceError with call/file/line
#include "engine/error.h"       // DeviceError, ShapeError

namespace fe = cudnn_frontend;

namespace subliminal::cudnn {
namespace {

// ---- Frontend error checks ---------------------------------------------------------------------

// A failed frontend call (error_t) during execution: a real fault, thrown as DeviceError.
#define FE_CHECK(call)                                                                                     \
  do {                                                                                                     \
    fe::error_t fe_status_ = (call);                                                                       \
    if (fe_status_.is_bad())                                                                               \
      ::subliminal::cuda_detail::throw_device_error("cudnn-frontend", one_line(fe_status_.err_msg), #call, \
                                                    __FILE__, __LINE__, false);                            \
  } while (0)

// Frontend messages can span lines; describe_support() and exceptions want one.
std::string one_line(std::string text, size_t max_chars = 240) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  while (!text.empty() && text.back() == ' ') text.pop_back();
  if (text.size() > max_chars) text = text.substr(0, max_chars) + "...";
  return text.empty() ? "(no message)" : text;
}

// ---- Tensors -----------------------------------------------------------------------------------

// Every non-virtual tensor has a fixed UID; variant packs map these to device pointers. In-place
// pointwise graphs bind one buffer to two UIDs (kIn and kOut).
enum Uid : int64_t {
  kX = 1,   // layer input            [n,b,i]
  kW,       // weight                 [n,o,i]
  kBias,    // bias                   [n,1,o]
  kY,       // layer output           [n,b,o]
  kDy,      // gradient of y          [n,b,o]
  kYPrev,   // previous layer's post-ReLU output (= this layer's x) [n,b,i]
  kDx,      // gradient of x          [n,b,i]
  kDbias,   // a column sum           [n,1,c]
  kDw,      // weight gradient        [n,o,i]
  kDwOld,   // dw before accumulation [n,o,i]
  kOnes,    // all ones               [n,1,b]
  kIn,      // input of a pointwise-only / column-sum graph
  kOut,     // output of a pointwise-only graph
  kAddend,  // second input of the pointwise add
};

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;
using Dims = std::vector<int64_t>;

// Strides of a contiguous row-major [d0,d1,d2] tensor.
Dims row_major(const Dims& d) { return {d[1] * d[2], d[2], 1}; }

std::string dims_text(const Dims& d) {
  std::ostringstream t;  // (not string +=: g++ 12 -O3 false -Wrestrict, GCC PR 105329)
  t << "[";
  for (size_t k = 0; k < d.size(); ++k) t << (k ? "," : "") << d[k];
  t << "]";
  return t.str();
}

// Writes one graph, and checks what the frontend's validate() does not (it accepts a matmul whose
// K dims differ, and output dims we set ourselves): that every strided view stays inside its
// buffer, that matmul operands agree on K and the batch, and — after validate() has inferred them —
// that every output has the dims we expect, row-major. Those are the mistakes a transposed view
// invites, and this is the only check of the graphs that runs without a GPU.
struct GraphWriter {
  std::unique_ptr<fe::graph::Graph> graph = std::make_unique<fe::graph::Graph>();
  std::vector<std::pair<TensorPtr, Dims>> outputs;  // (tensor, expected dims)
  std::string problems;                             // found while writing; "" when none

  // A float32 input of dims `dim` viewed with `stride` in a buffer of `buffer_floats` elements.
  TensorPtr input(const char* name, Uid uid, const Dims& dim, const Dims& stride, int64_t buffer_floats) {
    int64_t last = 0;
    for (size_t k = 0; k < dim.size(); ++k) last += (dim[k] - 1) * stride[k];
    if (last + 1 > buffer_floats)
      problems += std::string(name) + " view " + dims_text(dim) + "/" + dims_text(stride) +
                  " reaches past its buffer of " + std::to_string(buffer_floats) + "; ";
    return graph->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim(dim)
                             .set_stride(stride)
                             .set_data_type(fe::DataType_t::FLOAT));
  }

  // [batch,M,K] · [batch,K,N] → [batch,M,N], accumulated in float32.
  TensorPtr matmul(const TensorPtr& a, const TensorPtr& b) {
    const Dims& da = a->get_dim();
    const Dims& db = b->get_dim();
    if (da.size() != 3 || db.size() != 3 || da[0] != db[0] || da[2] != db[1])
      problems += "matmul " + dims_text(da) + " x " + dims_text(db) + " does not chain; ";
    return graph->matmul(
        a, b, fe::graph::Matmul_attributes().set_name("matmul").set_compute_data_type(fe::DataType_t::FLOAT));
  }

  // Marks `t` as a graph output bound to `uid`, expected to be `expected`, row-major. Its dims are
  // left for validate() to infer (and then checked), except where inference cannot know them
  // (a reduction's output: set_dims).
  void output(const TensorPtr& t, const char* name, Uid uid, const Dims& expected, bool set_dims = false) {
    t->set_output(true).set_name(name).set_uid(uid).set_stride(row_major(expected));
    t->set_data_type(fe::DataType_t::FLOAT);
    if (set_dims) t->set_dim(expected);
    outputs.emplace_back(t, expected);
  }

  // Runs validate() and our checks: "" when the graph is well formed, else what is wrong.
  std::string validate() {
    std::string result;
    try {
      fe::error_t status = graph->validate();
      if (status.is_bad()) result = one_line(status.err_msg) + "; ";
    } catch (const fe::cudnnException& e) {
      result = one_line(e.what()) + "; ";
    }
    for (const auto& [t, expected] : outputs)
      if (t->get_dim() != expected || t->get_stride() != row_major(expected))
        result += t->get_name() + " is " + dims_text(t->get_dim()) + "/" + dims_text(t->get_stride()) +
                  ", expected " + dims_text(expected) + " row-major; ";
    result += problems;
    while (!result.empty() && (result.back() == ' ' || result.back() == ';')) result.pop_back();
    return result;
  }
};

// ---- The graphs --------------------------------------------------------------------------------

enum class Kind {
  kMatmulBiasAct,    // y = act(x·wᵀ + bias)
  kMatmulXWt,        // y = x·wᵀ
  kBiasAct,          // out = act(in + bias)                 pointwise only
  kMatmulDrelu,      // dx = (dy·w) ⊙ [y_prev > 0]
  kMatmulDreluSum,   // the same, plus dbias = Σ_b dx         reduction epilogue
  kMatmulDyW,        // dx = dy·w
  kDrelu,            // out = in ⊙ [y_prev > 0]               pointwise only
  kColumnSumReduce,  // out[n,1,c] = Σ_b in[n,b,c]           reduction only
  kColumnSumOnes,    // out[n,1,c] = ones[n,1,b] · in[n,b,c] matmul
  kMatmulDyTX,       // dw = dyᵀ·x
  kMatmulDyTXAdd,    // dw = dyᵀ·x + dw_old
  kAdd,              // out = in + addend                    pointwise only
};

bool has_matmul(Kind k) {
  return k != Kind::kBiasAct && k != Kind::kDrelu && k != Kind::kColumnSumReduce && k != Kind::kAdd;
}

// One graph for one shape. For the column sums, c is the column count and o is unused (0).
struct Spec {
  Kind kind;
  int64_t n, b, i, o;
  bool relu = false;  // kMatmulBiasAct, kBiasAct: relu or identity
  bool tf32 = false;  // matmul graphs only

  std::string name() const {
    switch (kind) {
      case Kind::kMatmulBiasAct:
        return relu ? "matmul_bias_relu" : "matmul_bias";
      case Kind::kMatmulXWt:
        return "matmul_xwT";
      case Kind::kBiasAct:
        return relu ? "bias_relu" : "bias";
      case Kind::kMatmulDrelu:
        return "matmul_drelu";
      case Kind::kMatmulDreluSum:
        return "matmul_drelu_colsum";
      case Kind::kMatmulDyW:
        return "matmul_dyw";
      case Kind::kDrelu:
        return "drelu";
      case Kind::kColumnSumReduce:
        return "colsum_reduce";
      case Kind::kColumnSumOnes:
        return "colsum_ones";
      case Kind::kMatmulDyTX:
        return "matmul_dyTx";
      case Kind::kMatmulDyTXAdd:
        return "matmul_dyTx_add";
      case Kind::kAdd:
        return "add";
    }
    return "?";
  }
  std::string key() const {
    std::ostringstream s;
    s << name() << " n" << n << " b" << b << " i" << i << " o" << o << (tf32 ? " tf32" : "");
    return s.str();
  }
};

Spec make_spec(Kind kind, int64_t n, int64_t b, int64_t i, int64_t o, bool relu, bool tf32) {
  // Only matmuls care about TF32; normalising lets tf32 and fp32 ops share pointwise graphs.
  return Spec{kind, n, b, i, o, relu, has_matmul(kind) && tf32};
}

fe::graph::Pointwise_attributes pointwise(const char* name, fe::PointwiseMode_t mode) {
  auto a = fe::graph::Pointwise_attributes().set_name(name).set_mode(mode).set_compute_data_type(
      fe::DataType_t::FLOAT);
  // ReLU forward: max(x, 0); backward: dy where x > 0, else 0 — relu'(0) = 0. Clip 0 is cuDNN's
  // default; set it so the convention is written down here.
  if (mode == fe::PointwiseMode_t::RELU_FWD || mode == fe::PointwiseMode_t::RELU_BWD)
    a.set_relu_lower_clip(0.0f);
  return a;
}

// Σ over the b axis (dim 1) of a [n,b,c] tensor into a [n,1,c] output.
void column_sum(GraphWriter& w, const TensorPtr& in, int64_t n, int64_t c) {
  auto sum = w.graph->reduction(in, fe::graph::Reduction_attributes()
                                        .set_name("colsum")
                                        .set_mode(fe::ReductionMode_t::ADD)
                                        .set_compute_data_type(fe::DataType_t::FLOAT));
  w.output(sum, "dbias", kDbias, {n, 1, c}, /*set_dims=*/true);
}

// Describes one graph (tensors and operations); nothing is sent to cuDNN yet.
GraphWriter describe_graph(const Spec& s) {
  GraphWriter w;
  w.graph->set_name(s.name())
      .set_io_data_type(fe::DataType_t::FLOAT)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  fe::graph::Graph& g = *w.graph;
  const int64_t n = s.n, b = s.b, i = s.i, o = s.o;
  // Buffer sizes, in floats, behind each kind of tensor.
  const int64_t nbi = n * b * i, nbo = n * b * o, noi = n * o * i;

  switch (s.kind) {
    case Kind::kMatmulBiasAct:
    case Kind::kMatmulXWt: {
      // x [n,b,i] · wᵀ [n,i,o] → [n,b,o]; wᵀ is a strided view of w [n,o,i].
      auto x = w.input("x", kX, {n, b, i}, row_major({n, b, i}), nbi);
      auto wt = w.input("w^T", kW, {n, i, o}, {o * i, 1, i}, noi);
      auto y = w.matmul(x, wt);
      if (s.kind == Kind::kMatmulBiasAct) {
        auto bias = w.input("bias", kBias, {n, 1, o}, {o, o, 1}, n * o);
        y = g.pointwise(y, bias, pointwise("add_bias", fe::PointwiseMode_t::ADD));
        if (s.relu) y = g.pointwise(y, pointwise("relu", fe::PointwiseMode_t::RELU_FWD));
      }
      w.output(y, "y", kY, {n, b, o});
      break;
    }
    case Kind::kBiasAct: {
      auto in = w.input("in", kIn, {n, b, o}, row_major({n, b, o}), nbo);
      auto bias = w.input("bias", kBias, {n, 1, o}, {o, o, 1}, n * o);
      auto y = g.pointwise(in, bias, pointwise("add_bias", fe::PointwiseMode_t::ADD));
      if (s.relu) y = g.pointwise(y, pointwise("relu", fe::PointwiseMode_t::RELU_FWD));
      w.output(y, "out", kOut, {n, b, o});
      break;
    }
    case Kind::kMatmulDrelu:
    case Kind::kMatmulDreluSum:
    case Kind::kMatmulDyW: {
      // dy [n,b,o] · w [n,o,i] → [n,b,i]
      auto dy = w.input("dy", kDy, {n, b, o}, row_major({n, b, o}), nbo);
      auto weight = w.input("w", kW, {n, o, i}, row_major({n, o, i}), noi);
      auto dx = w.matmul(dy, weight);
      if (s.kind != Kind::kMatmulDyW) {
        // RELU_BWD: input 0 is the incoming gradient, input 1 the forward value tested > 0.
        auto y_prev = w.input("y_prev", kYPrev, {n, b, i}, row_major({n, b, i}), nbi);
        dx = g.pointwise(dx, y_prev, pointwise("drelu", fe::PointwiseMode_t::RELU_BWD));
      }
      w.output(dx, "dx", kDx, {n, b, i});
      if (s.kind == Kind::kMatmulDreluSum) column_sum(w, dx, n, i);
      break;
    }
    case Kind::kDrelu: {
      auto in = w.input("in", kIn, {n, b, i}, row_major({n, b, i}), nbi);
      auto y_prev = w.input("y_prev", kYPrev, {n, b, i}, row_major({n, b, i}), nbi);
      auto out = g.pointwise(in, y_prev, pointwise("drelu", fe::PointwiseMode_t::RELU_BWD));
      w.output(out, "out", kOut, {n, b, i});
      break;
    }
    case Kind::kColumnSumReduce: {
      auto in = w.input("in", kIn, {n, b, i}, row_major({n, b, i}), nbi);
      column_sum(w, in, n, i);
      break;
    }
    case Kind::kColumnSumOnes: {
      // ones [n,1,b] · in [n,b,c] → [n,1,c]: a column sum that needs only matmul support.
      auto ones = w.input("ones", kOnes, {n, 1, b}, {b, b, 1}, n * b);
      auto in = w.input("in", kIn, {n, b, i}, row_major({n, b, i}), nbi);
      w.output(w.matmul(ones, in), "dbias", kDbias, {n, 1, i});
      break;
    }
    case Kind::kMatmulDyTX:
    case Kind::kMatmulDyTXAdd: {
      // dyᵀ [n,o,b] · x [n,b,i] → [n,o,i]; dyᵀ is a strided view of dy [n,b,o].
      auto dyt = w.input("dy^T", kDy, {n, o, b}, {b * o, 1, o}, nbo);
      auto x = w.input("x", kX, {n, b, i}, row_major({n, b, i}), nbi);
      auto dw = w.matmul(dyt, x);
      if (s.kind == Kind::kMatmulDyTXAdd) {
        auto dw_old = w.input("dw_old", kDwOld, {n, o, i}, row_major({n, o, i}), noi);
        dw = g.pointwise(dw, dw_old, pointwise("accumulate", fe::PointwiseMode_t::ADD));
      }
      w.output(dw, "dw", kDw, {n, o, i});
      break;
    }
    case Kind::kAdd: {
      auto in = w.input("in", kIn, {n, o, i}, row_major({n, o, i}), noi);
      auto addend = w.input("addend", kAddend, {n, o, i}, row_major({n, o, i}), noi);
      auto out = g.pointwise(in, addend, pointwise("add", fe::PointwiseMode_t::ADD));
      w.output(out, "out", kOut, {n, o, i});
      break;
    }
  }
  return w;
}

// ---- Plans: which graphs, in which order, implement one op -------------------------------------

struct Plan {
  std::string name;
  std::vector<Spec> graphs;  // run in this order
};

// Appends, for every plan in `heads`, one plan per column-sum method (the column sum runs last).
std::vector<Plan> with_column_sum(const std::vector<Plan>& heads, int64_t n, int64_t b, int64_t c) {
  std::vector<Plan> plans;
  for (const Plan& head : heads) {
    for (Kind sum : {Kind::kColumnSumReduce, Kind::kColumnSumOnes}) {
      Plan p = head;
      p.graphs.push_back(make_spec(sum, n, b, c, 0, false, false));
      p.name += sum == Kind::kColumnSumReduce ? "+colsum_reduce" : "+colsum_ones";
      plans.push_back(std::move(p));
    }
  }
  return plans;
}

std::vector<Plan> plans_for_forward(int64_t n, int64_t b, int64_t i, int64_t o, bool relu, bool tf32) {
  return {
      {"fused", {make_spec(Kind::kMatmulBiasAct, n, b, i, o, relu, tf32)}},
      {"split",
       {make_spec(Kind::kMatmulXWt, n, b, i, o, false, tf32),
        make_spec(Kind::kBiasAct, n, b, i, o, relu, tf32)}},
  };
}

std::vector<Plan> plans_for_backward_input(int64_t n, int64_t b, int64_t i, int64_t o, bool with_dbias,
                                           bool tf32) {
  std::vector<Plan> heads = {
      {"fused", {make_spec(Kind::kMatmulDrelu, n, b, i, o, false, tf32)}},
      {"split",
       {make_spec(Kind::kMatmulDyW, n, b, i, o, false, tf32),
        make_spec(Kind::kDrelu, n, b, i, o, false, tf32)}},
  };
  if (!with_dbias) return heads;
  std::vector<Plan> plans = {{"fused_colsum", {make_spec(Kind::kMatmulDreluSum, n, b, i, o, false, tf32)}}};
  for (Plan& p : with_column_sum(heads, n, b, i)) plans.push_back(std::move(p));
  return plans;
}

std::vector<Plan> plans_for_backward_weight(int64_t n, int64_t b, int64_t i, int64_t o, bool accumulate,
                                            bool with_dbias, bool tf32) {
  std::vector<Plan> heads;
  if (!accumulate) {
    heads = {{"matmul", {make_spec(Kind::kMatmulDyTX, n, b, i, o, false, tf32)}}};
  } else {
    heads = {
        {"fused_accumulate", {make_spec(Kind::kMatmulDyTXAdd, n, b, i, o, false, tf32)}},
        {"split_accumulate",
         {make_spec(Kind::kMatmulDyTX, n, b, i, o, false, tf32),
          make_spec(Kind::kAdd, n, b, i, o, false, tf32)}},
    };
  }
  // dbias = Σ_b dy reads an input of the matmul, not its output, so it cannot be an epilogue:
  // it is always its own graph.
  return with_dbias ? with_column_sum(heads, n, b, o) : heads;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_dims(const char* op, int64_t n, int64_t b, int64_t i, int64_t o) {
  if (n <= 0 || b <= 0 || i <= 0 || o <= 0) {
    std::ostringstream s;
    s << "cudnn::" << op << ": dimensions must be positive, got n=" << n << " b=" << b << " i=" << i
      << " o=" << o;
    throw ShapeError(s.str());
  }
}

void require(const void* p, const char* op, const char* what) {
  if (p == nullptr) throw ShapeError(std::string("cudnn::") + op + ": " + what + " is null");
}

// A device allocation that only grows, stream-ordered (cudaMallocAsync / cudaFreeAsync). As the
// engine's GrowOnlyBuffer (ops/cuda/grow_only_buffer.h), which this library cannot link: a
// grown-out allocation is kept until the engine goes, since a CUDA graph captured earlier may
// still point at it, and growing inside a capture is refused, naming the buffer (the graph
// would own the allocation). Each growth at least doubles, so all of them together hold less
// than twice the largest.
struct DeviceBuffer {
  const char* what;
  void* ptr = nullptr;
  size_t bytes = 0;
  std::vector<void*> retired;

  explicit DeviceBuffer(const char* name) : what(name) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Returns true when a new (uninitialised) allocation was made.
  bool reserve(size_t wanted, cudaStream_t stream) {
    if (wanted <= bytes) return false;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone)
      throw DeviceError(std::string("cudnn: the ") + what + " needs " + std::to_string(wanted) +
                        " bytes inside a CUDA graph capture (run the step once eagerly first)");
    const size_t grown = std::max(wanted, 2 * bytes);
    void* fresh = nullptr;
    CUDA_CHECK(cudaMallocAsync(&fresh, grown, stream));
    if (ptr != nullptr) retired.push_back(ptr);
    ptr = fresh;
    bytes = grown;
    return true;
  }
  void release(cudaStream_t stream) noexcept {
    for (void* old : retired) (void)cudaFreeAsync(old, stream);
    retired.clear();
    if (ptr != nullptr) (void)cudaFreeAsync(ptr, stream);
    ptr = nullptr;
    bytes = 0;
  }
};

}  // namespace

// ---- Engine ------------------------------------------------------------------------------------

struct Engine::Impl {
  // A graph built for this GPU, or the reason it could not be.
  struct Built {
    std::unique_ptr<fe::graph::Graph> graph;  // null when unsupported
    std::string failure;                      // "stage: message" when unsupported
    std::string engine;                       // the execution plan's name, when supported
    bool fallback_heuristics = false;         // built only with HeurMode_t::FALLBACK
    int64_t plan_index = -1;                  // which engine config runs (execute_plan_at_index)
    int64_t workspace = 0;                    // bytes, for that config
  };
  // An op's resolution: the plan that will run, or why none can.
  struct Resolved {
    std::string op;              // op key, for describe_support()
    const Plan* plan = nullptr;  // points into `plans`; null when unsupported
    std::vector<Plan> plans;     // every plan considered, in order
    std::vector<Built*> graphs;  // the kept plan's graphs
  };

  cudaStream_t stream = nullptr;
  cudnnHandle_t handle = nullptr;
  std::string device;  // "NVIDIA H100 80GB HBM3 (sm_90)"
  DeviceBuffer workspace{"workspace"}, ones{"vector of ones"}, scratch{"weight-gradient scratch"};
  size_t ones_count = 0;                                           // floats of `ones` filled with 1.0f
  std::unordered_map<std::string, std::unique_ptr<Built>> graphs;  // by Spec::key()
  std::map<std::string, Resolved> ops;                             // by op key
  std::vector<std::string> op_order;                               // first-seen order
  std::map<std::string, int> refusals;                             // "misaligned pointer" → count

  // Turns a frontend status into "" (good) or "stage: message" (not supported); faults that are
  // not about support (CUDA errors, a bad handle) throw.
  static std::string stage(const char* name, fe::error_t status) {
    if (status.is_good()) return "";
    if (status.code == fe::error_code_t::CUDA_API_FAILED || status.code == fe::error_code_t::HANDLE_ERROR ||
        status.code == fe::error_code_t::INVALID_CUDA_DEVICE)
      cuda_detail::throw_device_error("cudnn-frontend", one_line(status.err_msg), name, __FILE__, __LINE__,
                                      false);
    return std::string(name) + ": " + one_line(status.err_msg);
  }

  static std::string join(const std::vector<std::string>& parts) {
    std::string text;
    for (const std::string& p : parts) text += (text.empty() ? "" : ", ") + p;
    return text;
  }

  // validate → build_operation_graph → create_execution_plans → note filter → check_support, then
  // builds the engine configs one at a time in heuristic order (what build_plans does) and keeps
  // the first that builds — and, for an fp32 matmul graph, that passes the TF32 probe. Returns ""
  // on success (built.plan_index, engine, workspace set), else why not.
  std::string try_build(const Spec& spec, GraphWriter& w, fe::HeurMode_t heuristics, Built& built) {
    fe::graph::Graph& g = *w.graph;
    // Our graph descriptions are checked on the CPU by the tests: failing here is a bug.
    if (std::string problem = w.validate(); !problem.empty())
      cuda_detail::throw_device_error("cudnn-frontend", problem, "Graph::validate()", __FILE__, __LINE__,
                                      false);
    try {
      if (auto e = stage("build_operation_graph", g.build_operation_graph(handle)); !e.empty()) return e;
      if (auto e = stage("create_execution_plans", g.create_execution_plans({heuristics})); !e.empty())
        return e;
      const int64_t configs = g.get_execution_plan_count();
      if (configs == 0) return "create_execution_plans: no engine configs";
      std::vector<fe::NumericalNote_t> refused = {fe::NumericalNote_t::DOWN_CONVERT_INPUTS,
                                                  fe::NumericalNote_t::REDUCED_PRECISION_REDUCTION};
      if (!spec.tf32) refused.push_back(fe::NumericalNote_t::TENSOR_CORE);
      g.deselect_numeric_notes(refused);
      if (auto e = stage("check_support", g.check_support(handle)); !e.empty()) return e;

      const bool probe = !spec.tf32 && has_matmul(spec.kind);
      std::string last_failure = "build_plans: no engine config built";
      std::vector<std::string> rounded;  // engines the probe caught using TF32
      for (int64_t index = 0; index < configs; ++index) {
        if (auto e = stage("build_plans", g.build_plan_at_index(handle, index)); !e.empty()) {
          last_failure = e;
          continue;
        }
        std::string name;
        FE_CHECK(g.get_plan_name_at_index(index, name));
        int64_t bytes = 0;
        FE_CHECK(g.get_workspace_size_plan_at_index(index, bytes));
        if (probe && !computes_in_fp32(spec, g, index, bytes)) {
          rounded.push_back(name);
          continue;
        }
        built.plan_index = index;
        built.engine = name;
        built.workspace = bytes;
        if (!rounded.empty()) built.engine += " (TF32 probe rejected " + join(rounded) + ")";
        return "";
      }
      if (!rounded.empty())
        return "TF32 probe: " + join(rounded) + " rounded fp32 inputs to TF32, no true-fp32 engine";
      return last_failure;
    } catch (const fe::cudnnException& e) {
      return std::string("exception: ") + one_line(e.what());
    }
  }

  // The TF32 probe. cuDNN marks TF32 tensor-core engines with the TENSOR_CORE note, but on Hopper
  // (cuDNN 9.14, H100/H200) the generic matmul engine eng0 carries no such note and still rounds fp32
  // inputs to TF32 for some shapes (seen at b = 256: relative error 2.6e-4, TF32's, vs 1e-7 at
  // b = 37). So before an fp32 graph is trusted, it runs once on inputs where the two differ: all
  // zeros except the matmul's first operand [0,0,0] = 1 + 2⁻¹⁵ and second operand [0,0,0] = 1 (and
  // y_prev[0] = 1, opening the ReLU gate). Element 0 of every output must then be exactly 1 + 2⁻¹⁵;
  // TF32, with 10 mantissa bits, gives 1. The other terms are exact zeros, so no accumulation
  // order or split can change the sum.
  bool computes_in_fp32(const Spec& s, const fe::graph::Graph& g, int64_t plan_index,
                        int64_t workspace_bytes) {
    const int64_t n = s.n, b = s.b, i = s.i, o = s.o;
    std::vector<std::pair<Uid, int64_t>> tensors;  // (uid, floats) of every tensor in the graph
    Uid first = kX, second = kW;
    std::vector<Uid> gates, checked;
    switch (s.kind) {
      case Kind::kMatmulBiasAct:
      case Kind::kMatmulXWt:
        tensors = {{kX, n * b * i}, {kW, n * o * i}, {kY, n * b * o}};
        if (s.kind == Kind::kMatmulBiasAct) tensors.emplace_back(kBias, n * o);
        first = kX, second = kW, checked = {kY};
        break;
      case Kind::kMatmulDrelu:
      case Kind::kMatmulDreluSum:
      case Kind::kMatmulDyW:
        tensors = {{kDy, n * b * o}, {kW, n * o * i}, {kDx, n * b * i}};
        first = kDy, second = kW, checked = {kDx};
        if (s.kind != Kind::kMatmulDyW) {
          tensors.emplace_back(kYPrev, n * b * i);
          gates = {kYPrev};
        }
        if (s.kind == Kind::kMatmulDreluSum) {
          tensors.emplace_back(kDbias, n * i);
          checked.push_back(kDbias);
        }
        break;
      case Kind::kColumnSumOnes:
        tensors = {{kOnes, n * b}, {kIn, n * b * i}, {kDbias, n * i}};
        first = kOnes, second = kIn, checked = {kDbias};
        break;
      case Kind::kMatmulDyTX:
      case Kind::kMatmulDyTXAdd:
        tensors = {{kDy, n * b * o}, {kX, n * b * i}, {kDw, n * o * i}};
        if (s.kind == Kind::kMatmulDyTXAdd) tensors.emplace_back(kDwOld, n * o * i);
        first = kDy, second = kX, checked = {kDw};
        break;
      default:
        return true;  // no matmul
    }
    // One zeroed allocation, each tensor at a 256-byte-aligned offset.
    size_t total = 0;
    std::vector<size_t> offsets;
    for (const auto& [uid, floats] : tensors) {
      offsets.push_back(total);
      total += (static_cast<size_t>(floats) * sizeof(float) + 255) / 256 * 256;
    }
    DeviceBuffer buffer{"probe buffer"};
    buffer.reserve(total, stream);
    std::unordered_map<int64_t, void*> pack;
    for (size_t k = 0; k < tensors.size(); ++k)
      pack[tensors[k].first] = static_cast<char*>(buffer.ptr) + offsets[k];
    const float probe = 1.0f + 1.0f / 32768.0f, one = 1.0f;  // 1 + 2⁻¹⁵: 15 mantissa bits
    std::vector<float> got(checked.size());
    try {
      CUDA_CHECK(cudaMemsetAsync(buffer.ptr, 0, total, stream));
      CUDA_CHECK(cudaMemcpyAsync(pack[first], &probe, sizeof probe, cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaMemcpyAsync(pack[second], &one, sizeof one, cudaMemcpyHostToDevice, stream));
      for (Uid gate : gates)
        CUDA_CHECK(cudaMemcpyAsync(pack[gate], &one, sizeof one, cudaMemcpyHostToDevice, stream));
      workspace.reserve(static_cast<size_t>(std::max<int64_t>(workspace_bytes, 1)), stream);
      FE_CHECK(g.execute_plan_at_index(handle, pack, workspace.ptr, plan_index));
      for (size_t k = 0; k < checked.size(); ++k)
        CUDA_CHECK(cudaMemcpyAsync(&got[k], pack[checked[k]], sizeof(float), cudaMemcpyDeviceToHost, stream));
      // Also keeps `probe`, `one` and `got` alive until the copies are done.
      CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      buffer.release(stream);
      throw;
    }
    buffer.release(stream);
    return std::all_of(got.begin(), got.end(), [&](float v) { return v == probe; });
  }

  Built& build(const Spec& spec) {
    const std::string key = spec.key();
    if (auto it = graphs.find(key); it != graphs.end()) return *it->second;
    auto owned = std::make_unique<Built>();  // cached only once decided (a throw caches nothing)
    Built& built = *owned;
    // Heuristics A first; if it yields no usable engine, the FALLBACK list (slower engines,
    // broader support) — each attempt on a freshly described graph.
    for (fe::HeurMode_t mode : {fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}) {
      GraphWriter w = describe_graph(spec);
      std::string failure = try_build(spec, w, mode, built);
      if (failure.empty()) {
        built.fallback_heuristics = mode == fe::HeurMode_t::FALLBACK;
        built.failure.clear();
        built.graph = std::move(w.graph);
        break;
      }
      if (mode == fe::HeurMode_t::A) {
        built.failure = failure;  // report the first attempt's reason...
      } else if (failure.rfind("TF32 probe", 0) == 0) {
        built.failure += "; fallback heuristics: " + failure;  // ...and a probe verdict after it
      }
    }
    return *(graphs[key] = std::move(owned));
  }

  // Finds (once per op key) the first plan whose graphs all build; later calls are a map lookup.
  const Resolved& resolve(const std::string& op_key, std::vector<Plan> plans) {
    auto it = ops.find(op_key);
    if (it != ops.end()) return it->second;
    Resolved& r = ops[op_key];
    r.op = op_key;
    r.plans = std::move(plans);
    try {
      for (const Plan& plan : r.plans) {
        std::vector<Built*> built;
        bool ok = true;
        for (const Spec& spec : plan.graphs) {
          Built& b = build(spec);
          if (!b.graph) {
            ok = false;
            break;  // later graphs of this plan would be wasted build time
          }
          built.push_back(&b);
        }
        if (ok) {
          r.plan = &plan;
          r.graphs = std::move(built);
          break;
        }
      }
    } catch (...) {
      ops.erase(op_key);  // a fault, not a verdict on support: try again next call
      throw;
    }
    op_order.push_back(op_key);
    return r;
  }

  void execute(Built& built, std::unordered_map<int64_t, void*> pack) {
    workspace.reserve(static_cast<size_t>(std::max<int64_t>(built.workspace, 1)), stream);
    FE_CHECK(built.graph->execute_plan_at_index(handle, pack, workspace.ptr, built.plan_index));
  }

  // A device vector of at least `count` ones.
  float* ones_vector(size_t count) {
    if (count > ones_count) {  // only when the buffer grows, which reserve refuses inside a capture
      ones.reserve(count * sizeof(float), stream);
      const size_t filled = ones.bytes / sizeof(float);  // the whole (maybe doubled) buffer
      std::vector<float> host(filled, 1.0f);
      CUDA_CHECK(
          cudaMemcpyAsync(ones.ptr, host.data(), filled * sizeof(float), cudaMemcpyHostToDevice, stream));
      // Growth is rare; waiting here keeps `host` alive until the copy has read it.
      CUDA_CHECK(cudaStreamSynchronize(stream));
      ones_count = filled;
    }
    return static_cast<float*>(ones.ptr);
  }

  // Runs a column-sum graph: out[n,1,c] = Σ_b in[n,b,c].
  void column_sum(Built& built, Kind kind, const float* in, float* out, int64_t n, int64_t b) {
    std::unordered_map<int64_t, void*> pack = {{kIn, const_cast<float*>(in)}, {kDbias, out}};
    if (kind == Kind::kColumnSumOnes) pack[kOnes] = ones_vector(static_cast<size_t>(n * b));
    execute(built, std::move(pack));
  }

  void refuse(const std::string& why) { ++refusals[why]; }

  ~Impl() {
    ops.clear();
    graphs.clear();  // execution plans hold backend descriptors: release them before the handle
    workspace.release(stream);
    ones.release(stream);
    scratch.release(stream);
    if (handle != nullptr) (void)cudnnDestroy(handle);
  }
};

Engine::Engine(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  impl_->device =
      std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  CUDNN_CHECK(cudnnCreate(&impl_->handle));
  CUDNN_CHECK(cudnnSetStream(impl_->handle, stream));
}

Engine::~Engine() = default;  // ~Impl releases everything

namespace {
std::string op_key(const char* op, int64_t n, int64_t b, int64_t i, int64_t o, const char* flags, bool tf32) {
  std::ostringstream s;
  s << op << "[n" << n << " b" << b << " i" << i << " o" << o << (*flags ? " " : "") << flags
    << (tf32 ? " tf32" : " fp32") << "]";
  return s.str();
}
}  // namespace

bool Engine::linear_forward(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t b,
                            int64_t i, int64_t o, bool relu, Options options) {
  check_dims("linear_forward", n, b, i, o);
  require(x, "linear_forward", "x");
  require(w, "linear_forward", "w");
  require(bias, "linear_forward", "bias");
  require(y, "linear_forward", "y");
  if (!aligned16(x) || !aligned16(w) || !aligned16(bias) || !aligned16(y)) {
    impl_->refuse("pointer not 16-byte aligned");
    return false;
  }
  const auto& r = impl_->resolve(op_key("forward", n, b, i, o, relu ? "relu" : "identity", options.tf32),
                                 plans_for_forward(n, b, i, o, relu, options.tf32));
  if (r.plan == nullptr) return false;

  void* xp = const_cast<float*>(x);
  void* wp = const_cast<float*>(w);
  void* bp = const_cast<float*>(bias);
  if (r.plan->graphs[0].kind == Kind::kMatmulBiasAct) {
    impl_->execute(*r.graphs[0], {{kX, xp}, {kW, wp}, {kBias, bp}, {kY, y}});
  } else {  // split: y = x·wᵀ, then y = act(y + bias) in place
    impl_->execute(*r.graphs[0], {{kX, xp}, {kW, wp}, {kY, y}});
    impl_->execute(*r.graphs[1], {{kIn, y}, {kBias, bp}, {kOut, y}});
  }
  return true;
}

bool Engine::linear_backward_input(const float* dy, const float* w, const float* y_prev, float* dx,
                                   float* dbias_prev, int64_t n, int64_t b, int64_t i, int64_t o,
                                   Options options) {
  check_dims("linear_backward_input", n, b, i, o);
  require(dy, "linear_backward_input", "dy");
  require(w, "linear_backward_input", "w");
  require(y_prev, "linear_backward_input", "y_prev");
  require(dx, "linear_backward_input", "dx");
  if (!aligned16(dy) || !aligned16(w) || !aligned16(y_prev) || !aligned16(dx) ||
      (dbias_prev != nullptr && !aligned16(dbias_prev))) {
    impl_->refuse("pointer not 16-byte aligned");
    return false;
  }
  const bool with_dbias = dbias_prev != nullptr;
  const auto& r =
      impl_->resolve(op_key("backward_input", n, b, i, o, with_dbias ? "dbias" : "", options.tf32),
                     plans_for_backward_input(n, b, i, o, with_dbias, options.tf32));
  if (r.plan == nullptr) return false;

  void* dyp = const_cast<float*>(dy);
  void* wp = const_cast<float*>(w);
  void* yp = const_cast<float*>(y_prev);
  for (size_t k = 0; k < r.graphs.size(); ++k) {
    Impl::Built& g = *r.graphs[k];
    switch (r.plan->graphs[k].kind) {
      case Kind::kMatmulDreluSum:
        impl_->execute(g, {{kDy, dyp}, {kW, wp}, {kYPrev, yp}, {kDx, dx}, {kDbias, dbias_prev}});
        break;
      case Kind::kMatmulDrelu:
        impl_->execute(g, {{kDy, dyp}, {kW, wp}, {kYPrev, yp}, {kDx, dx}});
        break;
      case Kind::kMatmulDyW:
        impl_->execute(g, {{kDy, dyp}, {kW, wp}, {kDx, dx}});
        break;
      case Kind::kDrelu:  // in place on dx
        impl_->execute(g, {{kIn, dx}, {kYPrev, yp}, {kOut, dx}});
        break;
      case Kind::kColumnSumReduce:
      case Kind::kColumnSumOnes:
        impl_->column_sum(g, r.plan->graphs[k].kind, dx, dbias_prev, n, b);
        break;
      default:
        throw DeviceError("cudnn::linear_backward_input: unexpected graph in plan " + r.plan->name);
    }
  }
  return true;
}

bool Engine::linear_backward_weight(const float* dy, const float* x, float* dw, float* dbias, float beta,
                                    int64_t n, int64_t b, int64_t i, int64_t o, Options options) {
  check_dims("linear_backward_weight", n, b, i, o);
  require(dy, "linear_backward_weight", "dy");
  require(x, "linear_backward_weight", "x");
  require(dw, "linear_backward_weight", "dw");
  if (beta != 0.0f && beta != 1.0f) {
    impl_->refuse("backward_weight beta other than 0 or 1");
    return false;
  }
  if (!aligned16(dy) || !aligned16(x) || !aligned16(dw) || (dbias != nullptr && !aligned16(dbias))) {
    impl_->refuse("pointer not 16-byte aligned");
    return false;
  }
  const bool accumulate = beta == 1.0f;
  const bool with_dbias = dbias != nullptr;
  std::string flags = std::string(accumulate ? "beta1" : "beta0") + (with_dbias ? " dbias" : "");
  const auto& r = impl_->resolve(op_key("backward_weight", n, b, i, o, flags.c_str(), options.tf32),
                                 plans_for_backward_weight(n, b, i, o, accumulate, with_dbias, options.tf32));
  if (r.plan == nullptr) return false;

  void* dyp = const_cast<float*>(dy);
  void* xp = const_cast<float*>(x);
  const size_t dw_bytes = static_cast<size_t>(n * o * i) * sizeof(float);
  const bool split_accumulate = std::any_of(r.plan->graphs.begin(), r.plan->graphs.end(),
                                            [](const Spec& s) { return s.kind == Kind::kAdd; });
  for (size_t k = 0; k < r.graphs.size(); ++k) {
    Impl::Built& g = *r.graphs[k];
    switch (r.plan->graphs[k].kind) {
      case Kind::kMatmulDyTX:
        if (split_accumulate) {  // scratch = dyᵀ·x, added to dw by the next graph
          impl_->scratch.reserve(dw_bytes, impl_->stream);
          impl_->execute(g, {{kDy, dyp}, {kX, xp}, {kDw, impl_->scratch.ptr}});
        } else {
          impl_->execute(g, {{kDy, dyp}, {kX, xp}, {kDw, dw}});
        }
        break;
      case Kind::kMatmulDyTXAdd:  // dw = dyᵀ·x + copy of dw (no aliasing inside the matmul)
        impl_->scratch.reserve(dw_bytes, impl_->stream);
        CUDA_CHECK(
            cudaMemcpyAsync(impl_->scratch.ptr, dw, dw_bytes, cudaMemcpyDeviceToDevice, impl_->stream));
        impl_->execute(g, {{kDy, dyp}, {kX, xp}, {kDwOld, impl_->scratch.ptr}, {kDw, dw}});
        break;
      case Kind::kAdd:  // dw += scratch, in place
        impl_->execute(g, {{kIn, dw}, {kAddend, impl_->scratch.ptr}, {kOut, dw}});
        break;
      case Kind::kColumnSumReduce:
      case Kind::kColumnSumOnes:
        impl_->column_sum(g, r.plan->graphs[k].kind, dy, dbias, n, b);
        break;
      default:
        throw DeviceError("cudnn::linear_backward_weight: unexpected graph in plan " + r.plan->name);
    }
  }
  return true;
}

std::string library_version() {
  const size_t v = cudnnGetVersion();
  std::ostringstream s;
  s << "cuDNN " << v / 10000 << "." << (v % 10000) / 100 << "." << v % 100 << " (frontend "
    << CUDNN_FRONTEND_MAJOR_VERSION << "." << CUDNN_FRONTEND_MINOR_VERSION << "."
    << CUDNN_FRONTEND_PATCH_VERSION << ")";
  return s.str();
}

std::string Engine::describe_support() const {
  const Impl& m = *impl_;
  std::ostringstream s;
  s << library_version() << " on " << m.device << ":";
  if (m.op_order.empty()) s << " no ops run yet";
  for (const std::string& key : m.op_order) {
    const Impl::Resolved& r = m.ops.at(key);
    s << " " << key << " ";
    if (r.plan != nullptr) {
      s << r.plan->name << " (";
      for (size_t k = 0; k < r.graphs.size(); ++k) {
        s << (k ? ", " : "") << r.plan->graphs[k].name() << "=" << r.graphs[k]->engine
          << (r.graphs[k]->fallback_heuristics ? " via fallback heuristics" : "");
      }
      s << ")";
    } else {
      s << "UNSUPPORTED";
    }
    // Why the plans before the kept one (or all, when none) were skipped: each failed graph once.
    std::vector<std::string> reasons;
    for (const Plan& plan : r.plans) {
      if (&plan == r.plan) break;
      for (const Spec& spec : plan.graphs) {
        auto it = m.graphs.find(spec.key());
        if (it == m.graphs.end() || it->second->graph) continue;
        std::string why = spec.name() + ": " + it->second->failure;
        if (std::find(reasons.begin(), reasons.end(), why) == reasons.end()) reasons.push_back(why);
      }
    }
    if (!reasons.empty()) {
      s << " [not used: ";
      for (size_t k = 0; k < reasons.size(); ++k) s << (k ? "; " : "") << reasons[k];
      s << "]";
    }
    s << ";";
  }
  for (const auto& [why, count] : m.refusals) s << " refused " << count << "x: " << why << ";";
  return s.str();
}

std::vector<std::pair<std::string, std::string>> validate_graphs_without_gpu(int64_t n, int64_t b, int64_t i,
                                                                             int64_t o) {
  check_dims("validate_graphs_without_gpu", n, b, i, o);
  // Every graph any plan can use, once (relu on and off where it matters).
  std::vector<Plan> all;
  for (bool relu : {true, false})
    for (Plan& p : plans_for_forward(n, b, i, o, relu, false)) all.push_back(std::move(p));
  for (Plan& p : plans_for_backward_input(n, b, i, o, true, false)) all.push_back(std::move(p));
  for (bool accumulate : {false, true})
    for (Plan& p : plans_for_backward_weight(n, b, i, o, accumulate, true, false))
      all.push_back(std::move(p));

  std::vector<std::pair<std::string, std::string>> results;
  std::vector<std::string> seen;
  for (const Plan& plan : all) {
    for (const Spec& spec : plan.graphs) {
      if (std::find(seen.begin(), seen.end(), spec.key()) != seen.end()) continue;
      seen.push_back(spec.key());
      const std::string problem = describe_graph(spec).validate();
      results.emplace_back(spec.key(), problem.empty() ? "ok" : problem);
    }
  }
  return results;
}

}  // namespace subliminal::cudnn
