// The persistent CUDA sample-frame kernel (the approach of NVIDIA's nv-wavenet persistent kernel and
// Baidu's persistent RNNs): one cooperative launch per frame, every block resident throughout.
//
// Work split. Block i owns W3 rows R_i = [i*rows3, (i+1)*rows3) and Wo rows [i*rowso, (i+1)*rowso),
// copied into shared memory once per launch (cp.async, 16 bytes at a time). Across the F steps
// only activations move, through the workspace in global memory (L2).
//
// The recurrence is split so that each step needs two grid barriers. With s_t the sample drawn
// at step t (s_t for t < 0: the incoming window) and T the (F, Q, H) table,
//     a2_j = relu(P_j + T[F-1, s_{j-1}]),   P_j = cond_j + sum_{k < F-1} T[k, s_{j-F+k}],
// P_j depends on samples up to s_{j-2} only, so it is computed a step early, distributed (block
// i computes its columns R_i), while the step's one new term, T[F-1, s_{j-1}], is a single table
// row that every block gathers itself. Every block also draws every s_t itself (redundantly and
// identically: the same code on the same logits), so no barrier is needed to broadcast samples.
//
//   prologue: ring <- window; P_0[:, R_i] -> global                               barrier
//   step j:   phase 1: [j > 0] draw s_{j-1} for every sequence from logits_{j-1}
//                      a2_j = relu(P_j + T[F-1, s_{j-1}]) (full rows, in smem)
//                      a3_j[:, R_i] = relu(W3[R_i] a2_j + b3) -> global           barrier A
//             phase 2: logits_j[:, Wo rows of i] = Wo a3_j + bo -> global (+ logits_out)
//                      [j+1 < F] P_{j+1}[:, R_i] -> global                         barrier B
//   epilogue: draw s_{F-1}; block b % grid writes window[b] (and out[b, t] as it draws s_t).
// That is 1 + 2F barriers per frame (2 per sample). Why each is enough (a buffer is only
// written after every block has finished reading its previous contents):
//   - a3 is written in phase 1 and read in phase 2 (after A); the next write (phase 1 of j+1)
//     comes after B, when every block has finished phase 2's reads.
//   - logits are written in phase 2 and read in the next phase 1 (after B); rewritten in the
//     next phase 2, after the next A, when every block has drawn from them.
//   - P_{j+1} is written in phase 2 of step j, read in phase 1 of step j+1 (after B); P_{j+2}
//     is written after the A of step j+1, when every block has read P_{j+1}.
//   - window is read by every block in the prologue (before the first barrier) and written in
//     the epilogue, after 2F more barriers.
// The ring (the last F samples of every sequence, in each block's shared memory) is indexed by
// absolute time: s_t lives at slot t mod F, so the incoming window's position p is slot p, and
// after the frame slot p holds s_p: the new window, in order.
//
// Numerics: fp32 or bf16 weights (bf16 widened exactly by a shift), fp32 accumulation, the
// inverse CDF of fastsrnn/ops/sampling.py: the number of running sums of exp((l - max) * inv_t)
// that are <= u * total, clamped to Q - 1, the total being the scan's own last value.
// No torch here (raw pointers, sizes, a stream): CI compiles this file with plain `nvcc -c`.
#include "sample_frame.cuh"
#include "grid_barrier.cuh"

#include <cuda_pipeline_primitives.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>

namespace fastsrnn {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxDevices = 64;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(uint16_t v) { return __uint_as_float(static_cast<unsigned>(v) << 16); }

// The grid barrier (grid_barrier) is csrc/cuda/grid_barrier.cuh's, unbounded here: a cooperative
// launch runs every block at once or refuses.

// ---------------------------------------------------------------------------------------------
// Reductions.
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ int warp_min_int(int v) {
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Sums a[t] over the warp's 32 lanes for the 8 values t at once in 9 shuffles (a transposing
// reduction: each level halves the values a lane keeps). Lane l returns the sum for t = (l >> 2) & 7.
__device__ __forceinline__ float warp_reduce8(const float (&a)[kSfTile]) {
  static_assert(kSfTile == 8, "warp_reduce8 reduces 8 values");
  const int lane = threadIdx.x & 31;
  const bool h16 = lane & 16, h8 = lane & 8, h4 = lane & 4;
  float b4[4], b2[2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    b4[i] = (h16 ? a[i + 4] : a[i]) + __shfl_xor_sync(kFull, h16 ? a[i] : a[i + 4], 16);
#pragma unroll
  for (int i = 0; i < 2; ++i)
    b2[i] = (h8 ? b4[i + 2] : b4[i]) + __shfl_xor_sync(kFull, h8 ? b4[i] : b4[i + 2], 8);
  float v = (h4 ? b2[1] : b2[0]) + __shfl_xor_sync(kFull, h4 ? b2[0] : b2[1], 4);
  v += __shfl_xor_sync(kFull, v, 2);
  v += __shfl_xor_sync(kFull, v, 1);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Vector loads: 16 bytes of weights from shared memory -> V floats.
__device__ __forceinline__ void load_vec(const float* row, int unit, float (&w)[4]) {
  const float4 v = reinterpret_cast<const float4*>(row)[unit];
  w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
}
__device__ __forceinline__ void load_vec(const uint16_t* row, int unit, float (&w)[8]) {
  const uint4 v = reinterpret_cast<const uint4*>(row)[unit];
  const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) w[2 * i] = __uint_as_float(u[i] << 16), w[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
}

// 4 consecutive table elements from global memory (k % 4 == 0; vec: 8/16-byte aligned and k + 3 < H).
__device__ __forceinline__ void load4(const float* t, size_t at, bool vec, int valid, float (&v)[4]) {
  if (vec) {
    const float4 x = __ldg(reinterpret_cast<const float4*>(t + at));
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = e < valid ? __ldg(t + at + e) : 0.f;
  }
}
__device__ __forceinline__ void load4(const uint16_t* t, size_t at, bool vec, int valid, float (&v)[4]) {
  if (vec) {
    const uint2 x = __ldg(reinterpret_cast<const uint2*>(t + at));
    v[0] = __uint_as_float(x.x << 16), v[1] = __uint_as_float(x.x & 0xffff0000u);
    v[2] = __uint_as_float(x.y << 16), v[3] = __uint_as_float(x.y & 0xffff0000u);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = e < valid ? to_f32(__ldg(t + at + e)) : 0.f;
  }
}

// Rows [0, n) of a (*, H) global matrix into shared memory with row stride hp (zero padding in
// [H, hp)), asynchronously (cp.async where the rows are 16-byte aligned). The caller commits
// and waits (__pipeline_commit / __pipeline_wait_prior) and then synchronises the block.
template <typename W>
__device__ void load_rows_async(W* dst, const W* src, int n, int H, int hp, bool vec) {
  constexpr int kChunk = 16 / sizeof(W);  // elements per 16 bytes
  if (vec) {  // H % kChunk == 0 and src 16-byte aligned (checked on the host)
    const int per_row = H / kChunk;
    for (int i = threadIdx.x; i < n * per_row; i += kSfThreads) {
      const int r = i / per_row, c = (i - r * per_row) * kChunk;
      __pipeline_memcpy_async(dst + static_cast<size_t>(r) * hp + c, src + static_cast<size_t>(r) * H + c, 16);
    }
  } else {
    for (int i = threadIdx.x; i < n * H; i += kSfThreads) {
      const int r = i / H, c = i - r * H;
      dst[static_cast<size_t>(r) * hp + c] = src[static_cast<size_t>(r) * H + c];
    }
  }
  const int pad = hp - H;
  for (int i = threadIdx.x; i < n * pad; i += kSfThreads) {
    const int r = i / pad;
    dst[static_cast<size_t>(r) * hp + H + (i - r * pad)] = W(0);
  }
}

// out(t, r, v) for r < nrows, t < nb: v = sum_k w[r, k] act[t, k] (w in smem, (nrows, hp); act
// in smem, (nb, hp), zero in [H, hp)). `split` warps share a row (K in `split` segments, summed
// through `red` in a fixed order); each warp keeps kSfTile accumulators, one per sequence.
template <typename W, typename Out>
__device__ __forceinline__ void matvec(const W* w, int nrows, int split, int hp, const float* act, int nb, float* red,
                                       Out out) {
  constexpr int V = 16 / sizeof(W);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int units = hp / V, seg = (units + split - 1) / split;
  for (int task = warp; task < nrows * split; task += kSfWarps) {
    const int r = task / split, part = task - r * split;
    const int u1 = min(units, (part + 1) * seg);
    float acc[kSfTile];
#pragma unroll
    for (int t = 0; t < kSfTile; ++t) acc[t] = 0.f;
    const W* wr = w + static_cast<size_t>(r) * hp;
    for (int u = part * seg + lane; u < u1; u += 32) {
      float wv[V];
      load_vec(wr, u, wv);
#pragma unroll
      for (int t = 0; t < kSfTile; ++t) {
        if (t < nb) {
          const float4* a = reinterpret_cast<const float4*>(act + static_cast<size_t>(t) * hp + u * V);
#pragma unroll
          for (int c = 0; c < V / 4; ++c) {
            const float4 x = a[c];
            acc[t] = fmaf(wv[4 * c], x.x, acc[t]);
            acc[t] = fmaf(wv[4 * c + 1], x.y, acc[t]);
            acc[t] = fmaf(wv[4 * c + 2], x.z, acc[t]);
            acc[t] = fmaf(wv[4 * c + 3], x.w, acc[t]);
          }
        }
      }
    }
    const float v = warp_reduce8(acc);
    const int t = (lane >> 2) & 7;
    if ((lane & 3) == 0 && t < nb) {
      if (split == 1)
        out(t, r, v);
      else
        red[task * kSfTile + t] = v;
    }
  }
  if (split > 1) {  // block-uniform
    __syncthreads();
    for (int i = threadIdx.x; i < nrows * nb; i += kSfThreads) {
      const int r = i / nb, t = i - r * nb;
      float v = 0.f;
      for (int part = 0; part < split; ++part) v += red[(r * split + part) * kSfTile + t];
      out(t, r, v);
    }
  }
}

// P_jp[b, c] = cond[b, jp, c] + sum_{k < F-1} T[k, s_{jp-F+k}][c] for this block's columns c
// (s_{jp-F+k} lives at ring slot (jp + k) mod F) and every sequence b.
template <typename W, int kF>
__device__ void compute_p(const SampleFrameParams& p, int F, int jp, const int* ring, int col0, int ncol, int hp,
                          float* P) {
  const W* table = static_cast<const W*>(p.table);
  const int Q = p.Q, H = p.H;
  for (int i = threadIdx.x; i < p.B * ncol; i += kSfThreads) {
    const int b = i / ncol, c = col0 + (i - b * ncol);
    const int* rb = ring + static_cast<size_t>(b) * F;
    float s = __ldg(p.cond + (static_cast<size_t>(b) * F + jp) * H + c);
    if constexpr (kF > 0) {
#pragma unroll
      for (int k = 0; k < kF - 1; ++k)
        s += to_f32(__ldg(table + (static_cast<size_t>(k) * Q + rb[(jp + k) % kF]) * H + c));
    } else {
      for (int k = 0; k < F - 1; ++k) {
        const int slot = jp + k < F ? jp + k : jp + k - F;
        s += to_f32(__ldg(table + (static_cast<size_t>(k) * Q + rb[slot]) * H + c));
      }
    }
    P[static_cast<size_t>(b) * hp + c] = s;
  }
}

// The float32 bits as an unsigned key in the floats' order (-0 just below +0): sampling.order_key.
__device__ __forceinline__ unsigned order_key(float x) {
  const unsigned v = __float_as_uint(x);
  return (v >> 31) ? ~v : (v | 0x80000000u);
}

// The warp's sum of e over the levels whose key is >= c (lane runs in order, then a butterfly,
// which leaves the same value in every lane: each step adds the same two numbers).
__device__ __forceinline__ float warp_mass(const float* st, const unsigned* key, int q0, int q1, unsigned c) {
  float m = 0.f;
  for (int q = q0; q < q1; ++q) m += key[q + (q >> 5)] >= c ? st[q + (q >> 5)] : 0.f;
  for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(kFull, m, o);
  return m;
}

// sampling.cut_threshold: the top-k / top-p threshold key, bit by bit from the top (every lane
// the same), then e zeroed below it in the lane's run [q0, q1); returns the run's new sum.
__device__ float warp_cut(const SamplingParams& s, float* st, const unsigned* key, int q0, int q1) {
  unsigned t = 0;
  if (s.top_k > 0) {
    for (int bit = 31; bit >= 0; --bit) {
      const unsigned c = t | (1u << bit);
      int n = 0;
      for (int q = q0; q < q1; ++q) n += key[q + (q >> 5)] >= c ? 1 : 0;
      if (warp_sum_int(n) >= s.top_k) t = c;
    }
  }
  if (s.top_p < 1.f) {
    const float target = s.top_p * warp_mass(st, key, q0, q1, t);
    t = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const unsigned c = t | (1u << bit);
      if (warp_mass(st, key, q0, q1, c) >= target) t = c;
    }
  }
  float sum = 0.f;
  for (int q = q0; q < q1; ++q) {
    const float e = key[q + (q >> 5)] >= t ? st[q + (q >> 5)] : 0.f;
    st[q + (q >> 5)] = e;
    sum += e;
  }
  return sum;
}

// The sample of sequence b at step jj from its logits (Q,) in global memory (written by other
// blocks), computed by one whole warp; every lane returns it. st: the warp's staging row (the
// logits, then the cut-offs' keys at st + half). Element q is staged at q + q / 32, which makes
// both access patterns below conflict-free.
__device__ int warp_draw(const SampleFrameParams& p, int F, const float* lg, float* st, int half, int b,
                          int jj) {
  const int lane = threadIdx.x & 31, Q = p.Q;
  const size_t bj = static_cast<size_t>(b) * F + jj;
  if (p.forced) {  // clamped: the sample indexes the table
    const long long v = __ldg(reinterpret_cast<const long long*>(p.forced) + bj);
    return static_cast<int>(v < 0 ? 0 : (v >= Q ? Q - 1 : v));
  }
  for (int q = lane; q < Q; q += 32) st[q + (q >> 5)] = __ldcg(lg + q);
  __syncwarp();
  float m = -INFINITY;
  for (int q = lane; q < Q; q += 32) m = fmaxf(m, st[q + (q >> 5)]);
  m = warp_max(m);
  int x;
  if (p.sampling.argmax) {  // the first maximum, as torch.argmax (never cut)
    int first = Q;
    for (int q = lane; q < Q; q += 32)
      if (st[q + (q >> 5)] == m) {
        first = q;
        break;
      }
    x = warp_min_int(first);
  } else {
    // Lane l scans the contiguous run [l*E, l*E + E): a local running sum, offset by the
    // exclusive warp scan of the runs' totals. cdf(q) = excl + run(q); the total is cdf(Q-1)
    // computed by the same operations (so u < 1 puts the threshold at or below it).
    const float inv_t = __ldg(p.sampling.inv_temperature + b);
    const int E = (Q + 31) >> 5, q0 = min(lane * E, Q), q1 = min(q0 + E, Q);
    const bool cut = p.sampling.top_k > 0 || p.sampling.top_p < 1.f;  // warp-uniform
    unsigned* key = reinterpret_cast<unsigned*>(st + half);
    float sum = 0.f;
    for (int q = q0; q < q1; ++q) {
      const float l = st[q + (q >> 5)], e = expf((l - m) * inv_t);
      if (cut) key[q + (q >> 5)] = order_key(l);
      st[q + (q >> 5)] = e;
      sum += e;
    }
    if (cut) {
      __syncwarp();  // every lane's keys and e are in st before the counts read them all
      sum = warp_cut(p.sampling, st, key, q0, q1);
    }
    float incl = sum;
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += n;
    }
    float excl = __shfl_up_sync(kFull, incl, 1);
    if (lane == 0) excl = 0.f;
    const float total = __shfl_sync(kFull, excl + sum, (Q - 1) / E);
    const float threshold = __ldg(p.uniforms + bj) * total;
    int below = 0;
    float run = 0.f;
    for (int q = q0; q < q1; ++q) {
      run += st[q + (q >> 5)];
      below += excl + run <= threshold ? 1 : 0;
    }
    x = warp_sum_int(below);
  }
  __syncwarp();  // st is the warp's next sequence's
  return min(x, Q - 1);
}

// Draws s_jj of every sequence (warp w: sequences w, w + 8, ...) into ring slot jj mod F; the
// block that owns sequence b (b % grid) also writes out[b, jj]. The caller synchronises the block.
__device__ void draw_all(const SampleFrameParams& p, int F, int jj, const float* logits, int qp, float* stage,
                         int stage_floats, int* ring) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* st = stage + warp * stage_floats;
  for (int b = warp; b < p.B; b += kSfWarps) {
    const int x = warp_draw(p, F, logits + static_cast<size_t>(b) * qp, st, stage_floats / 2, b, jj);
    if (lane == 0) {
      ring[static_cast<size_t>(b) * F + jj % F] = x;
      if (b % static_cast<int>(gridDim.x) == static_cast<int>(blockIdx.x)) p.out[static_cast<size_t>(b) * F + jj] = x;
    }
  }
}

template <typename W, int kF>
__global__ void __launch_bounds__(kSfThreads, 1) sample_frame_kernel(const SampleFrameParams p, const SampleFrameShape s) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int F = kF > 0 ? kF : p.F;
  const int B = p.B, Q = p.Q, H = p.H, hp = s.hp, qp = s.qp;
  W* s_w3 = reinterpret_cast<W*>(smem);
  W* s_wo = reinterpret_cast<W*>(smem + s.off_wo);
  float* act = reinterpret_cast<float*>(smem + s.off_act);
  float* stage = reinterpret_cast<float*>(smem + s.off_stage);
  int* ring = reinterpret_cast<int*>(smem + s.off_ring);
  float* red = reinterpret_cast<float*>(smem + s.off_red);

  const int row3 = blockIdx.x * s.rows3, n3 = max(0, min(s.rows3, H - row3));
  const int rowo = blockIdx.x * s.rowso, no = max(0, min(s.rowso, Q - rowo));
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  unsigned int* barrier = reinterpret_cast<unsigned int*>(ws);
  float* P = reinterpret_cast<float*>(ws + kSfWorkspaceHeader);  // (B, hp)
  float* a3 = P + static_cast<size_t>(B) * hp;                   // (B, hp)
  float* logits = a3 + static_cast<size_t>(B) * hp;              // (B, qp)
  const W* table = static_cast<const W*>(p.table);

  // Prologue. The weight copies run in the background while the ring and P_0 are computed.
  load_rows_async(s_w3, static_cast<const W*>(p.w3) + static_cast<size_t>(row3) * H, n3, H, hp, p.vec_w3);
  load_rows_async(s_wo, static_cast<const W*>(p.wo) + static_cast<size_t>(rowo) * H, no, H, hp, p.vec_wo);
  __pipeline_commit();
  for (int i = threadIdx.x; i < B * F; i += kSfThreads) {  // clamped: a bad sample must not index out of bounds
    const long long v = __ldcg(reinterpret_cast<const long long*>(p.window) + i);
    ring[i] = static_cast<int>(v < 0 ? 0 : (v >= Q ? Q - 1 : v));
  }
  __syncthreads();
  compute_p<W, kF>(p, F, 0, ring, row3, n3, hp, P);
  __pipeline_wait_prior(0);  // this thread's copies have landed; the barrier's __syncthreads publishes all
  grid_barrier(barrier);     // P_0 complete

  const int units4 = hp / 4;
  for (int j = 0; j < F; ++j) {
    // ---- phase 1: draw s_{j-1}; a2_j; a3_j for this block's rows.
    if (j > 0) {
      draw_all(p, F, j - 1, logits, qp, stage, s.stage, ring);
      __syncthreads();  // ring slot (j-1) mod F is read below by every thread
    }
    const int slot = j > 0 ? (j - 1) % F : F - 1;  // s_{j-1}
    for (int b0 = 0; b0 < B; b0 += s.tile) {
      const int nb = min(s.tile, B - b0);
      if (b0 > 0) __syncthreads();  // the previous tile's matvec has finished reading act
      for (int i = threadIdx.x; i < nb * units4; i += kSfThreads) {
        const int t = i / units4, u = i - t * units4, k = 4 * u, b = b0 + t;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (k < H) {
          const float4 pv = __ldcg(reinterpret_cast<const float4*>(P + static_cast<size_t>(b) * hp) + u);
          const size_t row = (static_cast<size_t>(F - 1) * Q + ring[static_cast<size_t>(b) * F + slot]) * H;
          float tv[4];
          load4(table, row + k, p.vec_table, H - k, tv);
          v.x = fmaxf(pv.x + tv[0], 0.f);
          v.y = k + 1 < H ? fmaxf(pv.y + tv[1], 0.f) : 0.f;
          v.z = k + 2 < H ? fmaxf(pv.z + tv[2], 0.f) : 0.f;
          v.w = k + 3 < H ? fmaxf(pv.w + tv[3], 0.f) : 0.f;
        }
        reinterpret_cast<float4*>(act)[static_cast<size_t>(t) * units4 + u] = v;
      }
      __syncthreads();
      matvec(s_w3, n3, s.split3, hp, act, nb, red, [&](int t, int r, float v) {
        a3[static_cast<size_t>(b0 + t) * hp + row3 + r] = fmaxf(v + __ldg(p.b3 + row3 + r), 0.f);
      });
    }
    grid_barrier(barrier);  // A: a3_j complete

    // ---- phase 2: logits_j for this block's Wo rows; P_{j+1} for its columns.
    for (int b0 = 0; b0 < B; b0 += s.tile) {
      const int nb = min(s.tile, B - b0);
      if (b0 > 0) __syncthreads();
      for (int i = threadIdx.x; i < nb * units4; i += kSfThreads) {
        const int t = i / units4, u = i - t * units4, k = 4 * u;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (k < H) {
          v = __ldcg(reinterpret_cast<const float4*>(a3 + static_cast<size_t>(b0 + t) * hp) + u);
          if (k + 3 >= H) {  // the zero padding past H is not stored in a3
            v.y = k + 1 < H ? v.y : 0.f;
            v.z = k + 2 < H ? v.z : 0.f;
            v.w = 0.f;
          }
        }
        reinterpret_cast<float4*>(act)[static_cast<size_t>(t) * units4 + u] = v;
      }
      __syncthreads();
      matvec(s_wo, no, s.splito, hp, act, nb, red, [&](int t, int r, float v) {
        const float l = v + __ldg(p.bo + rowo + r);
        logits[static_cast<size_t>(b0 + t) * qp + rowo + r] = l;
        if (p.logits_out) p.logits_out[(static_cast<size_t>(b0 + t) * F + j) * Q + rowo + r] = l;
      });
    }
    if (j + 1 < F) compute_p<W, kF>(p, F, j + 1, ring, row3, n3, hp, P);
    grid_barrier(barrier);  // B: logits_j and P_{j+1} complete
  }

  // Epilogue: s_{F-1}; the ring now holds s_0 .. s_{F-1} at slots 0 .. F-1.
  draw_all(p, F, F - 1, logits, qp, stage, s.stage, ring);
  __syncthreads();
  for (int b = blockIdx.x; b < B; b += gridDim.x)
    for (int i = threadIdx.x; i < F; i += kSfThreads)
      p.window[static_cast<size_t>(b) * F + i] = ring[static_cast<size_t>(b) * F + i];
}

// ---------------------------------------------------------------------------------------------
// Host side: per-device and per-kernel facts are queried once and cached; a launch is the plan's
// arithmetic and one cudaLaunchKernelEx (no allocation, memset, attribute or occupancy call).

using Kernel = void (*)(SampleFrameParams, SampleFrameShape);
constexpr int kVariants = 4;  // fp32 F=16, bf16 F=16, fp32 any F, bf16 any F
constexpr int kSpecialisedF = 16;

Kernel kernel_variant(int v) {
  switch (v) {
    case 0: return sample_frame_kernel<float, kSpecialisedF>;
    case 1: return sample_frame_kernel<uint16_t, kSpecialisedF>;
    case 2: return sample_frame_kernel<float, 0>;
    default: return sample_frame_kernel<uint16_t, 0>;
  }
}

thread_local char g_message[512];

const char* fail(const char* what, cudaError_t e) {
  std::snprintf(g_message, sizeof(g_message), "sample_frame (CUDA): %s failed: %s", what, cudaGetErrorString(e));
  return g_message;
}

#define SF_CHECK(call)                             \
  do {                                             \
    const cudaError_t e_ = (call);                 \
    if (e_ != cudaSuccess) return fail(#call, e_); \
  } while (0)

struct DeviceInfo {
  std::once_flag once;
  SampleFrameDevice dev{};
  int cooperative = 0;
  char error[512] = {0};
};

struct KernelInfo {
  std::once_flag once;
  int regs = 0, static_smem = 0;
  char error[512] = {0};
};

DeviceInfo g_devices[kMaxDevices];
KernelInfo g_kernels[kMaxDevices][kVariants];

const char* query_device(int d, DeviceInfo& info) {
  SampleFrameDevice& v = info.dev;
  SF_CHECK(cudaDeviceGetAttribute(&v.sm_count, cudaDevAttrMultiProcessorCount, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.reserved_smem_per_block, cudaDevAttrReservedSharedMemoryPerBlock, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.regs_per_sm, cudaDevAttrMaxRegistersPerMultiprocessor, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.max_threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, d));
  SF_CHECK(cudaDeviceGetAttribute(&v.max_blocks_per_sm, cudaDevAttrMaxBlocksPerMultiprocessor, d));
  SF_CHECK(cudaDeviceGetAttribute(&info.cooperative, cudaDevAttrCooperativeLaunch, d));
  return nullptr;
}

// Must run with device d current (cudaFuncSetAttribute applies to the current device).
const char* query_kernel(int d, Kernel k, KernelInfo& info) {
  cudaFuncAttributes a{};
  SF_CHECK(cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(k)));
  info.regs = a.numRegs;
  info.static_smem = static_cast<int>(a.sharedSizeBytes);
  const int dynamic_max = g_devices[d].dev.smem_per_block - info.static_smem;
  SF_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(k), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                dynamic_max));
  return nullptr;
}

// Exact residency (the occupancy API) per (device, variant, smem): cached, as the plan's smem
// depends only on the shapes.
const char* blocks_per_sm(int d, int variant, Kernel k, size_t smem, int* out) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, size_t>, int>* cache = new std::map<std::tuple<int, int, size_t>, int>();
  const auto key = std::make_tuple(d, variant, smem);
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto it = cache->find(key);
    if (it != cache->end()) return *out = it->second, nullptr;
  }
  int n = 0;
  SF_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, k, kSfThreads, smem));
  std::lock_guard<std::mutex> lock(mu);
  (*cache)[key] = n;
  *out = n;
  return nullptr;
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

const char* sample_frame_launch(const SampleFrameParams& params, cudaStream_t stream, int max_blocks) {
  if (params.B < 1 || params.F < 1 || params.H < 1 || params.Q < 2)
    return "sample_frame (CUDA): need B, F, H >= 1 and Q >= 2";
  if (!params.table || !params.cond || !params.w3 || !params.b3 || !params.wo || !params.bo || !params.window ||
      !params.uniforms || !params.sampling.inv_temperature || !params.out || !params.workspace)
    return "sample_frame (CUDA): a required pointer is null";
  if (!aligned16(params.workspace)) return "sample_frame (CUDA): the workspace must be 16-byte aligned";
  int d = 0;
  SF_CHECK(cudaGetDevice(&d));
  if (d < 0 || d >= kMaxDevices) return "sample_frame (CUDA): device ordinal out of the supported range";
  DeviceInfo& dev = g_devices[d];
  std::call_once(dev.once, [&] {
    const char* e = query_device(d, dev);
    if (e) std::snprintf(dev.error, sizeof(dev.error), "%s", e);
  });
  if (dev.error[0]) return dev.error;
  if (!dev.cooperative)
    return "sample_frame (CUDA): this device does not support cooperative launches, which the persistent kernel "
           "needs (every block resident for its grid barriers); use the triton backend";
  const int variant = (params.bf16 ? 1 : 0) + (params.F == kSpecialisedF ? 0 : 2);
  const Kernel kernel = kernel_variant(variant);
  KernelInfo& kinfo = g_kernels[d][variant];
  std::call_once(kinfo.once, [&] {
    const char* e = query_kernel(d, kernel, kinfo);
    if (e) std::snprintf(kinfo.error, sizeof(kinfo.error), "%s", e);
  });
  if (kinfo.error[0]) return kinfo.error;

  const SampleFrameLaunchPlan plan = sample_frame_launch_plan(params.B, params.F, params.Q, params.H, params.bf16,
                                                              dev.dev, kinfo.regs, kinfo.static_smem, max_blocks);
  if (plan.error[0]) {
    std::snprintf(g_message, sizeof(g_message), "%s", plan.error);
    return g_message;
  }
  int per_sm = 0;
  const char* e = blocks_per_sm(d, variant, kernel, plan.smem, &per_sm);
  if (e) return e;
  if (plan.shape.grid > per_sm * dev.dev.sm_count) {
    std::snprintf(g_message, sizeof(g_message),
                  "sample_frame (CUDA): the grid of %d blocks cannot be co-resident: %d SMs x %d blocks per SM "
                  "(%d registers per thread, %zu + %d bytes of shared memory per block)",
                  plan.shape.grid, dev.dev.sm_count, per_sm, kinfo.regs, plan.smem, kinfo.static_smem);
    return g_message;
  }

  SampleFrameParams p = params;
  const size_t wsize = p.bf16 ? 2 : 4;
  const bool rows16 = (static_cast<size_t>(p.H) * wsize) % 16 == 0;
  p.vec_w3 = rows16 && aligned16(p.w3);
  p.vec_wo = rows16 && aligned16(p.wo);
  p.vec_table = rows16 && aligned16(p.table);

  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(plan.shape.grid);
  cfg.blockDim = dim3(kSfThreads);
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, p, plan.shape);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    std::snprintf(g_message, sizeof(g_message),
                  "sample_frame (CUDA): the driver refused a cooperative grid of %d blocks (%zu bytes of shared "
                  "memory each; %d SMs x %d blocks per SM by the occupancy calculator): fewer SMs are available "
                  "to this context (MPS or green-context limits?); pass max_blocks to use fewer blocks",
                  plan.shape.grid, plan.smem, dev.dev.sm_count, per_sm);
    return g_message;
  }
  if (err != cudaSuccess) return fail("cudaLaunchKernelEx(cooperative)", err);
  return nullptr;
}

}  // namespace fastsrnn
