// engine/nn.h — the parameters of N multilayer perceptrons, held in one flat arena.
//
// Layer l of every model is stored batched over models, in PyTorch's nn.Linear layout:
//   weights[l]  [N, out_l, in_l]      biases[l]  [N, out_l]
// and all of them are views into one flat buffer `values` (and their gradients into one
// flat buffer `grads`). One arena means: Adam is one kernel over all parameters, copying
// every model's parameters (the teacher and the same-init students start as copies of one
// init) is one memcpy, and a checkpoint is a handful of contiguous writes. Each view starts
// on a 256-byte boundary because cuBLASLt wants aligned matrices and bias vectors; the
// padding stays zero.
//
// The forward pass lives in ops/mlp.h: parameters here, computation there.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"
#include "engine/tensor.h"

namespace subliminal {

// Layer widths, input first: {784, 256, 256, 13} is the notebook's MLP.
struct MlpShape {
  std::vector<int64_t> sizes;
  int layers() const { return static_cast<int>(sizes.size()) - 1; }
  int64_t inputs() const { return sizes.front(); }
  int64_t outputs() const { return sizes.back(); }
  int64_t parameters_per_model() const;  // Σ out·in + out over layers (no padding)
};

enum class InitScheme {
  torch_default,  // nn.Linear's reset_parameters: W, b ~ U(−1/√fan_in, 1/√fan_in)
  normal_fan_in,  // the paper's script: W ~ N(0, 1/fan_in), b = 0
};

class MlpParams {
 public:
  MlpParams() = default;
  // Zero-filled parameters for `models` MLPs of `shape`; each parameter requires grad and
  // has its gradient buffer inside `grads`.
  MlpParams(const MlpShape& shape, int64_t models, DType dtype, Device device);
  // Tensors are handles: a copy would share the storage and train the original too. Copy
  // values with copy_from; move is fine.
  MlpParams(const MlpParams&) = delete;
  MlpParams& operator=(const MlpParams&) = delete;
  MlpParams(MlpParams&&) = default;
  MlpParams& operator=(MlpParams&&) = default;

  const MlpShape& shape() const { return shape_; }
  int64_t models() const { return models_; }
  Device device() const { return values_.device(); }
  DType dtype() const { return values_.dtype(); }

  const Tensor& weight(int layer) const { return weights_[checked_layer(layer)]; }
  const Tensor& bias(int layer) const { return biases_[checked_layer(layer)]; }
  // W0, b0, W1, b1, ... — the order of PyTorch's state_dict.
  std::vector<Tensor> tensors() const;
  // PyTorch state_dict names of the notebook's nn.Sequential: net.0.weight, net.0.bias, net.2.weight, ...
  std::vector<std::string> names() const;

  const Tensor& values() const { return values_; }  // flat arena of all parameters
  const Tensor& grads() const { return grads_; }    // flat arena of their gradients

  // Copies every parameter of every model from `other` (same shape, models, dtype).
  void copy_from(const MlpParams& other);
  // Copies model `from_model` of `other` into model `to_model` of this.
  void copy_model_from(const MlpParams& other, int64_t from_model, int64_t to_model);

 private:
  size_t checked_layer(int layer) const;  // ShapeError unless 0 ≤ layer < shape().layers()

  MlpShape shape_;
  int64_t models_ = 0;
  Tensor values_, grads_;
  std::vector<Tensor> weights_, biases_;
};

// Initialises model m of `params` from seed `seeds[m]`: each tensor draws from its own
// stream stream_id(kInitPurpose, variant, tensor index), so "variant" gives a second,
// independent init from the same seed (the app's cross-init control is variant 1, except where
// it takes another model's variant 0: apps/subliminal/streams.h).
constexpr uint32_t kInitPurpose = 1;
void init_mlp(MlpParams& params, InitScheme scheme, const std::vector<uint64_t>& seeds, uint32_t variant);

}  // namespace subliminal
