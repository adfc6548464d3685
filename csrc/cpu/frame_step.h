// The frame-tier step in one call, the C++ twin of fastsrnn/ops/frame_step.py (the spec), for
// any frame tier (the bottom one or one above, n-tier models): L LSTM/GRU layers (gate orders
// i,f,g,o and r,z,n) on a frame of F_in samples, layer 0's input being [cond (H), frame] for a
// conditioned tier, the frame alone otherwise; skip connections (layers > 0 also see the frame,
// never cond; the output is the sum of per-layer projections, only the first biased) and the
// upsampling to (B, n_out, H), n_out = up_w rows / H (F for the bottom tier, the tier below's
// steps per step for one above). h and c (L, B, H) are updated in place.
//
// At small B every product is a weight stream (DRAM-bound at H = 1024, ~235 MB fp32 per
// frame), and at small H (the tiny preset) torch's per-op overhead dominated; here one OpenMP
// team runs the whole step with the rows of each matrix split across threads.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "linear.h"

namespace fastsrnn {
namespace {

template <typename T>
struct FrameNet {
  std::vector<const T*> w_ih, w_hh, skip_w;  // per layer (G*H, K_i), (G*H, H), (H, H)
  std::vector<const float*> s_ih, s_hh, s_skip;  // int8 only: their per-row scales (null otherwise)
  std::vector<const float*> b_ih, b_hh;  // per layer (G*H,)
  std::vector<int64_t> k_in;  // per layer input width K_i: [H +] F_in, then H (+ F_in with skip)
  const float* skip_b;  // (H,) or null
  const T* up_w;  // (n_out*H, H)
  const float* s_up;  // (n_out*H,) int8 only
  const float* up_b;  // (n_out*H,)
  float* h;  // (L, B, H)
  float* c;  // (L, B, H) or null for GRU
  const float* cond;  // (B, H) in: layer 0's first H inputs, or null (an unconditioned tier)
  float* out;  // (B, n_out*H) out
  int64_t B, F, H, L, n_out;  // F: the frame's width F_in
  bool skip;
};

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Gates -> new state for hidden units [u0, u1) of layer i, all sequences; with skip, h_new
// is also copied into the next layer's input row [h_new, x_in] (x_in: the frame, F_in wide).
template <typename T>
void cell_update(const FrameNet<T>& n, int64_t i, const float* gi, const float* gh, float* inp, int64_t u0, int64_t u1) {
  const int64_t B = n.B, H = n.H, GH = (n.c ? 4 : 3) * H;
  float* h = n.h + i * B * H;
  float* c = n.c ? n.c + i * B * H : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    const float* x = gi + b * GH;
    const float* r = gh + b * GH;
    for (int64_t u = u0; u < u1; ++u) {
      float hn;
      if (c) {  // LSTM: the gates are gi + gh, order i, f, g, o
        const float ig = x[u] + r[u], fg = x[H + u] + r[H + u], gg = x[2 * H + u] + r[2 * H + u],
                    og = x[3 * H + u] + r[3 * H + u];
        const float cn = sigmoid(fg) * c[b * H + u] + sigmoid(ig) * std::tanh(gg);
        c[b * H + u] = cn;
        hn = sigmoid(og) * std::tanh(cn);
      } else {  // GRU, order r, z, n: the reset gate scales the recurrent part of n only
        const float rg = sigmoid(x[u] + r[u]), zg = sigmoid(x[H + u] + r[H + u]);
        const float ng = std::tanh(x[2 * H + u] + rg * r[2 * H + u]);
        hn = (1 - zg) * ng + zg * h[b * H + u];
      }
      h[b * H + u] = hn;
      if (inp) inp[b * (H + n.F) + u] = hn;
    }
  }
}

template <typename T>
void frame_step_body(const FrameNet<T>& n, const float* x0, float* inp, float* gi, float* gh, float* total,
                int tid, int nth) {
  const int64_t B = n.B, H = n.H, GH = (n.c ? 4 : 3) * H;
  int64_t g0, g1, u0, u1, o0, o1, p0, p1;
  split(GH, kTileRows, tid, nth, g0, g1);
  split(H, 16, tid, nth, u0, u1);
  split(H, kTileRows, tid, nth, o0, o1);
  split(n.n_out * H, 32, tid, nth, p0, p1);
  for (int64_t i = 0; i < n.L; ++i) {
    // Layer i's input: [cond,] the frame (layer 0), or layer i-1's new h (+ the frame, with skip).
    const float* x = i == 0 ? x0 : n.skip ? inp : n.h + (i - 1) * B * H;
    linear_rows(n.w_ih[i], n.b_ih[i], x, B, n.k_in[i], GH, g0, g1, gi, Epilogue::kStore, n.s_ih[i]);
    linear_rows(n.w_hh[i], n.b_hh[i], n.h + i * B * H, B, H, GH, g0, g1, gh, Epilogue::kStore, n.s_hh[i]);
    if (i > 0 && n.skip)  // layer i-1's projection: its h is final, and nobody writes `total` now
      linear_rows(n.skip_w[i - 1], i == 1 ? n.skip_b : nullptr, n.h + (i - 1) * B * H, B, H, H, o0, o1, total,
                  i == 1 ? Epilogue::kStore : Epilogue::kAdd, n.s_skip[i - 1]);
#pragma omp barrier
    cell_update(n, i, gi, gh, n.skip && i + 1 < n.L ? inp : nullptr, u0, u1);
#pragma omp barrier
  }
  const float* out = n.h + (n.L - 1) * B * H;
  if (n.skip) {
    linear_rows(n.skip_w[n.L - 1], n.L == 1 ? n.skip_b : nullptr, out, B, H, H, o0, o1, total,
                n.L == 1 ? Epilogue::kStore : Epilogue::kAdd, n.s_skip[n.L - 1]);
#pragma omp barrier
    out = total;
  }
  linear_rows(n.up_w, n.up_b, out, B, H, n.n_out * H, p0, p1, n.out, Epilogue::kStore, n.s_up);
}

template <typename T>
void frame_step_run(FrameNet<T>& n, const at::Tensor& window, int64_t q_levels, int64_t num_threads) {
  const int64_t B = n.B, F = n.F, H = n.H, GH = (n.c ? 4 : 3) * H, K0 = n.k_in[0], C = n.cond ? H : 0;
  // x0: layer 0's input rows [cond, x_in] (K0 = C + F wide); inp: [h_new, x_in] for skip layers.
  std::vector<float> x0(B * K0), inp(n.skip ? B * (H + F) : 0), gi(B * GH), gh(B * GH), total(n.skip ? B * H : 0);
  const int64_t* win = window.data_ptr<int64_t>();
  const float half = static_cast<float>(q_levels) / 2;  // as quantize.frame_input, in fp32
  for (int64_t b = 0; b < B; ++b) {
    if (C) std::copy(n.cond + b * H, n.cond + (b + 1) * H, x0.data() + b * K0);
    for (int64_t f = 0; f < F; ++f) {
      const float x = (static_cast<float>(win[b * F + f]) / half - 1.0f) * 2.0f;
      x0[b * K0 + C + f] = x;
      if (n.skip) inp[b * (H + F) + H + f] = x;
    }
  }
  int64_t macs = 0;
  for (int64_t i = 0; i < n.L; ++i) macs += GH * (n.k_in[i] + H) + (n.skip ? H * H : 0);
  macs = B * (macs + n.n_out * H * H);
  const int avail = num_threads > 0 ? static_cast<int>(num_threads) : at::get_num_threads();
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(avail, macs / (96 * 1024))));
#pragma omp parallel num_threads(nt) if (nt > 1)
  frame_step_body(n, x0.data(), inp.data(), gi.data(), gh.data(), total.data(), omp_get_thread_num(),
                  omp_get_num_threads());
}

template <typename T>
const T* typed(const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }

}  // namespace

// Arguments as in fastsrnn.export.InferenceWeights or TierWeights (weights all fp32, all bf16 or
// all int8, the last with the fp32 per-row scales *_scale; empty lists and None otherwise);
// window (B, F_in) int64; h, c (L, B, H) fp32 updated in place; cond (B, H) fp32 or None: the
// conditioning from the tier above (then w_ih[0] is (G*H, H + F_in)). Returns (B, n_out, H) fp32,
// n_out = up_w rows / H.
at::Tensor frame_step(const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& w_hh,
                      const std::vector<at::Tensor>& b_ih, const std::vector<at::Tensor>& b_hh,
                      const std::vector<at::Tensor>& skip_w, const c10::optional<at::Tensor>& skip_b,
                      const at::Tensor& up_w, const at::Tensor& up_b, const at::Tensor& window, at::Tensor& h,
                      const c10::optional<at::Tensor>& c, int64_t q_levels, int64_t num_threads,
                      const std::vector<at::Tensor>& w_ih_scale, const std::vector<at::Tensor>& w_hh_scale,
                      const std::vector<at::Tensor>& skip_w_scale, const c10::optional<at::Tensor>& up_w_scale,
                      const c10::optional<at::Tensor>& cond) {
  const char* op = "frame_step";
  TORCH_CHECK_VALUE(h.dim() == 3 && window.dim() == 2, "frame_step: h must be (L, B, H) and window (B, F)");
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2), F = window.size(1), G = c ? 4 : 3;
  const auto wdt = up_w.scalar_type();
  TORCH_CHECK_TYPE(wdt == at::kFloat || wdt == at::kBFloat16 || wdt == at::kChar,
                   "frame_step: weights must be float32, bfloat16 or int8, got ", wdt);
  const bool q8 = wdt == at::kChar;
  const bool skip = !skip_w.empty();
  TORCH_CHECK_VALUE(static_cast<int64_t>(w_ih.size()) == L && static_cast<int64_t>(w_hh.size()) == L &&
                    static_cast<int64_t>(b_ih.size()) == L && static_cast<int64_t>(b_hh.size()) == L &&
                    (!skip || (static_cast<int64_t>(skip_w.size()) == L && skip_b && L > 1)),
                    "frame_step: expected ", L, " layers of weights (and skip weights and bias, or none)");
  TORCH_CHECK_VALUE(L > 0 && H > 0 && F > 0, "frame_step: h must be (L, B, H) with L, H > 0 and window (B, F) "
                    "with F > 0, got h ", h.sizes(), " and window ", window.sizes());
  TORCH_CHECK_VALUE(up_w.dim() == 2 && up_w.size(1) == H && up_w.size(0) > 0 && up_w.size(0) % H == 0,
                    "frame_step: up_w must be (n_out*H, H) with H = ", H, ", got shape ", up_w.sizes());
  const int64_t n_out = up_w.size(0) / H, C = cond ? H : 0;  // C: layer 0's conditioning inputs
  if (cond) check(*cond, "cond", at::kFloat, {B, H}, op);
  TORCH_CHECK_VALUE(w_ih[0].dim() == 2 && w_ih[0].size(1) == C + F, "frame_step: layer 0's w_ih[0] has shape ",
                    w_ih[0].sizes(), ", its input is ", C + F, " wide (a ", F, "-sample frame",
                    cond ? std::string(" and a conditioning of ") + std::to_string(H) : std::string(), ")");
  check(window, "window", at::kLong, {B, F}, op);
  check(h, "h", at::kFloat, {L, B, H}, op);
  if (c) check(*c, "c", at::kFloat, {L, B, H}, op);
  check(up_w, "up_w", wdt, {n_out * H, H}, op);
  TORCH_CHECK_VALUE(q8 == up_w_scale.has_value() && (q8 || (w_ih_scale.empty() && w_hh_scale.empty() &&
                    skip_w_scale.empty())), "frame_step: int8 weights need their per-row scales "
                    "(w_ih_scale, w_hh_scale, skip_w_scale, up_w_scale), float weights none");
  TORCH_CHECK_VALUE(!q8 || (static_cast<int64_t>(w_ih_scale.size()) == L &&
                            static_cast<int64_t>(w_hh_scale.size()) == L && skip_w_scale.size() == skip_w.size()),
                    "frame_step: expected one scale vector per int8 matrix (", L, " layers)");
  if (q8) check(*up_w_scale, "up_w_scale", at::kFloat, {n_out * H}, op);
  check(up_b, "up_b", at::kFloat, {n_out * H}, op);
  if (skip) check(*skip_b, "skip_b", at::kFloat, {H}, op);
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    FrameNet<T> n;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t k = i == 0 ? C + F : (skip ? H + F : H);
      check(w_ih[i], "w_ih[i]", wdt, {G * H, k}, op);
      check(w_hh[i], "w_hh[i]", wdt, {G * H, H}, op);
      check(b_ih[i], "b_ih[i]", at::kFloat, {G * H}, op);
      check(b_hh[i], "b_hh[i]", at::kFloat, {G * H}, op);
      if (skip) check(skip_w[i], "skip_w[i]", wdt, {H, H}, op);
      n.w_ih.push_back(typed<T>(w_ih[i]));
      n.w_hh.push_back(typed<T>(w_hh[i]));
      n.b_ih.push_back(b_ih[i].data_ptr<float>());
      n.b_hh.push_back(b_hh[i].data_ptr<float>());
      if (skip) n.skip_w.push_back(typed<T>(skip_w[i]));
      n.k_in.push_back(k);
      if (q8) {
        check(w_ih_scale[i], "w_ih_scale[i]", at::kFloat, {G * H}, op);
        check(w_hh_scale[i], "w_hh_scale[i]", at::kFloat, {G * H}, op);
        if (skip) check(skip_w_scale[i], "skip_w_scale[i]", at::kFloat, {H}, op);
      }
      n.s_ih.push_back(q8 ? w_ih_scale[i].data_ptr<float>() : nullptr);
      n.s_hh.push_back(q8 ? w_hh_scale[i].data_ptr<float>() : nullptr);
      if (skip) n.s_skip.push_back(q8 ? skip_w_scale[i].data_ptr<float>() : nullptr);
    }
    n.skip_b = skip ? skip_b->data_ptr<float>() : nullptr;
    n.up_w = typed<T>(up_w);
    n.s_up = q8 ? up_w_scale->data_ptr<float>() : nullptr;
    n.up_b = up_b.data_ptr<float>();
    n.h = h.data_ptr<float>();
    n.c = c ? c->data_ptr<float>() : nullptr;
    n.cond = cond ? cond->data_ptr<float>() : nullptr;
    at::Tensor out = at::empty({B, n_out, H}, h.options());
    n.out = out.data_ptr<float>();
    n.B = B, n.F = F, n.H = H, n.L = L, n.n_out = n_out, n.skip = skip;
    frame_step_run(n, window, q_levels, num_threads);
    return out;
  };
  if (q8) return run(static_cast<int8_t*>(nullptr));
  return wdt == at::kFloat ? run(static_cast<float*>(nullptr)) : run(static_cast<bf16_bits*>(nullptr));
}

}  // namespace fastsrnn
