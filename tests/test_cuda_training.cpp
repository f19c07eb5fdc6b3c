// tests/test_cuda_training.cpp — whole training steps on the GPU against the CPU, and CUDA-graph
// replays against eager launches.
//
// Each test skips with "no CUDA GPU: <reason>" where no GPU answers (CudaTest in cuda_test_util.h).
//   1. Teacher steps (gather_batch → mlp_forward → cross_entropy → zero_grad → backward → Adam) from
//      the same init on the same batches: GPU float32 vs CPU float64. Losses per step within 1e-5,
//      parameters after the steps within 1e-4 (‖Δ‖/‖p‖). Adam's first steps move each parameter by
//      about ±lr whatever the gradient's size, so an element whose gradient is ~0 can move the other
//      way on one backend; the failure message counts elements apart by more than lr/2.
//   2. The same steps through StepGraph, graphs on vs off, on the GPU: bit-identical losses,
//      parameters, Adam moments and device counters; the captured graph has kernel nodes.
//   3. Distillation steps as the app runs them (noise for A·N students drawn from N sources, the
//      teachers' forward under NoGradGuard on the first N rows, distill (KL or JS) with student a·N + m
//      learning from teacher m, on the ghost logits): GPU vs CPU float64 as in 1; the teachers stay
//      untouched.
//   4. The fused training step (ops/fused_step.h: forward, loss and gradients in one persistent
//      kernel): teacher steps against CPU float64 and against the GPU's autograd steps, distillation
//      steps against CPU float64, and graph replays against eager launches bit for bit; the step
//      as the app runs it (its tail in the kernel, buffers that outlive it) is a graph of 2
//      kernels and no memory nodes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "engine/adam.h"        // Adam
#include "engine/autograd.h"    // zero_grad, NoGradGuard
#include "engine/kernels.h"     // increment, copy_into, accumulate_and_watch
#include "engine/nn.h"          // MlpParams
#include "engine/random.h"      // stream_id
#include "engine/step_graph.h"  // StepGraph
#include "ops/batch.h"          // gather_batch, noise_batch, repeat_models
#include "ops/fused_step.h"     // fused_cross_entropy_step, fused_distill_step
#include "ops/loss.h"           // cross_entropy, distill
#include "ops/mlp.h"            // mlp_forward
#include "tests/cuda_test_util.h"
#ifdef SUBLIMINAL_HAS_CUDA
#include "ops/cuda/fused_step_cuda.h"  // fused_step_split_policy
#endif

namespace subliminal {
// gtest's printer for the design parameter (ctest lists each case's parameters by it).
inline void PrintTo(FusedStepDesign design, std::ostream* os) {
  *os << (design == FusedStepDesign::cluster ? "cluster" : "grid");
}
}  // namespace subliminal

namespace subliminal::cuda_test {
namespace {

constexpr double kLr = 3e-4;  // the app's default
constexpr double kLossTol = 1e-5, kParamTol = 1e-4;
constexpr int64_t kNoFault = int64_t(1) << 62;

// A synthetic data set: S random uint8 images of P pixels (0 and 255 included), labels in
// [0, classes), and one permutation per model as that model's epoch order.
struct HostData {
  int64_t S, P, N;
  std::vector<uint8_t> images, labels;
  std::vector<int32_t> order;  // [N, S]
};
HostData make_data(int64_t S, int64_t P, int64_t N, int64_t classes, uint64_t seed) {
  HostData d{S, P, N, std::vector<uint8_t>(size_t(S * P)), std::vector<uint8_t>(size_t(S)), {}};
  Rng rng(seed);
  for (uint8_t& v : d.images) v = uint8_t(rng.below(256));
  d.images[0] = 0, d.images[1] = 255;
  for (uint8_t& l : d.labels) l = uint8_t(rng.below(classes));
  for (int64_t n = 0; n < N; ++n) {
    const std::vector<int32_t> p = permutation(S, seed + 100 + uint64_t(n));
    d.order.insert(d.order.end(), p.begin(), p.end());
  }
  return d;
}

struct DeviceData {
  Tensor images, labels, order;
};
DeviceData upload(const HostData& h, Device device) {
  return {Tensor::from_vector(h.images, {h.S, h.P}, device), Tensor::from_vector(h.labels, {h.S}, device),
          Tensor::from_vector(h.order, {h.N, h.S}, device)};
}

struct TrainCase {
  const char* name;
  std::vector<int64_t> sizes;
  int64_t N, B;
  ColumnRange classes() const { return {0, sizes.back() == 13 ? 10 : sizes.back()}; }
  ColumnRange ghosts() const { return {sizes.back() - 3, sizes.back()}; }
};
void PrintTo(const TrainCase& c, std::ostream* os) { *os << c.name; }  // gtest's parameter printer
const std::vector<TrainCase> kTrainCases = {{"mnist_N1_B64", {784, 256, 256, 13}, 1, 64},
                                            {"odd_N3_B37", {53, 29, 31, 7}, 3, 37}};
// Each training test runs with cuBLASLt and with the tiled engine (ops/cuda/gemm_tiled.cu).
const gemm::GpuEngine kEngines[] = {gemm::GpuEngine::cublaslt, gemm::GpuEngine::tiled};
const char* engine_name(gemm::GpuEngine e) { return e == gemm::GpuEngine::tiled ? "tiled" : "cublaslt"; }
using CaseAndEngine = std::tuple<TrainCase, gemm::GpuEngine>;
std::string case_engine_name(const ::testing::TestParamInfo<CaseAndEngine>& info) {
  return std::string(std::get<0>(info.param).name) + "_" + engine_name(std::get<1>(info.param));
}

// Losses per step ([step][model]) and the parameters afterwards (per tensor), as doubles.
struct RunResult {
  std::vector<std::vector<double>> losses;
  std::vector<std::vector<double>> params;
};

// How far apart two runs' parameters are, in units of the learning rate (for failure messages).
std::string lr_units(const std::vector<double>& got, const std::vector<double>& ref) {
  double max_diff = 0;
  int64_t far = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(got[i] - ref[i]);
    max_diff = std::max(max_diff, d);
    far += d > kLr / 2;
  }
  std::ostringstream m;
  m << "; max |Δ| = " << num(max_diff / kLr) << "·lr, " << far << " of " << got.size()
    << " elements apart by more than lr/2 (an Adam step taken the other way)";
  return m.str();
}

void expect_runs_close(const std::string& what, const RunResult& got, const RunResult& ref,
                       const MlpParams& shapes_of, int64_t models) {
  ASSERT_EQ(got.losses.size(), ref.losses.size());
  for (size_t s = 0; s < ref.losses.size(); ++s)
    EXPECT_TRUE(all_close(what + ": loss at step " + std::to_string(s + 1), got.losses[s], ref.losses[s],
                          {models}, kLossTol));
  const std::vector<Tensor> tensors = shapes_of.tensors();
  const std::vector<std::string> names = shapes_of.names();
  for (size_t k = 0; k < tensors.size(); ++k)
    EXPECT_TRUE(all_close(what + ": " + names[k] + " after " + std::to_string(ref.losses.size()) + " steps",
                          got.params[k], ref.params[k], tensors[k].shape(), kParamTol))
        << lr_units(got.params[k], ref.params[k]);
}

// ---- 1. teacher steps, GPU vs CPU -------------------------------------------------------------

// gather_batch → mlp_forward → cross_entropy → zero_grad → backward → Adam, `steps` times, the batch
// index read from a step counter on the device. gather_batch writes float32; the float64 CPU run
// widens the batch before the forward pass.
RunResult teacher_steps(const MlpParams& init32, Device device, DType dtype, const HostData& data, int steps,
                        int64_t B, ColumnRange classes, MlpFusion fusion, bool fused = false) {
  MlpParams p = params_as(init32, device, dtype);
  Adam adam(p.values(), p.grads(), {kLr});
  const DeviceData dd = upload(data, device);
  Tensor step = Tensor::zeros({1}, DType::i64, device);
  const std::vector<Tensor> params = p.tensors();
  RunResult r;
  for (int s = 0; s < steps; ++s) {
    Tensor x = Tensor::empty({data.N, B, data.P}, DType::f32, device);
    Tensor y = Tensor::empty({data.N, B}, DType::i32, device);
    gather_batch(dd.images, dd.labels, dd.order, step, B, x, y);
    if (dtype == DType::f64) x = f64_copy(x);
    Tensor loss = fused ? fused_cross_entropy_step(x, y, p, classes)
                        : cross_entropy(mlp_forward(x, p, fusion), y, classes);
    r.losses.push_back(values_of(loss));
    if (!fused) {
      zero_grad(params);
      loss.backward();
    }
    adam.step();
    increment(step);
  }
  for (const Tensor& t : params) r.params.push_back(values_of(t));
  return r;
}

const char* fusion_name(MlpFusion f) {
  return f == MlpFusion::whole ? "whole" : f == MlpFusion::per_layer ? "per_layer" : "none";
}

class CudaTraining : public CudaTest,
                     public ::testing::WithParamInterface<std::tuple<TrainCase, MlpFusion, gemm::GpuEngine>> {
};

TEST_P(CudaTraining, TeacherStepsMatchCpu) {
  const TrainCase& c = std::get<0>(GetParam());
  const MlpFusion fusion = std::get<1>(GetParam());
  gemm::settings().engine = std::get<2>(GetParam());
  const std::string what = std::string(c.name) + " fusion=" + fusion_name(fusion) +
                           " engine=" + engine_name(std::get<2>(GetParam())) + " teacher steps";
  const MlpParams init = make_params(c.sizes, c.N, 42);
  const HostData data = make_data(512, c.sizes[0], c.N, c.classes().width(), 7);
  const int steps = 5;
  const RunResult gpu = teacher_steps(init, Device::cuda, DType::f32, data, steps, c.B, c.classes(), fusion);
  const RunResult cpu = teacher_steps(init, Device::cpu, DType::f64, data, steps, c.B, c.classes(), fusion);
  expect_runs_close(what + " (GPU float32 vs CPU float64)", gpu, cpu, init, c.N);
  // The losses must move: otherwise the comparison above proves little.
  for (int64_t n = 0; n < c.N; ++n)
    EXPECT_NE(cpu.losses.front()[size_t(n)], cpu.losses.back()[size_t(n)]) << what << ": model " << n;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaTraining,
                         ::testing::Combine(::testing::ValuesIn(kTrainCases),
                                            ::testing::Values(MlpFusion::whole, MlpFusion::per_layer,
                                                              MlpFusion::none),
                                            ::testing::ValuesIn(kEngines)),
                         [](const ::testing::TestParamInfo<CudaTraining::ParamType>& info) {
                           return std::string(std::get<0>(info.param).name) + "_" +
                                  fusion_name(std::get<1>(info.param)) + "_" +
                                  engine_name(std::get<2>(info.param));
                         });

// ---- 2. CUDA graphs vs eager -----------------------------------------------------------------

struct GraphRun {
  std::vector<std::vector<float>> losses;
  std::vector<float> values, exp_avg, exp_avg_sq, loss_sum;
  int64_t step = 0, global_step = 0, adam_steps = 0, first_bad = 0;
  size_t kernel_nodes = 0, memory_nodes = 0;
};

// How a step ends: autograd and the separate calls; the fused step, then the separate calls; or
// the fused step doing them itself (its StepTail, as apps/subliminal/experiment.cpp runs it).
enum class StepKind { autograd, fused, fused_with_tail };

// The teacher step as apps/subliminal/experiment.cpp runs it: everything that changes between
// steps lives on the device (the step counter gather_batch reads, Adam's count), the step's loss is
// copied into a persistent buffer and added to a running sum inside the step, temporaries die
// inside it. Graphs on: call 1 runs eagerly, call 2 captures and launches, later calls replay.
GraphRun graph_steps(const MlpParams& init32, bool use_graphs, const HostData& data, int steps, int64_t B,
                     ColumnRange classes, StepKind kind = StepKind::autograd) {
  const Device cuda = Device::cuda;
  MlpParams p = params_as(init32, cuda, DType::f32);
  Adam adam(p.values(), p.grads(), {kLr});
  const DeviceData dd = upload(data, cuda);
  const int64_t N = data.N;
  Tensor step = Tensor::zeros({1}, DType::i64, cuda), global_step = Tensor::zeros({1}, DType::i64, cuda);
  Tensor loss_sum = Tensor::zeros({N}, DType::f32, cuda);
  Tensor first_bad = Tensor::full({1}, double(kNoFault), DType::i64, cuda);
  Tensor last_loss = Tensor::zeros({N}, DType::f32, cuda);
  const std::vector<Tensor> params = p.tensors();
  StepGraph graph(cuda, use_graphs);
  GraphRun r;
  // The batch's buffers outlive the steps, as the app's do (its BatchBuffers).
  const Tensor x = Tensor::empty({N, B, data.P}, DType::f32, cuda),
               y = Tensor::empty({N, B}, DType::i32, cuda);
  for (int s = 0; s < steps; ++s) {
    graph.run([&] {
      gather_batch(dd.images, dd.labels, dd.order, step, B, x, y);
      if (kind == StepKind::fused_with_tail) {  // as the app runs it: the step allocates nothing
        StepTail tail;
        tail.adam = &adam;
        tail.loss_sum = loss_sum, tail.step = step, tail.first_bad = first_bad, tail.loss_weight = double(B);
        tail.counters = {step, global_step};
        fused_cross_entropy_step(x, y, p, classes, tail, last_loss);
        return;
      }
      const bool fused = kind == StepKind::fused;
      Tensor loss = fused ? fused_cross_entropy_step(x, y, p, classes)
                          : cross_entropy(mlp_forward(x, p, MlpFusion::whole), y, classes);
      copy_into(last_loss, loss);
      accumulate_and_watch(loss_sum, loss.detach(), double(B), step, first_bad);
      if (!fused) {
        zero_grad(params);
        loss.backward();
      }
      adam.step();
      increment({step, global_step});
    });
    r.losses.push_back(last_loss.to_vector<float>());  // after the launch: reading synchronises
  }
  r.kernel_nodes = graph.kernel_nodes();
  r.memory_nodes = graph.memory_nodes();
  r.values = p.values().to_vector<float>();
  r.exp_avg = adam.exp_avg().to_vector<float>();
  r.exp_avg_sq = adam.exp_avg_sq().to_vector<float>();
  r.loss_sum = loss_sum.to_vector<float>();
  r.step = step.to_vector<int64_t>()[0];
  r.global_step = global_step.to_vector<int64_t>()[0];
  r.adam_steps = adam.steps_taken();
  r.first_bad = first_bad.to_vector<int64_t>()[0];
  return r;
}

class CudaStepGraph : public CudaTest, public ::testing::WithParamInterface<CaseAndEngine> {};

TEST_P(CudaStepGraph, GraphReplaysEqualEagerStepsBitForBit) {
  const TrainCase& c = std::get<0>(GetParam());
  gemm::settings().engine = std::get<1>(GetParam());
  const MlpParams init = make_params(c.sizes, c.N, 43);
  const HostData data = make_data(512, c.sizes[0], c.N, c.classes().width(), 8);
  const int steps = 6;  // warm-up, capture, four replays
  const GraphRun eager = graph_steps(init, false, data, steps, c.B, c.classes());
  const GraphRun graph = graph_steps(init, true, data, steps, c.B, c.classes());
  const std::string what =
      std::string(c.name) + " " + engine_name(std::get<1>(GetParam())) + " graphs on (got) vs off (expected)";
  std::cout << "[ info ] " << c.name << ": captured step has " << graph.kernel_nodes << " kernel nodes\n";
  EXPECT_GT(graph.kernel_nodes, 0u) << what << ": the captured graph has no kernel nodes";
  EXPECT_EQ(eager.kernel_nodes, 0u) << what << ": graphs off must capture nothing";
  for (int s = 0; s < steps; ++s)
    EXPECT_TRUE(bitwise_equal(what + ": loss at step " + std::to_string(s + 1) +
                                  (s == 0   ? " (warm-up)"
                                   : s == 1 ? " (capture)"
                                            : " (replay)"),
                              graph.losses[size_t(s)], eager.losses[size_t(s)], {c.N}));
  const Shape arena{int64_t(eager.values.size())};
  EXPECT_TRUE(bitwise_equal(what + ": parameter arena", graph.values, eager.values, arena));
  EXPECT_TRUE(bitwise_equal(what + ": Adam exp_avg", graph.exp_avg, eager.exp_avg, arena));
  EXPECT_TRUE(bitwise_equal(what + ": Adam exp_avg_sq", graph.exp_avg_sq, eager.exp_avg_sq, arena));
  EXPECT_TRUE(bitwise_equal(what + ": running loss sum", graph.loss_sum, eager.loss_sum, {c.N}));
  EXPECT_EQ(graph.step, steps) << what << ": the device step counter (advanced inside the graph)";
  EXPECT_EQ(graph.global_step, steps) << what << ": the second counter advanced by the same launch";
  EXPECT_EQ(eager.step, steps);
  EXPECT_EQ(graph.adam_steps, steps) << what << ": Adam's device step count";
  EXPECT_EQ(graph.first_bad, kNoFault) << what << ": a non-finite loss was flagged";
  // Replays must train: the last loss differs from the first.
  EXPECT_NE(eager.losses.front()[0], eager.losses.back()[0]);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaStepGraph,
                         ::testing::Combine(::testing::ValuesIn(kTrainCases), ::testing::ValuesIn(kEngines)),
                         case_engine_name);

// ---- 3. distillation steps, GPU vs CPU --------------------------------------------------------

// A arms of N students learn the N teachers' ghost logits on uniform noise made on the CPU (the noise
// itself is compared with the GPU's in test_cuda_ops.cpp): x holds the A·N students' inputs, drawn
// from N sources so student a·N + m sees teacher m's images, and its first N rows are the teachers'.
// With `tail` (fused only) the fused step does Adam itself (StepTail).
RunResult distill_steps(const MlpParams& teacher32, const MlpParams& students32, Device device, DType dtype,
                        const std::vector<std::vector<double>>& batches, int64_t B, ColumnRange cols,
                        std::vector<double>* teacher_after, bool fused = false, bool tail = false,
                        double weight_decay = 0.0, Divergence divergence = Divergence::kl) {
  const MlpParams teacher = params_as(teacher32, device, dtype);
  MlpParams students = params_as(students32, device, dtype);
  Adam adam(students.values(), students.grads(), {kLr, 0.9, 0.999, 1e-8, weight_decay});
  const int64_t N = teacher.models(), S = students.models(), P = teacher.shape().inputs();
  const std::vector<Tensor> params = students.tensors();
  RunResult r;
  for (const std::vector<double>& batch : batches) {
    const Tensor x = tensor_of(batch, {S, B, P}, device, dtype);
    Tensor loss;
    if (fused && tail) {
      StepTail t;
      t.adam = &adam;
      r.losses.push_back(values_of(fused_distill_step(x, students, teacher, cols, 1.0, divergence, t)));
      continue;
    }
    if (fused) {
      loss = fused_distill_step(x, students, teacher, cols, 1.0, divergence);
    } else {
      Tensor teacher_logits;
      {
        NoGradGuard no_grad;
        teacher_logits = mlp_forward(x.rows(0, N), teacher);
      }
      loss = distill(mlp_forward(x, students), teacher_logits, cols, 1.0, divergence);
    }
    r.losses.push_back(values_of(loss));
    if (!fused) {
      zero_grad(params);
      loss.backward();
    }
    adam.step();
  }
  for (const Tensor& t : params) r.params.push_back(values_of(t));
  *teacher_after = values_of(teacher.values());
  return r;
}

class CudaDistill : public CudaTest, public ::testing::WithParamInterface<CaseAndEngine> {};

// A distillation problem: a teacher, two arms of students (same-init, cross-init) and three
// batches of noise.
struct DistillSetup {
  MlpParams teacher, students;
  std::vector<std::vector<double>> batches;
};

DistillSetup distill_setup(const TrainCase& c) {
  const int64_t N = c.N, A = 2, B = c.B, P = c.sizes[0];
  // The teacher: an init moved by N(0, 0.02²) (standing in for training), so the students that
  // start from that init (arm 0) do not begin at zero loss; arm 1 starts from another init.
  const MlpParams same_init = make_params(c.sizes, N, 11), cross_init = make_params(c.sizes, N, 22);
  MlpParams teacher = make_params(c.sizes, N, 11);
  Rng rng(33);
  for (const Tensor& t : teacher.tensors()) {
    std::vector<double> v = values_of(t);
    for (double& e : v) e = double(float(e + 0.02 * rng.normal()));
    t.copy_from(tensor_of(v, t.shape(), Device::cpu, DType::f32));
  }
  MlpParams students(MlpShape{c.sizes}, A * N, DType::f32, Device::cpu);
  for (int64_t m = 0; m < N; ++m) {
    students.copy_model_from(same_init, m, m);
    students.copy_model_from(cross_init, m, N + m);
  }
  std::vector<std::vector<double>> batches;
  Tensor step = Tensor::zeros({1}, DType::i64);
  for (int s = 0; s < 3; ++s) {
    Tensor x = Tensor::zeros({A * N, B, P});
    noise_batch(2025, stream_id(5), Tensor(), step, B, 0, NoiseDistribution::uniform, x, N);
    batches.push_back(values_of(x));
    increment(step);
  }
  return {std::move(teacher), std::move(students), std::move(batches)};
}

// Three distillation steps of two arms (same-init and cross-init students) on GPU float32 and CPU
// float64 from the same inputs; `fused` runs the GPU side through fused_distill_step.
void check_distillation(const TrainCase& c, const std::string& label, bool fused,
                        Divergence divergence = Divergence::kl) {
  const int64_t A = 2, B = c.B;
  const DistillSetup setup = distill_setup(c);
  const MlpParams &teacher = setup.teacher, &students = setup.students;
  const std::vector<std::vector<double>>& batches = setup.batches;
  std::vector<double> teacher_gpu_after, teacher_cpu_after;
  const RunResult gpu = distill_steps(teacher, students, Device::cuda, DType::f32, batches, B, c.ghosts(),
                                      &teacher_gpu_after, fused, false, 0.0, divergence);
  const RunResult cpu = distill_steps(teacher, students, Device::cpu, DType::f64, batches, B, c.ghosts(),
                                      &teacher_cpu_after, false, false, 0.0, divergence);
  const std::string what = label + " " + divergence_name(divergence) + " distillation (ghost logits {" +
                           std::to_string(c.ghosts().begin) + ", " + std::to_string(c.ghosts().end) +
                           "}, 2 arms)";
  expect_runs_close(what + " (GPU float32 vs CPU float64)", gpu, cpu, students, A * c.N);
  for (int64_t m = 0; m < A * c.N; ++m)
    EXPECT_GT(cpu.losses.front()[size_t(m)], 0.0) << what << ": student " << m << " starts at zero loss";
  EXPECT_TRUE(all_close(what + ": teacher parameters after the steps (GPU vs its start)", teacher_gpu_after,
                        values_of(teacher.values()), {int64_t(teacher_gpu_after.size())}, 0.0));
}

TEST_P(CudaDistill, DistillationStepsMatchCpu) {
  const TrainCase& c = std::get<0>(GetParam());
  gemm::settings().engine = std::get<1>(GetParam());
  check_distillation(c, std::string(c.name) + " " + engine_name(std::get<1>(GetParam())), false);
}

// --divergence js on the autograd path: the loss kernels' JS rows inside whole steps, on every
// GEMM engine (the fused steps' are CudaFusedStep.JensenShannonDistillationStepsMatchCpu).
TEST_P(CudaDistill, JensenShannonDistillationStepsMatchCpu) {
  const TrainCase& c = std::get<0>(GetParam());
  gemm::settings().engine = std::get<1>(GetParam());
  check_distillation(c, std::string(c.name) + " " + engine_name(std::get<1>(GetParam())), false,
                     Divergence::js);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaDistill,
                         ::testing::Combine(::testing::ValuesIn(kTrainCases), ::testing::ValuesIn(kEngines)),
                         case_engine_name);

// ---- 4. the fused training step (ops/fused_step.h) ------------------------------------------

// The MNIST MLP at the notebook's batch, the odd shapes with three models, and a 2-layer MLP.
const std::vector<TrainCase> kFusedCases = {{"mnist_N1_B256", {784, 256, 256, 13}, 1, 256},
                                            {"odd_N3_B37", {53, 29, 31, 7}, 3, 37},
                                            {"two_layers_N2_B45", {53, 29, 7}, 2, 45}};

// Each test runs under both designs of the GPU kernels (ops/fused_step.h): the grid's one
// persistent kernel and the cluster's two (on GPUs with thread-block clusters).
class CudaFusedStep : public CudaTest,
                      public ::testing::WithParamInterface<std::tuple<TrainCase, FusedStepDesign>> {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    design_ = std::get<1>(GetParam());
#ifdef SUBLIMINAL_HAS_CUDA
    if (design_ == FusedStepDesign::cluster && !cuda::cluster_step_supported())
      GTEST_SKIP() << "the cluster design needs thread-block clusters (compute capability 9.0) and this "
                      "build's sm_90 code";
#endif
    set_fused_step_design(design_);
  }
  void TearDown() override {
    set_fused_step_design(FusedStepDesign::grid);
    CudaTest::TearDown();
  }
  const TrainCase& train_case() const { return std::get<0>(GetParam()); }
  // The case's name and the design, for messages.
  std::string label() const {
    return std::string(train_case().name) + (design_ == FusedStepDesign::cluster ? " cluster" : " fused");
  }
  FusedStepDesign design_ = FusedStepDesign::grid;
};

std::string case_design_name(const ::testing::TestParamInfo<std::tuple<TrainCase, FusedStepDesign>>& info) {
  return std::string(std::get<0>(info.param).name) +
         (std::get<1>(info.param) == FusedStepDesign::cluster ? "_cluster" : "_grid");
}

// The fused kernel's teacher steps against the float64 CPU autograd steps (the same tolerances
// as every other GPU training test), and against the GPU's own autograd steps.
TEST_P(CudaFusedStep, TeacherStepsMatchCpuAndAutograd) {
  const TrainCase& c = train_case();
  const std::string what = label() + " teacher steps";
  const MlpParams init = make_params(c.sizes, c.N, 42);
  ASSERT_TRUE(fused_step_on_gpu(params_as(init, Device::cuda, DType::f32)))
      << what << ": these parameters would not take the fused GPU kernel";
  const int steps = 4;
  const HostData data =
      make_data(std::max<int64_t>(512, steps * c.B), c.sizes[0], c.N, c.classes().width(), 7);
  const RunResult fused =
      teacher_steps(init, Device::cuda, DType::f32, data, steps, c.B, c.classes(), MlpFusion::whole, true);
  const RunResult cpu =
      teacher_steps(init, Device::cpu, DType::f64, data, steps, c.B, c.classes(), MlpFusion::whole);
  const RunResult autograd =
      teacher_steps(init, Device::cuda, DType::f32, data, steps, c.B, c.classes(), MlpFusion::whole);
  expect_runs_close(what + " (fused GPU float32 vs CPU float64)", fused, cpu, init, c.N);
  expect_runs_close(what + " (fused vs autograd, both GPU float32)", fused, autograd, init, c.N);
  for (int64_t n = 0; n < c.N; ++n)
    EXPECT_NE(cpu.losses.front()[size_t(n)], cpu.losses.back()[size_t(n)]) << what << ": model " << n;
}

TEST_P(CudaFusedStep, DistillationStepsMatchCpu) { check_distillation(train_case(), label(), true); }

// --divergence js: the fused kernels' loss rows by Jensen–Shannon (the rest of the step is KL's).
TEST_P(CudaFusedStep, JensenShannonDistillationStepsMatchCpu) {
  check_distillation(train_case(), label(), true, Divergence::js);
}

#ifdef SUBLIMINAL_HAS_CUDA  // the split-K policy and the cluster tuning are the CUDA kernels' knobs
// Two float32 runs' parameters are the same bits (widened to double: back to float, exactly).
void expect_same_float_params(const std::string& what, const RunResult& got, const RunResult& expected) {
  ASSERT_EQ(got.params.size(), expected.params.size());
  for (size_t k = 0; k < expected.params.size(); ++k)
    EXPECT_TRUE(bitwise_equal(what + ": parameter tensor " + std::to_string(k),
                              std::vector<float>(got.params[k].begin(), got.params[k].end()),
                              std::vector<float>(expected.params[k].begin(), expected.params[k].end()),
                              {int64_t(expected.params[k].size())}));
}

// Two teacher steps of a case from fixed weights and data, for the tests of the fused step's
// knobs: on the CPU in float64 (the reference), or by the fused GPU step under whatever knob
// the caller has set.
struct TwoTeacherSteps {
  TwoTeacherSteps(const TrainCase& c, uint64_t init_seed, uint64_t data_seed)
      : c(c),
        init(make_params(c.sizes, c.N, init_seed)),
        data(make_data(std::max<int64_t>(512, 2 * c.B), c.sizes[0], c.N, c.classes().width(), data_seed)) {}
  RunResult cpu() const {
    return teacher_steps(init, Device::cpu, DType::f64, data, 2, c.B, c.classes(), MlpFusion::whole);
  }
  RunResult fused() const {
    return teacher_steps(init, Device::cuda, DType::f32, data, 2, c.B, c.classes(), MlpFusion::whole, true);
  }
  const TrainCase& c;
  const MlpParams init;
  const HostData data;
};

// Sets the fused step's split-K policy for one scope (bench_layers' sweep), then the default.
struct SplitPolicyScope {
  explicit SplitPolicyScope(cuda::FusedSplitPolicy p) { cuda::fused_step_split_policy(p); }
  ~SplitPolicyScope() { cuda::fused_step_split_policy({}); }
};

// Other split-K plans are the same step: no split at all, up to 16 slices of one chunk (a
// fix-up of more partials than the default's 8), few long slices.
TEST_P(CudaFusedStep, OtherSplitPoliciesMatchCpu) {
  if (design_ != FusedStepDesign::grid) GTEST_SKIP() << "the split-K policy is the grid design's";
  const TrainCase& c = train_case();
  const TwoTeacherSteps steps(c, 42, 7);
  const RunResult cpu = steps.cpu();
  for (const cuda::FusedSplitPolicy policy :
       {cuda::FusedSplitPolicy{1, 1}, cuda::FusedSplitPolicy{16, 1}, cuda::FusedSplitPolicy{2, 4}}) {
    SplitPolicyScope scope(policy);
    expect_runs_close(std::string(c.name) + " fused teacher steps, at most " +
                          std::to_string(policy.max_splits) + " splits of at least " +
                          std::to_string(policy.min_chunks) + " chunks (vs CPU float64)",
                      steps.fused(), cpu, steps.init, c.N);
  }
}

// A split tile finished in bands by all of its items gives the bits of one finished by its last
// item alone: the same partials, added in the same order (ops/cuda/tile_gemm.cuh).
TEST_P(CudaFusedStep, BandFixupEqualsLastItemFixupBitForBit) {
  if (design_ != FusedStepDesign::grid) GTEST_SKIP() << "the split-K policy is the grid design's";
  const TrainCase& c = train_case();
  const TwoTeacherSteps steps(c, 45, 10);
  auto run = [&](bool bands) {
    SplitPolicyScope scope(cuda::FusedSplitPolicy{8, 2, bands});
    return steps.fused();
  };
  const RunResult bands = run(true), last = run(false);
  const std::string what =
      std::string(c.name) + " fused teacher steps, bands (got) vs the last item (expected)";
  expect_same_float_params(what, bands, last);
}

// Sets the cluster step's tuning for one scope (bench_layers' sweep), then the default.
struct ClusterTuningScope {
  explicit ClusterTuningScope(cuda::ClusterStepTuning t) { cuda::cluster_step_tuning(t); }
  ~ClusterTuningScope() { cuda::cluster_step_tuning({}); }
};

// The cluster design under bench_layers' other tunings: K chunks capped short (many chunks a
// product), the rows spread over 2 clusters (long row blocks, few partials) and 8 × 8 register
// blocks in the forward products are the same step to float32 rounding; launches that wait for the kernel
// ahead to finish before they start, and each layer's first chunk issued only after the barrier ahead of it,
// give the default's bits.
TEST_P(CudaFusedStep, OtherClusterTuningsMatchCpu) {
  if (design_ != FusedStepDesign::cluster) GTEST_SKIP() << "the tuning is the cluster design's";
  const TrainCase& c = train_case();
  const TwoTeacherSteps steps(c, 42, 7);
  const RunResult cpu = steps.cpu();
  auto run = [&](cuda::ClusterStepTuning t) {
    ClusterTuningScope scope(t);
    return steps.fused();
  };
  expect_runs_close(label() + " teacher steps, K chunks of 32 (vs CPU float64)", run({.max_chunk = 32}), cpu,
                    steps.init, c.N);
  expect_runs_close(label() + " teacher steps, 2 clusters (vs CPU float64)", run({.max_clusters = 2}), cpu,
                    steps.init, c.N);
  const RunResult eight = run({.register_block = 8});
  expect_runs_close(label() + " teacher steps, 8 × 8 forward blocks (vs CPU float64)", eight, cpu, steps.init,
                    c.N);
  const RunResult defaults = run({});
  expect_same_float_params(
      label() + " teacher steps, launches not overlapped (got) vs the default (expected)",
      run({.overlap_launches = false}), defaults);
  expect_same_float_params(label() + " teacher steps, no prefetch (got) vs the default (expected)",
                           run({.prefetch = false}), defaults);
  // The notebook's widths at batch 256 (16 rows a cluster, 32 columns a block) take the 8 × 8
  // products, whose K groups add in another order: other last bits than the default's show
  // that the 8 × 8 kernel ran.
  if (std::string(c.name) == "mnist_N1_B256") {
    bool differ = false;
    for (size_t k = 0; k < eight.params.size(); ++k) differ = differ || eight.params[k] != defaults.params[k];
    EXPECT_TRUE(differ) << label() << ": the 8 × 8 tuning gave the default's bits; did its kernel run?";
  }
}

TEST(ClusterStepTuning, RefusesWhatItCannotPlan) {
  EXPECT_THROW(cuda::cluster_step_tuning({.max_chunk = -1}), ShapeError);
  EXPECT_THROW(cuda::cluster_step_tuning({.max_clusters = -1}), ShapeError);
  EXPECT_THROW(cuda::cluster_step_tuning({.register_block = 16}), ShapeError);
  cuda::cluster_step_tuning({});  // no cap is accepted
}

TEST(FusedSplitPolicy, RefusesFewerThanOneSplitOrChunk) {
  EXPECT_THROW(cuda::fused_step_split_policy({0, 2}), ShapeError);
  EXPECT_THROW(cuda::fused_step_split_policy({8, 0}), ShapeError);
  cuda::fused_step_split_policy({});  // the default is accepted
}
#endif

// Labels left on the host beside a batch on the GPU: a ShapeError naming both, as the autograd
// path gives, where the kernel used to be handed the host pointer as a device one.
TEST_F(CudaTest, FusedStepRefusesLabelsOnAnotherDevice) {
  const MlpParams p = params_as(make_params({12, 8, 6}, 1, 7), Device::cuda, DType::f32);
  const Tensor x = Tensor::zeros({1, 4, 12}, DType::f32, Device::cuda);
  const Tensor host_labels = Tensor::zeros({1, 4}, DType::i32);
  EXPECT_THROW(fused_cross_entropy_step(x, host_labels, p, {0, 6}), ShapeError);
}

// Captured in a CUDA graph and replayed, the fused step gives the bits of eager launches.
TEST_P(CudaFusedStep, GraphReplaysEqualEagerStepsBitForBit) {
  const TrainCase& c = train_case();
  const MlpParams init = make_params(c.sizes, c.N, 43);
  const int steps = 5;  // warm-up, capture, three replays
  const HostData data =
      make_data(std::max<int64_t>(512, steps * c.B), c.sizes[0], c.N, c.classes().width(), 8);
  const GraphRun eager = graph_steps(init, false, data, steps, c.B, c.classes(), StepKind::fused);
  const GraphRun graph = graph_steps(init, true, data, steps, c.B, c.classes(), StepKind::fused);
  const std::string what = label() + ", graphs on (got) vs off (expected)";
  std::cout << "[ info ] " << label() << ": captured step has " << graph.kernel_nodes << " kernel nodes\n";
  for (int s = 0; s < steps; ++s)
    EXPECT_TRUE(bitwise_equal(what + ": loss at step " + std::to_string(s + 1), graph.losses[size_t(s)],
                              eager.losses[size_t(s)], {c.N}));
  const Shape arena{int64_t(eager.values.size())};
  EXPECT_TRUE(bitwise_equal(what + ": parameter arena", graph.values, eager.values, arena));
  EXPECT_EQ(graph.first_bad, kNoFault) << what << ": a non-finite loss was flagged";
  EXPECT_NE(eager.losses.front()[0], eager.losses.back()[0]);
}

// The step's tail done by the fused kernels (Adam, the running loss sums and fault watch, the
// step counters) gives the bits of the separate kernels after the fused step, replayed in a
// graph of the batch's gather and the step: one kernel (grid) or two (cluster).
TEST_P(CudaFusedStep, TailInTheKernelEqualsSeparateCallsBitForBit) {
  const TrainCase& c = train_case();
  const MlpParams init = make_params(c.sizes, c.N, 44);
  const int steps = 5;
  const HostData data =
      make_data(std::max<int64_t>(512, steps * c.B), c.sizes[0], c.N, c.classes().width(), 9);
  const GraphRun separate = graph_steps(init, true, data, steps, c.B, c.classes(), StepKind::fused);
  const GraphRun tail = graph_steps(init, true, data, steps, c.B, c.classes(), StepKind::fused_with_tail);
  const GraphRun tail_eager =
      graph_steps(init, false, data, steps, c.B, c.classes(), StepKind::fused_with_tail);
  const std::string what = label() + " step, its tail in the kernels (got) vs separate (expected)";
  std::cout << "[ info ] " << label() << ": kernel nodes per step " << tail.kernel_nodes << " with the tail, "
            << separate.kernel_nodes << " without\n";
  const unsigned step_kernels = design_ == FusedStepDesign::cluster ? 2u : 1u;
  EXPECT_EQ(tail.kernel_nodes, 1u + step_kernels)
      << what << ": the step should be the gather and its own kernels";
  EXPECT_EQ(tail.memory_nodes, 0u) << what
                                   << ": the step should allocate nothing (its graph has memory nodes)";
  for (int s = 0; s < steps; ++s)
    EXPECT_TRUE(bitwise_equal(what + ": loss at step " + std::to_string(s + 1), tail.losses[size_t(s)],
                              separate.losses[size_t(s)], {c.N}));
  const Shape arena{int64_t(separate.values.size())};
  EXPECT_TRUE(bitwise_equal(what + ": parameter arena", tail.values, separate.values, arena));
  EXPECT_TRUE(bitwise_equal(what + ": Adam exp_avg", tail.exp_avg, separate.exp_avg, arena));
  EXPECT_TRUE(bitwise_equal(what + ": Adam exp_avg_sq", tail.exp_avg_sq, separate.exp_avg_sq, arena));
  EXPECT_TRUE(bitwise_equal(what + ": running loss sum", tail.loss_sum, separate.loss_sum, {c.N}));
  EXPECT_TRUE(
      bitwise_equal(what + ": parameter arena, graphs off", tail_eager.values, separate.values, arena));
  EXPECT_EQ(tail.adam_steps, steps) << what << ": Adam's device step count";
  EXPECT_EQ(tail.step, steps) << what << ": the step counter";
  EXPECT_EQ(tail.global_step, steps) << what << ": the second counter";
  EXPECT_EQ(tail.first_bad, kNoFault) << what << ": a non-finite loss was flagged";
  EXPECT_NE(tail.losses.front()[0], tail.losses.back()[0]) << what << ": the steps did not train";
}

// Distillation as the app runs it, with weight decay on: Adam done by the fused kernels (their
// tail) gives the bits of the Adam kernel after the fused step.
TEST_P(CudaFusedStep, DistillationTailInTheKernelEqualsSeparateAdamBitForBit) {
  const TrainCase& c = train_case();
  const DistillSetup setup = distill_setup(c);
  std::vector<double> unused;
  const RunResult separate = distill_steps(setup.teacher, setup.students, Device::cuda, DType::f32,
                                           setup.batches, c.B, c.ghosts(), &unused, true, false, 1e-2);
  const RunResult tail = distill_steps(setup.teacher, setup.students, Device::cuda, DType::f32, setup.batches,
                                       c.B, c.ghosts(), &unused, true, true, 1e-2);
  const std::string what = label() + " distillation, Adam in the kernels (got) vs after them (expected)";
  // The runs' values are float32 widened to double: back to float, exactly, for the bit compare.
  auto same_bits = [&](const std::string& label, const std::vector<double>& got,
                       const std::vector<double>& ref) {
    return bitwise_equal(what + ": " + label, std::vector<float>(got.begin(), got.end()),
                         std::vector<float>(ref.begin(), ref.end()), {int64_t(ref.size())});
  };
  ASSERT_EQ(tail.losses.size(), separate.losses.size());
  for (size_t s = 0; s < tail.losses.size(); ++s)
    EXPECT_TRUE(same_bits("loss at step " + std::to_string(s + 1), tail.losses[s], separate.losses[s]));
  const std::vector<std::string> names = setup.students.names();
  for (size_t k = 0; k < separate.params.size(); ++k)
    EXPECT_TRUE(same_bits(names[k] + " after the steps", tail.params[k], separate.params[k]));
  EXPECT_NE(tail.losses.front(), tail.losses.back()) << what << ": the steps did not train";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaFusedStep,
                         ::testing::Combine(::testing::ValuesIn(kFusedCases),
                                            ::testing::Values(FusedStepDesign::grid,
                                                              FusedStepDesign::cluster)),
                         case_design_name);

}  // namespace
}  // namespace subliminal::cuda_test
