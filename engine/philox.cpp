// engine/philox.cpp — Philox4x32-10 for many consecutive blocks at once.
//
// philox::block() is the definition; this file computes the same function 16 blocks at a
// time with AVX-512, one block per 32-bit lane: lane j of vector c_i holds counter word i of
// block first + j, and the ten rounds run on all 16 lanes together. The only operation x86
// has no single vector instruction for is Philox's 32 × 32 → 64-bit product split into its
// high and low words; vpmuludq (_mm512_mul_epu32) forms the full products of the even lanes,
// so the odd lanes are shifted down into even position for a second multiply and the halves
// are blended back into place.
//
// The dispatch is by hand (__builtin_cpu_supports once), not target_clones (engine/simd.h):
// intrinsics need the target attribute on the function that uses them, and the scalar loop
// is the right fallback for every other CPU.
#include <cstring>

#include "engine/philox.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SUBLIMINAL_PHILOX_AVX512 1
// GCC 12's AVX-512 shift intrinsics start from _mm512_undefined_epi32() and warn that it is
// uninitialised (GCC bug 105593, fixed in GCC 13); the value is never read. At -O2 the warning
// is -Wuninitialized, at -O1 (the sanitizer build) -Wmaybe-uninitialized.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace subliminal::philox {
namespace {

void fill_words_scalar(uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks,
                       uint32_t* words) {
  for (int64_t i = 0; i < blocks; ++i) {
    const Block w = block(seed, stream, first_block + uint64_t(i));
    std::memcpy(words + 4 * i, w.data(), sizeof(w));
  }
}

#ifdef SUBLIMINAL_PHILOX_AVX512

constexpr int kLanes = 16;

// 16 lanes of c (u32) times the constant m: the high and the low words of each 64-bit product.
__attribute__((target("avx512f"))) inline void multiply_hi_lo(__m512i c, __m512i m, __m512i& hi,
                                                              __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(c, m);                        // c[2k]·m in 64-bit lane k
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);  // c[2k+1]·m in 64-bit lane k
  constexpr __mmask16 kOddLanes = 0xAAAA;
  // Low words: even products' low halves sit in place; odd products' move up one lane.
  lo = _mm512_mask_blend_epi32(kOddLanes, even, _mm512_slli_epi64(odd, 32));
  // High words: even products' high halves move down one lane; odd products' sit in place.
  hi = _mm512_mask_blend_epi32(kOddLanes, _mm512_srli_epi64(even, 32), odd);
}

// Blocks first .. first + 15 into words[0 .. 63], in position order. The caller guarantees
// that the block index's low word does not wrap inside the group (so its high word is shared).
__attribute__((target("avx512f"))) void sixteen_blocks(uint64_t seed, uint64_t stream, uint64_t first,
                                                       uint32_t* words) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(int(uint32_t(first))), lane);  // block lo
  __m512i c1 = _mm512_set1_epi32(int(uint32_t(first >> 32)));                    // block hi
  __m512i c2 = _mm512_set1_epi32(int(uint32_t(stream)));                         // stream lo
  __m512i c3 = _mm512_set1_epi32(int(uint32_t(stream >> 32)));                   // stream hi
  const __m512i m0 = _mm512_set1_epi64(kM0), m1 = _mm512_set1_epi64(kM1);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  constexpr int kXor3 = 0x96;  // ternary-logic truth table of a ^ b ^ c
  for (int round = 0; round < 10; ++round) {
    __m512i hi0, lo0, hi1, lo1;
    multiply_hi_lo(c0, m0, hi0, lo0);
    multiply_hi_lo(c2, m1, hi1, lo1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(int(k0)), kXor3);
    c1 = lo1;
    c2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(int(k1)), kXor3);
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  // Transpose 4 × 16 (word i of block j in lane j of c_i) to 16 × 4 (block after block):
  // first pair words 0–1 and 2–3 of each block, then interleave the pairs as 64-bit lanes.
  const __m512i pairs_first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i pairs_last = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i w01_lo = _mm512_permutex2var_epi32(c0, pairs_first, c1);  // blocks 0–7, words 0–1
  const __m512i w01_hi = _mm512_permutex2var_epi32(c0, pairs_last, c1);   // blocks 8–15
  const __m512i w23_lo = _mm512_permutex2var_epi32(c2, pairs_first, c3);
  const __m512i w23_hi = _mm512_permutex2var_epi32(c2, pairs_last, c3);
  const __m512i quads_first = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i quads_last = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  _mm512_storeu_si512(words + 0, _mm512_permutex2var_epi64(w01_lo, quads_first, w23_lo));   // blocks 0–3
  _mm512_storeu_si512(words + 16, _mm512_permutex2var_epi64(w01_lo, quads_last, w23_lo));   // blocks 4–7
  _mm512_storeu_si512(words + 32, _mm512_permutex2var_epi64(w01_hi, quads_first, w23_hi));  // blocks 8–11
  _mm512_storeu_si512(words + 48, _mm512_permutex2var_epi64(w01_hi, quads_last, w23_hi));   // blocks 12–15
}

#endif  // SUBLIMINAL_PHILOX_AVX512

}  // namespace

bool fill_words_is_vectorised() {
#ifdef SUBLIMINAL_PHILOX_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

void fill_words(uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks, uint32_t* words) {
#ifdef SUBLIMINAL_PHILOX_AVX512
  if (fill_words_is_vectorised()) {
    // Groups of 16 blocks. A group whose block index carries into its high word (once per
    // 2³² blocks) and the last partial group take the scalar loop.
    for (; blocks >= kLanes; first_block += kLanes, blocks -= kLanes, words += 4 * kLanes) {
      if (uint32_t(first_block) <= UINT32_MAX - (kLanes - 1))
        sixteen_blocks(seed, stream, first_block, words);
      else
        fill_words_scalar(seed, stream, first_block, kLanes, words);
    }
  }
#endif
  fill_words_scalar(seed, stream, first_block, blocks, words);
}

}  // namespace subliminal::philox
