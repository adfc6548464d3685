// Row-split matrix products for small batches, shared by the sample step and the frame step.
//
// Row blocks outside, sequence tiles inside: a block of W stays in L1/L2 while every sequence
// uses it, so the weights are streamed once per call whatever B is (the frame tier at B = 1
// is DRAM-bound and the sample tier's W3/Wo should stay in cache).
#pragma once

#include <torch/extension.h>

#include <type_traits>

#include "simd.h"

namespace fastsrnn {
namespace {

// What happens to W x + b: stored, stored after relu, or added to what Y holds (skip sums).
enum class Epilogue { kStore, kRelu, kAdd };

// Y[s * N + r] = epi(bias[r] + W[r] . X[s]) for rows [r0, r1) and all S sequences; bias may be null.
// int8 W: epi(bias[r] + scale[r] * (q[r] . X[s])), the row scale applied once to the fp32 sum.
template <int R, int S, bool PF, typename T>
inline void rows_tile(const T* W, const float* bias, const float* X, int64_t K, int64_t N,
                      int64_t r, int64_t s, float* Y, Epilogue epi, const float* scale) {
  float acc[R][S];
  dot_tile<R, S, PF>(W + r * K, K, X + s * K, K, K, acc);
  if constexpr (std::is_same_v<T, int8_t>) {
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < S; ++t) acc[i][t] *= scale[r + i];
  }
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < S; ++t) {
      const float y = bias ? acc[i][t] + bias[r + i] : acc[i][t];
      float& dst = Y[(s + t) * N + r + i];
      dst = epi == Epilogue::kRelu ? std::max(y, 0.0f) : epi == Epilogue::kAdd ? dst + y : y;
    }
}

template <int R, bool PF, typename T>
inline void rows_all_seqs(const T* W, const float* bias, const float* X, int64_t B, int64_t K,
                          int64_t N, int64_t r, float* Y, Epilogue epi, const float* sc) {
  int64_t s = 0;
  for (; s + kTileSeq <= B; s += kTileSeq) rows_tile<R, kTileSeq, PF>(W, bias, X, K, N, r, s, Y, epi, sc);
  // The remaining sequences in one tile too (B = 2, 3 would otherwise stream W per sequence).
  switch (B - s) {
    case 3: if constexpr (kTileSeq > 3) rows_tile<R, 3, PF>(W, bias, X, K, N, r, s, Y, epi, sc); break;
    case 2: if constexpr (kTileSeq > 2) rows_tile<R, 2, PF>(W, bias, X, K, N, r, s, Y, epi, sc); break;
    case 1: rows_tile<R, 1, PF>(W, bias, X, K, N, r, s, Y, epi, sc); break;
    default: break;
  }
}

template <bool PF, typename T>
void linear_rows_impl(const T* W, const float* bias, const float* X, int64_t B, int64_t K, int64_t N,
                      int64_t r0, int64_t r1, float* Y, Epilogue epi, const float* sc) {
  constexpr int64_t kBlock = 32;  // rows per block: 128 KB of fp32 weights at K = 1024
  for (int64_t rb = r0; rb < r1; rb += kBlock) {
    const int64_t re = std::min(rb + kBlock, r1);
    int64_t r = rb;
    for (; r + kTileRows <= re; r += kTileRows) rows_all_seqs<kTileRows, PF>(W, bias, X, B, K, N, r, Y, epi, sc);
    for (; r < re; ++r) rows_all_seqs<1, PF>(W, bias, X, B, K, N, r, Y, epi, sc);
  }
}

// scale: int8 W's per-row scales (N,), required then; ignored for fp32 and bf16 W.
template <typename T>
void linear_rows(const T* W, const float* bias, const float* X, int64_t B, int64_t K, int64_t N,
                 int64_t r0, int64_t r1, float* Y, Epilogue epi, const float* scale = nullptr) {
  // bf16 and int8 weight streams get software prefetch (simd.h, kPrefetchBytes) when this
  // thread's share is large enough for it to pay: the prefetch runs up to kPrefetchBytes past
  // the share's end.
  if constexpr (!std::is_same_v<T, float>) {
    if ((r1 - r0) * K * static_cast<int64_t>(sizeof(T)) >= 8 * kPrefetchBytes)
      return linear_rows_impl<true>(W, bias, X, B, K, N, r0, r1, Y, epi, scale);
  }
  linear_rows_impl<false>(W, bias, X, B, K, N, r0, r1, Y, epi, scale);
}

// [lo, hi) of n items for thread tid of nth, in chunks that are multiples of align.
inline void split(int64_t n, int64_t align, int tid, int nth, int64_t& lo, int64_t& hi) {
  int64_t chunk = (n + nth - 1) / nth;
  chunk = (chunk + align - 1) / align * align;
  lo = std::min<int64_t>(n, tid * chunk);
  hi = std::min<int64_t>(n, lo + chunk);
}

// A readable error naming the op and the argument, never a crash inside a kernel.
void check(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape,
           const char* op = "sample_frame") {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace
}  // namespace fastsrnn
