// apps/subliminal/checkpoint.h — the app's safetensors files.
//
//   --save-init / --load-init  the shared initial weights under PyTorch's state_dict names for
//                              the notebook's MLP (net.0.weight [256, 784], net.0.bias, net.2.*,
//                              net.4.*), so `model.load_state_dict(load_file(path))` works; with
//                              --models N each tensor gains a leading N dimension (model m is
//                              net.0.weight[m]), and --load-init needs --models to equal the
//                              file's model count.
//   --save                     the trained teacher and students, "<arm>.net.0.weight", ...;
//                              with --models N each tensor gains a leading N dimension.
#pragma once

#include <string>
#include <vector>

#include "apps/subliminal/experiment.h"
#include "engine/nn.h"

namespace subliminal::app {

// `seed`, the run's --seed, goes into the file's metadata ("seed"): the weights alone do not
// repeat a run, whose batches, noise and cross-init student follow its seed. `scheme`, the
// --init the weights were drawn with ("torch", "normal"; "" when not known), goes there too
// ("init"): a run from the file draws its cross-init control with a scheme of its own.
void save_init(const std::string& path, const MlpParams& init, bool overwrite, uint64_t seed,
               const std::string& scheme);

// What an init file says of the run that wrote it ("" for what it does not say: a file written by
// another tool, or before subliminal recorded it).
struct InitFileNotes {
  std::string seed, scheme;
};
// Fills `init` (all of its models) from the file; errors name the file and the tensor, and a file
// of another model count says how many models it holds — and how to get one that fits: give
// --models, or, for --parity-batch (`for_parity_batch`: it computes one model's batch, and refuses
// --models), write a one-model init.
// With `notes`, what the file says of the run that wrote it goes there.
void load_init(const std::string& path, MlpParams& init, bool for_parity_batch = false,
               InitFileNotes* notes = nullptr);
// `ghost` / `all` hold the arms of each distilled group in `arms` order (may be empty).
// What identifies an init file's contents, whatever its name: "1079352 bytes, crc32 1a2b3c4d".
// A sweep's rows from --load-init carry it, so that rows made from a file since replaced are
// not taken for this file's.
std::string init_file_fingerprint(const std::string& path);

void save_trained(const std::string& path, const MlpParams& teacher, const MlpParams& ghost,
                  const MlpParams& all, const std::vector<ArmSpec>& arms, bool overwrite);

}  // namespace subliminal::app
