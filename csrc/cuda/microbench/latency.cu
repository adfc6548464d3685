// Device microbenchmark: the latencies that step 2 of the GPU work (one persistent kernel per chunk of
// frames, with thread-block clusters; docs/DESIGN.md §8) rests on, one JSON line per number on stdout.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o latency latency.cu && ./latency
//   (benchmarks/gpu_latency.py builds, runs and saves it; scripts/gpu_check.sh runs that first)
//
// Measured (each: warm-up iterations, then many timed ones; per-iteration times in SM cycles from
// clock64 in one thread, converted to ns with that thread's own clock64 / %globaltimer ratio over the
// timed loop; median, p10, p90 and mean in the line):
//   l2_flag_oneway       half the round trip of a ping-pong between two blocks on different SMs
//                        (one block per SM: each asks for more than half an SM's shared memory)
//                        through two flag words in L2: release/acquire and relaxed
//   allgather_step       one step of an epoch-tagged all-gather among 128 blocks: each writes its
//                        words {epoch, value} (64-bit, the data is its own flag) into a buffer chosen
//                        by epoch parity, then polls every block's words until all carry the epoch
//   grid_barrier         csrc/cuda/grid_barrier.cuh's barrier (the one sample_frame.cu uses), bare
//                        and followed by a dependent L2 read of another block's word
//   cluster_step         a 16- (or 8-) CTA cluster step: each CTA stores its slice into every peer's
//                        shared memory (distributed shared memory, parity-buffered), one cluster
//                        barrier, then reads what it received; 1 cluster, and as many as fit at once (<= 8)
//   max_active_clusters  cudaOccupancyMaxActiveClusters for clusters of 8 and 16 CTAs at 200 KB of
//                        dynamic shared memory and 512 threads (a CUDA call, no kernel)
//   l2_hit_latency       one thread chasing a random cycle of 128-byte lines in a 4 MB buffer
//                        (ld.global.cg: L2, not L1), idle, and beside hbm_stream (the chase starts
//                        once every stream block runs, and reports the stream's GB/s meanwhile)
//   hbm_stream_read      the stream alone: all SMs reading 2 GB with evict-first loads (ld.global.cs)
// Never a hang: every spin loop in these kernels gives up at a %globaltimer deadline (the kernel
// then records a timeout, reported as an error line); cluster barriers are hardware barriers among
// CTAs that the hardware launched together, and cooperative launches run every block at once or
// fail. Every CUDA call's return code is checked and a failure printed as {"name", "error"}; the
// exit status is 0 only when every measurement gave its number.
#include "../grid_barrier.cuh"

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace cg = cooperative_groups;
using fastsrnn::globaltimer_ns;
using fastsrnn::grid_barrier;

namespace {

constexpr unsigned long long kTimeoutNs = 500ull * 1000 * 1000;  // per kernel: far above any wait here
constexpr int kClusterThreads = 512;
constexpr int kClusterSmem = 200 * 1024;  // the design's ~200 KB of W3/Wo/table slices per CTA
constexpr int kChaseLine = 32;            // words per 128-byte line

// What a timed kernel reports besides its samples: status (0 ok, else an Err), the timing thread's
// clock64 and %globaltimer over the timed loop (their ratio converts cycles to ns), its SM ids, and
// for the chase beside the stream, the stream's bytes over the timed window.
enum Err : int { kOk = 0, kTimeout = 1, kStale = 2, kSameSm = 3, kNoStream = 4 };
struct Result {
  int status;
  int sm_a, sm_b;
  int pad;
  long long clk;
  unsigned long long ns;
  unsigned long long stream_bytes;
  unsigned long long stream_ns;
};

__device__ __forceinline__ int smid() {
  int id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}
__device__ __forceinline__ void fail(Result* r, int code) { atomicCAS(&r->status, 0, code); }

// The timed thread's clock over an iteration loop: clock64 deltas of the iterations after `warm`,
// and the clock64 and %globaltimer spans of those timed iterations (the host converts with them).
struct IterClock {
  long long prev = 0, c0 = 0;
  unsigned long long t0 = 0;
  __device__ __forceinline__ void tick(int e, int warm, long long* samples) {
    const long long now = clock64();
    if (e == warm) {
      t0 = globaltimer_ns();
      c0 = now;
    }
    if (e > warm) samples[e - warm - 1] = now - prev;
    prev = now;
  }
  __device__ __forceinline__ void finish(Result* r) const {
    r->clk = clock64() - c0;
    r->ns = globaltimer_ns() - t0;
  }
};

__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed(unsigned* p, unsigned v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_relaxed64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ unsigned long long ld_relaxed64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// Spin until *p == want (acquire or relaxed); false at the deadline (the clock is read every 64 polls).
template <bool kAcquire>
__device__ __forceinline__ bool wait_eq(const unsigned* p, unsigned want, unsigned long long deadline) {
  for (unsigned n = 1;; ++n) {
    if ((kAcquire ? ld_acquire(p) : ld_relaxed(p)) == want) return true;
    if ((n & 63) == 0 && globaltimer_ns() > deadline) return false;
  }
}

// ---- l2_flag_oneway: block 0 pings, block `partner` pongs, the others leave at once.
// flags[0] and flags[32] are on different 128-byte lines.
template <bool kAcquire>
__global__ void pingpong_kernel(unsigned* flags, int partner, int warm, int iters, long long* samples, Result* r) {
  const unsigned long long deadline = globaltimer_ns() + kTimeoutNs;
  const bool ping = blockIdx.x == 0, pong = static_cast<int>(blockIdx.x) == partner;
  if ((!ping && !pong) || threadIdx.x != 0) return;
  if (ping) r->sm_a = smid(); else r->sm_b = smid();
  unsigned* a = flags;
  unsigned* b = flags + 32;
  long long c0 = 0;
  unsigned long long t0 = 0;
  for (int i = 1; i <= warm + iters; ++i) {
    if (i == warm + 1 && ping) {
      t0 = globaltimer_ns();
      c0 = clock64();
    }
    if (ping) {
      const long long s = clock64();
      kAcquire ? st_release(a, i) : st_relaxed(a, i);
      if (!wait_eq<kAcquire>(b, i, deadline)) return fail(r, kTimeout);
      if (i > warm) samples[i - warm - 1] = clock64() - s;
    } else {
      if (!wait_eq<kAcquire>(a, i, deadline)) return fail(r, kTimeout);
      kAcquire ? st_release(b, i) : st_relaxed(b, i);
    }
  }
  if (ping) {
    r->clk = clock64() - c0;
    r->ns = globaltimer_ns() - t0;
  }
}

// ---- allgather_step: buf is (2, gridDim.x, words) 64-bit {epoch (high), value bits (low)}.
__device__ __forceinline__ unsigned gather_value(int blk, int k, int e) { return (e * 131 + blk * 17 + k) & 0xffffff; }

constexpr int kGatherThreads = 512, kGatherBatch = 8;
__global__ void __launch_bounds__(kGatherThreads, 1) allgather_kernel(unsigned long long* buf, int words, int warm, int iters, long long* samples,
                                 Result* r) {
  const unsigned long long deadline = globaltimer_ns() + kTimeoutNs;
  const int nblk = gridDim.x, blk = blockIdx.x, total = nblk * words;
  if (blk == 0 && threadIdx.x == 0) r->sm_a = smid();
  IterClock clk;
  for (int e = 1; e <= warm + iters; ++e) {
    unsigned long long* half = buf + static_cast<size_t>(e & 1) * total;
    for (int k = threadIdx.x; k < words; k += blockDim.x)
      st_relaxed64(half + static_cast<size_t>(blk) * words + k,
                   (static_cast<unsigned long long>(e) << 32) | gather_value(blk, k, e));
    // Each pass loads a batch of words per thread before looking at any (the loads overlap), and
    // passes repeat until every word carries epoch e. Re-reading a word already seen is safe: it
    // cannot move to e + 2 before this block has published its words of e + 1.
    int bad = 0, late = 0;
    for (unsigned pass = 1, pending = 1; pending && !late; ++pass) {
      pending = 0;
      for (int base = 0; base < total; base += kGatherThreads * kGatherBatch) {
        unsigned long long v[kGatherBatch];
#pragma unroll
        for (int u = 0; u < kGatherBatch; ++u) {
          const int i = base + u * kGatherThreads + threadIdx.x;
          v[u] = i < total ? ld_relaxed64(half + i) : 0ull;
        }
#pragma unroll
        for (int u = 0; u < kGatherBatch; ++u) {
          const int i = base + u * kGatherThreads + threadIdx.x, epoch = static_cast<int>(v[u] >> 32);
          if (i >= total) continue;
          if (epoch == e) bad |= static_cast<unsigned>(v[u]) != gather_value(i / words, i % words, e);
          else if (epoch > e) bad = 1;  // a word of epoch e + 2 in this half: the parity rule broke
          else pending = 1;
        }
      }
      if (pending && (pass & 15) == 0 && globaltimer_ns() > deadline) late = 1;
    }
    if (__syncthreads_or(late)) return fail(r, kTimeout);
    if (bad) fail(r, kStale);
    if (blk == 0 && threadIdx.x == 0) clk.tick(e, warm, samples);
  }
  if (blk == 0 && threadIdx.x == 0) clk.finish(r);
}

// ---- grid_barrier: the project's barrier; with `read`, each block then reads (ld.global.cg) the word
// that the next block wrote before the barrier, as sample_frame.cu reads a3 and the logits.
__global__ void barrier_kernel(unsigned* word, unsigned* data, int read, int warm, int iters, long long* samples,
                               Result* r) {
  const unsigned long long deadline = globaltimer_ns() + kTimeoutNs;
  const int nblk = gridDim.x, blk = blockIdx.x;
  if (blk == 0 && threadIdx.x == 0) r->sm_a = smid();
  IterClock clk;
  for (int e = 1; e <= warm + iters; ++e) {
    unsigned* half = data + static_cast<size_t>(e & 1) * nblk;
    if (read && threadIdx.x == 0) half[blk] = e;
    if (!grid_barrier<true>(word, deadline)) return fail(r, kTimeout);
    if (read && threadIdx.x == 0 && __ldcg(half + (blk + 1) % nblk) != static_cast<unsigned>(e)) fail(r, kStale);
    if (blk == 0 && threadIdx.x == 0) clk.tick(e, warm, samples);
  }
  if (blk == 0 && threadIdx.x == 0) clk.finish(r);
}

// ---- cluster_step: dynamic shared memory holds the receive buffers, (2, cluster size, per_peer) floats
// (the rest of the 200 KB stands for the weight slices). CTA `rank` writes its slice into slot `rank`
// of every CTA's buffer of this step's parity (itself included), then one cluster barrier (arrive
// release, wait acquire), then reads and checks its own buffer. Parity: the next write to this half
// comes after the next barrier, when every CTA has read it.
__device__ __forceinline__ float cluster_value(int src, int k, int e) {
  return static_cast<float>((e * 131 + src * 17 + k) & 0xffffff);
}

__global__ void cluster_kernel(int per_peer, int warm, int iters, long long* samples, Result* r) {
  extern __shared__ float recv[];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank()), n = static_cast<int>(cluster.num_blocks());
  const bool timer = blockIdx.x == 0 && threadIdx.x == 0;
  const int total = n * per_peer;
  if (timer) r->sm_a = smid();
  IterClock clk;
  cluster.sync();  // every CTA of the cluster runs before anyone's shared memory is written
  for (int e = 1; e <= warm + iters; ++e) {
    float* half = recv + static_cast<size_t>(e & 1) * total;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
      const int peer = i / per_peer, k = i - peer * per_peer;
      float* dst = cluster.map_shared_rank(half + rank * per_peer + k, peer);
      *dst = cluster_value(rank, k, e);
    }
    cluster.sync();
    int bad = 0;
    for (int i = threadIdx.x; i < total; i += blockDim.x) bad |= half[i] != cluster_value(i / per_peer, i % per_peer, e);
    if (bad) fail(r, kStale);
    if (timer) clk.tick(e, warm, samples);
  }
  cluster.sync();  // no CTA leaves while a peer may still write into its shared memory
  if (timer) clk.finish(r);
}

// ---- hbm_stream_read and the chase beside it. ctl: [0] blocks running, [1] stop, then from word 4 one
// u64 per block: the bytes it has read (a counter per block: no atomic traffic on one address).
// Each block reads chunks of 64 KB (evict-first loads), counts them, and checks the stop word and
// its deadline between chunks. With max_chunks > 0 it stops after that many chunks (a timed pass).
// __launch_bounds__(256, 2): two blocks per SM, all resident at once, with room left for the chase's block.
constexpr int kStreamThreads = 256, kStreamUnroll = 16, kStreamBlocksPerSm = 2;
__device__ __forceinline__ unsigned long long* stream_bytes(unsigned* ctl) {
  return reinterpret_cast<unsigned long long*>(ctl + 4);
}
__global__ void __launch_bounds__(kStreamThreads, kStreamBlocksPerSm)
stream_kernel(const uint4* src, size_t n_chunks, long long max_chunks, unsigned* ctl, uint4* sink) {
  const unsigned long long deadline = globaltimer_ns() + 4 * kTimeoutNs;
  if (threadIdx.x == 0) atomicAdd(ctl, 1u);
  uint4 acc = make_uint4(0, 0, 0, 0);
  const size_t chunk = static_cast<size_t>(kStreamThreads) * kStreamUnroll;
  unsigned long long done = 0;
  for (size_t c = blockIdx.x;; c += gridDim.x) {
    if (max_chunks > 0 && c >= static_cast<size_t>(max_chunks)) break;
    int stop = 0;
    if (threadIdx.x == 0)
      stop = (max_chunks <= 0 && ld_relaxed(ctl + 1) != 0) || globaltimer_ns() > deadline;
    if (__syncthreads_or(stop)) break;
    const uint4* p = src + (c % n_chunks) * chunk + threadIdx.x;
    uint4 v[kStreamUnroll];
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) v[u] = __ldcs(p + u * kStreamThreads);
#pragma unroll
    for (int u = 0; u < kStreamUnroll; ++u) {
      acc.x ^= v[u].x;
      acc.y ^= v[u].y;
      acc.z ^= v[u].z;
      acc.w ^= v[u].w;
    }
    done += chunk * sizeof(uint4);
    if (threadIdx.x == 0) st_relaxed64(stream_bytes(ctl) + blockIdx.x, done);
  }
  if (acc.x == 0x12345678u && acc.y == 0x9abcdef0u) sink[threadIdx.x] = acc;  // keeps the loads
  __syncthreads();
  if (threadIdx.x == 0) atomicSub(ctl, 1u);
}

// One thread follows next[] (a random cycle through the lines of the buffer) for `warm` hops, then
// times `chunks` chunks of 32 hops. With stream_blocks > 0 it first waits (bounded) for that many
// stream blocks to be running, reads the stream's byte count at both ends of the timed window, and
// fails with kNoStream if the stream stopped before the window closed; then it tells the stream to stop.
constexpr int kHopsPerSample = 32;
__global__ void chase_kernel(const unsigned* next, int warm, int chunks, long long* samples, Result* r,
                             unsigned* ctl, unsigned stream_blocks) {
  if (threadIdx.x != 0) return;
  const unsigned long long deadline = globaltimer_ns() + 2 * kTimeoutNs;
  r->sm_a = smid();
  auto streamed = [&] {
    unsigned long long b = 0;
    for (unsigned k = 0; k < stream_blocks; ++k) b += ld_relaxed64(stream_bytes(ctl) + k);
    return b;
  };
  if (stream_blocks > 0 && !wait_eq<false>(ctl, stream_blocks, deadline)) {
    st_relaxed(ctl + 1, 1u);
    return fail(r, kNoStream);
  }
  unsigned i = 0;
  for (int h = 0; h < warm; ++h) i = __ldcg(next + i);
  const unsigned long long b0 = streamed();
  const unsigned long long t0 = globaltimer_ns();
  const long long c0 = clock64();
  for (int c = 0; c < chunks; ++c) {
    const long long s = clock64();
#pragma unroll
    for (int h = 0; h < kHopsPerSample; ++h) i = __ldcg(next + i);
    samples[c] = (clock64() - s + (i == 0xffffffffu)) / kHopsPerSample;  // i is used: the chain is kept
  }
  r->clk = clock64() - c0;
  r->ns = globaltimer_ns() - t0;
  if (stream_blocks > 0) {
    r->stream_bytes = streamed() - b0;
    r->stream_ns = r->ns;
    if (ld_relaxed(ctl) != stream_blocks) fail(r, kNoStream);
    st_relaxed(ctl + 1, 1u);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int g_failures = 0;
cudaDeviceProp g_prop;

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    o += c;
  }
  return o + "\"";
}

void error_line(const std::string& name, const std::string& error, const std::string& params = "{}") {
  ++g_failures;
  std::printf("{\"name\": %s, \"error\": %s, \"params\": %s}\n", json_str(name).c_str(), json_str(error).c_str(),
              params.c_str());
  std::fflush(stdout);
}

// CK(name, call): on failure, an error line naming the call, and the measurement returns false.
#define CK(name, call)                                                                                    \
  do {                                                                                                    \
    const cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                              \
      error_line(name, std::string(#call) + " failed: " + cudaGetErrorName(e_) + ": " + cudaGetErrorString(e_)); \
      return false;                                                                                       \
    }                                                                                                     \
  } while (0)

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double at = q * (v.size() - 1);
  const size_t lo = static_cast<size_t>(at);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (at - lo) * (v[hi] - v[lo]);
}

// One number's line: samples in cycles (scaled by `scale`: e.g. 0.5 for one way of a round trip),
// converted with the kernel's own cycles per ns.
void stats_line(const std::string& name, const std::vector<long long>& cyc, double scale, const Result& r,
                const std::string& params, const std::string& extra = "") {
  const double per_ns = r.ns > 0 ? static_cast<double>(r.clk) / r.ns : 0.0;
  if (per_ns <= 0 || cyc.empty()) return error_line(name, "no timing (clock64 or %globaltimer did not advance)", params);
  std::vector<double> ns(cyc.size());
  double sum = 0;
  for (size_t i = 0; i < cyc.size(); ++i) sum += ns[i] = scale * cyc[i] / per_ns;
  std::printf("{\"name\": %s, \"unit\": \"ns\", \"median\": %.1f, \"p10\": %.1f, \"p90\": %.1f, \"mean\": %.1f, "
              "\"n\": %zu, \"sm_clock_mhz\": %.0f, \"params\": %s%s}\n",
              json_str(name).c_str(), percentile(ns, 0.5), percentile(ns, 0.1), percentile(ns, 0.9), sum / ns.size(),
              ns.size(), per_ns * 1000.0, params.c_str(), extra.c_str());
  std::fflush(stdout);
}

const char* err_text(int status) {
  switch (status) {
    case kTimeout: return "timeout: a spin wait passed its %globaltimer deadline (a block never came?)";
    case kStale: return "wrong data: a value read after the exchange was not the one written for this step";
    case kSameSm: return "the two blocks ran on the same SM";
    case kNoStream: return "the HBM stream was not running beside the chase for the whole timed window";
    default: return "unknown status";
  }
}

// Device buffers freed at scope exit.
struct Buf {
  void* p = nullptr;
  ~Buf() {
    if (p) cudaFree(p);
  }
};

// Runs a timed kernel's launch (a lambda returning cudaError_t), then reads back the Result and samples.
template <typename Launch>
bool run_timed(const std::string& name, const std::string& params, const char* what, int n, Launch launch,
               Result& r, std::vector<long long>& cyc) {
  Buf samples, res;
  CK(name, cudaMalloc(&samples.p, sizeof(long long) * n));
  CK(name, cudaMalloc(&res.p, sizeof(Result)));
  CK(name, cudaMemset(res.p, 0, sizeof(Result)));
  CK(name, cudaMemset(samples.p, 0, sizeof(long long) * n));
  const cudaError_t le = launch(static_cast<long long*>(samples.p), static_cast<Result*>(res.p));
  if (le != cudaSuccess) {  // e.g. a cluster shape or a cooperative grid that the driver refuses
    error_line(name, std::string(what) + " failed: " + cudaGetErrorName(le) + ": " + cudaGetErrorString(le), params);
    return false;
  }
  CK(name, cudaDeviceSynchronize());
  CK(name, cudaMemcpy(&r, res.p, sizeof(Result), cudaMemcpyDeviceToHost));
  cyc.resize(n);
  CK(name, cudaMemcpy(cyc.data(), samples.p, sizeof(long long) * n, cudaMemcpyDeviceToHost));
  if (r.status != kOk) {
    error_line(name, err_text(r.status), params);
    return false;
  }
  return true;
}

int one_per_sm_smem() {  // more than half an SM's shared memory: no two such blocks share an SM
  return static_cast<int>(std::min<size_t>(g_prop.sharedMemPerMultiprocessor / 2 + 1024, g_prop.sharedMemPerBlockOptin));
}

bool measure_flag(bool acquire, int partner) {
  const std::string name = "l2_flag_oneway";
  const int warm = 200, iters = 4000, smem = one_per_sm_smem();
  auto kernel = acquire ? pingpong_kernel<true> : pingpong_kernel<false>;
  CK(name, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  Buf flags;
  CK(name, cudaMalloc(&flags.p, 256));
  CK(name, cudaMemset(flags.p, 0, 256));
  Result r{};
  std::vector<long long> cyc;
  const int grid = g_prop.multiProcessorCount;
  char params[256];
  std::snprintf(params, sizeof params, "{\"mode\": \"%s\", \"partner_block\": %d, \"blocks\": %d, \"smem_bytes\": %d}",
                acquire ? "release/acquire" : "relaxed", partner, grid, smem);
  if (!run_timed(name, params, "the kernel launch (<<<>>>)", iters, [&](long long* s, Result* rr) {
        kernel<<<grid, 32, smem>>>(static_cast<unsigned*>(flags.p), partner, warm, iters, s, rr);
        return cudaGetLastError();
      }, r, cyc))
    return false;
  if (r.sm_a == r.sm_b) return error_line(name, err_text(kSameSm), params), false;
  char extra[64];
  std::snprintf(extra, sizeof extra, ", \"sm_a\": %d, \"sm_b\": %d", r.sm_a, r.sm_b);
  stats_line(name, cyc, 0.5, r, params, extra);
  return true;
}

// A cooperative launch: the driver runs every block at once or refuses (so spin waits can complete).
template <typename... Params, typename... Args>
cudaError_t launch_coop(void (*kernel)(Params...), int grid, int threads, int smem, Args... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeCooperative;
  attr.val.cooperative = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

bool measure_allgather(int nblk, int words) {
  const std::string name = "allgather_step";
  const int warm = 100, iters = 2000, threads = kGatherThreads, smem = one_per_sm_smem();
  CK(name, cudaFuncSetAttribute(allgather_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  Buf buf;
  const size_t bytes = sizeof(unsigned long long) * 2 * nblk * words;
  CK(name, cudaMalloc(&buf.p, bytes));
  CK(name, cudaMemset(buf.p, 0, bytes));
  char params[256];
  std::snprintf(params, sizeof params,
                "{\"blocks\": %d, \"words_per_block\": %d, \"word\": \"u64 {epoch, value}\", \"threads\": %d, "
                "\"smem_bytes\": %d}", nblk, words, threads, smem);
  Result r{};
  std::vector<long long> cyc;
  if (!run_timed(name, params, "cudaLaunchKernelEx (cooperative)", iters, [&](long long* s, Result* rr) {
        return launch_coop(allgather_kernel, nblk, threads, smem, static_cast<unsigned long long*>(buf.p), words, warm,
                           iters, s, rr);
      }, r, cyc))
    return false;
  stats_line(name, cyc, 1.0, r, params);
  return true;
}

bool measure_barrier(int nblk, int read) {
  const std::string name = "grid_barrier";
  const int warm = 100, iters = 2000, threads = 256, smem = one_per_sm_smem();
  CK(name, cudaFuncSetAttribute(barrier_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  Buf word, data;
  CK(name, cudaMalloc(&word.p, 128));
  CK(name, cudaMemset(word.p, 0, 128));
  CK(name, cudaMalloc(&data.p, sizeof(unsigned) * 2 * nblk));
  CK(name, cudaMemset(data.p, 0, sizeof(unsigned) * 2 * nblk));
  char params[256];
  std::snprintf(params, sizeof params,
                "{\"blocks\": %d, \"then\": \"%s\", \"threads\": %d, \"smem_bytes\": %d, "
                "\"code\": \"csrc/cuda/grid_barrier.cuh\"}",
                nblk, read ? "ld.global.cg of the next block's word" : "nothing", threads, smem);
  Result r{};
  std::vector<long long> cyc;
  if (!run_timed(name, params, "cudaLaunchKernelEx (cooperative)", iters, [&](long long* s, Result* rr) {
        return launch_coop(barrier_kernel, nblk, threads, smem, static_cast<unsigned*>(word.p),
                           static_cast<unsigned*>(data.p), read, warm, iters, s, rr);
      }, r, cyc))
    return false;
  stats_line(name, cyc, 1.0, r, params);
  return true;
}

cudaLaunchConfig_t cluster_config(cudaLaunchAttribute* attr, int cluster, int clusters) {
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cluster;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(cluster * clusters);
  cfg.blockDim = dim3(kClusterThreads);
  cfg.dynamicSmemBytes = kClusterSmem;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

bool cluster_attributes(const std::string& name) {
  CK(name, cudaFuncSetAttribute(cluster_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kClusterSmem));
  CK(name, cudaFuncSetAttribute(cluster_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  return true;
}

// Returns the number (or -1 after an error line).
int measure_max_clusters(int cluster) {
  const std::string name = "max_active_clusters";
  if (!cluster_attributes(name)) return -1;
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = cluster_config(&attr, cluster, 1);
  int n = 0;
  const cudaError_t e = cudaOccupancyMaxActiveClusters(&n, cluster_kernel, &cfg);
  char params[200];
  std::snprintf(params, sizeof params, "{\"cluster_ctas\": %d, \"threads\": %d, \"smem_bytes\": %d}", cluster,
                kClusterThreads, kClusterSmem);
  if (e != cudaSuccess) {
    error_line(name, std::string("cudaOccupancyMaxActiveClusters failed: ") + cudaGetErrorName(e) + ": " +
                         cudaGetErrorString(e), params);
    return -1;
  }
  std::printf("{\"name\": \"max_active_clusters\", \"unit\": \"clusters\", \"value\": %d, \"ctas\": %d, "
              "\"params\": %s}\n", n, n * cluster, params);
  std::fflush(stdout);
  return n;
}

bool measure_cluster(int cluster, int clusters, int per_peer) {
  const std::string name = "cluster_step";
  const int warm = 100, iters = 2000;
  char params[256];
  std::snprintf(params, sizeof params,
                "{\"cluster_ctas\": %d, \"clusters\": %d, \"floats_per_peer\": %d, \"threads\": %d, "
                "\"smem_bytes\": %d}", cluster, clusters, per_peer, kClusterThreads, kClusterSmem);
  if (2 * cluster * per_peer * static_cast<int>(sizeof(float)) > kClusterSmem)
    return error_line(name, "the receive buffers exceed the shared memory", params), false;
  if (!cluster_attributes(name)) return false;
  Result r{};
  std::vector<long long> cyc;
  if (!run_timed(name, params, "cudaLaunchKernelEx (cluster dimension)", iters, [&](long long* s, Result* rr) {
        cudaLaunchAttribute attr;
        cudaLaunchConfig_t cfg = cluster_config(&attr, cluster, clusters);
        return cudaLaunchKernelEx(&cfg, cluster_kernel, per_peer, warm, iters, s, rr);
      }, r, cyc))
    return false;
  stats_line(name, cyc, 1.0, r, params);
  return true;
}

// The chase's buffer: a random cycle through `lines` 128-byte lines (Sattolo's algorithm), one word per line.
bool make_chase(const std::string& name, Buf& buf, int lines) {
  std::vector<unsigned> next(static_cast<size_t>(lines) * kChaseLine, 0), order(lines);
  for (int i = 0; i < lines; ++i) order[i] = i;
  unsigned long long x = 0x9E3779B97F4A7C15ull;
  for (int i = lines - 1; i > 0; --i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::swap(order[i], order[x % i]);
  }
  for (int i = 0; i < lines; ++i) next[static_cast<size_t>(order[i]) * kChaseLine] = order[(i + 1) % lines] * kChaseLine;
  CK(name, cudaMalloc(&buf.p, next.size() * sizeof(unsigned)));
  CK(name, cudaMemcpy(buf.p, next.data(), next.size() * sizeof(unsigned), cudaMemcpyHostToDevice));
  return true;
}

constexpr size_t kStreamBytes = size_t(2) << 30;
constexpr size_t kChunkBytes = size_t(kStreamThreads) * kStreamUnroll * sizeof(uint4);

size_t ctl_bytes(int grid) { return 16 + sizeof(unsigned long long) * grid; }

bool measure_stream_alone(const Buf& src, Buf& ctl, Buf& sink, int grid) {
  const std::string name = "hbm_stream_read";
  const long long chunks = kStreamBytes / kChunkBytes;
  char params[200];
  std::snprintf(params, sizeof params, "{\"bytes\": %zu, \"blocks\": %d, \"threads\": %d, \"loads\": \"ld.global.cs\"}",
                kStreamBytes, grid, kStreamThreads);
  cudaEvent_t ev[2];
  CK(name, cudaEventCreate(&ev[0]));
  CK(name, cudaEventCreate(&ev[1]));
  std::vector<float> ms;
  for (int rep = 0; rep < 6; ++rep) {  // the first is a warm-up
    CK(name, cudaMemset(ctl.p, 0, ctl_bytes(grid)));
    CK(name, cudaEventRecord(ev[0]));
    stream_kernel<<<grid, kStreamThreads>>>(static_cast<const uint4*>(src.p), chunks, chunks,
                                             static_cast<unsigned*>(ctl.p), static_cast<uint4*>(sink.p));
    CK(name, cudaGetLastError());
    CK(name, cudaEventRecord(ev[1]));
    CK(name, cudaEventSynchronize(ev[1]));
    float t = 0;
    CK(name, cudaEventElapsedTime(&t, ev[0], ev[1]));
    if (rep > 0) ms.push_back(t);
  }
  cudaEventDestroy(ev[0]);
  cudaEventDestroy(ev[1]);
  std::sort(ms.begin(), ms.end());
  std::printf("{\"name\": \"hbm_stream_read\", \"unit\": \"GB/s\", \"median\": %.0f, \"min_ms\": %.3f, "
              "\"max_ms\": %.3f, \"n\": %zu, \"params\": %s}\n", kStreamBytes / (ms[ms.size() / 2] * 1e6), ms.front(),
              ms.back(), ms.size(), params);
  std::fflush(stdout);
  return true;
}

bool measure_chase(const Buf& next, int lines, const Buf* src, Buf& ctl, Buf& sink, int grid) {
  const std::string name = "l2_hit_latency";
  const int chunks = 1024, warm = 2 * lines;
  char params[256];
  std::snprintf(params, sizeof params,
                "{\"buffer_bytes\": %d, \"loads\": \"ld.global.cg, one thread, random 128-byte lines\", "
                "\"hbm_stream\": %s}", lines * 128,
                src ? "\"beside hbm_stream_read's kernel (all SMs, ld.global.cs)\"" : "false");
  CK(name, cudaMemset(ctl.p, 0, ctl_bytes(grid)));
  cudaStream_t s1, s2;
  CK(name, cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(name, cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  Result r{};
  std::vector<long long> cyc;
  const bool ok = run_timed(name, params, "the kernel launches (<<<>>>)", chunks, [&](long long* s, Result* rr) {
    if (src) {
      stream_kernel<<<grid, kStreamThreads, 0, s1>>>(static_cast<const uint4*>(src->p), kStreamBytes / kChunkBytes, 0,
                                                     static_cast<unsigned*>(ctl.p), static_cast<uint4*>(sink.p));
      const cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) return e;
    }
    chase_kernel<<<1, 32, 0, s2>>>(static_cast<const unsigned*>(next.p), warm, chunks, s, rr,
                                   static_cast<unsigned*>(ctl.p), src ? static_cast<unsigned>(grid) : 0u);
    return cudaGetLastError();
  }, r, cyc);
  cudaStreamDestroy(s1);
  cudaStreamDestroy(s2);
  if (!ok) return false;
  char extra[128] = "";
  if (src)
    std::snprintf(extra, sizeof extra, ", \"stream_gb_s\": %.0f",
                  r.stream_ns ? static_cast<double>(r.stream_bytes) / r.stream_ns : 0.0);
  stats_line(name, cyc, 1.0, r, params, extra);
  return true;
}

bool measure_l2() {
  const std::string name = "l2_hit_latency";
  const int lines = (4 << 20) / 128;
  Buf next, src, ctl, sink;
  if (!make_chase(name, next, lines)) return false;
  int per_sm = 0;  // every stream block resident at once, or the chase would wait for blocks that never run
  CK(name, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stream_kernel, kStreamThreads, 0));
  const int grid = g_prop.multiProcessorCount * std::min(per_sm, kStreamBlocksPerSm);
  CK(name, cudaMalloc(&ctl.p, ctl_bytes(grid)));
  CK(name, cudaMalloc(&sink.p, kStreamThreads * sizeof(uint4)));
  CK(name, cudaMalloc(&src.p, kStreamBytes));
  CK(name, cudaMemset(src.p, 0x5a, kStreamBytes));
  bool ok = measure_chase(next, lines, nullptr, ctl, sink, grid);
  ok = measure_stream_alone(src, ctl, sink, grid) && ok;
  return measure_chase(next, lines, &src, ctl, sink, grid) && ok;
}

bool device_line() {
  const std::string name = "device";
  int count = 0;
  CK(name, cudaGetDeviceCount(&count));
  CK(name, cudaSetDevice(0));
  CK(name, cudaGetDeviceProperties(&g_prop, 0));
  int driver = 0, runtime = 0;
  CK(name, cudaDriverGetVersion(&driver));
  CK(name, cudaRuntimeGetVersion(&runtime));
  std::printf("{\"name\": \"device\", \"gpu\": %s, \"cc\": \"%d.%d\", \"sms\": %d, \"l2_bytes\": %d, "
              "\"smem_per_sm\": %zu, \"smem_per_block_optin\": %zu, \"driver\": %d, \"runtime\": %d}\n",
              json_str(g_prop.name).c_str(), g_prop.major, g_prop.minor, g_prop.multiProcessorCount, g_prop.l2CacheSize,
              g_prop.sharedMemPerMultiprocessor, g_prop.sharedMemPerBlockOptin, driver, runtime);
  std::fflush(stdout);
  if (g_prop.major != 9)
    error_line(name, "built for sm_90a (H100/H200): the kernels will not load on compute capability " +
                         std::to_string(g_prop.major) + "." + std::to_string(g_prop.minor));
  return true;
}

// A sticky error (a faulted kernel) spoils every later call: stop after the line that says so.
bool context_alive() {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) return true;
  error_line("context", std::string("cudaDeviceSynchronize() failed: ") + cudaGetErrorName(e) + ": " +
                            cudaGetErrorString(e) + " (later measurements skipped)");
  return false;
}

}  // namespace

int main() {
  if (!device_line()) return 2;
  const int sms = g_prop.multiProcessorCount;
  const int n16 = measure_max_clusters(16);
  measure_max_clusters(8);
  bool alive = context_alive();
  for (int partner : {1, sms / 2, sms - 1})
    for (bool acquire : {true, false})
      if (alive) alive = (measure_flag(acquire, partner), context_alive());
  for (int words : {8, 128})
    if (alive) alive = (measure_allgather(std::min(128, sms), words), context_alive());
  for (int nblk : {std::min(128, sms), sms})
    for (int read : {0, 1})
      if (alive) alive = (measure_barrier(nblk, read), context_alive());
  for (int per_peer : {0, 64, 256})  // barrier alone; a2's 64 floats (n_seq 1); 256 partial logits
    if (alive) alive = (measure_cluster(16, 1, per_peer), context_alive());
  if (alive && n16 > 1) alive = (measure_cluster(16, std::min(n16, 8), 64), context_alive());
  if (alive) alive = (measure_cluster(8, 1, 64), context_alive());
  if (alive) alive = (measure_l2(), context_alive());
  std::printf("{\"name\": \"done\", \"failures\": %d}\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
