#include "tqkv/codebook.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <mutex>
#include <numbers>
#include <tuple>

#include <fmt/format.h>

#include "tqkv/error.hpp"
#include "tqkv/format.hpp"

namespace tqkv {
namespace {

// A symmetric density on [-support, support] (support = inf for the Gaussian), described by its
// CDF and its partial first moment M(t) = integral_{-inf}^{t} z f(z) dz — all Lloyd needs.
struct Density {
  double support;
  std::function<double(double)> cdf;
  std::function<double(double)> partial_moment;
};

Density gaussian_density() {
  const double inv_sqrt2 = 1.0 / std::numbers::sqrt2;
  const double inv_sqrt2pi = 1.0 / std::sqrt(2.0 * std::numbers::pi);
  return {std::numeric_limits<double>::infinity(),
          // erfc keeps relative precision in the lower tail.
          [=](double t) { return 0.5 * std::erfc(-t * inv_sqrt2); },
          [=](double t) { return -inv_sqrt2pi * std::exp(-0.5 * t * t); }};
}

// One coordinate of sqrt(d) * (uniform point on the unit sphere in R^d):
// f(z) = C (1 - z^2/d)^a, a = (d-3)/2. Its partial moment has a closed form; the CDF is tabulated
// by composite Simpson integration on a fine grid and interpolated linearly (error << 1e-10).
Density beta_density(int d) {
  const double a = (d - 3) / 2.0;
  const double s = std::sqrt(static_cast<double>(d));
  constexpr int kIntervals = 1 << 18;  // even, fine enough for 1e-12 accuracy of the table
  const double h = 2 * s / kIntervals;
  auto g = [=](double z) {
    const double u = 1.0 - z * z / d;
    return u <= 0 ? 0.0 : std::pow(u, a);
  };
  // Cumulative integral at every grid point (Simpson on pairs, trapezoid-corrected midpoints).
  auto table = std::make_shared<std::vector<double>>(kIntervals + 1, 0.0);
  auto& c = *table;
  for (int i = 0; i < kIntervals; i += 2) {
    const double z0 = -s + i * h;
    const double f0 = g(z0), f1 = g(z0 + h), f2 = g(z0 + 2 * h);
    // Simpson over [z0, z0+2h]; the midpoint value by Simpson over [z0, z0+h] with a quadratic fit.
    c[i + 2] = c[i] + h / 3 * (f0 + 4 * f1 + f2);
    c[i + 1] = c[i] + h / 12 * (5 * f0 + 8 * f1 - f2);
  }
  const double total = c[kIntervals];
  for (double& v : c) v /= total;
  const double norm = 1.0 / (total);  // C
  return {s,
          [=](double t) {
            if (t <= -s) return 0.0;
            if (t >= s) return 1.0;
            const double x = (t + s) / h;
            const auto i = std::min(static_cast<int>(x), kIntervals - 1);
            const double w = x - i;
            return (*table)[i] * (1 - w) + (*table)[i + 1] * w;
          },
          [=](double t) {
            if (t <= -s || t >= s) return 0.0;
            const double u = 1.0 - t * t / d;
            return -norm * d / (2 * (a + 1)) * std::pow(u, a + 1);
          }};
}

// Inverse CDF by bisection (only used to initialise the levels).
double quantile(const Density& dens, double p) {
  double lo = std::isinf(dens.support) ? -40.0 : -dens.support;
  double hi = -lo;
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    (dens.cdf(mid) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Codebook lloyd_max(const Density& dens, CodebookKind kind, int bits, int head_dim) {
  const int n = 1 << bits;
  Codebook cb;
  cb.kind = kind;
  cb.bits = bits;
  cb.head_dim = head_dim;
  cb.levels.resize(n);
  // Start from the compander rule (levels at quantiles of f^(1/3), asymptotically optimal); for
  // the Gaussian f^(1/3) is N(0, 3). It puts the start close to the optimum, so Lloyd converges fast.
  const Density start = gaussian_density();
  for (int i = 0; i < n; ++i) {
    double z = std::sqrt(3.0) * quantile(start, (i + 0.5) / n);
    if (!std::isinf(dens.support)) z = std::clamp(z, -0.99 * dens.support, 0.99 * dens.support);
    cb.levels[i] = z;
  }
  std::vector<double> bounds(n + 1);
  constexpr double kTolerance = 1e-13;
  constexpr int kMaxIterations = 200000;
  // Over-relaxed Lloyd: the plain update converges slowly for many levels (256 levels: ~1e5
  // iterations); stepping 1.9x along it keeps the same fixed point and needs about half. Few
  // levels converge fast without it (and oscillate with it).
  const double kRelaxation = bits >= 4 ? 1.9 : 1.0;
  int it = 0;
  for (; it < kMaxIterations; ++it) {
    bounds[0] = -dens.support;
    bounds[n] = dens.support;
    for (int i = 1; i < n; ++i) bounds[i] = 0.5 * (cb.levels[i - 1] + cb.levels[i]);
    double moved = 0;
    // Symmetric density: solve the lower half, mirror the upper half (keeps exact symmetry).
    for (int i = 0; i < n / 2; ++i) {
      const double p = dens.cdf(bounds[i + 1]) - dens.cdf(bounds[i]);
      const double m = dens.partial_moment(bounds[i + 1]) - dens.partial_moment(bounds[i]);
      const double c = cb.levels[i] + kRelaxation * (m / p - cb.levels[i]);
      moved = std::max(moved, std::abs(c - cb.levels[i]));
      cb.levels[i] = c;
      cb.levels[n - 1 - i] = -c;
    }
    if (moved < kTolerance) break;
  }
  cb.iterations = it;
  for (int i = 1; i < n; ++i) bounds[i] = 0.5 * (cb.levels[i - 1] + cb.levels[i]);
  cb.boundaries.assign(bounds.begin() + 1, bounds.end() - 1);
  // E[(z - c(z))^2] = E[z^2] - sum_i P_i c_i^2 (levels are centroids); E[z^2] = 1 for both densities.
  double explained = 0;
  for (int i = 0; i < n; ++i) {
    const double lo = i == 0 ? -dens.support : cb.boundaries[i - 1];
    const double hi = i == n - 1 ? dens.support : cb.boundaries[i];
    explained += (dens.cdf(hi) - dens.cdf(lo)) * cb.levels[i] * cb.levels[i];
  }
  cb.mse = 1.0 - explained;
  cb.levels_f32.assign(cb.levels.begin(), cb.levels.end());
  cb.boundaries_f32.assign(cb.boundaries.begin(), cb.boundaries.end());
  return cb;
}

}  // namespace

std::string_view codebook_kind_name(CodebookKind k) noexcept {
  return k == CodebookKind::gaussian ? "gaussian" : "beta";
}

CodebookKind parse_codebook_kind(std::string_view text) {
  if (text == "gaussian") return CodebookKind::gaussian;
  if (text == "beta") return CodebookKind::beta;
  raise(Status::invalid_argument,
        fmt::format("codebook kind '{}' is not known (expected gaussian or beta)", text));
}

uint8_t Codebook::quantize(float z) const noexcept {
  // Ties go up: a z exactly on a boundary takes the upper level. Kernels count (z >= b_i).
  const auto it = std::upper_bound(boundaries_f32.begin(), boundaries_f32.end(), z);
  return static_cast<uint8_t>(it - boundaries_f32.begin());
}

bool is_supported_codebook_bits(int bits) noexcept {
  return bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

Codebook compute_codebook(CodebookKind kind, int bits, int head_dim) {
  if (!is_supported_codebook_bits(bits))
    raise(Status::unsupported,
          fmt::format("codebook bits = {} is not supported (expected 1, 2, 3, 4 or 8)", bits));
  if (kind == CodebookKind::gaussian) return lloyd_max(gaussian_density(), kind, bits, 0);
  check_head_dim(head_dim, "codebook head_dim");
  return lloyd_max(beta_density(head_dim), kind, bits, head_dim);
}

const Codebook& codebook(CodebookKind kind, int bits, int head_dim) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int>, Codebook> cache;
  const int d = kind == CodebookKind::gaussian ? 0 : head_dim;
  const std::lock_guard lock(mutex);
  const auto key = std::make_tuple(static_cast<int>(kind), bits, d);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, compute_codebook(kind, bits, d)).first;
  return it->second;  // std::map nodes are stable: the reference outlives later insertions
}

}  // namespace tqkv
