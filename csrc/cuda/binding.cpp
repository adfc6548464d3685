// pybind11 binding of the persistent CUDA sample-frame kernel: torch tensors -> sample_frame.cu.
// Built only on a machine with CUDA (fastsrnn/backends/cuda.py, through fastsrnn.build).
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "sample_frame.cuh"

namespace {

// Same contract as fastsrnn/ops/sample_frame.py:sample_frame_ref. Samples are not range-checked
// (that would synchronise with the host); the kernel clamps them when it indexes the table.
void sample_frame(const at::Tensor& table, const at::Tensor& cond, const at::Tensor& w3, const at::Tensor& b3,
                  const at::Tensor& wo, const at::Tensor& bo, at::Tensor& window, const at::Tensor& uniforms,
                  const at::Tensor& inv_temperature, bool argmax, at::Tensor& out,
                  const c10::optional<at::Tensor>& forced, const c10::optional<at::Tensor>& logits_out,
                  bool cooperative) {
  // Arguments (dtypes, shapes, layout, one device) are checked once, in Python, by
  // fastsrnn/ops/sample_frame.py:check_sample_frame_args before any launcher calls this.
  const int64_t F = table.size(0), Q = table.size(1), H = table.size(2), B = cond.size(0);
  const auto wdt = table.scalar_type();
  const auto dev = table.device();
  const c10::cuda::CUDAGuard guard(dev);
  // Scratch from the caching allocator (a CUDA graph's private pool while capturing).
  auto workspace = at::empty({static_cast<int64_t>(fastsrnn::sample_frame_workspace_floats(B, H, Q))},
                             cond.options());
  auto barrier = at::empty({1}, cond.options().dtype(at::kInt));
  fastsrnn::SampleFrameParams p{};
  p.table = table.data_ptr();
  p.cond = cond.data_ptr<float>();
  p.w3 = w3.data_ptr();
  p.b3 = b3.data_ptr<float>();
  p.wo = wo.data_ptr();
  p.bo = bo.data_ptr<float>();
  p.window = window.data_ptr<int64_t>();
  p.uniforms = uniforms.data_ptr<float>();
  p.inv_temperature = inv_temperature.data_ptr<float>();
  p.out = out.data_ptr<int64_t>();
  p.forced = forced ? forced->data_ptr<int64_t>() : nullptr;
  p.logits_out = logits_out ? logits_out->data_ptr<float>() : nullptr;
  p.workspace = workspace.data_ptr<float>();
  p.barrier = reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
  p.B = static_cast<int>(B);
  p.F = static_cast<int>(F);
  p.Q = static_cast<int>(Q);
  p.H = static_cast<int>(H);
  p.bf16 = wdt == at::kBFloat16;
  p.argmax = argmax;
  const char* err = fastsrnn::sample_frame_launch(p, c10::cuda::getCurrentCUDAStream(), cooperative);
  TORCH_CHECK(err == nullptr, err);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsrnn: persistent CUDA sample-frame kernel (csrc/cuda/sample_frame.cu)";
  m.def("sample_frame", &sample_frame, "All F sample steps of a frame in one persistent launch",
        py::arg("table"), py::arg("cond"), py::arg("w3"), py::arg("b3"), py::arg("wo"), py::arg("bo"),
        py::arg("window"), py::arg("uniforms"), py::arg("inv_temperature"), py::arg("argmax"), py::arg("out"),
        py::arg("forced") = py::none(), py::arg("logits_out") = py::none(), py::arg("cooperative") = true);
}
