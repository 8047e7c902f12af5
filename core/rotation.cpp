#include "tqkv/rotation.hpp"

#include <bit>
#include <cmath>

#include <fmt/format.h>

#include "tqkv/error.hpp"
#include "tqkv/format.hpp"

namespace tqkv {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator; the same stream is easy to
// reproduce in any language, which is all the sign diagonal needs.
uint64_t splitmix64(uint64_t& state) noexcept {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
void fwht_impl(T* x, int n) noexcept {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// Orthonormal Hadamard on each block: unnormalised transform, then 1/sqrt(block).
template <typename T>
void block_hadamard(const std::vector<int>& blocks, T* y) noexcept {
  int offset = 0;
  for (const int b : blocks) {
    fwht_impl(y + offset, b);
    const T inv = static_cast<T>(1.0 / std::sqrt(static_cast<double>(b)));
    for (int i = 0; i < b; ++i) y[offset + i] *= inv;
    offset += b;
  }
}

template <typename T>
void apply_signs(const Rotation& r, T* y) noexcept {
  if (!r.sign_flips()) return;
  for (int i = 0; i < r.head_dim(); ++i)
    if (r.negated(i)) y[i] = -y[i];
}

template <typename T>
void copy_if_needed(const T* x, T* y, int n) noexcept {
  if (x != y)
    for (int i = 0; i < n; ++i) y[i] = x[i];
}

}  // namespace

uint64_t rotation_seed(uint64_t base_seed, int layer, int kv_head) noexcept {
  uint64_t state = base_seed;
  uint64_t s = splitmix64(state);
  state = s ^ (static_cast<uint64_t>(static_cast<uint32_t>(layer)) << 32 |
               static_cast<uint32_t>(kv_head));
  return splitmix64(state);
}

std::vector<int> hadamard_blocks(int head_dim) {
  check_head_dim(head_dim);
  std::vector<int> blocks;
  for (int rest = head_dim; rest > 0;) {
    const int b = static_cast<int>(std::bit_floor(static_cast<unsigned>(rest)));
    blocks.push_back(b);
    rest -= b;
  }
  return blocks;
}

Rotation::Rotation(int head_dim, uint64_t seed, bool sign_flips)
    : head_dim_(head_dim), sign_flips_(sign_flips), blocks_(hadamard_blocks(head_dim)) {
  sign_bits_.assign(static_cast<std::size_t>((head_dim + 31) / 32), 0u);
  if (!sign_flips) return;
  uint64_t state = seed;
  for (std::size_t w = 0; w < sign_bits_.size(); w += 2) {
    const uint64_t bits = splitmix64(state);
    sign_bits_[w] = static_cast<uint32_t>(bits);
    if (w + 1 < sign_bits_.size()) sign_bits_[w + 1] = static_cast<uint32_t>(bits >> 32);
  }
  if (head_dim % 32 != 0) sign_bits_.back() &= (1u << (head_dim % 32)) - 1u;
}

Rotation::Rotation(int head_dim, const uint32_t* sign_bits)
    : head_dim_(head_dim), sign_flips_(true), blocks_(hadamard_blocks(head_dim)) {
  sign_bits_.assign(sign_bits, sign_bits + (head_dim + 31) / 32);
}

void Rotation::forward(const float* x, float* y) const {
  copy_if_needed(x, y, head_dim_);
  apply_signs(*this, y);
  block_hadamard(blocks_, y);
}
void Rotation::forward(const double* x, double* y) const {
  copy_if_needed(x, y, head_dim_);
  apply_signs(*this, y);
  block_hadamard(blocks_, y);
}
void Rotation::inverse(const float* y, float* x) const {
  copy_if_needed(y, x, head_dim_);
  block_hadamard(blocks_, x);
  apply_signs(*this, x);
}
void Rotation::inverse(const double* y, double* x) const {
  copy_if_needed(y, x, head_dim_);
  block_hadamard(blocks_, x);
  apply_signs(*this, x);
}

void fwht_unnormalized(float* x, int n) noexcept { fwht_impl(x, n); }
void fwht_unnormalized(double* x, int n) noexcept { fwht_impl(x, n); }

}  // namespace tqkv
