// The grid barrier of the persistent CUDA kernel (csrc/cuda/sample_frame.cu), in a header of its own
// so that the device microbenchmark (csrc/cuda/microbench/latency.cu) times this very code.
// No torch here: both build with plain nvcc.
#pragma once

namespace fastsrnn {

__device__ __forceinline__ unsigned long long globaltimer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The algorithm of cooperative_groups' grid.sync (one word, no reset).
// Block 0 adds 0x80000000 - (G - 1), every other block adds 1: the sum of one round is exactly
// 0x80000000, so the top bit flips at the G-th arrival (whatever the order: the low 31 bits
// count up and carry into the top bit exactly then) and the low 31 bits return to what they
// were. The word thus needs zeroing once, when the workspace is allocated, never per launch,
// and any grid size may use it. A block waits for the top bit to differ from the value its own
// add returned; it cannot miss the flip (the next flip needs its own next arrival).
// Memory ordering: __syncthreads orders the block's writes before thread 0's add, which is a
// release at gpu scope (cumulative: it publishes what the block's threads wrote); the polling
// load is an acquire at gpu scope, and the closing __syncthreads extends it to the block. Data
// written by other blocks is read with ld.global.cg (L2), never through a stale L1 line.
//
// kBounded = false (the kernels): waits for ever; a cooperative launch runs every block at once
// or refuses, so every block arrives. kBounded = true (the microbenchmark): thread 0 gives up
// once %globaltimer passes deadline_ns and the call returns false in every thread of the block,
// so that a wrong assumption ends in an error report, not a stuck GPU.
template <bool kBounded = false>
__device__ __forceinline__ bool grid_barrier(unsigned int* word, unsigned long long deadline_ns = 0) {
  __syncthreads();
  int late = 0;
  if (threadIdx.x == 0) {
    const unsigned int add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    unsigned int old, now;
    asm volatile("atom.add.release.gpu.u32 %0,[%1],%2;" : "=r"(old) : "l"(word), "r"(add) : "memory");
    for (;;) {
      asm volatile("ld.acquire.gpu.u32 %0,[%1];" : "=r"(now) : "l"(word) : "memory");
      if ((old ^ now) & 0x80000000u) break;
      if (kBounded && globaltimer_ns() > deadline_ns) {
        late = 1;
        break;
      }
      __nanosleep(20);
    }
#else
    __threadfence();
    const unsigned int old = atomicAdd(word, add);
    while (!((old ^ *reinterpret_cast<volatile unsigned int*>(word)) & 0x80000000u)) {
      if (kBounded && globaltimer_ns() > deadline_ns) {
        late = 1;
        break;
      }
    }
    __threadfence();
#endif
  }
  if (kBounded) return __syncthreads_or(late) == 0;
  __syncthreads();
  return true;
}

}  // namespace fastsrnn
