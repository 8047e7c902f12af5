// The C ABI: validates what C cannot express (null, alignment, enum ranges), then calls the C++
// API and turns every exception into a status code plus a thread-local message.
#include "tqkv/tqkv.h"

#include <cstdint>
#include <memory>
#include <new>
#include <string>

#include <fmt/format.h>

#include "tqkv/tqkv.hpp"

struct tqkv_cache {
  tqkv::KvCache cache;
};

namespace {

thread_local std::string g_last_error;

tqkv_status fail(tqkv_status s, std::string message) {
  g_last_error = std::move(message);
  return s;
}

template <typename F>
tqkv_status guarded(F&& f) {
  try {
    g_last_error.clear();
    f();
    return TQKV_OK;
  } catch (const tqkv::Error& e) {
    return fail(static_cast<tqkv_status>(e.status()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(TQKV_OUT_OF_RANGE, "out of memory");
  } catch (const std::exception& e) {
    return fail(TQKV_INTERNAL, e.what());
  }
}

void check_pointer(const void* p, std::size_t alignment, const char* name) {
  if (p == nullptr)
    tqkv::raise(tqkv::Status::invalid_argument, fmt::format("{} is NULL", name));
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0)
    tqkv::raise(tqkv::Status::invalid_argument,
                fmt::format("{} = {} is not {}-byte aligned", name, p, alignment));
}

tqkv::Format to_format(int32_t f, const char* name) {
  if (f < TQKV_F16 || f > TQKV_TQ8)
    tqkv::raise(tqkv::Status::invalid_argument, fmt::format("{} = {} is not a format", name, f));
  return static_cast<tqkv::Format>(f);
}

}  // namespace

extern "C" {

const char* tqkv_version(void) { return tqkv::version(); }

const char* tqkv_status_string(tqkv_status status) {
  return tqkv::status_name(static_cast<tqkv::Status>(status));
}

const char* tqkv_last_error(void) { return g_last_error.c_str(); }

tqkv_status tqkv_cache_config_init(tqkv_cache_config* config, int32_t batch, int32_t kv_heads,
                                   int32_t head_dim, int32_t capacity) {
  return guarded([&] {
    check_pointer(config, alignof(tqkv_cache_config), "config");
    const tqkv::CacheConfig d;
    *config = {batch, kv_heads, head_dim, capacity, TQKV_TQ4, TQKV_TQ4, 0, 0, d.seed, 1,
               static_cast<int32_t>(d.scale_rule), static_cast<int32_t>(d.codebook)};
  });
}

tqkv_status tqkv_parse_kv_format(const char* text, int32_t* key_format, int32_t* value_format) {
  return guarded([&] {
    check_pointer(text, 1, "text");
    check_pointer(key_format, alignof(int32_t), "key_format");
    check_pointer(value_format, alignof(int32_t), "value_format");
    const tqkv::KvFormat f = tqkv::parse_kv_format(text);
    *key_format = static_cast<int32_t>(f.key);
    *value_format = static_cast<int32_t>(f.value);
  });
}

tqkv_status tqkv_cache_create(const tqkv_cache_config* config, tqkv_cache** cache) {
  return guarded([&] {
    check_pointer(config, alignof(tqkv_cache_config), "config");
    check_pointer(cache, alignof(tqkv_cache*), "cache");
    *cache = nullptr;
    tqkv::CacheConfig c;
    c.batch = config->batch;
    c.kv_heads = config->kv_heads;
    c.head_dim = config->head_dim;
    c.capacity = config->capacity;
    c.format = {to_format(config->key_format, "key_format"),
                to_format(config->value_format, "value_format")};
    c.ring = config->ring != 0;
    c.layer = config->layer;
    c.seed = config->seed;
    c.sign_flips = config->sign_flips != 0;
    if (config->scale_rule < 0 || config->scale_rule > 1)
      tqkv::raise(tqkv::Status::invalid_argument,
                  fmt::format("scale_rule = {} is not 0 (norm) or 1 (least squares)",
                              config->scale_rule));
    c.scale_rule = static_cast<tqkv::ScaleRule>(config->scale_rule);
    if (config->codebook < 0 || config->codebook > 1)
      tqkv::raise(tqkv::Status::invalid_argument,
                  fmt::format("codebook = {} is not 0 (gaussian) or 1 (beta)", config->codebook));
    c.codebook = static_cast<tqkv::CodebookKind>(config->codebook);
    *cache = new tqkv_cache{tqkv::KvCache(c)};
  });
}

void tqkv_cache_destroy(tqkv_cache* cache) { delete cache; }

tqkv_status tqkv_cache_append(tqkv_cache* cache, int32_t seq, const float* k, const float* v,
                              int32_t n_tokens) {
  return guarded([&] {
    check_pointer(cache, alignof(tqkv_cache), "cache");
    check_pointer(k, alignof(float), "k");
    check_pointer(v, alignof(float), "v");
    cache->cache.append(seq, k, v, n_tokens);
  });
}

tqkv_status tqkv_cache_tokens(const tqkv_cache* cache, int32_t seq, int64_t* tokens) {
  return guarded([&] {
    check_pointer(cache, alignof(tqkv_cache), "cache");
    check_pointer(tokens, alignof(int64_t), "tokens");
    *tokens = cache->cache.tokens(seq);
  });
}

tqkv_status tqkv_cache_storage_bytes(const tqkv_cache* cache, size_t* bytes) {
  return guarded([&] {
    check_pointer(cache, alignof(tqkv_cache), "cache");
    check_pointer(bytes, alignof(size_t), "bytes");
    *bytes = cache->cache.storage_bytes();
  });
}

namespace {

tqkv::OutputType checked_out_type(int32_t out_type) {
  if (out_type < TQKV_OUT_F32 || out_type > TQKV_OUT_BF16)
    tqkv::raise(tqkv::Status::invalid_argument,
                fmt::format("out_type = {} is not an output type", out_type));
  return static_cast<tqkv::OutputType>(out_type);
}

}  // namespace

tqkv_status tqkv_decode_attention(const tqkv_cache* cache, const float* q, void* out,
                                  const tqkv_decode_params* params) {
  return tqkv_decode_attention_lse(cache, q, out, nullptr, params);
}

tqkv_status tqkv_merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                                        const float* lse_b, void* out, float* lse, int32_t rows,
                                        int32_t head_dim, int32_t out_type) {
  return guarded([&] {
    const tqkv::OutputType type = checked_out_type(out_type);
    if (rows > 0) {
      const std::size_t element = tqkv::output_type_bytes(type);
      check_pointer(out_a, element, "out_a");
      check_pointer(lse_a, alignof(float), "lse_a");
      check_pointer(out_b, element, "out_b");
      check_pointer(lse_b, alignof(float), "lse_b");
      check_pointer(out, element, "out");
      if (lse) check_pointer(lse, alignof(float), "lse");
    }
    tqkv::ExecContext ctx;
    ctx.backend = tqkv::Backend::cpu;
    tqkv::merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, type, ctx);
  });
}

tqkv_status tqkv_decode_attention_lse(const tqkv_cache* cache, const float* q, void* out,
                                      float* lse, const tqkv_decode_params* params) {
  return guarded([&] {
    check_pointer(cache, alignof(tqkv_cache), "cache");
    check_pointer(params, alignof(tqkv_decode_params), "params");
    check_pointer(q, alignof(float), "q");
    const tqkv::OutputType out_type = checked_out_type(params->out_type);
    check_pointer(out, tqkv::output_type_bytes(out_type), "out");
    if (params->sinks) check_pointer(params->sinks, alignof(float), "sinks");
    if (lse) check_pointer(lse, alignof(float), "lse");
    if (params->backend < TQKV_BACKEND_AUTO || params->backend > TQKV_BACKEND_CUDA)
      tqkv::raise(tqkv::Status::invalid_argument,
                  fmt::format("backend = {} is not a backend", params->backend));
    tqkv::DecodeParams p;
    p.q_heads = params->q_heads;
    p.scale = params->scale;
    p.softcap = params->softcap;
    p.window = params->window;
    p.sinks = params->sinks;
    p.splits = params->splits;
    p.out_type = out_type;
    p.lse = lse;
    tqkv::ExecContext ctx;
    ctx.backend = static_cast<tqkv::Backend>(params->backend);
    tqkv::decode_attention(cache->cache.view(), q, out, p, ctx);
  });
}

}  // extern "C"
