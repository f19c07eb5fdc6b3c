// engine/philox.h — the Philox4x32-10 counter-based generator (Salmon et al., SC'11).
//
// Why counter-based: the random number at position i of a stream is a pure function of
// (seed, stream, i). Nothing is carried from one draw to the next, so
//   - CPU and GPU produce the same numbers (the GPU draws through cuRAND's device API,
//     curand_init(seed, stream, offset) + curand4, which uses exactly this layout — a GPU
//     test checks it bit for bit);
//   - any image of the noise "data set" can be regenerated on demand, in any order, by any
//     thread — no 60000×784 buffer per model has to exist;
//   - a captured CUDA graph draws fresh noise on each replay by reading its position from a
//     counter in device memory.
//
// Layout (cuRAND's): the 128-bit counter is (block lo, block hi, stream lo, stream hi) and
// the 64-bit key is the seed; block b yields positions 4b .. 4b+3 as words x, y, z, w.
#pragma once

#include <array>
#include <cstdint>

namespace subliminal::philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt 3)

using Block = std::array<uint32_t, 4>;

// The four 32-bit outputs of counter block `block` of stream `stream` under `seed`.
inline Block block(uint64_t seed, uint64_t stream, uint64_t block) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * c0, p1 = uint64_t(kM1) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

// words[4·i + j] = word j of block first_block + i, for i < blocks: a run of positions
// 4·first_block ..., the same words as calling block() once per block. It takes the fastest
// FillPath this CPU has: with AVX-512 it computes 16 blocks per pass, with AVX2 8, one block
// per 32-bit vector lane (engine/philox.cpp); the distillation's noise costs about a tenth of
// the scalar loop's time with AVX-512.
void fill_words(uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks, uint32_t* words);

// The ways fill_words can compute its words. Each gives the same words; the tests check every
// one the CPU has.
enum class FillPath { avx512, avx2, scalar };
bool cpu_has(FillPath path);
FillPath fastest_fill_path();  // the one fill_words takes
const char* fill_path_name(FillPath path);
// fill_words by `path`; throws Error when the CPU does not have it.
void fill_words_by(FillPath path, uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks,
                   uint32_t* words);

// A 32-bit word → float in [0, 1) from its top 24 bits: every value is exact in float32, so
// 2u − 1 ∈ [−1, 1) is exact too and CPU and GPU agree bit for bit.
inline float to_unit_float(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }
// The same in double precision, from 53 bits of two words (for float64 tensors).
inline double to_unit_double(uint32_t hi, uint32_t lo) {
  // hi's 32 bits above lo's top 21: a double's 53-bit mantissa (the two never overlap: ^ is |).
  uint64_t bits = (uint64_t(hi) << 21) ^ (uint64_t(lo) >> 11);
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

}  // namespace subliminal::philox
