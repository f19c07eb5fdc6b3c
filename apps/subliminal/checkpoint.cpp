// apps/subliminal/checkpoint.cpp — MLP parameters to and from safetensors.
#include "apps/subliminal/checkpoint.h"

#include <zlib.h>  // crc32_z: init_file_fingerprint

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include "engine/safetensors.h"

namespace subliminal::app {
namespace {

// Model slice [first, first + count) of each parameter, named prefix + state_dict name; the
// model dimension is dropped when count is 1 (PyTorch's shapes).
void add_params(std::vector<NamedTensor>& out, const std::string& prefix, const MlpParams& params,
                int64_t first, int64_t count) {
  std::vector<Tensor> tensors = params.tensors();
  std::vector<std::string> names = params.names();
  for (size_t k = 0; k < tensors.size(); ++k) {
    Tensor t = tensors[k].rows(first, count);
    if (count == 1) t = t.reshaped(Shape(t.shape().begin() + 1, t.shape().end()));
    out.push_back({prefix + names[k], t});
  }
}

std::map<std::string, std::string> metadata(const MlpParams& params) {
  std::string sizes;
  for (int64_t s : params.shape().sizes) {
    if (!sizes.empty()) sizes += ',';
    sizes += std::to_string(s);
  }
  return {{"producer", "subliminal"}, {"mlp_sizes", sizes}};
}

}  // namespace

void save_init(const std::string& path, const MlpParams& init, bool overwrite, uint64_t seed,
               const std::string& scheme) {
  std::vector<NamedTensor> tensors;
  add_params(tensors, "", init, 0, init.models());
  std::map<std::string, std::string> meta = metadata(init);
  meta["seed"] = std::to_string(seed);
  if (!scheme.empty()) meta["init"] = scheme;
  write_safetensors(path, tensors, meta, overwrite);
}

void load_init(const std::string& path, MlpParams& init, bool for_parity_batch, InitFileNotes* notes) {
  SafetensorsFile file = read_safetensors(path);
  if (notes != nullptr) {
    const auto said = [&file](const char* key) {
      const auto found = file.metadata.find(key);
      return found == file.metadata.end() ? std::string() : found->second;
    };
    *notes = {said("seed"), said("init")};
  }
  std::vector<Tensor> tensors = init.tensors();
  std::vector<std::string> names = init.names();
  // A --save checkpoint names each model's tensors under its arm (teacher.net.0.weight, ...):
  // trained models, not an init, and the likeliest wrong file to be given here.
  for (const NamedTensor& nt : file.tensors)
    if (nt.name.size() > names.front().size() && nt.name.ends_with("." + names.front()))
      throw DataError(path_text(path) + ": holds " + nt.name + ", a model saved by --save after training; " +
                      "--load-init takes an init as --save-init writes it (" + names.front() + " ... " +
                      names.back() + ")");
  if (file.tensors.size() != tensors.size())
    throw DataError(path_text(path) + ": holds " + std::to_string(file.tensors.size()) +
                    " tensors, this MLP has " + std::to_string(tensors.size()) + " (" + names.front() +
                    " ... " + names.back() + ")");
  const int64_t N = init.models();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const NamedTensor* found = nullptr;
    for (const NamedTensor& nt : file.tensors)
      if (nt.name == names[k]) found = &nt;
    if (!found) throw DataError(path_text(path) + ": no tensor named " + names[k]);
    // One model's tensor has PyTorch's shape; N models' have a leading N (as --save-init writes).
    const Shape one_model(tensors[k].shape().begin() + 1, tensors[k].shape().end());
    const Shape expected = N == 1 ? one_model : tensors[k].shape();
    const Shape& held = found->tensor.shape();
    if (held != expected || found->tensor.dtype() != DType::f32) {
      // The right layer for another model count: say so, rather than "do --hidden ... match".
      const bool stacked =
          held.size() == one_model.size() + 1 && Shape(held.begin() + 1, held.end()) == one_model;
      const int64_t held_models = stacked ? held.front() : held == one_model ? 1 : 0;
      if (found->tensor.dtype() == DType::f32 && held_models > 0 && held_models != N) {
        throw DataError(path_text(path) + ": holds the init of " + std::to_string(held_models) +
                        (held_models == 1 ? " model" : " models") + " (" + names[k] + " is " +
                        shape_string(held) + "), this run trains " + std::to_string(N) +
                        (for_parity_batch
                             ? " (--parity-batch computes one model's batch); write a one-model init with "
                               "--save-init, without --models"
                             : "; give --models " + std::to_string(held_models) +
                                   " or write an init of this run's size with --save-init"));
      }
      throw DataError(path_text(path) + ": " + names[k] + " is " + found->tensor.describe() +
                      ", expected float32" + shape_string(expected) +
                      " (do --hidden and --ghosts match the file?)");
    }
    // A NaN or Inf would train (and evaluate) nonsense, or stop training far from its cause.
    const float* values = found->tensor.data<float>();
    for (int64_t i = 0; i < found->tensor.numel(); ++i)
      if (!std::isfinite(values[i]))
        throw DataError(path_text(path) + ": " + names[k] + " holds a non-finite value (" +
                        std::to_string(values[i]) + " at flat index " + std::to_string(i) + ")");
    tensors[k].copy_from(found->tensor.reshaped(tensors[k].shape()));
  }
}

void save_trained(const std::string& path, const MlpParams& teacher, const MlpParams& ghost,
                  const MlpParams& all, const std::vector<ArmSpec>& arms, bool overwrite) {
  std::vector<NamedTensor> tensors;
  const int64_t N = teacher.models();
  add_params(tensors, "teacher.", teacher, 0, N);
  int64_t ghost_index = 0, all_index = 0;
  for (const ArmSpec& arm : arms) {
    const MlpParams& group = arm.all_logits ? all : ghost;
    int64_t& index = arm.all_logits ? all_index : ghost_index;
    if (group.models() == 0) continue;  // a group without arms (no all-logit arms, say)
    add_params(tensors, arm.key + ".", group, index * N, N);
    ++index;
  }
  write_safetensors(path, tensors, metadata(teacher), overwrite);
}

std::string init_file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path_text(path) + ": cannot read it (" + std::strerror(errno) + ")");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError(path_text(path) + ": read error");
  const uLong crc = crc32_z(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size());
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08lx", static_cast<unsigned long>(crc));
  return std::to_string(bytes.size()) + " bytes, crc32 " + hex;
}

}  // namespace subliminal::app
