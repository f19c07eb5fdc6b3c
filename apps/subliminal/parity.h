// apps/subliminal/parity.h — `--parity-batch FILE`: one identical batch, for comparing with
// PyTorch (bench/parity.py) from the same weights.
//
// From the init (--load-init or --seed), on the first --batch-size training images in file
// order, writes to FILE (safetensors):
//   loss [1], grad.<name>        the teacher's cross-entropy on the 10 class logits and the
//                                gradient of every parameter (PyTorch state_dict names);
//   noise [B, 784]               a uniform noise batch,
//   kl_loss [1], kl_grad.<name>  the distillation loss T²·KL on the ghost logits at T = 2 of the
//                                student (= the init) against a teacher whose every parameter is
//                                the init's × 1.1, and the student's gradients;
//   js_loss [1], js_grad.<name>  the same with Jensen–Shannon in place of KL (ops/divergence.h).
#pragma once

#include "apps/subliminal/config.h"
#include "data/mnist.h"
#include "engine/device.h"

namespace subliminal::app {

void write_parity_batch(const Config& config, const data::Mnist& mnist, Device device,
                        const std::string& path);

}  // namespace subliminal::app
