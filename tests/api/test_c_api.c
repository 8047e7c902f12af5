/* The C ABI exercised from C: a happy path that checks numbers against the C++ reference run by
 * the same library, and every kind of bad input returning a status plus a message that names it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tqkv/tqkv.h"

static int g_failed = 0, g_passed = 0;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    if (cond) {                                             \
      ++g_passed;                                           \
    } else {                                                \
      ++g_failed;                                           \
      fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                         \
      fprintf(stderr, "\n");                                \
    }                                                       \
  } while (0)

/* Expects status `want` and a message containing `needle`. */
static void expect_error(tqkv_status got, tqkv_status want, const char* needle, const char* what) {
  CHECK(got == want, "%s: status %d (%s), want %d; message: %s", what, (int)got,
        tqkv_status_string(got), (int)want, tqkv_last_error());
  CHECK(strstr(tqkv_last_error(), needle) != NULL, "%s: message '%s' does not name '%s'", what,
        tqkv_last_error(), needle);
}

/* xorshift32: deterministic inputs with a printed seed. */
static uint32_t g_rng;
static float next_gaussianish(void) {
  float s = 0;
  for (int i = 0; i < 4; ++i) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 17;
    g_rng ^= g_rng << 5;
    s += (float)(g_rng & 0xffffff) / 16777216.0f - 0.5f;
  }
  return s * 1.7320508f;
}

int main(void) {
  const uint32_t seed = 20261125u;
  g_rng = seed;
  printf("test_c_api: seed %u, version %s\n", seed, tqkv_version());

  enum { B = 2, KVH = 2, QH = 6, D = 64, CAP = 40, N = 33 };
  tqkv_cache_config cfg;
  CHECK(tqkv_cache_config_init(&cfg, B, KVH, D, CAP) == TQKV_OK, "config_init");
  int32_t kf = -1, vf = -1;
  CHECK(tqkv_parse_kv_format("k8v4", &kf, &vf) == TQKV_OK && kf == TQKV_TQ8 && vf == TQKV_TQ4,
        "parse k8v4 -> %d %d", kf, vf);
  cfg.key_format = kf;
  cfg.value_format = vf;

  tqkv_cache* cache = NULL;
  CHECK(tqkv_cache_create(&cfg, &cache) == TQKV_OK && cache != NULL, "create: %s", tqkv_last_error());

  static float k[N * KVH * D], v[N * KVH * D], q[B * QH * D];
  for (int i = 0; i < N * KVH * D; ++i) k[i] = next_gaussianish();
  for (int i = 0; i < N * KVH * D; ++i) v[i] = next_gaussianish();
  for (int i = 0; i < B * QH * D; ++i) q[i] = next_gaussianish();
  CHECK(tqkv_cache_append(cache, 0, k, v, N) == TQKV_OK, "append 0: %s", tqkv_last_error());
  CHECK(tqkv_cache_append(cache, 1, k, v, 5) == TQKV_OK, "append 1: %s", tqkv_last_error());
  int64_t tokens = -1;
  CHECK(tqkv_cache_tokens(cache, 0, &tokens) == TQKV_OK && tokens == N, "tokens %lld",
        (long long)tokens);

  /* The fast CPU path and the reference on the same cache agree to kernel fidelity. */
  static float out_ref[B * QH * D], out_cpu[B * QH * D];
  for (int i = 0; i < B * QH * D; ++i) out_ref[i] = out_cpu[i] = NAN; /* poisoned */
  tqkv_decode_params p;
  memset(&p, 0, sizeof p);
  p.q_heads = QH;
  p.splits = 1;
  p.out_type = TQKV_OUT_F32;
  p.backend = TQKV_BACKEND_CPU_REFERENCE;
  CHECK(tqkv_decode_attention(cache, q, out_ref, &p) == TQKV_OK, "reference: %s", tqkv_last_error());
  p.backend = TQKV_BACKEND_CPU;
  p.splits = 0;
  CHECK(tqkv_decode_attention(cache, q, out_cpu, &p) == TQKV_OK, "cpu: %s", tqkv_last_error());
  double err = 0, ref = 0;
  int finite = 1;
  for (int i = 0; i < B * QH * D; ++i) {
    finite &= isfinite(out_ref[i]) && isfinite(out_cpu[i]);
    err += ((double)out_cpu[i] - out_ref[i]) * ((double)out_cpu[i] - out_ref[i]);
    ref += (double)out_ref[i] * out_ref[i];
  }
  const double kKernelFidelityNmse = 1e-6;
  CHECK(finite, "an output element was not written (still NaN)");
  CHECK(ref > 0 && err / ref <= kKernelFidelityNmse, "cpu vs reference nmse %g", err / ref);

  /* The log-sum-exp output (same output as without it), and the merge of two attention states:
   * with an empty side (lse -inf) a state comes back unchanged; two of equal mass average. (That
   * merged parts equal the whole is tested on the C++ side: tests/cpu, tests/cuda.) */
  static float lse[B * QH], out_lse[B * QH * D], merged[B * QH * D], merged_lse[B * QH], none[B * QH];
  for (int i = 0; i < B * QH; ++i) lse[i] = NAN, none[i] = -INFINITY;
  CHECK(tqkv_decode_attention_lse(cache, q, out_lse, lse, &p) == TQKV_OK, "lse: %s", tqkv_last_error());
  int lse_finite = 1, same = 1;
  for (int i = 0; i < B * QH; ++i) lse_finite &= isfinite(lse[i]);
  for (int i = 0; i < B * QH * D; ++i) same &= out_lse[i] == out_cpu[i];
  CHECK(lse_finite, "an lse element was not written (still NaN)");
  CHECK(same, "asking for lse changed the output");
  CHECK(tqkv_merge_attention_states(out_lse, lse, out_ref, none, merged, merged_lse, B * QH, D,
                                    TQKV_OUT_F32) == TQKV_OK, "merge: %s", tqkv_last_error());
  same = 1;
  for (int i = 0; i < B * QH * D; ++i) same &= merged[i] == out_lse[i];
  for (int i = 0; i < B * QH; ++i) same &= merged_lse[i] == lse[i];
  CHECK(same, "merging with an empty side (lse -inf) changed the state");
  /* Two halves of the softmax mass: equal lse, the mean of the outputs, lse + ln 2. */
  CHECK(tqkv_merge_attention_states(out_lse, lse, out_ref, lse, merged, merged_lse, B * QH, D,
                                    TQKV_OUT_F32) == TQKV_OK, "merge halves: %s", tqkv_last_error());
  double merge_err = 0;
  for (int i = 0; i < B * QH * D; ++i) merge_err = fmax(merge_err, fabs(merged[i] - 0.5 * (out_lse[i] + out_ref[i])));
  for (int i = 0; i < B * QH; ++i) merge_err = fmax(merge_err, fabs(merged_lse[i] - (lse[i] + log(2.0))));
  const double kFloatRoundingOfMerge = 1e-5;
  CHECK(merge_err <= kFloatRoundingOfMerge, "merge of equal halves off by %g", merge_err);
  expect_error(tqkv_merge_attention_states(out_lse, NULL, out_ref, lse, merged, NULL, 1, D, TQKV_OUT_F32),
               TQKV_INVALID_ARGUMENT, "lse_a", "null lse_a");
  expect_error(tqkv_merge_attention_states(out_lse, lse, out_ref, lse, merged, NULL, -2, D, TQKV_OUT_F32),
               TQKV_INVALID_ARGUMENT, "rows = -2", "negative rows");
  expect_error(tqkv_merge_attention_states(out_lse, lse, out_ref, lse, merged, NULL, 1, D, 9),
               TQKV_INVALID_ARGUMENT, "out_type = 9", "merge out type");
  expect_error(tqkv_decode_attention_lse(cache, q, out_lse, (float*)((char*)lse + 1), &p),
               TQKV_INVALID_ARGUMENT, "lse", "misaligned lse");

  /* Bad input: each names the parameter. */
  expect_error(tqkv_cache_append(cache, 0, NULL, v, 1), TQKV_INVALID_ARGUMENT, "k", "null k");
  expect_error(tqkv_cache_append(cache, 0, (const float*)((const char*)k + 1), v, 1),
               TQKV_INVALID_ARGUMENT, "aligned", "misaligned k");
  expect_error(tqkv_cache_append(cache, 5, k, v, 1), TQKV_OUT_OF_RANGE, "sequence index 5",
               "bad sequence");
  expect_error(tqkv_cache_append(cache, 0, k, v, CAP), TQKV_OUT_OF_RANGE, "capacity",
               "past capacity");
  k[3] = INFINITY;
  expect_error(tqkv_cache_append(cache, 1, k, v, 1), TQKV_NON_FINITE, "kv head 0, position 5",
               "non-finite key");
  k[3] = 0.5f;
  CHECK(tqkv_cache_tokens(cache, 1, &tokens) == TQKV_OK && tokens == 5,
        "a rejected append changed the token count to %lld", (long long)tokens);
  p.q_heads = 5;
  expect_error(tqkv_decode_attention(cache, q, out_cpu, &p), TQKV_INVALID_ARGUMENT, "q_heads = 5",
               "GQA ratio");
  p.q_heads = QH;
  p.out_type = 7;
  expect_error(tqkv_decode_attention(cache, q, out_cpu, &p), TQKV_INVALID_ARGUMENT, "out_type = 7",
               "out type");
  p.out_type = TQKV_OUT_F32;
  expect_error(tqkv_decode_attention(cache, q, (char*)out_cpu + 2, &p), TQKV_INVALID_ARGUMENT,
               "out", "misaligned out");
  expect_error(tqkv_decode_attention(NULL, q, out_cpu, &p), TQKV_INVALID_ARGUMENT, "cache",
               "null cache");

  tqkv_cache* bad = NULL;
  cfg.head_dim = 100;
  expect_error(tqkv_cache_create(&cfg, &bad), TQKV_UNSUPPORTED, "head_dim = 100", "head dim");
  CHECK(bad == NULL, "a failed create returned a cache");
  cfg.head_dim = D;
  cfg.key_format = 9;
  expect_error(tqkv_cache_create(&cfg, &bad), TQKV_INVALID_ARGUMENT, "key_format = 9", "format");
  expect_error(tqkv_parse_kv_format("tq5", &kf, &vf), TQKV_INVALID_ARGUMENT, "tq5", "parse tq5");

  tqkv_cache_destroy(cache);
  tqkv_cache_destroy(NULL);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
