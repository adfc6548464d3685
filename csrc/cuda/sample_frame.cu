// The persistent CUDA sample-frame kernel (the approach of NVIDIA's nv-wavenet persistent kernel
// and Baidu's persistent RNNs): one launch per frame, every block resident for the whole launch.
//
// Work split. Block i owns rows [i*r3, (i+1)*r3) of W3 and rows [i*ro, (i+1)*ro) of Wo and keeps
// them in shared memory, loaded once per launch; across the F steps only activations move, via
// global memory (L2), with a grid-wide barrier between phases. Per sample step j:
//   W3 phase:  a3[b, rows of i] = relu(W3 a2[b] + b3)           (all blocks)   -> barrier
//   Wo phase:  logits[b, rows of i] = Wo a3[b] + bo             (all blocks)   -> barrier
//   draw:      block b % grid draws x_b (softmax + inverse CDF), writes out, logits_out, the
//              window ring, and a2[b] for step j+1 (the F table rows + cond)   -> barrier
// The window is a ring in global memory: at step j position p holds slot (p - j) mod F and
// x_j overwrites position j, so after F steps it is the new window, in order.
//
// Numerics: fp32 or bf16 weights (bf16 widened exactly by a shift), fp32 accumulation, the
// inverse CDF exactly as fastsrnn/sampling.py (first index whose running sum of
// exp((l - max) * inv_t) exceeds u * total; the total is the scan's own last value).
// No torch here (raw pointers, sizes, a stream): CI compiles this file with plain `nvcc -c`.
#include "sample_frame.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace fastsrnn {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSeqTile = 8;  // sequences per pass over a block's weight rows (registers per warp)
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(uint16_t v) { return __uint_as_float(static_cast<unsigned>(v) << 16); }

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~static_cast<size_t>(15); }

// Dynamic shared memory: W3 rows, Wo rows | activations (tile, H) | ring (F,) | reduction scratch.
__host__ __device__ inline size_t smem_bytes(int r3, int ro, int tile, int H, int F, int wsize) {
  return align16(static_cast<size_t>(r3 + ro) * H * wsize) + align16(static_cast<size_t>(tile) * H * 4) +
         align16(static_cast<size_t>(F) * 4) + 2 * kWarps * 4;
}

// Grid-wide barrier on a counter zeroed before the launch: the k-th barrier waits until k * grid
// arrivals. Needs every block resident (cooperative launch, or grid <= what fits at once).
// The fences order each block's global writes before its arrival and others' after the wait.
__device__ __forceinline__ void grid_barrier(unsigned int* counter, unsigned int& target) {
  target += gridDim.x;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    while (*reinterpret_cast<volatile unsigned int*>(counter) < target) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
      __nanosleep(32);
#endif
    }
    __threadfence();
  }
  __syncthreads();
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Block-wide reductions: every thread gets the result. red: kWarps slots of shared memory.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* red, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();  // red may still be read by a previous reduction
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  T r = red[0];
  for (int i = 1; i < kWarps; ++i) r = op(r, red[i]);
  return r;
}

// Inclusive prefix sum in thread order; *total is the block's sum, equal (bit for bit) to the
// last thread's prefix, so a scan's maximum is its total as in the reference.
__device__ float block_scan(float v, float* red, float* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  __syncthreads();
  if (lane == 31) red[warp] = v;
  __syncthreads();
  float before = 0.f;
  for (int i = 0; i < warp; ++i) before += red[i];
  float all = before;
  for (int i = warp; i < kWarps; ++i) all += red[i];
  *total = all;
  return before + v;
}

// out[b, row0 + r] = act(sum_k w[r, k] in[b, k] + bias[row0 + r]) for this block's nrows rows
// (w in shared memory, (nrows, K)) and every sequence b; `in` (B, K) was written by other blocks.
template <typename W>
__device__ void rows_phase(const W* w, const float* bias, int row0, int nrows, int N, int K, const float* in,
                           float* out, int B, int tile, float* act, bool relu) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int b0 = 0; b0 < B; b0 += tile) {
    const int nb = min(tile, B - b0);
    for (int i = threadIdx.x; i < nb * K; i += blockDim.x) act[i] = __ldcg(in + static_cast<size_t>(b0) * K + i);
    __syncthreads();
    for (int r = warp; r < nrows; r += kWarps) {
      float acc[kMaxSeqTile];
#pragma unroll
      for (int t = 0; t < kMaxSeqTile; ++t) acc[t] = 0.f;
      const W* wr = w + static_cast<size_t>(r) * K;
      for (int k = lane; k < K; k += 32) {
        const float wk = to_f32(wr[k]);
#pragma unroll
        for (int t = 0; t < kMaxSeqTile; ++t)
          if (t < nb) acc[t] = fmaf(wk, act[t * K + k], acc[t]);
      }
      const float bv = __ldg(bias + row0 + r);
#pragma unroll
      for (int t = 0; t < kMaxSeqTile; ++t) {
        const float v = warp_sum(acc[t]) + bv;
        if (lane == 0 && t < nb) out[static_cast<size_t>(b0 + t) * N + row0 + r] = relu ? fmaxf(v, 0.f) : v;
      }
    }
    __syncthreads();  // act is overwritten by the next tile
  }
}

// ring[p] = window[b, p], clamped into [0, Q) so that a bad sample cannot read out of bounds.
__device__ void load_ring(const SampleFrameParams& p, int b, int* ring) {
  __syncthreads();
  for (int i = threadIdx.x; i < p.F; i += blockDim.x) {
    const long long v = __ldcg(reinterpret_cast<const long long*>(p.window) + static_cast<size_t>(b) * p.F + i);
    ring[i] = static_cast<int>(v < 0 ? 0 : (v >= p.Q ? p.Q - 1 : v));
  }
  __syncthreads();
}

// a2[b] = relu(cond[b, j] + sum_k table[k, slot k]) with slot k at ring position (k + j) mod F.
template <typename W>
__device__ void compute_a2(const SampleFrameParams& p, int b, int j, const int* ring, float* a2) {
  const W* table = static_cast<const W*>(p.table);
  for (int h = threadIdx.x; h < p.H; h += blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < p.F; ++k)
      s += to_f32(table[(static_cast<size_t>(k) * p.Q + ring[(k + j) % p.F]) * p.H + h]);
    const float c = __ldg(p.cond + (static_cast<size_t>(b) * p.F + j) * p.H + h);
    a2[static_cast<size_t>(b) * p.H + h] = fmaxf(c + s, 0.f);
  }
}

// Sample x for sequence b at step j from logits (Q,) (written by other blocks); writes logits_out.
__device__ long long draw(const SampleFrameParams& p, const float* logits, int b, int j, float* red) {
  const int Q = p.Q;
  const size_t bj = static_cast<size_t>(b) * p.F + j;
  float m = -INFINITY;
  for (int q = threadIdx.x; q < Q; q += blockDim.x) {
    const float l = __ldcg(logits + q);
    if (p.logits_out) p.logits_out[bj * Q + q] = l;
    m = fmaxf(m, l);
  }
  if (p.forced) return p.forced[bj];
  m = block_reduce(m, red, [](float a, float c) { return fmaxf(a, c); });
  int* redi = reinterpret_cast<int*>(red + kWarps);
  if (p.argmax) {  // the first maximum, as torch.argmax
    int first = Q;
    for (int q = threadIdx.x; q < Q; q += blockDim.x)
      if (__ldcg(logits + q) == m) first = min(first, q);
    return block_reduce(first, redi, [](int a, int c) { return min(a, c); });
  }
  const float inv_t = __ldg(p.inv_temperature + b);
  float running = 0.f, chunk = 0.f;
  for (int c0 = 0; c0 < Q; c0 += blockDim.x) {  // pass 1: the total, by the same scan as pass 2
    const int q = c0 + threadIdx.x;
    block_scan(q < Q ? expf((__ldcg(logits + q) - m) * inv_t) : 0.f, red, &chunk);
    running += chunk;
  }
  const float threshold = __ldg(p.uniforms + bj) * running;
  int below = 0;
  running = 0.f;
  for (int c0 = 0; c0 < Q; c0 += blockDim.x) {  // pass 2: count the CDF values <= threshold
    const int q = c0 + threadIdx.x;
    const float cdf = running + block_scan(q < Q ? expf((__ldcg(logits + q) - m) * inv_t) : 0.f, red, &chunk);
    below += (q < Q && cdf <= threshold) ? 1 : 0;
    running += chunk;
  }
  below = block_reduce(below, redi, [](int a, int c) { return a + c; });
  return min(below, Q - 1);
}

template <typename W>
__global__ void __launch_bounds__(kThreads) sample_frame_kernel(SampleFrameParams p, int r3, int ro, int tile) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int B = p.B, F = p.F, Q = p.Q, H = p.H;
  W* s_w3 = reinterpret_cast<W*>(smem);
  W* s_wo = s_w3 + static_cast<size_t>(r3) * H;
  float* act = reinterpret_cast<float*>(smem + align16(static_cast<size_t>(r3 + ro) * H * sizeof(W)));
  int* ring = reinterpret_cast<int*>(reinterpret_cast<unsigned char*>(act) + align16(static_cast<size_t>(tile) * H * 4));
  float* red = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(ring) + align16(static_cast<size_t>(F) * 4));

  const int row3 = blockIdx.x * r3, n3 = max(0, min(r3, H - row3));
  const int rowo = blockIdx.x * ro, no = max(0, min(ro, Q - rowo));
  const W* g_w3 = static_cast<const W*>(p.w3) + static_cast<size_t>(row3) * H;
  const W* g_wo = static_cast<const W*>(p.wo) + static_cast<size_t>(rowo) * H;
  for (size_t i = threadIdx.x; i < static_cast<size_t>(n3) * H; i += blockDim.x) s_w3[i] = g_w3[i];
  for (size_t i = threadIdx.x; i < static_cast<size_t>(no) * H; i += blockDim.x) s_wo[i] = g_wo[i];

  float* a2 = p.workspace;                          // (B, H)
  float* a3 = a2 + static_cast<size_t>(B) * H;      // (B, H)
  float* logits = a3 + static_cast<size_t>(B) * H;  // (B, Q)
  unsigned int target = 0;
  for (int b = blockIdx.x; b < B; b += gridDim.x) {
    load_ring(p, b, ring);
    compute_a2<W>(p, b, 0, ring, a2);
  }
  grid_barrier(p.barrier, target);  // also publishes the shared-memory weights within the block
  for (int j = 0; j < F; ++j) {
    rows_phase(s_w3, p.b3, row3, n3, H, H, a2, a3, B, tile, act, true);
    grid_barrier(p.barrier, target);
    rows_phase(s_wo, p.bo, rowo, no, Q, H, a3, logits, B, tile, act, false);
    grid_barrier(p.barrier, target);
    for (int b = blockIdx.x; b < B; b += gridDim.x) {
      const long long x = draw(p, logits + static_cast<size_t>(b) * Q, b, j, red);
      if (threadIdx.x == 0) {
        p.out[static_cast<size_t>(b) * F + j] = x;
        p.window[static_cast<size_t>(b) * F + j] = x;
      }
      if (j + 1 < F) {
        load_ring(p, b, ring);  // its leading barrier publishes thread 0's window write
        compute_a2<W>(p, b, j + 1, ring, a2);
      }
      __syncthreads();  // red and ring are reused for the next sequence
    }
    if (j + 1 < F) grid_barrier(p.barrier, target);
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

int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace

size_t sample_frame_workspace_floats(int B, int H, int Q) {
  return 2 * static_cast<size_t>(B) * H + static_cast<size_t>(B) * Q;
}

const char* sample_frame_launch(const SampleFrameParams& p, cudaStream_t stream, bool cooperative) {
  if (p.B < 1 || p.F < 1 || p.H < 1 || p.Q < 2) return "sample_frame (CUDA): need B, F, H >= 1 and Q >= 2";
  if (!p.table || !p.cond || !p.w3 || !p.b3 || !p.wo || !p.bo || !p.window || !p.uniforms ||
      !p.inv_temperature || !p.out || !p.workspace || !p.barrier)
    return "sample_frame (CUDA): a required pointer is null";
  int dev = 0, sms = 0, optin = 0, coop = 0;
  SF_CHECK(cudaGetDevice(&dev));
  SF_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  SF_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  SF_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  // At least 4 W3 rows per block: for small H, fewer blocks make each barrier cheaper.
  const int grid = std::max(1, std::min(sms, ceil_div(p.H, 4)));
  int r3 = ceil_div(p.H, grid), ro = ceil_div(p.Q, grid), tile = std::min(p.B, kMaxSeqTile);
  const int wsize = p.bf16 ? 2 : 4;
  size_t smem = smem_bytes(r3, ro, tile, p.H, p.F, wsize);
  while (smem > static_cast<size_t>(optin) && tile > 1) smem = smem_bytes(r3, ro, --tile, p.H, p.F, wsize);
  if (smem > static_cast<size_t>(optin)) {
    std::snprintf(g_message, sizeof(g_message),
                  "sample_frame (CUDA): %d W3 rows + %d Wo rows of H=%d per block need %zu bytes of shared "
                  "memory; this device allows %d per block on %d SMs (use bf16 weights or the triton backend)",
                  r3, ro, p.H, smem, optin, sms);
    return g_message;
  }
  void (*kernel)(SampleFrameParams, int, int, int) = p.bf16 ? sample_frame_kernel<uint16_t> : sample_frame_kernel<float>;
  SF_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  SF_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  if (per_sm < 1) return "sample_frame (CUDA): the kernel does not fit on one SM (registers or shared memory)";
  SF_CHECK(cudaMemsetAsync(p.barrier, 0, sizeof(unsigned int), stream));
  if (cooperative && coop) {
    SampleFrameParams args = p;
    void* argv[] = {&args, &r3, &ro, &tile};
    SF_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(grid), dim3(kThreads), argv,
                                         smem, stream));
  } else {  // grid <= SMs and one block fits per SM: all blocks are resident at once
    kernel<<<grid, kThreads, smem, stream>>>(p, r3, ro, tile);
    SF_CHECK(cudaGetLastError());
  }
  return nullptr;
}

}  // namespace fastsrnn
