// The persistent CUDA sample-frame kernel: interface (no torch here; binding.cpp adapts tensors).
//
// One launch runs all F sample steps of a frame for B sequences. Its eager twin and
// specification is fastsrnn/ops/sample_frame.py:sample_frame_ref. Every array is dense,
// row-major and on the current device. Shapes: B batch, F frame size, Q levels, H hidden.
//
// The launch-size computation (sample_frame_launch_plan) is host-only arithmetic defined here,
// so that a host program (tests/test_cuda_sources.py) can print the plan for a device it
// does not have.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>

#include <cuda_runtime.h>

namespace fastsrnn {

constexpr int kSfThreads = 256;                // threads per block (8 warps)
constexpr int kSfWarps = kSfThreads / 32;
constexpr int kSfTile = 8;                     // sequences per pass over a block's weight rows (registers)
constexpr int kSfRowsPerBlock = 8;             // W3 rows per block the grid is sized for (see the plan)
constexpr size_t kSfWorkspaceHeader = 128;     // bytes before the activations: the grid barrier's word

// How a sample is drawn: the CUDA mirror of fastsrnn/ops/sampling.py::Sampling (the C++ one is
// csrc/cpu/sampling.h); read_sampling fills it, warp_draw reads it.
struct SamplingParams {
  const float* inv_temperature;   // (B,) 1 / temperature per sequence
  bool argmax;                    // the first maximum instead of a draw
  int top_k;                      // keep the k highest logits (ties kept); 0 = off
  float top_p;                    // then the fewest highest levels with >= top_p of the mass; 1 = off
};

// A SamplingParams from a fastsrnn.ops.sampling.Sampling: inv_temperature is its tensor's device
// pointer, get(name, field) reads the object's attribute `name` into `field` (binding.cpp passes
// pybind11's). A new field is read here, beside its declaration.
template <typename Get>
inline SamplingParams read_sampling(const float* inv_temperature, Get&& get) {
  SamplingParams p{};
  p.inv_temperature = inv_temperature;
  get("argmax", p.argmax);
  get("top_k", p.top_k);
  get("top_p", p.top_p);
  return p;
}

struct SampleFrameParams {
  const void* table;              // (F, Q, H) float32, or bfloat16 bits when bf16
  const float* cond;              // (B, F, H): W2 c_j + b2
  const void* w3;                 // (H, H) float32 or bfloat16 bits
  const float* b3;                // (H,)
  const void* wo;                 // (Q, H) float32 or bfloat16 bits
  const float* bo;                // (Q,)
  int64_t* window;                // (B, F) the last F samples; updated in place
  const float* uniforms;          // (B, F) in [0, 1)
  SamplingParams sampling;
  int64_t* out;                   // (B, F) drawn samples
  const int64_t* forced;          // (B, F) samples fed instead of drawn, or nullptr
  float* logits_out;              // (B, F, Q) or nullptr
  // sample_frame_workspace_bytes(B, H, Q) bytes, 16-byte aligned, ZEROED ONCE when allocated and
  // then owned by this op: its first word is the grid barrier, which every launch leaves as it
  // found it (no memset per launch). Launches that share a workspace must be stream-ordered.
  void* workspace;
  int B, F, Q, H;
  bool bf16;                      // table, w3, wo hold bfloat16 bits (fp32 accumulation)
  // Set by sample_frame_launch from the pointers (callers leave them false): 16-byte vector
  // loads of the weight rows / table rows are legal.
  bool vec_w3, vec_wo, vec_table;
};

// Bytes of workspace: the barrier header, P (B, Hp), a3 (B, Hp), logits (B, Qp) as float32,
// with Hp = H rounded up to 8 and Qp = Q rounded up to 4 (16-byte aligned rows).
inline size_t sample_frame_workspace_bytes(int B, int H, int Q) {
  const size_t hp = (static_cast<size_t>(H) + 7) / 8 * 8, qp = (static_cast<size_t>(Q) + 3) / 4 * 4;
  return kSfWorkspaceHeader + 4 * static_cast<size_t>(B) * (2 * hp + qp);
}

// What the plan needs to know about a device (cudaDeviceGetAttribute; cached per device).
struct SampleFrameDevice {
  int sm_count;                 // cudaDevAttrMultiProcessorCount
  int smem_per_block;           // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smem_per_sm;              // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int reserved_smem_per_block;  // cudaDevAttrReservedSharedMemoryPerBlock
  int regs_per_sm;              // cudaDevAttrMaxRegistersPerMultiprocessor
  int max_threads_per_sm;       // cudaDevAttrMaxThreadsPerMultiProcessor
  int max_blocks_per_sm;        // cudaDevAttrMaxBlocksPerMultiprocessor
};

// Grid, work split and dynamic shared-memory layout of one launch (kernel argument).
struct SampleFrameShape {
  int grid;         // blocks (all co-resident: the kernel synchronises the grid)
  int rows3;        // W3 rows (= a3 and P columns) per block; the last blocks may have fewer or none
  int rowso;        // Wo rows (= logits) per block
  int split3;       // warps per W3 row (K split into that many segments), 1 when rows3 >= 8
  int splito;       // warps per Wo row
  int tile;         // sequences per pass (<= kSfTile)
  int hp, qp;       // H rounded up to 8, Q rounded up to 4 (row strides of smem and workspace)
  int stage;        // floats per warp for one sequence's draw: its logits (Q + Q/32 + 1, padded), then keys
  unsigned off_wo, off_act, off_stage, off_ring, off_red;  // byte offsets into dynamic smem
};

struct SampleFrameLaunchPlan {
  SampleFrameShape shape;
  size_t smem;          // dynamic shared memory per block
  int blocks_per_sm;    // blocks one SM holds at this smem and register use (arithmetic estimate)
  int resident;         // sm_count * blocks_per_sm: the most blocks that can run at once
  char error[400];      // empty when the plan is usable, else why not (with the numbers)
};

namespace detail {
inline size_t sf_align16(size_t n) { return (n + 15) & ~static_cast<size_t>(15); }
inline int sf_ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int sf_split(int rows) {  // warps per row: the largest power of two with rows * split <= kSfWarps
  int s = 1;
  while (rows * s * 2 <= kSfWarps) s *= 2;
  return s;
}
}  // namespace detail

// The launch of one frame for B sequences on a device with `dev`'s resources, for a kernel that
// uses `regs_per_thread` registers and `static_smem` bytes of static shared memory (ptxas -v, or
// cudaFuncGetAttributes). max_blocks > 0 caps the grid (tuning); 0 = the default: enough blocks
// for kSfRowsPerBlock W3 rows each, at most one per SM. Host arithmetic only: no CUDA call.
inline SampleFrameLaunchPlan sample_frame_launch_plan(int B, int F, int Q, int H, bool bf16,
                                                      const SampleFrameDevice& dev, int regs_per_thread,
                                                      int static_smem, int max_blocks) {
  using namespace detail;
  SampleFrameLaunchPlan plan{};
  SampleFrameShape& s = plan.shape;
  if (B < 1 || F < 1 || H < 1 || Q < 2 || dev.sm_count < 1) {
    std::snprintf(plan.error, sizeof(plan.error), "sample_frame (CUDA): need B, F, H >= 1 and Q >= 2 (and SMs)");
    return plan;
  }
  const int wsize = bf16 ? 2 : 4;
  int target = dev.sm_count < sf_ceil_div(H, kSfRowsPerBlock) ? dev.sm_count : sf_ceil_div(H, kSfRowsPerBlock);
  if (max_blocks > 0 && max_blocks < target) target = max_blocks;
  s.rows3 = sf_ceil_div(H, target);
  s.grid = sf_ceil_div(H, s.rows3);  // no block without W3 rows
  s.rowso = sf_ceil_div(Q, s.grid);
  s.split3 = sf_split(s.rows3);
  s.splito = sf_split(s.rowso);
  s.hp = (H + 7) / 8 * 8;
  s.qp = (Q + 3) / 4 * 4;
  s.stage = 2 * ((Q + Q / 32 + 1 + 3) / 4 * 4);  // the logits' row, then the cut-offs' keys
  s.tile = B < kSfTile ? B : kSfTile;
  for (;; --s.tile) {
    size_t off = sf_align16(static_cast<size_t>(s.rows3) * s.hp * wsize);
    s.off_wo = static_cast<unsigned>(off);
    off += sf_align16(static_cast<size_t>(s.rowso) * s.hp * wsize);
    s.off_act = static_cast<unsigned>(off);
    off += sf_align16(static_cast<size_t>(s.tile) * s.hp * 4);
    s.off_stage = static_cast<unsigned>(off);
    off += sf_align16(static_cast<size_t>(kSfWarps) * s.stage * 4);
    s.off_ring = static_cast<unsigned>(off);
    off += sf_align16(static_cast<size_t>(B) * F * 4);
    s.off_red = static_cast<unsigned>(off);
    plan.smem = off + static_cast<size_t>(kSfWarps) * kSfTile * 4;
    if (plan.smem + static_smem <= static_cast<size_t>(dev.smem_per_block) || s.tile == 1) break;
  }
  if (plan.smem + static_smem > static_cast<size_t>(dev.smem_per_block)) {
    std::snprintf(plan.error, sizeof(plan.error),
                  "sample_frame (CUDA): %d W3 rows + %d Wo rows of H=%d (%s) and the ring of B=%d x F=%d samples "
                  "need %zu + %d bytes of shared memory per block; this device allows %d per block on %d SMs "
                  "(use %sfewer sequences or the triton backend)",
                  s.rows3, s.rowso, H, bf16 ? "bf16" : "fp32", B, F, plan.smem, static_smem, dev.smem_per_block,
                  dev.sm_count, bf16 ? "" : "bf16 weights, ");
    return plan;
  }
  // Resident blocks per SM (the occupancy calculator's arithmetic, conservatively rounded).
  const int regs = (regs_per_thread + 7) / 8 * 8;
  int per_sm = dev.max_threads_per_sm / kSfThreads;
  if (dev.max_blocks_per_sm < per_sm) per_sm = dev.max_blocks_per_sm;
  const int by_regs = regs > 0 ? dev.regs_per_sm / (regs * kSfThreads) : per_sm;
  if (by_regs < per_sm) per_sm = by_regs;
  const size_t block_smem = plan.smem + static_smem + dev.reserved_smem_per_block;
  const int by_smem = static_cast<int>(static_cast<size_t>(dev.smem_per_sm) / block_smem);
  if (by_smem < per_sm) per_sm = by_smem;
  plan.blocks_per_sm = per_sm;
  plan.resident = per_sm * dev.sm_count;
  if (s.grid > plan.resident) {
    std::snprintf(plan.error, sizeof(plan.error),
                  "sample_frame (CUDA): the grid of %d blocks cannot be co-resident: %d SMs x %d blocks per SM "
                  "(%d registers x %d threads of %d per SM, %zu bytes of shared memory of %d per SM)",
                  s.grid, dev.sm_count, per_sm, regs_per_thread, kSfThreads, dev.regs_per_sm, block_smem,
                  dev.smem_per_sm);
  }
  return plan;
}

// Launch on `stream` as a cooperative launch (cudaLaunchKernelEx + cudaLaunchAttributeCooperative,
// which stream capture records as a cooperative kernel node): the driver runs it only with
// every block resident, or fails it, so the grid barriers cannot wait on a block that never runs.
// max_blocks: see sample_frame_launch_plan (0 = default).
// Returns nullptr on success, else a message naming the failed call or limit (no launch then).
const char* sample_frame_launch(const SampleFrameParams& p, cudaStream_t stream, int max_blocks);

}  // namespace fastsrnn
