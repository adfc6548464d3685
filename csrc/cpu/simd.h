// Small SIMD layer for the fused CPU sample step: one vector type per ISA level, chosen at
// compile time by the flags fastsrnn/ops/build.py passes (-mavx512f..., -mavx2 -mfma, or none).
//
// Weights are fp32, bf16 (raw uint16 bits) or int8 (the frame tier: per-row scales applied by
// the caller, linear.h); activations and accumulation are always fp32. bf16 -> fp32 and
// int8 -> fp32 are exact, so narrow storage cuts the bytes streamed without changing how
// anything is summed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace fastsrnn {

using bf16_bits = uint16_t;

inline float to_float(float v) { return v; }
inline float to_float(int8_t v) { return static_cast<float>(v); }
inline float to_float(bf16_bits v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
struct Vec {
  static constexpr int W = 16;
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const bf16_bits* p) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static Vec load(const int8_t* p) {  // 16 int8, sign-extended to int32, then exact to fp32
    __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))};
  }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  Vec relu() const { return {_mm512_max_ps(v, _mm512_setzero_ps())}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  float sum() const { return _mm512_reduce_add_ps(v); }
  // The four horizontal sums of a[0..3] at once (a quarter of the shuffles of four sum()s).
  static void sum4(const Vec* a, float* out) {
    __m256 h[4];
    for (int i = 0; i < 4; ++i)
      h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i].v), _mm512_extractf32x8_ps(a[i].v, 1));
    const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char* kIsa = "avx2";
struct Vec {
  static constexpr int W = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const bf16_bits* p) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
  }
  static Vec load(const int8_t* p) {  // 8 int8, sign-extended to int32, then exact to fp32
    __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))};
  }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  Vec relu() const { return {_mm256_max_ps(v, _mm256_setzero_ps())}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void sum4(const Vec* a, float* out) {
    const __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a[0].v, a[1].v), _mm256_hadd_ps(a[2].v, a[3].v));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)));
  }
};
#else
constexpr const char* kIsa = "generic";
// Portable fallback: 8 independent lanes so that the compiler can still use SSE and the FMA
// chains do not serialise.
struct Vec {
  static constexpr int W = 8;
  float v[W];
  static Vec zero() { Vec r; for (int i = 0; i < W; ++i) r.v[i] = 0.f; return r; }
  template <typename T>
  static Vec load(const T* p) { Vec r; for (int i = 0; i < W; ++i) r.v[i] = to_float(p[i]); return r; }
  static Vec fma(Vec a, Vec b, Vec c) { for (int i = 0; i < W; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
  static Vec add(Vec a, Vec b) { for (int i = 0; i < W; ++i) a.v[i] += b.v[i]; return a; }
  Vec relu() const { Vec r; for (int i = 0; i < W; ++i) r.v[i] = std::max(v[i], 0.0f); return r; }
  void store(float* p) const { for (int i = 0; i < W; ++i) p[i] = v[i]; }
  float sum() const { float s = 0.f; for (int i = 0; i < W; ++i) s += v[i]; return s; }
  static void sum4(const Vec* a, float* out) { for (int i = 0; i < 4; ++i) out[i] = a[i].sum(); }
};
#endif

// Sequences per register tile of the matrix products: AVX-512 has 32 vector registers
// (4 rows x 4 sequences of accumulators fit), AVX2 16 (4 x 2).
constexpr int kTileSeq = Vec::W == 16 ? 4 : 2;
constexpr int kTileRows = 4;

// Software prefetch distance, in bytes ahead of each weight row's read position, for the
// bf16 weight streams. The rows of a matrix are read in address order, so this reaches about two
// row tiles ahead (a 4-row tile is 8 KB of bf16 at K = 1024). Measured on a 2-core AMD EPYC
// (Zen 4), B = 1, (4096, 1024) bf16 weights cycling through 200 MB, same process A/B: 1 thread
// 18 -> 25-28 GB/s (hardware prefetch alone loses on the short 2 KB row streams; 32-64 KB ahead
// measured worse, 8 KB the same); the fused dadabots frame step 3.16 -> 2.04 ms at 2 threads.
// fp32 rows are twice as long and stream near the copy rate without it, so fp32 is unchanged.
// int8 rows (1 KB) take the same distance: the fused dadabots frame step (60 MB) in ~1.0 ms at
// 2 threads; 8 KB and 32 KB measured the same within noise, and _MM_HINT_NTA (to keep W3/Wo in
// L3 for the sample steps) did not help.
constexpr int64_t kPrefetchBytes = 16384;

inline void prefetch(const void* p) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#elif defined(__GNUC__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

// out[r][s] = sum_h w[r * ldw + h] * x[s * ldx + h] for an R x S tile. PF: prefetch the weights
// kPrefetchBytes ahead, once per 64-byte line read (for streams larger than the caches).
template <int R, int S, bool PF = false, typename T>
inline void dot_tile(const T* __restrict w, int64_t ldw, const float* __restrict x, int64_t ldx,
                     int64_t K, float out[R][S]) {
  Vec acc[R][S];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) acc[r][s] = Vec::zero();
  // elements per 64-byte line: a prefetch every kLine / Vec::W iterations (k is a multiple of W)
  constexpr int64_t kLine = 64 / sizeof(T);
  int64_t k = 0;
  for (; k + Vec::W <= K; k += Vec::W) {
    Vec xv[S];
    for (int s = 0; s < S; ++s) xv[s] = Vec::load(x + s * ldx + k);
    for (int r = 0; r < R; ++r) {
      if constexpr (PF) {
        if (kLine <= Vec::W || k % kLine == 0)
          prefetch(reinterpret_cast<const char*>(w + r * ldw + k) + kPrefetchBytes);
      }
      Vec wv = Vec::load(w + r * ldw + k);
      for (int s = 0; s < S; ++s) acc[r][s] = Vec::fma(wv, xv[s], acc[r][s]);
    }
  }
  if constexpr ((R * S) % 4 == 0) {  // acc and out are both r-major: reduce 4 at a time
    for (int i = 0; i < R * S; i += 4) Vec::sum4(&acc[0][0] + i, &out[0][0] + i);
  } else {
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < S; ++s) out[r][s] = acc[r][s].sum();
  }
  for (; k < K; ++k)  // tail of K not a multiple of the vector width (H = 100)
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < S; ++s) out[r][s] += to_float(w[r * ldw + k]) * x[s * ldx + k];
}

// exp for x <= 0 (softmax numerators), Cephes' polynomial: about 1 ulp, and written so that
// `omp simd` loops over it vectorise (no libm call). Below -87 it returns ~1e-38 instead of
// a denormal or 0: negligible next to the total, which is at least 1.
inline float exp_nonpos(float x) {
  x = std::min(std::max(x, -87.0f), 0.0f);
  // n = round(x / ln 2); for x <= 0 a truncating conversion of a positive number is a floor,
  // and unlike std::floor it vectorises without -fno-trapping-math
  const int32_t ni = -static_cast<int32_t>(0.5f - x * 1.44269504088896341f);
  const float n = static_cast<float>(ni);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^n from its exponent bits; a builtin bit cast, not memcpy, so that the loop vectorises
  // (compilers without it, GCC < 11, get a scalar but correct loop)
  const int32_t bits = (ni + 127) << 23;
#if defined(__has_builtin)
#if __has_builtin(__builtin_bit_cast)
#define FASTSRNN_HAS_BIT_CAST 1
#endif
#endif
#ifdef FASTSRNN_HAS_BIT_CAST
  const float scale = __builtin_bit_cast(float, bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
#endif
  return p * scale;
}

}  // namespace fastsrnn
