// engine/philox.cpp — Philox4x32-10 for many consecutive blocks at once.
//
// philox::block() is the definition; this file computes the same function 16 blocks at a
// time with AVX-512, or 8 at a time with AVX2, one block per 32-bit lane: lane j of vector c_i
// holds counter word i of block first + j, and the ten rounds run on all lanes together. The
// only operation x86 has no single vector instruction for is Philox's 32 × 32 → 64-bit product
// split into its high and low words; vpmuludq (_mm512_mul_epu32, _mm256_mul_epu32) forms the
// full products of the even lanes, so the odd lanes are shifted down into even position for a
// second multiply and the halves are blended back into place.
//
// The dispatch is by hand (__builtin_cpu_supports once), not target_clones (engine/simd.h):
// intrinsics need the target attribute on the function that uses them, and the scalar loop
// is the right fallback for every other CPU.
#include <cstring>

#include "engine/error.h"
#include "engine/philox.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SUBLIMINAL_PHILOX_SIMD 1
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

#ifdef SUBLIMINAL_PHILOX_SIMD

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
// 16 lanes, one block each: c_i (u32 × 16) holds counter word i of the 16 blocks.
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

// The same as multiply_hi_lo, 8 lanes.
__attribute__((target("avx2"))) inline void multiply_hi_lo(__m256i c, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);                        // c[2k]·m in 64-bit lane k
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);  // c[2k+1]·m in 64-bit lane k
  constexpr int kOddLanes = 0xAA;
  // Low words: even products' low halves sit in place; odd products' move up one lane.
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), kOddLanes);
  // High words: even products' high halves move down one lane; odd products' sit in place.
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, kOddLanes);
}

// Blocks first .. first + 7 into words[0 .. 31], as sixteen_blocks for 8 lanes (AVX2 has no
// three-way XOR, and its shuffles stay within 128-bit halves until the last step).
// 8 lanes, one block each: c_i (u32 × 8) holds counter word i of the 8 blocks.
__attribute__((target("avx2"))) void eight_blocks(uint64_t seed, uint64_t stream, uint64_t first,
                                                  uint32_t* words) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(first))), lane);  // block lo
  __m256i c1 = _mm256_set1_epi32(int(uint32_t(first >> 32)));                    // block hi
  __m256i c2 = _mm256_set1_epi32(int(uint32_t(stream)));                         // stream lo
  __m256i c3 = _mm256_set1_epi32(int(uint32_t(stream >> 32)));                   // stream hi
  const __m256i m0 = _mm256_set1_epi64x(kM0), m1 = _mm256_set1_epi64x(kM1);
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    __m256i hi0, lo0, hi1, lo1;
    multiply_hi_lo(c0, m0, hi0, lo0);
    multiply_hi_lo(c2, m1, hi1, lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(int(k0)));
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(int(k1)));
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  // Transpose 4 × 8 (word i of block j in lane j of c_i) to 8 × 4 (block after block). AVX2
  // shuffles stay within 128-bit halves: interleave words 0 with 1 and 2 with 3, then the
  // pairs, which leaves one whole block in each half of four registers …
  const __m256i w01_even = _mm256_unpacklo_epi32(c0, c1);          // blocks 0,1 | 4,5: words 0–1
  const __m256i w01_odd = _mm256_unpackhi_epi32(c0, c1);           // blocks 2,3 | 6,7
  const __m256i w23_even = _mm256_unpacklo_epi32(c2, c3);          // blocks 0,1 | 4,5: words 2–3
  const __m256i w23_odd = _mm256_unpackhi_epi32(c2, c3);           // blocks 2,3 | 6,7
  const __m256i b0_4 = _mm256_unpacklo_epi64(w01_even, w23_even);  // block 0 | block 4
  const __m256i b1_5 = _mm256_unpackhi_epi64(w01_even, w23_even);  // block 1 | block 5
  const __m256i b2_6 = _mm256_unpacklo_epi64(w01_odd, w23_odd);    // block 2 | block 6
  const __m256i b3_7 = _mm256_unpackhi_epi64(w01_odd, w23_odd);    // block 3 | block 7
  // … and the one shuffle across halves pairs them in block order.
  auto* out = reinterpret_cast<__m256i_u*>(words);
  _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(b0_4, b1_5, 0x20));  // blocks 0, 1
  _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(b2_6, b3_7, 0x20));  // blocks 2, 3
  _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(b0_4, b1_5, 0x31));  // blocks 4, 5
  _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(b2_6, b3_7, 0x31));  // blocks 6, 7
}

// Groups of kLanes blocks through `group`, advancing the caller's range past them. A group
// whose block index carries into its high word (once per 2³² blocks) takes the scalar loop.
template <int kLanes>
void fill_groups(void (*group)(uint64_t, uint64_t, uint64_t, uint32_t*), uint64_t seed, uint64_t stream,
                 uint64_t& first_block, int64_t& blocks, uint32_t*& words) {
  for (; blocks >= kLanes; first_block += kLanes, blocks -= kLanes, words += 4 * kLanes) {
    if (uint32_t(first_block) <= UINT32_MAX - (kLanes - 1))
      group(seed, stream, first_block, words);
    else
      fill_words_scalar(seed, stream, first_block, kLanes, words);
  }
}

#endif  // SUBLIMINAL_PHILOX_SIMD

}  // namespace

bool cpu_has(FillPath path) {
#ifdef SUBLIMINAL_PHILOX_SIMD
  static const bool avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
  if (path == FillPath::avx512) return avx512;
  if (path == FillPath::avx2) return avx2;
#else
  if (path != FillPath::scalar) return false;
#endif
  return true;
}

FillPath fastest_fill_path() {
  static const FillPath fastest = cpu_has(FillPath::avx512) ? FillPath::avx512
                                  : cpu_has(FillPath::avx2) ? FillPath::avx2
                                                            : FillPath::scalar;
  return fastest;
}

const char* fill_path_name(FillPath path) {
  switch (path) {
    case FillPath::avx512:
      return "AVX-512";
    case FillPath::avx2:
      return "AVX2";
    case FillPath::scalar:
      break;
  }
  return "scalar";
}

void fill_words_by(FillPath path, uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks,
                   uint32_t* words) {
  if (!cpu_has(path))
    throw Error(std::string("philox::fill_words_by: this CPU has no ") + fill_path_name(path));
#ifdef SUBLIMINAL_PHILOX_SIMD
  if (path == FillPath::avx512) fill_groups<16>(sixteen_blocks, seed, stream, first_block, blocks, words);
  if (path == FillPath::avx2) fill_groups<8>(eight_blocks, seed, stream, first_block, blocks, words);
#endif
  fill_words_scalar(seed, stream, first_block, blocks, words);  // the last partial group, or all
}

void fill_words(uint64_t seed, uint64_t stream, uint64_t first_block, int64_t blocks, uint32_t* words) {
  fill_words_by(fastest_fill_path(), seed, stream, first_block, blocks, words);
}

}  // namespace subliminal::philox
