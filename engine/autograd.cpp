// engine/autograd.cpp — the backward walk, grad mode, and Tensor's autograd accessors.
#include "engine/autograd.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "engine/kernels.h"

namespace subliminal {
namespace {

thread_local bool g_grad_enabled = true;

AutogradMeta& meta_of(const Tensor& t) {
  TensorImpl& impl = t.impl();
  if (!impl.autograd) impl.autograd = std::make_shared<AutogradMeta>();
  return *impl.autograd;
}

// Nodes reachable from `root`, ordered so that every node comes after all nodes that
// consume its output (reverse DFS post-order). Iterative: deep graphs cannot overflow the stack.
// The order owns the nodes: freeing a node's edges during the walk must not free the nodes
// still waiting their turn.
std::vector<std::shared_ptr<Node>> topological_order(const std::shared_ptr<Node>& root) {
  std::vector<std::shared_ptr<Node>> post_order;
  std::unordered_set<Node*> visited{root.get()};
  std::vector<std::pair<std::shared_ptr<Node>, size_t>> stack{{root, 0}};  // node, next edge to visit
  while (!stack.empty()) {
    Node* node = stack.back().first.get();
    if (node->released)
      throw Error(std::string("backward through node ") + node->name() +
                  " whose tape was already freed by an earlier backward()");
    size_t& next = stack.back().second;
    if (next < node->edges.size()) {
      const Edge& e = node->edges[next++];
      if (e.meta && e.meta->requires_grad && e.meta->grad_fn && visited.insert(e.meta->grad_fn.get()).second)
        stack.push_back({e.meta->grad_fn, 0});
    } else {
      post_order.push_back(std::move(stack.back().first));
      stack.pop_back();
    }
  }
  return {post_order.rbegin(), post_order.rend()};
}

}  // namespace

// The seed dL/dL = 1 of a backward pass. Kept per (shape, dtype, device) because a training
// step asks for the same one every time: no fill kernel per step, and inside a captured CUDA
// graph the seed is a buffer that outlives the graph rather than one of its allocations.
// Nothing writes into a seed (gradients go to sinks), so sharing it is safe.
static Tensor ones(const Shape& shape, DType dtype, Device device) {
  static std::map<std::tuple<Shape, DType, Device>, Tensor>* cache =
      new std::map<std::tuple<Shape, DType, Device>, Tensor>;
  static std::mutex* cache_mutex = new std::mutex;  // grad mode is per thread: so may backward() be
  const std::lock_guard<std::mutex> lock(*cache_mutex);
  auto found = cache->find({shape, dtype, device});
  if (found != cache->end()) return found->second;
  // Inside a CUDA-graph capture the seed would become the graph's own memory and outlive it;
  // StepGraph's eager warm-up step always creates it first.
  if (device == Device::cuda && device_capturing())
    throw Error("backward(): the first backward of shape " + shape_string(shape) +
                " ran inside a CUDA graph capture; run one step eagerly first");
  return cache->try_emplace({shape, dtype, device}, Tensor::full(shape, 1.0, dtype, device)).first->second;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = previous_; }

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const Tensor& output, std::shared_ptr<Node> node, const std::vector<Tensor>& inputs) {
  node->edges.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    Edge e;
    if (t.defined()) {
      e.shape = t.shape();
      e.dtype = t.dtype();
      e.device = t.device();
      if (t.requires_grad()) e.meta = t.impl().autograd;
    }
    node->edges.push_back(std::move(e));
  }
  AutogradMeta& m = meta_of(output);
  m.requires_grad = true;
  m.grad_fn = std::move(node);
}

void set_grad_buffer(const Tensor& leaf, const Tensor& buffer) {
  if (!leaf.is_leaf()) throw Error("set_grad_buffer on a non-leaf tensor " + leaf.describe());
  if (buffer.shape() != leaf.shape() || buffer.dtype() != leaf.dtype() || buffer.device() != leaf.device())
    throw ShapeError("set_grad_buffer: buffer " + buffer.describe() + " for " + leaf.describe());
  AutogradMeta& m = meta_of(leaf);
  m.grad = buffer;
  m.grad_defined = false;
}

void zero_grad(const std::vector<Tensor>& leaves) {
  for (const Tensor& t : leaves)
    if (t.impl().autograd) t.impl().autograd->grad_defined = false;
}

void write_sink(GradSink& sink, const Tensor& value) {
  if (sink.accumulate)
    add_into(sink.target, value);
  else
    copy_into(sink.target, value);
}

// ---- Tensor's autograd accessors ---------------------------------------------------------

bool Tensor::requires_grad() const {
  const auto& m = impl().autograd;
  return m && m->requires_grad;
}

Tensor& Tensor::set_requires_grad(bool on) {
  if (!is_leaf()) throw Error("set_requires_grad on a tensor computed by an op (" + describe() + ")");
  if (on && !is_floating(dtype()))
    throw ShapeError("only floating tensors can require gradients, not " + describe());
  meta_of(*this).requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const {
  const auto& m = impl().autograd;
  return !m || !m->grad_fn;
}

const Tensor& Tensor::grad() const {
  static const Tensor undefined;
  const auto& m = impl().autograd;
  return m ? m->grad : undefined;
}

bool Tensor::has_grad() const {
  const auto& m = impl().autograd;
  return m && m->grad.defined() && m->grad_defined;
}

std::shared_ptr<Node> Tensor::grad_fn() const {
  const auto& m = impl().autograd;
  return m ? m->grad_fn : nullptr;
}

void Tensor::backward() const {
  if (!requires_grad()) throw Error("backward() on " + describe() + ", which does not require a gradient");
  const Tensor seed = ones(shape(), dtype(), device());

  AutogradMeta& root_meta = *impl().autograd;
  if (!root_meta.grad_fn) {  // backward() on a leaf: its gradient is the seed itself
    std::vector<GradSink> sinks(1);
    if (!root_meta.grad.defined()) root_meta.grad = Tensor::empty(shape(), dtype(), device());
    sinks[0] = {root_meta.grad, root_meta.grad_defined};
    write_sink(sinks[0], seed);
    root_meta.grad_defined = true;
    return;
  }

  std::vector<std::shared_ptr<Node>> order = topological_order(root_meta.grad_fn);
  // Gradient of each pending node's output, filled by the nodes that consume it.
  std::unordered_map<Node*, Tensor> output_grads{{order.front().get(), seed}};

  for (const std::shared_ptr<Node>& owned : order) {
    Node* node = owned.get();
    auto found = output_grads.find(node);
    if (found == output_grads.end()) {  // no path carried a gradient here; still free it
      node->saved.clear();
      node->edges.clear();
      node->released = true;
      continue;
    }
    Tensor grad_output = std::move(found->second);
    output_grads.erase(found);

    std::vector<GradSink> sinks(node->edges.size());
    // Leaves this node writes first. Marked as holding a gradient only once the node returns: a
    // backward that throws may have written part of one, and has_grad() must not vouch for it.
    std::vector<AutogradMeta*> first_written;
    for (size_t k = 0; k < node->edges.size(); ++k) {
      const Edge& e = node->edges[k];
      if (!e.meta || !e.meta->requires_grad) continue;
      if (Node* producer = e.meta->grad_fn.get()) {  // an interior tensor: per-pass buffer
        auto [it, inserted] = output_grads.try_emplace(producer);
        if (inserted) it->second = Tensor::empty(e.shape, e.dtype, e.device);
        sinks[k] = {it->second, !inserted};
      } else {  // a leaf: its persistent gradient buffer
        AutogradMeta& leaf = *e.meta;
        if (!leaf.grad.defined()) leaf.grad = Tensor::empty(e.shape, e.dtype, e.device);
        const bool written =
            leaf.grad_defined ||  // by an earlier backward, or by this node's edge before
            std::find(first_written.begin(), first_written.end(), &leaf) != first_written.end();
        sinks[k] = {leaf.grad, written};
        if (!written) first_written.push_back(&leaf);
      }
    }
    node->backward(grad_output, sinks);
    for (AutogradMeta* leaf : first_written) leaf->grad_defined = true;
    // Free the tape as we go: this node's saved activations and its links to its inputs.
    node->saved.clear();
    node->edges.clear();
    node->released = true;
  }
}

}  // namespace subliminal
