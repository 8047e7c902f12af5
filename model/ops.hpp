// Dense float32 building blocks of the llama forward pass, threaded with OpenMP.
#pragma once

#include <cstdint>

namespace tqkv::model {

// y[t][o] = sum_k x[t][k] * w[o][k]  (x: [n][in], w: [out][in] row-major, y: [n][out]).
// Threads split the output rows; each weight row is read once per tile of tokens.
void matmul(const float* x, const float* w, float* y, int n, int in, int out);

// y = x / sqrt(mean(x^2) + eps) * gain, for each of n rows of `dim`. x and y may alias.
void rms_norm(const float* x, const float* gain, float* y, int n, int dim, float eps);

// How RoPE pairs coordinates within a head:
//   adjacent (llama.cpp "normal", GGML_ROPE_TYPE_NORM): (2i, 2i+1);
//   half (llama.cpp "neox", Hugging Face rotate_half):  (i, i + n_rot/2).
enum class RopeLayout { adjacent, half };

// Rotates the first `n_rot` coordinates of each of `heads` heads of one token at `position`:
// pair i turns by position * base^(-2i / n_rot).
void rope(float* x, int heads, int head_dim, int n_rot, int64_t position, float base,
          RopeLayout layout);

// a[i] = silu(a[i]) * b[i]  (SwiGLU), n elements.
void swiglu(float* a, const float* b, int64_t n);

}  // namespace tqkv::model
