// Fused CPU sample-frame kernel: the F sample steps of one frame for B sequences in one call.
//
// Same contract as fastsrnn/ops/sample_frame.py::sample_frame_ref (the spec). Step j:
//   a2 = relu(cond[:, j] + sum_k table[k, window_k])   F row gathers from the (F, Q, H) table
//   a3 = relu(W3 a2 + b3); logits = Wo a3 + bo         the only matrix products left
//   x  = forced[:, j] or the inverse-CDF draw of fastsrnn/ops/sampling.py::sample_ref
//   out[:, j] = x; window slides; logits_out[:, j] = logits when given.
//
// Threads: one OpenMP team per call (torch's own libgomp, so no second thread pool), kept for
// all F steps, with barriers between the phases of a step. The rows of W3 and Wo are split
// across threads (so that at B = 1 the two matrix-vector products use every core, and each
// core streams only its share of the weights). The cheap per-sequence phases (gather, draw)
// are either done redundantly by every thread (small B: saves two barriers per step) or split
// by sequence (large B).
#include <torch/extension.h>
#include <omp.h>

#include <vector>

#include "frame_step.h"
#include "linear.h"
#include "sampling.h"
#include "simd.h"

namespace fastsrnn {
namespace {

template <typename T>
struct Problem {
  const T* table;  // (F, Q, H)
  const float* cond;  // (B, F, H)
  const T* w3;  // (H, H)
  const float* b3;  // (H,)
  const T* wo;  // (Q, H)
  const float* bo;  // (Q,)
  int64_t* window;  // (B, F)
  const float* uniforms;  // (B, F)
  SamplingParams sampling;
  const int64_t* forced;  // (B, F) or null
  int64_t* out;  // (B, F)
  float* logits_out;  // (B, F, Q) or null
  int64_t B, F, Q, H;
};

// a2 = relu(cond + sum_k table[k, hist[k]]) for one sequence; hist points at its F samples.
// The F rows are summed first, then cond is added (the reference's order).
template <typename T>
inline void gather_a2(const Problem<T>& p, const int32_t* hist, const float* cond, float* a2) {
  const int64_t H = p.H, QH = p.Q * H;
  int64_t h = 0;
  for (; h + Vec::W <= H; h += Vec::W) {
    Vec acc = Vec::load(p.table + hist[0] * H + h);
    for (int64_t k = 1; k < p.F; ++k) acc = Vec::add(acc, Vec::load(p.table + k * QH + hist[k] * H + h));
    Vec::add(acc, Vec::load(cond + h)).relu().store(a2 + h);
  }
  for (; h < H; ++h) {  // tail of H not a multiple of the vector width
    float acc = to_float(p.table[hist[0] * H + h]);
    for (int64_t k = 1; k < p.F; ++k) acc += to_float(p.table[k * QH + hist[k] * H + h]);
    a2[h] = std::max(acc + cond[h], 0.0f);
  }
}

// sample_ref for sequence b: z = (l - max) * inv_t; the running sum of exp(z) accumulated in
// double and rounded to fp32 per element (as torch.cumsum does on the CPU); the first index
// whose sum exceeds u * total, clamped to Q - 1. argmax: the first maximum. The running sum is
// walked in blocks of 16 (vectorised double sums), then element by element inside the block
// that crosses: double rounding makes the block order invisible in fp32 but at 1e-16 ties.
// The float32 bits as an unsigned key in the floats' order (-0 just below +0): sampling.order_key.
inline uint32_t order_key(float x) {
  uint32_t v;
  std::memcpy(&v, &x, sizeof v);
  return (v >> 31) ? ~v : (v | 0x80000000u);
}

// The largest t with pred(t), bit by bit from the top (pred true at 0 and monotone).
template <typename Pred>
inline uint32_t largest(Pred pred) {
  uint32_t t = 0;
  for (int bit = 31; bit >= 0; --bit)
    if (pred(t | (1u << bit))) t |= 1u << bit;
  return t;
}

// sampling.cut_threshold: zero e[i] for the levels below the top-k / top-p threshold. Counts
// and sums (double, index order) over the keys; key: Q of scratch.
inline void cut(const float* logits, int64_t Q, const SamplingParams& s, float* e, uint32_t* key) {
  for (int64_t i = 0; i < Q; ++i) key[i] = order_key(logits[i]);
  uint32_t t = 0;
  if (s.top_k > 0)
    t = largest([&](uint32_t c) {
      int64_t n = 0;
      for (int64_t i = 0; i < Q; ++i) n += key[i] >= c;
      return n >= s.top_k;
    });
  if (s.top_p < 1.0f) {
    auto mass = [&](uint32_t c) {
      double m = 0.0;
      for (int64_t i = 0; i < Q; ++i) m += key[i] >= c ? static_cast<double>(e[i]) : 0.0;
      return m;
    };
    const double target = static_cast<double>(s.top_p) * mass(t);
    t = largest([&](uint32_t c) { return mass(c) >= target; });
  }
  for (int64_t i = 0; i < Q; ++i)
    if (key[i] < t) e[i] = 0.0f;
}

inline int64_t draw(const float* logits, int64_t Q, float u, const SamplingParams& s, int64_t b, float* e,
                    uint32_t* key) {
  float m = logits[0];
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < Q; ++i) m = std::max(m, logits[i]);
  if (s.argmax) {
    for (int64_t i = 0; i < Q; ++i)
      if (logits[i] == m) return i;
    return 0;  // only when logits hold NaN
  }
  const float inv_t = s.inv_temperature[b];
#pragma omp simd
  for (int64_t i = 0; i < Q; ++i) e[i] = exp_nonpos((logits[i] - m) * inv_t);
  if (s.top_k > 0 || s.top_p < 1.0f) cut(logits, Q, s, e, key);
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < Q; ++i) total += e[i];
  const float threshold = u * static_cast<float>(total);
  constexpr int64_t kBlock = 16;
  double run = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= Q; i += kBlock) {
    double block = 0.0;
#pragma omp simd reduction(+ : block)
    for (int64_t k = 0; k < kBlock; ++k) block += e[i + k];
    if (static_cast<float>(run + block) > threshold) break;
    run += block;
  }
  for (; i < Q; ++i)
    if (static_cast<float>(run += e[i]) > threshold) return i;
  return Q - 1;
}

struct Scratch {
  std::vector<int32_t> hist;  // per copy (B, 2F): the frame's window then its F new samples
  std::vector<float> a2;  // per copy (B, H)
  std::vector<float> a3;  // (B, H) shared
  std::vector<float> logits;  // (B, Q) shared
  std::vector<float> cdf;  // per thread (Q,)
  std::vector<uint32_t> keys;  // per thread (Q,): the cut-offs' keys
};

// The body every thread of the team runs. `redundant`: every thread gathers and draws for all
// sequences in its own copy of hist/a2 (identical arithmetic, so identical draws); otherwise
// thread t owns sequences [s0, s1) and the shared copy.
template <typename T>
void frame_body(const Problem<T>& p, Scratch& sc, bool redundant, int tid, int nth) {
  const int64_t B = p.B, F = p.F, H = p.H, Q = p.Q;
  int64_t s0 = 0, s1 = B, h0, h1, q0, q1;
  if (!redundant) split(B, 1, tid, nth, s0, s1);
  split(H, kTileRows, tid, nth, h0, h1);
  split(Q, kTileRows, tid, nth, q0, q1);
  const int copy = redundant ? tid : 0;
  int32_t* hist = sc.hist.data() + copy * B * 2 * F;
  float* a2 = sc.a2.data() + copy * B * H;
  float* cdf = sc.cdf.data() + tid * Q;
  uint32_t* keys = sc.keys.data() + tid * Q;
  const bool writer = !redundant || tid == 0;
  for (int64_t j = 0; j < F; ++j) {
    for (int64_t b = s0; b < s1; ++b) gather_a2(p, hist + b * 2 * F + j, p.cond + (b * F + j) * H, a2 + b * H);
    if (!redundant) {
#pragma omp barrier
    }
    linear_rows(p.w3, p.b3, a2, B, H, H, h0, h1, sc.a3.data(), Epilogue::kRelu);
#pragma omp barrier
    linear_rows(p.wo, p.bo, sc.a3.data(), B, H, Q, q0, q1, sc.logits.data(), Epilogue::kStore);
#pragma omp barrier
    for (int64_t b = s0; b < s1; ++b) {
      const float* lg = sc.logits.data() + b * Q;
      const int64_t x = p.forced ? p.forced[b * F + j]
                                 : draw(lg, Q, p.uniforms[b * F + j], p.sampling, b, cdf, keys);
      hist[b * 2 * F + F + j] = static_cast<int32_t>(x);
      if (!writer) continue;
      p.out[b * F + j] = x;
      if (p.logits_out) std::memcpy(p.logits_out + (b * F + j) * Q, lg, Q * sizeof(float));
    }
  }
  if (writer)  // after F steps the window is exactly the frame's F new samples
    for (int64_t b = s0; b < s1; ++b)
      for (int64_t k = 0; k < F; ++k) p.window[b * F + k] = hist[b * 2 * F + F + k];
}

// Threads worth using: a parallel region and its barriers cost microseconds, so tiny products
// (H = 128 at B = 1: ~50 k multiply-adds per step) run on one thread.
int pick_threads(int64_t B, int64_t H, int64_t Q, int64_t requested) {
  const int avail = requested > 0 ? static_cast<int>(requested) : at::get_num_threads();
  const int64_t macs = B * H * (H + Q);
  const int64_t per_thread = 96 * 1024;  // below this, barriers cost more than they save
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(avail, macs / per_thread)));
}

template <typename T>
void run(const Problem<T>& p, int64_t num_threads) {
  const int64_t B = p.B, F = p.F, H = p.H, Q = p.Q;
  const int nt = pick_threads(B, H, Q, num_threads);
  const bool redundant = nt > 1 && B < 2 * nt;
  const int copies = redundant ? nt : 1;
  Scratch sc;
  sc.hist.resize(copies * B * 2 * F);
  sc.a2.resize(copies * B * H);
  sc.a3.resize(B * H);
  sc.logits.resize(B * Q);
  sc.cdf.resize(nt * Q);
  sc.keys.resize(nt * Q);
  for (int c = 0; c < copies; ++c)
    for (int64_t i = 0; i < B * F; ++i)
      sc.hist[(c * B + i / F) * 2 * F + i % F] = static_cast<int32_t>(p.window[i]);
  if (nt == 1) {
    frame_body(p, sc, false, 0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    // The team may be smaller than asked (nested parallelism): split by the real size.
    const int nth = omp_get_num_threads();
    frame_body(p, sc, redundant && nth > 1, omp_get_thread_num(), nth);
  }
}

}  // namespace

void sample_frame(const at::Tensor& table, const at::Tensor& cond, const at::Tensor& w3, const at::Tensor& b3,
                  const at::Tensor& wo, const at::Tensor& bo, at::Tensor& window, const at::Tensor& uniforms,
                  const SamplingParams& sampling, at::Tensor& out,
                  const c10::optional<at::Tensor>& forced, const c10::optional<at::Tensor>& logits_out,
                  int64_t num_threads) {
  // Arguments (dtypes, shapes, layout, device, sample range) are checked once, in Python, by
  // fastsrnn/ops/sample_frame.py:check_sample_frame_args before any launcher calls this.
  const int64_t F = table.size(0), Q = table.size(1), H = table.size(2), B = window.size(0);
  const auto wdt = table.scalar_type();
  if (B == 0) return;

  auto fill = [&](auto* typed) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
    Problem<T> p{reinterpret_cast<const T*>(table.data_ptr()), cond.data_ptr<float>(),
                 reinterpret_cast<const T*>(w3.data_ptr()), b3.data_ptr<float>(),
                 reinterpret_cast<const T*>(wo.data_ptr()), bo.data_ptr<float>(),
                 window.data_ptr<int64_t>(), uniforms.data_ptr<float>(), sampling,
                 forced ? forced->data_ptr<int64_t>() : nullptr, out.data_ptr<int64_t>(),
                 logits_out ? logits_out->data_ptr<float>() : nullptr, B, F, Q, H};
    run(p, num_threads);
  };
  if (wdt == at::kFloat) fill(static_cast<float*>(nullptr));
  else fill(static_cast<bf16_bits*>(nullptr));
}

// y = x W^T + b for the frame step at small B: x (B, K) fp32, W (N, K) fp32, bf16 or int8 (with
// scale (N,) fp32: y = scale * (x q^T) + b), b (N,) fp32 -> (B, N) fp32. At B = 1 the frame
// tier is a chain of matrix-vector products over 235 MB of weights, DRAM-bound; torch's gemv
// reaches about half the bandwidth that a plain row-split stream (this) does. Activations stay
// fp32 whatever the weights.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t num_threads,
                  const c10::optional<at::Tensor>& scale) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w.dim() == 2, "linear: x must be (B, K) and w (N, K), got ", x.sizes(), " and ", w.sizes());
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  const auto wdt = w.scalar_type();
  TORCH_CHECK_TYPE(wdt == at::kFloat || wdt == at::kBFloat16 || wdt == at::kChar,
                   "linear: w must be float32, bfloat16 or int8, got ", wdt);
  check(x, "x", at::kFloat, {B, K}, "linear");
  check(w, "w", wdt, {N, K}, "linear");
  check(b, "b", at::kFloat, {N}, "linear");
  const bool q8 = wdt == at::kChar;
  TORCH_CHECK_VALUE(q8 == scale.has_value(), "linear: int8 w needs its per-row scale (N,), float w none");
  if (q8) check(*scale, "scale", at::kFloat, {N}, "linear");
  const float* sc = q8 ? scale->data_ptr<float>() : nullptr;
  at::Tensor y = at::empty({B, N}, x.options());
  const int avail = num_threads > 0 ? static_cast<int>(num_threads) : at::get_num_threads();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(avail, B * N * K / (256 * 1024))));
  auto body = [&](auto* typed, int tid, int nth) {
    using T = std::remove_pointer_t<decltype(typed)>;
    int64_t r0, r1;
    split(N, 32, tid, nth, r0, r1);
    linear_rows(reinterpret_cast<const T*>(w.data_ptr()), b.data_ptr<float>(), x.data_ptr<float>(), B, K, N,
                r0, r1, y.data_ptr<float>(), Epilogue::kStore, sc);
  };
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    if (wdt == at::kFloat) body(static_cast<float*>(nullptr), omp_get_thread_num(), omp_get_num_threads());
    else if (q8) body(static_cast<int8_t*>(nullptr), omp_get_thread_num(), omp_get_num_threads());
    else body(static_cast<bf16_bits*>(nullptr), omp_get_thread_num(), omp_get_num_threads());
  }
  return y;
}

}  // namespace fastsrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastsrnn fused CPU sample-frame kernel";
  m.attr("isa") = fastsrnn::kIsa;
  // Each op releases the GIL while it runs (its arguments are converted first): another Python
  // thread can then run, e.g. the next frame's recurrent products beside the sample steps.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  // sample_frame reads the Sampling's fields with the GIL held, then releases it.
  m.def("sample_frame",
        [](const at::Tensor& table, const at::Tensor& cond, const at::Tensor& w3, const at::Tensor& b3,
           const at::Tensor& wo, const at::Tensor& bo, at::Tensor& window, const at::Tensor& uniforms,
           const py::object& sampling, at::Tensor& out, const c10::optional<at::Tensor>& forced,
           const c10::optional<at::Tensor>& logits_out, int64_t num_threads) {
          at::Tensor keep;
          const fastsrnn::SamplingParams s = fastsrnn::sampling_params(sampling, keep);
          const py::gil_scoped_release released;
          fastsrnn::sample_frame(table, cond, w3, b3, wo, bo, window, uniforms, s, out, forced, logits_out,
                                 num_threads);
        },
        "F sample steps of one frame for B sequences (see fastsrnn.ops.sample_frame.sample_frame_ref)",
        py::arg("table"), py::arg("cond"), py::arg("w3"), py::arg("b3"), py::arg("wo"), py::arg("bo"),
        py::arg("window"), py::arg("uniforms"), py::arg("sampling"), py::arg("out"),
        py::arg("forced") = py::none(), py::arg("logits_out") = py::none(), py::arg("num_threads") = 0);
  m.def("frame_step", &fastsrnn::frame_step,
        "one step of any frame tier (see fastsrnn.ops.frame_step.frame_step_ref); h, c updated in place",
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("skip_w"), py::arg("skip_b"),
        py::arg("up_w"), py::arg("up_b"), py::arg("window"), py::arg("h"), py::arg("c"), py::arg("q_levels"),
        py::arg("num_threads") = 0, py::arg("w_ih_scale") = std::vector<at::Tensor>(),
        py::arg("w_hh_scale") = std::vector<at::Tensor>(), py::arg("skip_w_scale") = std::vector<at::Tensor>(),
        py::arg("up_w_scale") = py::none(), py::arg("cond") = py::none(), nogil);
  m.def("linear", &fastsrnn::linear,
        "x (B, K) @ w (N, K)^T + b (N,) for small B, fp32, bf16 or int8 weights (int8: times scale (N,))",
        py::arg("x"), py::arg("w"), py::arg("b"), py::arg("num_threads") = 0, py::arg("scale") = py::none(), nogil);
}
