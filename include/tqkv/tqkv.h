/* tqkv C ABI: a status code plus a message for every call; no C++ exception crosses it.
 *
 * Every function returns TQKV_OK (0) or an error status; tqkv_last_error() then gives a message
 * (thread-local, valid until the next tqkv call on the same thread) naming the bad parameter.
 * Buffers: float arrays must be 4-byte aligned, fp16/bf16 outputs 2-byte aligned; null or
 * misaligned pointers are rejected with TQKV_INVALID_ARGUMENT. */
#ifndef TQKV_TQKV_H
#define TQKV_TQKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tqkv_status {
  TQKV_OK = 0,
  TQKV_INVALID_ARGUMENT = 1,
  TQKV_UNSUPPORTED = 2,
  TQKV_OUT_OF_RANGE = 3,
  TQKV_NON_FINITE = 4,
  TQKV_BACKEND_UNAVAILABLE = 5,
  TQKV_BACKEND_ERROR = 6,
  TQKV_IO_ERROR = 7,
  TQKV_INTERNAL = 8
} tqkv_status;

/* Formats (values of tqkv::Format). */
enum { TQKV_F16 = 0, TQKV_TQ2 = 1, TQKV_TQ3 = 2, TQKV_TQ4 = 3, TQKV_TQ8 = 4 };
/* Output element types. */
enum { TQKV_OUT_F32 = 0, TQKV_OUT_F16 = 1, TQKV_OUT_BF16 = 2 };
/* Backends. */
enum { TQKV_BACKEND_AUTO = 0, TQKV_BACKEND_CPU_REFERENCE = 1, TQKV_BACKEND_CPU = 2,
       TQKV_BACKEND_CUDA = 3 };

typedef struct tqkv_cache_config {
  int32_t batch;        /* sequences */
  int32_t kv_heads;     /* KV heads */
  int32_t head_dim;     /* multiple of 16, 32..1024 */
  int32_t capacity;     /* slots per sequence (the window in ring mode) */
  int32_t key_format;   /* TQKV_F16 .. TQKV_TQ8 */
  int32_t value_format;
  int32_t ring;         /* 1: sliding-window ring buffer */
  int32_t layer;        /* feeds the rotation seed */
  uint64_t seed;
  int32_t sign_flips;   /* 1 (default): random signs before the Hadamard */
  int32_t scale_rule;   /* 0 norm, 1 least squares (default) */
  int32_t codebook;     /* 0 gaussian (default), 1 beta */
} tqkv_cache_config;

typedef struct tqkv_decode_params {
  int32_t q_heads;       /* multiple of kv_heads */
  float scale;           /* 0: 1/sqrt(head_dim) */
  float softcap;         /* 0: off */
  int32_t window;        /* 0: off */
  const float* sinks;    /* [q_heads] or NULL */
  int32_t splits;        /* split-K partitions; 0: backend's choice */
  int32_t out_type;      /* TQKV_OUT_* */
  int32_t backend;       /* TQKV_BACKEND_* */
} tqkv_decode_params;

typedef struct tqkv_cache tqkv_cache; /* opaque host-memory cache */

const char* tqkv_version(void);
const char* tqkv_status_string(tqkv_status status);
const char* tqkv_last_error(void);

/* Fills *config with defaults for the given shape: tq4 keys and values, contiguous. */
tqkv_status tqkv_cache_config_init(tqkv_cache_config* config, int32_t batch, int32_t kv_heads,
                                   int32_t head_dim, int32_t capacity);
/* Parses "tq4", "k8v4", "kf16v4", ... into key and value formats. */
tqkv_status tqkv_parse_kv_format(const char* text, int32_t* key_format, int32_t* value_format);

tqkv_status tqkv_cache_create(const tqkv_cache_config* config, tqkv_cache** cache);
void tqkv_cache_destroy(tqkv_cache* cache); /* NULL is fine */
/* k, v: [n_tokens][kv_heads][head_dim] float32. On error the cache is unchanged. */
tqkv_status tqkv_cache_append(tqkv_cache* cache, int32_t seq, const float* k, const float* v,
                              int32_t n_tokens);
tqkv_status tqkv_cache_tokens(const tqkv_cache* cache, int32_t seq, int64_t* tokens);
tqkv_status tqkv_cache_storage_bytes(const tqkv_cache* cache, size_t* bytes);
/* q: [batch][q_heads][head_dim] float32; out: [batch][q_heads][head_dim] of params->out_type. */
tqkv_status tqkv_decode_attention(const tqkv_cache* cache, const float* q, void* out,
                                  const tqkv_decode_params* params);
/* As tqkv_decode_attention, and lse: [batch][q_heads] float32, the natural log of each output
 * row's softmax denominator (-inf where nothing was visible); see tqkv::DecodeParams::lse. */
tqkv_status tqkv_decode_attention_lse(const tqkv_cache* cache, const float* q, void* out,
                                      float* lse, const tqkv_decode_params* params);
/* Combines two attention results over disjoint positions of the same queries (rows x head_dim
 * values of out_type each, with their lse): out = (e^lse_a out_a + e^lse_b out_b) /
 * (e^lse_a + e^lse_b); lse (may be NULL) = ln(e^lse_a + e^lse_b). Host memory; out may alias
 * out_a or out_b. See tqkv::merge_attention_states. */
tqkv_status tqkv_merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                                        const float* lse_b, void* out, float* lse, int32_t rows,
                                        int32_t head_dim, int32_t out_type);

#ifdef __cplusplus
}
#endif

#endif /* TQKV_TQKV_H */
