// ops/loss.h — the two losses of the experiment, fused, plus PyTorch's kl_div for reference.
//
// Every loss returns one value per model: shape [N] for logits [N, B, C]. backward() on that
// vector differentiates their sum, which gives each model the gradient of its own loss.
#pragma once

#include "engine/tensor.h"
#include "ops/divergence.h"
#include "ops/slice.h"

namespace subliminal {

// The teacher's loss: F.cross_entropy(logits[:, :, classes], labels), mean over the batch.
//   logits [N, B, C] float, labels [N, B] int32 with values in [0, classes.width()).
// Fused: no slice, no log-softmax tensor; backward writes (softmax − onehot)/B into the
// class columns (∂/∂z_j of logsumexp(z) − z_label is softmax_j − [j = label]) and zeros
// into the others.
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, ColumnRange classes);

// The student's loss, as the notebook writes it:
//   F.kl_div(F.log_softmax(s[..., cols]/T), F.softmax(t[..., cols]/T), reduction="batchmean") · T²
//   student [N, B, C], teacher [M, B, C] with N a multiple of M: student n learns from teacher
//   n mod M (student arms sharing a teacher need no copies of its logits). The teacher's logits
//   must not require a gradient.
// Backward: d student[..., cols] = T·(softmax(s/T) − softmax(t/T))/B, zeros elsewhere
// (T, not T²: the chain rule through s/T takes one factor of T back).
// With Divergence::js the same with Jensen–Shannon in place of KL (ops/divergence.h):
// T² · the batch mean of (½ KL(p ‖ m) + ½ KL(q ‖ m)), m = (p + q)/2, p and q the teacher's and
// the student's softmax at T; backward T·q ⊙ (h − Σ q·h)/B, h = ½ log(q/m).
Tensor distill(const Tensor& student, const Tensor& teacher, ColumnRange cols, double temperature,
               Divergence divergence);
inline Tensor distill_kl(const Tensor& student, const Tensor& teacher, ColumnRange cols, double temperature) {
  return distill(student, teacher, cols, temperature, Divergence::kl);
}

// PyTorch's F.kl_div(log_q, p, reduction="batchmean") per model: Σ p·(log p − log_q) / B,
// with 0·log 0 = 0; a NaN or negative p makes the loss NaN, as torch's xlogy(p, p) does. log_q, p [N, B, C];
// p must not require a gradient. The unfused reference for distill_kl (log_softmax → kl_div → scale).
Tensor kl_div(const Tensor& log_q, const Tensor& p);

}  // namespace subliminal
