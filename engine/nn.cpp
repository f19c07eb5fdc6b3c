// engine/nn.cpp — the parameter arena and its initialisation.
#include "engine/nn.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/kernels.h"

namespace subliminal {
namespace {

// `elements` rounded up to a whole number of 256-byte lines: the next view then starts a
// multiple of 256 bytes after the arena's start (the arena itself is 256-byte aligned on the
// GPU, 64 on the CPU; engine/storage.h).
int64_t aligned(int64_t elements, DType dtype) {
  int64_t per_line = 256 / int64_t(dtype_size(dtype));
  return (elements + per_line - 1) / per_line * per_line;
}

}  // namespace

int64_t MlpShape::parameters_per_model() const {
  int64_t total = 0;
  for (int l = 0; l < layers(); ++l) total += sizes[size_t(l) + 1] * sizes[size_t(l)] + sizes[size_t(l) + 1];
  return total;
}

MlpParams::MlpParams(const MlpShape& shape, int64_t models, DType dtype, Device device)
    : shape_(shape), models_(models) {
  if (shape.sizes.size() < 2) throw ShapeError("an MLP needs at least an input and an output size");
  for (int64_t s : shape.sizes)
    if (s <= 0) throw ShapeError("MLP layer sizes must be positive");
  if (models <= 0) throw ShapeError("an MLP arena needs at least one model");

  std::vector<std::pair<int64_t, Shape>> layout;  // (offset, shape) of W0, b0, W1, b1, ...
  int64_t offset = 0;
  for (int l = 0; l < shape.layers(); ++l) {
    int64_t in = shape.sizes[size_t(l)], out = shape.sizes[size_t(l) + 1];
    layout.push_back({offset, {models, out, in}});
    offset += aligned(models * out * in, dtype);
    layout.push_back({offset, {models, out}});
    offset += aligned(models * out, dtype);
  }
  values_ = Tensor::zeros({offset}, dtype, device);
  grads_ = Tensor::zeros({offset}, dtype, device);
  for (size_t k = 0; k < layout.size(); ++k) {
    Tensor value = Tensor::view_of(values_, layout[k].first, layout[k].second);
    value.set_requires_grad(true);
    set_grad_buffer(value, Tensor::view_of(grads_, layout[k].first, layout[k].second));
    (k % 2 == 0 ? weights_ : biases_).push_back(value);
  }
}

std::vector<Tensor> MlpParams::tensors() const {
  std::vector<Tensor> all;
  for (size_t l = 0; l < weights_.size(); ++l) {
    all.push_back(weights_[l]);
    all.push_back(biases_[l]);
  }
  return all;
}

size_t MlpParams::checked_layer(int layer) const {
  if (layer < 0 || layer >= shape_.layers())
    throw ShapeError("MLP layer " + std::to_string(layer) + " does not exist (the MLP has " +
                     std::to_string(shape_.layers()) + " layers)");
  return size_t(layer);
}

std::vector<std::string> MlpParams::names() const {
  // nn.Sequential(Linear, ReLU, Linear, ReLU, Linear): the Linear layers sit at even indices.
  std::vector<std::string> names;
  for (size_t l = 0; l < weights_.size(); ++l) {
    names.push_back("net." + std::to_string(2 * l) + ".weight");
    names.push_back("net." + std::to_string(2 * l) + ".bias");
  }
  return names;
}

void MlpParams::copy_from(const MlpParams& other) {
  if (other.shape_.sizes != shape_.sizes || other.models_ != models_ || other.dtype() != dtype())
    throw ShapeError("MlpParams::copy_from: different shape, model count or dtype");
  values_.copy_from(other.values_);
}

void MlpParams::copy_model_from(const MlpParams& other, int64_t from_model, int64_t to_model) {
  if (other.shape_.sizes != shape_.sizes || other.dtype() != dtype())
    throw ShapeError("MlpParams::copy_model_from: different shape or dtype");
  std::vector<Tensor> mine = tensors(), theirs = other.tensors();
  for (size_t k = 0; k < mine.size(); ++k) mine[k].rows(to_model, 1).copy_from(theirs[k].rows(from_model, 1));
}

void init_mlp(MlpParams& params, InitScheme scheme, const std::vector<uint64_t>& seeds, uint32_t variant) {
  if (static_cast<int64_t>(seeds.size()) != params.models())
    throw Error("init_mlp: " + std::to_string(seeds.size()) + " seeds for " +
                std::to_string(params.models()) + " models");
  std::vector<Tensor> tensors = params.tensors();
  for (int64_t m = 0; m < params.models(); ++m) {
    for (size_t k = 0; k < tensors.size(); ++k) {
      Tensor t = tensors[k].rows(m, 1);
      double fan_in = double(params.shape().sizes[k / 2]);  // tensors W0, b0, W1, …: k is layer k/2's
      RandomStream stream{seeds[size_t(m)], stream_id(kInitPurpose, variant, uint32_t(k))};
      bool is_weight = k % 2 == 0;
      if (scheme == InitScheme::torch_default) {
        // kaiming_uniform_(a=√5) gives bound √(6/((1+5)·fan_in)) = 1/√fan_in; bias uses the same bound.
        double bound = 1.0 / std::sqrt(fan_in);
        fill_uniform(t, stream, -bound, bound);
      } else if (is_weight) {
        fill_normal(t, stream, 0.0, 1.0 / std::sqrt(fan_in));
      } else {
        fill(t, 0.0);
      }
    }
  }
}

}  // namespace subliminal
