// Decode attention (one query token per sequence) computed directly on the compressed cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "tqkv/layout.hpp"

namespace tqkv {

enum class OutputType : uint8_t { f32 = 0, f16 = 1, bf16 = 2 };
std::size_t output_type_bytes(OutputType t) noexcept;

// One parameter struct for the decode-attention family, on every backend.
struct DecodeParams {
  int q_heads = 0;               // query heads per sequence; a multiple of the cache's kv_heads
                                 // (query head h reads KV head h / (q_heads / kv_heads))
  float scale = 0.0f;            // logit scale; 0 means 1/sqrt(head_dim)
  float softcap = 0.0f;          // > 0: logits become softcap * tanh(logits / softcap)
  int window = 0;                // > 0: sliding window, only the newest `window` tokens are seen
  const float* sinks = nullptr;  // [q_heads] sink logits (added to the softmax denominator
                                 // only, as exp(sink - max)); null = none. Same memory as q.
  int splits = 1;                // split-K partitions of the KV positions; 0 = backend's choice
  OutputType out_type = OutputType::f32;
  // Optional output, [batch][q_heads] float32 in the memory of `out`: the natural log of the
  // softmax denominator that normalised each output row, ln(sum_j e^(logit_j) + e^sink) over
  // the visible positions (logits after scale and softcap; the sink term only with sinks);
  // -inf where nothing was visible and there is no sink. With it, attention over other positions
  // (an engine's own exact window of the newest tokens, a shared prefix) can be combined with
  // this output by merge_attention_states. null = not written.
  float* lse = nullptr;
};

// Throws Error naming the first parameter that does not fit the cache.
void validate(const CacheView& cache, const DecodeParams& params);
// Throws Error naming the first bad argument of merge_attention_states (pointers are checked
// only when rows > 0).
void validate_merge(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                    const void* out, int rows, int head_dim, OutputType type);

// The online-softmax state of one (sequence, query head) over a subset of positions:
// o = sum_j exp(l_j - m) v_j (unnormalised, in the accumulation domain), d = sum_j exp(l_j - m).
// An empty subset has m = -inf, d = 0, o = 0; merging it is a no-op and stays finite.
struct AttentionPartial {
  std::vector<double> o;
  double m = -std::numeric_limits<double>::infinity();
  double d = 0.0;
};
AttentionPartial merge(const AttentionPartial& a, const AttentionPartial& b);

// ---- CPU scalar reference (the oracle; double accumulation) ----

// q: [batch][q_heads][head_dim] float32 in the original domain; out: [batch][q_heads][head_dim]
// of params.out_type. The query of sequence b sits at position tokens[b] - 1 (its own key and
// value were appended before the call). A sequence with no tokens is rejected (Error naming it)
// on the CPU; the CUDA backend writes zeros for it (its token counters live on the device, and
// reading them would synchronise the stream).
// Split-K: the held positions are cut into params.splits equal ranges, each reduced to an
// AttentionPartial, and the partials merged (equal to one pass to rounding).
void decode_attention_reference(const CacheView& cache, const float* q, void* out,
                                const DecodeParams& params);

// merge_attention_states on host arrays, in double (the oracle of the CUDA merge).
void merge_attention_states_reference(const void* out_a, const float* lse_a, const void* out_b,
                                      const float* lse_b, void* out, float* lse, int rows,
                                      int head_dim, OutputType type);

// The partial state of positions [begin, end) (absolute positions; clipped to what is visible)
// for one sequence and query head. q_key_domain is the query in the domain of the key format
// (rotated for tq keys, as stored for f16); the logit scale and softcap are applied inside.
AttentionPartial attention_partial_reference(const CacheView& cache, int b, int q_head,
                                             const double* q_key_domain, int64_t begin,
                                             int64_t end, const DecodeParams& params);

// Dense attention in fp64 on uncompressed K/V, for one sequence (to measure quantization error).
// q: [q_heads][d]; k, v: [length][kv_heads][d] in chronological order (position 0 first; the
// query sits at position length - 1); out: [q_heads][d].
void dense_decode_attention(const float* q, const float* k, const float* v, int length,
                            int q_heads, int kv_heads, int head_dim, const DecodeParams& params,
                            double* out);

// ---- Backend dispatch ----

enum class Backend : uint8_t { automatic = 0, cpu_reference = 1, cpu = 2, cuda = 3 };

// Where and how to run. `stream` is a cudaStream_t for the CUDA backend (null = default stream).
// `workspace` is caller-provided scratch of at least decode_workspace_bytes(); without it the
// backend uses a workspace it caches per device (allocated on the first call only). A CUDA
// workspace must be zero-filled once before its first use (cudaMemset(workspace, 0, bytes)): it
// holds counters that each call leaves at zero again, so the same workspace serves any later
// call or graph replay on the same stream. Calls that may run at the same time need separate
// workspaces.
struct ExecContext {
  Backend backend = Backend::automatic;
  void* stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int threads = 0;  // CPU threads; 0 = all
};

std::size_t decode_workspace_bytes(const CacheView& cache, const DecodeParams& params,
                                   Backend backend);

// Runs decode attention where the cache lives: automatic picks CUDA for device pointers and the
// fast CPU path for host pointers. Throws Error(backend_unavailable) when CUDA is not built in or
// no GPU is present. On Hopper (sm_90) and later the CUDA kernel is a programmatic dependent
// launch: its blocks may start while the previous kernel on the stream finishes, and wait for
// that kernel's completion before reading anything (inputs written by earlier kernels are safe)
// except a DeviceKvCache's codebook, which no kernel writes (a codebook in the caller's memory is
// read after the wait too);
// a next kernel launched with cudaLaunchAttributeProgrammaticStreamSerialization may start
// during this one's merge and must wait (cudaGridDependencySynchronize) before reading `out`.
void decode_attention(const CacheView& cache, const float* q, void* out, const DecodeParams& params,
                      const ExecContext& ctx = {});

// Combines two attention results over disjoint sets of positions of the same queries, each row
// (one query head of one sequence: `rows` of them, head_dim values each) with its log-sum-exp
// (DecodeParams::lse): out = (e^lse_a out_a + e^lse_b out_b) / (e^lse_a + e^lse_b) and, if `lse`
// is not null, lse = ln(e^lse_a + e^lse_b). A side with lse = -inf (nothing visible) contributes
// nothing; both at -inf give zeros and -inf. A sink belongs to one side only (pass sinks to one
// of the two decodes). out_a, out_b and out are of `type`; out may be out_a or out_b, lse may be
// lse_a or lse_b. Runs where the arrays live (automatic: CUDA for device pointers, on
// ctx.stream), like decode_attention; on Hopper it is a programmatic dependent launch too (r235:
// 2.2 us per graph step after a batch-1 decode, 2.9 at batch 8).
void merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                            const float* lse_b, void* out, float* lse, int rows, int head_dim,
                            OutputType type, const ExecContext& ctx = {});

}  // namespace tqkv
