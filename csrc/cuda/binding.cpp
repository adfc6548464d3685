// pybind11 binding of the persistent CUDA sample-frame kernel: torch tensors -> sample_frame.cu.
// Built only on a machine with CUDA (fastsrnn/backends/cuda.py, through fastsrnn.ops.build).
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <tuple>

#include "sample_frame.cuh"

namespace {

// The workspace of callers that pass none: one per (device, B, H, Q), zeroed once when created
// and kept for the life of the process (never freed: a captured CUDA graph holds its address).
// It is created outside stream capture only (zeroing it inside a capture would happen at replay,
// too late for launches before it); launches that share one must be ordered on one stream.
at::Tensor cached_workspace(const at::Device& dev, int64_t B, int64_t H, int64_t Q, cudaStream_t stream) {
  static std::mutex mu;
  static auto* cache = new std::map<std::tuple<int, int64_t, int64_t, int64_t>, at::Tensor>();  // never destroyed
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(static_cast<int>(dev.index()), B, H, Q);
  const auto it = cache->find(key);
  if (it != cache->end()) return it->second;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  TORCH_CHECK(cudaStreamIsCapturing(stream, &status) == cudaSuccess && status == cudaStreamCaptureStatusNone,
              "sample_frame (CUDA): no workspace for B=", B, " H=", H, " Q=", Q, " on ", dev,
              " yet, and the stream is capturing a CUDA graph: run this shape once outside capture first, "
              "or pass workspace=");
  const auto bytes = static_cast<int64_t>(fastsrnn::sample_frame_workspace_bytes(B, H, Q));
  auto ws = at::zeros({bytes}, at::TensorOptions().dtype(at::kByte).device(dev));
  cache->emplace(key, ws);
  return ws;
}

// The fields of a fastsrnn.ops.sampling.Sampling (its tensor checked in Python: (B,) float32, dense,
// on the table's device; the rest read by read_sampling); `keep` holds the tensor while the launch
// is enqueued.
fastsrnn::SamplingParams sampling_params(const py::handle& s, at::Tensor& keep) {
  keep = s.attr("inv_temperature").cast<at::Tensor>();
  return fastsrnn::read_sampling(keep.data_ptr<float>(), [&](const char* name, auto& field) {
    field = s.attr(name).cast<std::remove_reference_t<decltype(field)>>();
  });
}

// Same contract as fastsrnn/ops/sample_frame.py:sample_frame_ref. Arguments (dtypes, shapes,
// layout, one device, the workspace's size) are checked once, in Python, by
// fastsrnn/ops/sample_frame.py before this is called. Samples are not range-checked (that would
// synchronise with the host); the kernel clamps them when it indexes the table.
void sample_frame(const at::Tensor& table, const at::Tensor& cond, const at::Tensor& w3, const at::Tensor& b3,
                  const at::Tensor& wo, const at::Tensor& bo, at::Tensor& window, const at::Tensor& uniforms,
                  const py::object& sampling, at::Tensor& out,
                  const c10::optional<at::Tensor>& forced, const c10::optional<at::Tensor>& logits_out,
                  const c10::optional<at::Tensor>& workspace, int64_t max_blocks) {
  const int64_t F = table.size(0), Q = table.size(1), H = table.size(2), B = cond.size(0);
  const c10::cuda::CUDAGuard guard(table.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor ws = workspace ? *workspace : cached_workspace(table.device(), B, H, Q, stream);
  fastsrnn::SampleFrameParams p{};
  p.table = table.data_ptr();
  p.cond = cond.data_ptr<float>();
  p.w3 = w3.data_ptr();
  p.b3 = b3.data_ptr<float>();
  p.wo = wo.data_ptr();
  p.bo = bo.data_ptr<float>();
  p.window = window.data_ptr<int64_t>();
  p.uniforms = uniforms.data_ptr<float>();
  at::Tensor keep;
  p.sampling = sampling_params(sampling, keep);
  p.out = out.data_ptr<int64_t>();
  p.forced = forced ? forced->data_ptr<int64_t>() : nullptr;
  p.logits_out = logits_out ? logits_out->data_ptr<float>() : nullptr;
  p.workspace = ws.data_ptr();
  p.B = static_cast<int>(B);
  p.F = static_cast<int>(F);
  p.Q = static_cast<int>(Q);
  p.H = static_cast<int>(H);
  p.bf16 = table.scalar_type() == at::kBFloat16;
  const char* err = fastsrnn::sample_frame_launch(p, stream, static_cast<int>(max_blocks));
  TORCH_CHECK(err == nullptr, err);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsrnn: persistent CUDA sample-frame kernel (csrc/cuda/sample_frame.cu)";
  m.def("sample_frame", &sample_frame, "All F sample steps of a frame in one cooperative persistent launch",
        py::arg("table"), py::arg("cond"), py::arg("w3"), py::arg("b3"), py::arg("wo"), py::arg("bo"),
        py::arg("window"), py::arg("uniforms"), py::arg("sampling"), py::arg("out"),
        py::arg("forced") = py::none(), py::arg("logits_out") = py::none(), py::arg("workspace") = py::none(),
        py::arg("max_blocks") = 0);
  m.def("workspace_bytes", [](int64_t B, int64_t H, int64_t Q) {
    return static_cast<int64_t>(fastsrnn::sample_frame_workspace_bytes(static_cast<int>(B), static_cast<int>(H),
                                                                       static_cast<int>(Q)));
  }, "Bytes of the zero-initialised workspace a launch for (B, H, Q) needs", py::arg("B"), py::arg("H"),
        py::arg("Q"));
}
