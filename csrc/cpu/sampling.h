// How a sample is drawn: the C++ mirror of fastsrnn/ops/sampling.py::Sampling (the CUDA mirror is
// SamplingParams in csrc/cuda/sample_frame.cuh). One value, read from the Python object once per
// call; the draw (sample_frame.cpp: draw) is its only reader.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace fastsrnn {

struct SamplingParams {
  const float* inv_temperature;  // (B,) 1 / temperature per sequence
  bool argmax;                   // the first maximum instead of a draw
  int64_t top_k;                 // keep the k highest logits (ties kept); 0 = off
  float top_p;                   // then the fewest highest levels with >= top_p of the mass; 1 = off
};

// The fields of a fastsrnn.ops.sampling.Sampling (its tensor checked in Python: (B,) float32,
// dense, on the CPU). Needs the GIL; `keep` holds the tensor while the kernel reads it.
inline SamplingParams sampling_params(const py::handle& s, at::Tensor& keep) {
  keep = s.attr("inv_temperature").cast<at::Tensor>();
  SamplingParams p{};
  p.inv_temperature = keep.data_ptr<float>();
  p.argmax = s.attr("argmax").cast<bool>();
  p.top_k = s.attr("top_k").cast<int64_t>();
  p.top_p = s.attr("top_p").cast<float>();
  return p;
}

}  // namespace fastsrnn
