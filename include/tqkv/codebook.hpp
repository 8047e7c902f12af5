// Lloyd–Max scalar codebooks for the coordinates of a rotated, normalised vector.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace tqkv {

// Which density the codebook is optimal for.
//   gaussian: N(0,1), the large-head_dim limit (DESIGN.md);
//   beta:     the exact density of one coordinate of sqrt(d) * (uniform unit vector in R^d),
//             f(z) ~ (1 - z^2/d)^((d-3)/2) on [-sqrt(d), sqrt(d)].
enum class CodebookKind : uint8_t { gaussian = 0, beta = 1 };
std::string_view codebook_kind_name(CodebookKind k) noexcept;
CodebookKind parse_codebook_kind(std::string_view text);

struct Codebook {
  CodebookKind kind = CodebookKind::gaussian;
  int bits = 0;
  int head_dim = 0;                // only for beta; 0 for gaussian
  std::vector<double> levels;      // 2^bits reconstruction levels, ascending, symmetric
  std::vector<double> boundaries;  // 2^bits - 1 decision thresholds (midpoints of levels)
  std::vector<float> levels_f32;   // levels as the kernels read them
  std::vector<float> boundaries_f32;
  double mse = 0;                  // expected squared error per coordinate under the density
  int iterations = 0;              // Lloyd iterations until convergence

  int size() const { return 1 << bits; }
  // Index of the nearest level: the number of boundaries strictly below z (ties go up).
  uint8_t quantize(float z) const noexcept;
};

// Bit widths with a codebook: 1, 2, 3, 4, 8.
bool is_supported_codebook_bits(int bits) noexcept;

// Runs Lloyd iteration on the exact density until levels move less than 1e-13.
Codebook compute_codebook(CodebookKind kind, int bits, int head_dim = 0);

// Cached: computed once per (kind, bits, head_dim), thread-safe.
const Codebook& codebook(CodebookKind kind, int bits, int head_dim = 0);
inline const Codebook& gaussian_codebook(int bits) { return codebook(CodebookKind::gaussian, bits); }

}  // namespace tqkv
