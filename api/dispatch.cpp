// The public entry points: one call that runs where the cache lives.
#include <cstdio>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cpu/fast/fast.hpp"
#include "tqkv/tqkv.hpp"
#if TQKV_HAVE_CUDA
#include "cuda/backend.hpp"
#endif

namespace tqkv {
namespace {

std::string_view backend_name(Backend b) {
  switch (b) {
    case Backend::automatic: return "automatic";
    case Backend::cpu_reference: return "cpu_reference";
    case Backend::cpu: return "cpu";
    case Backend::cuda: return "cuda";
  }
  return "?";
}

[[noreturn]] void no_cuda(std::string_view why) {
  raise(Status::backend_unavailable, fmt::format("the CUDA backend is unavailable: {}", why));
}

// Returns when the CUDA backend can run here; else Error(backend_unavailable) saying why.
void require_cuda() {
#if TQKV_HAVE_CUDA
  if (cuda_backend::device_count() == 0) no_cuda("no CUDA device is present");
#else
  no_cuda("this build has no CUDA (configure with nvcc present or -DTQKV_CUDA=ON)");
#endif
}

[[noreturn]] void not_a_backend(Backend b) {
  raise(Status::invalid_argument,
        fmt::format("backend {} ({}) is not a backend", static_cast<int>(b), backend_name(b)));
}

Backend resolve(const CacheView& cache, Backend requested) {
  if (requested != Backend::automatic) return requested;
#if TQKV_HAVE_CUDA
  if (cuda_backend::is_device_pointer(cache.k_codes)) return Backend::cuda;
#else
  (void)cache;
#endif
  return Backend::cpu;
}

}  // namespace

BatchEncoder fast_cpu_encoder() noexcept { return cpu_fast::encode_vectors; }

const char* version() noexcept { return "0.1.0"; }

std::vector<std::string> built_backends() {
  std::vector<std::string> b = {"cpu_reference", "cpu"};
#if TQKV_HAVE_CUDA
  b.emplace_back("cuda");
#endif
  return b;
}

bool cuda_available() noexcept {
#if TQKV_HAVE_CUDA
  return cuda_backend::device_count() > 0;
#else
  return false;
#endif
}

std::string cpu_description() {
  std::string model = "unknown CPU";
  if (std::FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, f))
      if (std::strncmp(line, "model name", 10) == 0) {
        const char* colon = std::strchr(line, ':');
        model = colon ? std::string(colon + 2) : model;
        if (!model.empty() && model.back() == '\n') model.pop_back();
        break;
      }
    std::fclose(f);
  }
  return fmt::format("{}, {} threads; SIMD targets: {} (active: {})", model,
                     std::thread::hardware_concurrency(),
                     fmt::join(cpu_fast::available_targets(), ", "), cpu_fast::active_target());
}

std::string gpu_description() {
#if TQKV_HAVE_CUDA
  if (cuda_backend::device_count() == 0) return "none (CUDA built in, but no device is visible)";
  return cuda_backend::device_description();
#else
  return "none (this build has no CUDA backend)";
#endif
}

std::size_t decode_workspace_bytes(const CacheView& cache, const DecodeParams& params,
                                   Backend backend) {
  validate(cache, params);
  if (resolve(cache, backend) != Backend::cuda) return 0;  // CPU paths allocate per call
  require_cuda();
#if TQKV_HAVE_CUDA
  return cuda_backend::decode_workspace_bytes(cache, params);
#else
  return 0;  // not reached: require_cuda() raised
#endif
}

void decode_attention(const CacheView& cache, const float* q, void* out, const DecodeParams& params,
                      const ExecContext& ctx) {
  const Backend backend = resolve(cache, ctx.backend);
  switch (backend) {
    case Backend::cpu_reference:
      decode_attention_reference(cache, q, out, params);
      return;
    case Backend::cpu:
      cpu_fast::decode_attention(cache, q, out, params, ctx.threads);
      return;
    case Backend::cuda:
      require_cuda();
#if TQKV_HAVE_CUDA
      cuda_backend::decode_attention(cache, q, out, params, ctx);
#endif
      return;
    case Backend::automatic:
      break;
  }
  not_a_backend(backend);
}

void merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                            const float* lse_b, void* out, float* lse, int rows, int head_dim,
                            OutputType type, const ExecContext& ctx) {
  Backend backend = ctx.backend;
  if (backend == Backend::automatic) {
    backend = Backend::cpu;
#if TQKV_HAVE_CUDA
    if (cuda_backend::is_device_pointer(out_a)) backend = Backend::cuda;
#endif
  }
  switch (backend) {
    case Backend::cpu_reference:
    case Backend::cpu:  // one pass over the rows: the double-precision loop is fast enough
      merge_attention_states_reference(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, type);
      return;
    case Backend::cuda:
      require_cuda();
#if TQKV_HAVE_CUDA
      cuda_backend::merge_attention_states(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, type, ctx);
#endif
      return;
    case Backend::automatic:
      break;
  }
  not_a_backend(backend);
}

}  // namespace tqkv
