// ops/mlp.h — the forward pass of N MLPs (engine/nn.h holds their parameters).
//
//   logits[N, B, out] = L_{L−1}( relu( ... relu( L_0(x) ) ) ),   L_l(h) = h · W_lᵀ + b_l
//
// Three ways to put it on the autograd tape, computing the same function:
//   whole      one node for the whole MLP. Forward: each hidden layer is one GEMM with the
//              RELU_AUX_BIAS epilogue (bias + ReLU + ReLU bit-mask), the output layer one
//              GEMM with BIAS. Backward: the output layer's weight GEMM writes its bias
//              gradient (BGRADB); each input-gradient GEMM applies the ReLU derivative of the
//              layer below from its mask and writes that layer's bias gradient (DRELU_BGRAD).
//              These fusions cross Linear/ReLU boundaries, hence one node. No GEMM is spent
//              on the gradient of an input that does not need one.
//   per_layer  a linear(act = relu) node per layer: bias + ReLU fused in each forward GEMM.
//   none       linear → relu → linear ...: separate nodes, the reference the others are
//              tested against.
#pragma once

#include "engine/nn.h"
#include "engine/tensor.h"

namespace subliminal {

enum class MlpFusion { whole, per_layer, none };

// x [N, B, in] (same device and dtype as the parameters) → logits [N, B, out].
Tensor mlp_forward(const Tensor& x, const MlpParams& params, MlpFusion fusion = MlpFusion::whole);

}  // namespace subliminal
