#include "ops.hpp"

#include <cmath>
#include <cstring>

namespace tqkv::model {
namespace {

// 8 floats: one AVX2 register where the CPU has it; GCC/Clang lower it to SSE pairs otherwise.
typedef float f32x8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// Always inlined, so that the x86-64-v3 clone of matmul_rows compiles them with AVX2 + FMA.
#define TQKV_INLINE inline __attribute__((always_inline))

TQKV_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
TQKV_INLINE float sum8(f32x8 v) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// A TM x TN tile of dot products over `in` (a multiple of 8 here; the tail is done in scalar).
// TM * TN accumulators + TN weight registers + 1 input register stay within 16 ymm registers.
template <int TM, int TN>
TQKV_INLINE void tile(const float* x, const float* w, float* y, int in, int out) {
  f32x8 acc[TM][TN] = {};
  const int in8 = in - in % kLanes;
  for (int k = 0; k < in8; k += kLanes) {
    f32x8 wv[TN];
    for (int j = 0; j < TN; ++j) wv[j] = load8(w + static_cast<int64_t>(j) * in + k);
    for (int i = 0; i < TM; ++i) {
      const f32x8 xv = load8(x + static_cast<int64_t>(i) * in + k);
      for (int j = 0; j < TN; ++j) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < TM; ++i) {
    for (int j = 0; j < TN; ++j) {
      float s = sum8(acc[i][j]);
      for (int k = in8; k < in; ++k) {
        s += x[static_cast<int64_t>(i) * in + k] * w[static_cast<int64_t>(j) * in + k];
      }
      y[static_cast<int64_t>(i) * out + j] = s;
    }
  }
}

constexpr int kTileTokens = 4;
constexpr int kTileOutputs = 3;
// Output rows per OpenMP work item: big enough to amortise scheduling, small enough to balance.
constexpr int kRowsPerTask = 48;

// Cloned for x86-64-v3 (AVX2 + FMA) and a baseline; the loader picks one at run time.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define TQKV_MATMUL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TQKV_MATMUL_CLONES
#endif

TQKV_MATMUL_CLONES
void matmul_rows(const float* x, const float* w, float* y, int n, int in, int out, int o_begin,
                 int o_end) {
  for (int t = 0; t < n; t += kTileTokens) {
    const int tm = n - t < kTileTokens ? n - t : kTileTokens;
    const float* xt = x + static_cast<int64_t>(t) * in;
    float* yt = y + static_cast<int64_t>(t) * out;
    int o = o_begin;
    for (; o + kTileOutputs <= o_end; o += kTileOutputs) {
      const float* wo = w + static_cast<int64_t>(o) * in;
      switch (tm) {
        case 4: tile<4, kTileOutputs>(xt, wo, yt + o, in, out); break;
        case 3: tile<3, kTileOutputs>(xt, wo, yt + o, in, out); break;
        case 2: tile<2, kTileOutputs>(xt, wo, yt + o, in, out); break;
        default: tile<1, kTileOutputs>(xt, wo, yt + o, in, out); break;
      }
    }
    for (; o < o_end; ++o) {
      const float* wo = w + static_cast<int64_t>(o) * in;
      for (int i = 0; i < tm; ++i) tile<1, 1>(xt + static_cast<int64_t>(i) * in, wo, yt + static_cast<int64_t>(i) * out + o, in, out);
    }
  }
}

}  // namespace

void matmul(const float* x, const float* w, float* y, int n, int in, int out) {
  const int tasks = (out + kRowsPerTask - 1) / kRowsPerTask;
#pragma omp parallel for schedule(dynamic, 1)
  for (int task = 0; task < tasks; ++task) {
    const int o_begin = task * kRowsPerTask;
    const int o_end = o_begin + kRowsPerTask < out ? o_begin + kRowsPerTask : out;
    matmul_rows(x, w, y, n, in, out, o_begin, o_end);
  }
}

void rms_norm(const float* x, const float* gain, float* y, int n, int dim, float eps) {
  for (int t = 0; t < n; ++t) {
    const float* xr = x + static_cast<int64_t>(t) * dim;
    float* yr = y + static_cast<int64_t>(t) * dim;
    double sum_sq = 0.0;
    for (int i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const auto inv = static_cast<float>(1.0 / std::sqrt(sum_sq / dim + eps));
    for (int i = 0; i < dim; ++i) yr[i] = xr[i] * inv * gain[i];
  }
}

void rope(float* x, int heads, int head_dim, int n_rot, int64_t position, float base,
          RopeLayout layout) {
  const int half = n_rot / 2;
  for (int i = 0; i < half; ++i) {
    // Angles in double: positions reach 10^4 and float phase error would grow with them.
    const double theta =
        static_cast<double>(position) * std::pow(static_cast<double>(base), -2.0 * i / n_rot);
    const auto c = static_cast<float>(std::cos(theta));
    const auto s = static_cast<float>(std::sin(theta));
    const int a = layout == RopeLayout::adjacent ? 2 * i : i;
    const int b = layout == RopeLayout::adjacent ? 2 * i + 1 : i + half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + static_cast<int64_t>(h) * head_dim;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

void swiglu(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
}

}  // namespace tqkv::model
