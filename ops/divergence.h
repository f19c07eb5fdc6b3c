// ops/divergence.h — what the distillation loss measures between a teacher's and a student's
// softened distributions p = softmax(t/T) and q = softmax(s/T) over the distilled columns.
//
//   kl   KL(p ‖ q) = Σ p·(log p − log q)                  the notebook's (and the paper's) loss
//   js   JS(p, q)  = ½ KL(p ‖ m) + ½ KL(q ‖ m),  m = (p + q)/2
//        symmetric and at most log 2; an ablation public reproductions of the paper ran
//
// Either is averaged over the batch and scaled by T², as the notebook does for KL. A header of its
// own so that the CUDA kernels' headers can name it without pulling in the tensor.
#pragma once

#include <cstdint>

namespace subliminal {

enum class Divergence : uint8_t { kl, js };

inline const char* divergence_name(Divergence divergence) {
  return divergence == Divergence::js ? "js" : "kl";
}

}  // namespace subliminal
