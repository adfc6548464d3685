// pybind11 binding of the persistent CUDA sample-frame kernel: torch tensors -> sample_frame.cu.
// Built only on a machine with CUDA (fastsrnn/backends/cuda.py, through fastsrnn.build).
#include <torch/extension.h>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "sample_frame.cuh"

namespace {

void check(const at::Tensor& t, const char* name, at::ScalarType dtype, const std::vector<int64_t>& shape,
           const at::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "sample_frame_cuda: ", name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes().vec() == shape, "sample_frame_cuda: ", name, " must have shape ",
                    at::IntArrayRef(shape), ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), "sample_frame_cuda: ", name, " must be contiguous");
  TORCH_CHECK_VALUE(t.device() == device, "sample_frame_cuda: ", name, " is on ", t.device(), ", the table on ",
                    device);
}

// Same contract as fastsrnn/backends/reference.py:sample_frame_ref. Samples are not range-checked
// (that would synchronise with the host); the kernel clamps them when it indexes the table.
void sample_frame(const at::Tensor& table, const at::Tensor& cond, const at::Tensor& w3, const at::Tensor& b3,
                  const at::Tensor& wo, const at::Tensor& bo, at::Tensor& window, const at::Tensor& uniforms,
                  const at::Tensor& inv_temperature, bool argmax, at::Tensor& out,
                  const c10::optional<at::Tensor>& forced, const c10::optional<at::Tensor>& logits_out,
                  bool cooperative) {
  TORCH_CHECK_VALUE(table.dim() == 3, "sample_frame_cuda: table must be (F, Q, H), got shape ", table.sizes());
  TORCH_CHECK_VALUE(table.is_cuda(), "sample_frame_cuda: table must be on a CUDA device, got ", table.device());
  TORCH_CHECK_VALUE(cond.dim() == 3, "sample_frame_cuda: cond must be (B, F, H), got shape ", cond.sizes());
  const int64_t F = table.size(0), Q = table.size(1), H = table.size(2), B = cond.size(0);
  const auto wdt = table.scalar_type();
  TORCH_CHECK_TYPE(wdt == at::kFloat || wdt == at::kBFloat16,
                   "sample_frame_cuda: table must be float32 or bfloat16, got ", wdt);
  const auto dev = table.device();
  check(table, "table", wdt, {F, Q, H}, dev);
  check(cond, "cond", at::kFloat, {B, F, H}, dev);
  check(w3, "w3", wdt, {H, H}, dev);
  check(b3, "b3", at::kFloat, {H}, dev);
  check(wo, "wo", wdt, {Q, H}, dev);
  check(bo, "bo", at::kFloat, {Q}, dev);
  check(window, "window", at::kLong, {B, F}, dev);
  check(uniforms, "uniforms", at::kFloat, {B, F}, dev);
  check(inv_temperature, "inv_temperature", at::kFloat, {B}, dev);
  check(out, "out", at::kLong, {B, F}, dev);
  if (forced) check(*forced, "forced", at::kLong, {B, F}, dev);
  if (logits_out) check(*logits_out, "logits_out", at::kFloat, {B, F, Q}, dev);

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
