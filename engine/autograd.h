// engine/autograd.h — reverse-mode automatic differentiation.
//
// The whole idea (micrograd's, scaled to tensors): every op that sees an input requiring a
// gradient records a Node on the output — the node remembers its inputs (Edges) and what it
// saved for backward. backward() on a loss
//   1. orders the nodes reachable from the loss so that each comes after every node that
//      consumes its output: a topological order of the forward graph, reversed (computed
//      iteratively: no recursion),
//   2. seeds dL/dL = 1,
//   3. walks them in that order, and each node writes the gradient of each input into a
//      GradSink, "set if empty, else add",
//   4. frees each node's saved tensors and edges as soon as it has run (the tape is freed).
//
// Accumulation is explicit rather than hidden behind a temporary: a GradSink names the
// buffer and says whether to overwrite it or add into it, so a GEMM writes a weight's
// gradient straight into the parameter's gradient buffer (beta = 0 or 1) and nothing is
// copied. A leaf's gradient buffer persists across steps; zero_grad() only marks it empty,
// which makes the next backward overwrite it — no memset, no allocation.
//
// Saved tensors are shared, not copied, and nothing versions them (PyTorch's version counters
// catch this; we do not): a tensor an op saved — its input x, a weight, the labels, the
// teacher's logits — must keep its values until backward() has run. Refilling a batch buffer
// or updating the weights between a forward and its backward silently gives the gradient of
// the new values. The training loops run forward, backward, then the optimiser, then the next
// batch, which keeps the rule. A backward that throws (bad labels found partway) leaves the
// leaves it was writing without a gradient (has_grad() false), and the tape half freed.
#pragma once

#include <memory>
#include <vector>

#include "engine/tensor.h"

namespace subliminal {

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // interior tensors: the node that produced them; leaves: null
  Tensor grad;                    // leaves: the gradient buffer (persists across steps)
  bool grad_defined = false;      // leaves: false → the next gradient overwrites `grad`
};

// Where a backward function must put the gradient for one of its inputs.
struct GradSink {
  Tensor target;            // undefined: this input needs no gradient
  bool accumulate = false;  // false: target = gradient; true: target += gradient
  bool wanted() const { return target.defined(); }
};

// One recorded input of a node.
struct Edge {
  std::shared_ptr<AutogradMeta> meta;  // null when the input does not require a gradient
  Shape shape;
  DType dtype = DType::f32;
  Device device = Device::cpu;
};

// One op's place on the tape. A node has exactly one output tensor: backward's pending
// gradients are kept per node (engine/autograd.cpp), so an op with two outputs would be two nodes.
class Node {
 public:
  virtual ~Node() = default;
  virtual const char* name() const = 0;

  // grad_output has this node's output shape. For every input k with sinks[k].wanted(),
  // write dL/d(input k) into sinks[k].target, overwriting or adding as sinks[k].accumulate
  // says. Sinks must be written in order k = 0, 1, ...: when one tensor is two inputs of the
  // same node, the second sink is the same buffer with accumulate = true.
  virtual void backward(const Tensor& grad_output, std::vector<GradSink>& sinks) = 0;

  std::vector<Edge> edges;    // the inputs, in argument order
  std::vector<Tensor> saved;  // tensors kept for backward; freed right after it runs
  bool released = false;      // set once backward has run and the tape was freed
};

// ---- grad mode ----------------------------------------------------------------------------
bool grad_enabled();
// Inside this scope ops record nothing (evaluation, the teacher's forward during distillation,
// optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// ---- recording (used by ops) ------------------------------------------------------------
// True when grad mode is on and at least one input requires a gradient.
bool any_requires_grad(const std::vector<Tensor>& inputs);
// Makes `node` the grad_fn of `output` with `inputs` as its edges; `output` then requires grad.
void record(const Tensor& output, std::shared_ptr<Node> node, const std::vector<Tensor>& inputs);

// ---- leaves -----------------------------------------------------------------------------
// Gives a leaf a preallocated gradient buffer (e.g. a view into a flat gradient arena).
void set_grad_buffer(const Tensor& leaf, const Tensor& buffer);
// Marks the gradients of these leaves empty: the next backward overwrites them.
void zero_grad(const std::vector<Tensor>& leaves);

// Writes `value` into a sink: copies or adds per sink.accumulate. For backward functions
// whose kernel can only overwrite (e.g. a cuBLASLt bias-gradient epilogue).
void write_sink(GradSink& sink, const Tensor& value);

}  // namespace subliminal
