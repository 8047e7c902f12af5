// The TurboQuant rotation r = H * S * x: S a diagonal of seeded random signs, H the orthonormal
// (block-diagonal) Walsh–Hadamard matrix. Inverse: x = S * H^T * r (H is symmetric).
#pragma once

#include <cstdint>
#include <vector>

namespace tqkv {

// Seed of the sign diagonal of one (layer, kv_head), derived from a base seed (splitmix64).
uint64_t rotation_seed(uint64_t base_seed, int layer, int kv_head) noexcept;

// Power-of-two block sizes of the block-diagonal Hadamard for head_dim, largest first
// (128 -> {128}; 96 -> {64, 32}; 576 -> {512, 64}).
std::vector<int> hadamard_blocks(int head_dim);

class Rotation {
 public:
  // sign_flips = false gives the plain Hadamard of the seed design (kept as a baseline).
  Rotation(int head_dim, uint64_t seed, bool sign_flips = true);
  // The rotation whose sign diagonal is given (ceil(head_dim/32) words, as sign_bits() returns),
  // e.g. from a CacheView.
  Rotation(int head_dim, const uint32_t* sign_bits);

  int head_dim() const { return head_dim_; }
  bool sign_flips() const { return sign_flips_; }
  const std::vector<int>& blocks() const { return blocks_; }
  // Bit i of word i/32 set: coordinate i is negated. ceil(head_dim / 32) words.
  const std::vector<uint32_t>& sign_bits() const { return sign_bits_; }
  bool negated(int i) const { return (sign_bits_[i >> 5] >> (i & 31)) & 1u; }

  // y = H S x. x and y may alias. float and double versions share one algorithm.
  void forward(const float* x, float* y) const;
  void forward(const double* x, double* y) const;
  // x = S H^T y. x and y may alias.
  void inverse(const float* y, float* x) const;
  void inverse(const double* y, double* x) const;

 private:
  int head_dim_;
  bool sign_flips_;
  std::vector<int> blocks_;
  std::vector<uint32_t> sign_bits_;
};

// In-place unnormalised fast Walsh–Hadamard transform of n = 2^k values (no 1/sqrt(n)).
void fwht_unnormalized(float* x, int n) noexcept;
void fwht_unnormalized(double* x, int n) noexcept;

}  // namespace tqkv
