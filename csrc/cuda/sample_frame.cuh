// The persistent CUDA sample-frame kernel: interface (no torch here; binding.cpp adapts tensors).
//
// One launch runs all F sample steps of a frame for B sequences. Its eager twin and
// specification is fastsrnn/ops/sample_frame.py:sample_frame_ref. Every array is dense,
// row-major and on the current device. Shapes: B batch, F frame size, Q levels, H hidden.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace fastsrnn {

struct SampleFrameParams {
  const void* table;              // (F, Q, H) float32, or bfloat16 bits when bf16
  const float* cond;              // (B, F, H): W2 c_j + b2
  const void* w3;                 // (H, H) float32 or bfloat16 bits
  const float* b3;                // (H,)
  const void* wo;                 // (Q, H) float32 or bfloat16 bits
  const float* bo;                // (Q,)
  int64_t* window;                // (B, F) the last F samples; updated in place
  const float* uniforms;          // (B, F) in [0, 1)
  const float* inv_temperature;   // (B,)
  int64_t* out;                   // (B, F) drawn samples
  const int64_t* forced;          // (B, F) samples fed instead of drawn, or nullptr
  float* logits_out;              // (B, F, Q) or nullptr
  float* workspace;               // sample_frame_workspace_floats(B, H, Q) floats, any contents
  unsigned int* barrier;          // one counter for the grid barrier (zeroed by the launcher)
  int B, F, Q, H;
  bool bf16;                      // table, w3, wo hold bfloat16 bits (fp32 accumulation)
  bool argmax;                    // draw the first maximum instead of sampling
};

// Floats of scratch a launch needs: a2 (B, H), a3 (B, H), logits (B, Q).
size_t sample_frame_workspace_floats(int B, int H, int Q);

// Launch on `stream`. cooperative: use cudaLaunchCooperativeKernel (the driver guarantees that
// every block is resident, which the grid barrier needs); otherwise a plain launch sized so
// that all blocks fit at once (for stream capture into a CUDA graph).
// Returns nullptr on success, else a message naming the failed call or limit.
const char* sample_frame_launch(const SampleFrameParams& p, cudaStream_t stream, bool cooperative);

}  // namespace fastsrnn
