// Decode attention with the query group's multiply-adds on the tensor cores (mma.sync m16n8k16,
// f16 operands, f32 accumulation; sm_80 and sm_90). performance-notes.md (v3) has the design
// and the numbers; in short:
//
// - Work unit: a tile of 16 positions. A block has kWorkers independent workers (one warp, or
//   kWpt warps for head dims above 128), each streaming its own tiles through its own cp.async
//   stages, with its own online softmax; no block-wide barrier until the final merge.
// - Scores, per 8 positions: S^T[16 x 8] = A[16 x d] * K^T. A holds the query heads (rows 0-7, in
//   fp16) and their rounding residues (rows 8-15), so one mma gives hi and lo parts of the fp32
//   query: their sum carries ~22 bits. Groups of at most 4 heads use the transposed form
//   (PACKED_LO below): one mma per 16 positions. The coordinate order inside each k step is
//   permuted so that every lane reads one contiguous quarter of a key row.
// - Values: O[16 coords x 8 heads] += V^T[16 coords x 16 positions] * P^T, where P^T is the
//   score accumulator of two 8-position blocks taken as is (its layout is the B fragment), split
//   into fp16 hi + lo (two mmas). The value scale is folded into P, the key scale into S.
// - Codes become fp16 through a shared-memory table, one 32-bit load per pair of codes (tq3,
//   tq4) or per code (tq8, as hi + lo halves), one 64-bit load (two pairs) per byte of four
//   codes (tq2). Each table row is replicated for the 32 lanes (16 for 64-bit entries: a load's
//   phase), so lookups never conflict on banks. Levels are multiplied by lambda (found on the
//   host) so that their fp16 rounding errors are ~5x smaller; the result is divided by lambda.
#pragma once

#include <type_traits>
#include <utility>

#include "decode_common.cuh"

namespace tqkv::cuda_detail {

constexpr int lowest_bit(int x) { return x & -x; }
constexpr int cmin(int a, int b) { return a < b ? a : b; }
constexpr int cmax(int a, int b) { return a > b ? a : b; }

// Table rows: one per byte of four codes (tq2: a 64-bit entry, two fp16 pairs), one per pair of
// codes (tq3, tq4), one per code (tq8), none for f16.
constexpr bool quad_table(Format f) { return f == Format::tq2; }
constexpr bool pair_table(Format f) { return f == Format::tq3 || f == Format::tq4; }
constexpr int table_rows(Format f) {
  return f == Format::f16 ? 0 : quad_table(f) ? 256 : pair_table(f) ? 1 << (2 * bits_of(f)) : 1 << bits_of(f);
}
// [K entry x 32 lanes][V entry x 32 lanes], or for a 64-bit entry x 16 lanes (lane % 16).
inline constexpr int kTableRowBytes = 256;
inline constexpr int kTableV = 128;  // byte offset of the V entries in a row

// Width of the shared loads that load_bits() issues for NB bits at an ALIGN-bit boundary.
constexpr int load_width(int nb, int align) {
  const int nw = (nb + 31) / 32;
  return align >= 128 && nw % 4 == 0 ? 16 : align >= 64 && nw % 2 == 0 ? 8 : 4;
}

// Wavefronts one warp-wide shared load costs when lane l reads `width` bytes at addr[l]
// (128-byte wavefronts: 8 lanes per phase for 16-byte loads, 16 for 8-byte loads).
constexpr int smem_wavefronts(const int (&addr)[32], int width) {
  const int per_phase = width == 16 ? 8 : width == 8 ? 16 : 32;
  int total = 0;
  for (int p0 = 0; p0 < 32; p0 += per_phase) {
    int worst = 1;
    for (int bank = 0; bank < 32; ++bank) {
      int words[128] = {};
      int n = 0;
      for (int l = p0; l < p0 + per_phase; ++l)
        for (int k = 0; k < width / 4; ++k) {
          const int w = addr[l] / 4 + k;
          if (w % 32 != bank) continue;
          bool seen = false;
          for (int x = 0; x < n; ++x) seen = seen || words[x] == w;
          if (!seen) words[n++] = w;
        }
      worst = cmax(worst, n);
    }
    total += worst;
  }
  return total;
}

// Copy groups in flight per worker: the kernel copies tiles in groups of STAGES / 2 and takes one
// group per loop iteration (has_tile_pairs below).
inline constexpr int kTileGroupsInFlight = 2;
// Shared memory a block may take for two to fit on an H100 SM (233,472 bytes, 1 KB reserved per block).
inline constexpr int kTwoBlocksSmemBytes = (233472 - 2 * 1024) / 2;

// Warps sharing a tile (each keeps the output of D / wpt coordinates in registers): one up to
// d = 256 unless the stages would not fit in shared memory, two above (registers). Tile pairs
// take one (the kernel asserts it, MmaShape that they fit).
constexpr int warps_per_tile(Format kf, Format vf, int d, int warps, int stages) {
  if (stages > kTileGroupsInFlight) return 1;
  const int pad = 128;  // worst case of the bank-conflict padding of one row
  const int stage = 16 * (row_bytes_of(kf, d) + row_bytes_of(vf, d) + 2 * pad) + 128;
  const int fixed = 8 * d * 4 + 2 * 1024 + d / 16 * 512 + cmax(table_rows(kf), table_rows(vf)) * kTableRowBytes;
  for (int wpt = d <= 256 ? 1 : 2; wpt < 8; wpt *= 2)
    if ((d / 16) % wpt == 0 && fixed + warps / wpt * stages * stage <= 220 * 1024) return wpt;
  return 8;
}

template <Format KF, Format VF, int D, int WARPS, int STAGES>
struct MmaShape {
  static_assert(D % 16 == 0, "head dim must be a multiple of 16");
  static constexpr int kD = D;
  static constexpr int kThreads = WARPS * 32;
  static constexpr int kKB = bits_of(KF), kVB = bits_of(VF);
  static constexpr int kRowK = row_bytes_of(KF, D), kRowV = row_bytes_of(VF, D);
  static constexpr int kWpt = warps_per_tile(KF, VF, D, WARPS, STAGES);
  static_assert(WARPS % kWpt == 0 && (D / 16) % kWpt == 0, "warps must divide the tile work");
  static constexpr int kWorkers = WARPS / kWpt;
  static constexpr int kKSteps = D / 16;
  static constexpr int kMTiles = D / 16 / kWpt;  // value mma row tiles per warp
  static constexpr bool kQInRegisters = D <= 128;

  // Keys: a lane reads one quarter of a row (4 coordinates per k step), in groups of k steps.
  static constexpr int kKStepBits = 4 * kKB;
  static constexpr int kKGroup = kKB == 3 ? 8 : 128 / kKStepBits;
  static constexpr int kKGroups = (kKSteps + kKGroup - 1) / kKGroup;
  static constexpr int kLaneBitsK = D / 4 * kKB;
  static constexpr int kAlignK = cmin(128, cmin(lowest_bit(kLaneBitsK), lowest_bit(kKGroup * kKStepBits)));
  // Values: a lane reads 2 coordinates per m tile of 4 rows.
  static constexpr int kLaneBitsV = kMTiles * 2 * kVB;
  static constexpr int kAlignV = cmin(128, cmin(lowest_bit(D / 8 * kVB), lowest_bit(kLaneBitsV)));

  static constexpr int k_cost(int stride) {
    int addr[32] = {};
    const int w = load_width(cmin(kKGroup, kKSteps) * kKStepBits, kAlignK);
    for (int l = 0; l < 32; ++l) addr[l] = (l >> 2) * stride + ((l & 3) * kLaneBitsK / 8) / w * w;
    return smem_wavefronts(addr, w);
  }
  static constexpr int v_cost(int stride) {
    const int w = load_width(kLaneBitsV, kAlignV);
    int total = 0;
    for (int r = 0; r < 4; ++r) {
      int addr[32] = {};
      for (int l = 0; l < 32; ++l) {
        const int row = 2 * (l & 3) + (r & 1) + (r >> 1) * 8;
        addr[l] = row * stride + ((l >> 2) * (D / 8) * kVB / 8) / w * w;
      }
      total += smem_wavefronts(addr, w);
    }
    return total;
  }
  template <bool Key>
  static constexpr int best_stride() {
    const int row = Key ? kRowK : kRowV;
    int best = row, best_cost = 1 << 30;
    for (int pad = 0; pad < 128; pad += 16) {
      const int cost = Key ? k_cost(row + pad) : v_cost(row + pad);
      if (cost < best_cost) best = row + pad, best_cost = cost;
    }
    return best;
  }
  static constexpr int kStrideK = best_stride<true>();
  static constexpr int kStrideV = best_stride<false>();

  // Shared memory (bytes, 16-byte aligned offsets).
  static constexpr int kOffQ = 0;  // float [8][D]: rotated query, then the block's output
  static constexpr int kOffStats = kOffQ + kMaxHeadsPerBlock * D * 4;  // m[8], d[8], q max[8]
  static constexpr int kOffLevels = kOffStats + 32 * 4;                // float [2][256]: K, V levels (tables, d > 128)
  static constexpr int kOffQFrag = kOffLevels + 2 * 256 * 4;           // uint4 [kKSteps][32]
  static constexpr int kOffTable = kOffQFrag + kKSteps * 32 * 16;
  static constexpr int kTableBytes = cmax(table_rows(KF), table_rows(VF)) * kTableRowBytes;
  static constexpr int kOffStages = kOffTable + kTableBytes;
  static constexpr int kStageV = 16 * kStrideK;
  // ScalePair [16], then 16 words of zeros: the whole first warp of a worker copies, lanes 16-31
  // zero-filling (no global read), because with lanes 0-15 alone (a divergent branch) kernels at
  // d = 64-96 spilled 8-16 B.
  static constexpr int kStageScales = kStageV + 16 * kStrideV;
  static constexpr int kStageBytes = kStageScales + 2 * 16 * 4;
  // The warps of a tile split the key steps between them (kSplitKeys) when the step groups divide
  // evenly, and add up their partial scores through kOffKeyScratch (a float4 per lane and warp; a
  // float2 in the transposed form).
  // Before (r32) every warp computed all scores: d = 512 was compute-bound at half its floor.
  static constexpr bool kSplitKeys = kWpt > 1 && kKGroups % kWpt == 0 && kKSteps % kKGroup == 0;
  // Score accumulators per 8-position block: one mma chain over the k steps, or two (even and odd
  // steps, added before the softmax) for the longer chains of d >= 256. r55/r56, against one chain
  // on the same machine: tq3/tq2 at d = 256 7-9 % faster, tq3/tq2/k8v4 at d = 512 2-5 %; tq4 at
  // d = 256 2.5 % slower (so it keeps one); at d = 128 (8 steps) two cost tq3/tq2/k8v4 2-6 %.
  static constexpr int kScoreChains = D >= 256 && KF != Format::tq4 ? 2 : 1;
  static constexpr int kOffKeyScratch = kOffStages + kWorkers * STAGES * kStageBytes;
  static constexpr int kEnd = kOffKeyScratch + (kSplitKeys ? kWorkers * kWpt * 32 * 16 : 0);
  // After the loop, per worker: m[8], l[8], o[8][D] (overlaps fragments, table and stages).
  static constexpr int kOffMerge = kOffQFrag;
  static constexpr int kMergeFloats = 16 + kMaxHeadsPerBlock * D;
  static constexpr int kMergeEnd = kOffMerge + kWorkers * kMergeFloats * 4;
  static constexpr int kSmemBytes = cmax(kEnd, kMergeEnd) + 16;  // slack: funnel loads read a word past a row
  static_assert(kSmemBytes <= 227 * 1024, "shared memory beyond the 227 KB a block may use");
  static_assert(kStageBytes % 16 == 0 && kOffStages % 16 == 0, "stages must stay 16-byte aligned");
};

// ---- small device helpers ----

// d += a * b, m16n8k16, f16 inputs, f32 accumulators.
__device__ __forceinline__ void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t half2_bits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// (a, b) -> fp16 pairs hi and lo with hi + lo = (a, b) to ~22 bits.
__device__ __forceinline__ void split_half2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  const float2 hf = __half22float2(h);
  hi = half2_bits(h);
  lo = half2_bits(__floats2half2_rn(a - hf.x, b - hf.y));
}

// NB bits of the little-endian bitstream at `row` from bit `pos` (a multiple of ALIGN), as words
// with bit 0 = bit pos. One extra word (0) lets a field straddle the last two words.
template <int NB>
using BitWords = uint32_t[(NB + 31) / 32 + 1];

template <int NB, int ALIGN>
__device__ __forceinline__ void load_bits(const uint8_t* row, int pos, BitWords<NB>& w) {
  constexpr int NW = (NB + 31) / 32;
  constexpr int width = load_width(NB, ALIGN);
  const uint32_t* p = reinterpret_cast<const uint32_t*>(row) + (pos >> 5);
  if constexpr (ALIGN >= 32) {
#pragma unroll
    for (int i = 0; i < NW; i += width / 4) {
      if constexpr (width == 16) {
        const uint4 v = *reinterpret_cast<const uint4*>(p + i);
        w[i] = v.x, w[i + 1] = v.y, w[i + 2] = v.z, w[i + 3] = v.w;
      } else if constexpr (width == 8) {
        const uint2 v = *reinterpret_cast<const uint2*>(p + i);
        w[i] = v.x, w[i + 1] = v.y;
      } else {
        w[i] = p[i];
      }
    }
  } else {
    uint32_t x[NW + 1];
#pragma unroll
    for (int i = 0; i <= NW; ++i) x[i] = p[i];
    const int sh = pos & 31;
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = __funnelshift_r(x[i], x[i + 1], sh);
  }
  w[NW] = 0;
}

// (a & B) | c in one LOP3 (the compiler split it in two when c is the lane offset, ncu r23).
template <uint32_t B>
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(B), "r"(c));
  return d;
}
// Table entries: row r of lane l at byte r * 256 + 4 l of the key table (values: + kTableV).
// Entry whose row is bits [POS, POS + NB) of w (NB <= 24): one shift (none when the field
// starts at bit 8 of a word) and one LOP3 build the offset.
template <int POS, int NB, int N>
__device__ __forceinline__ uint32_t table_at_bits(const uint8_t* table, const uint32_t (&w)[N], uint32_t lane4) {
  constexpr int word = POS / 32, sh = POS % 32;
  constexpr uint32_t mask = ((1u << NB) - 1u) << 8;
  uint32_t y;
  if constexpr (sh + NB > 32) y = __funnelshift_r(w[word], w[word + 1], sh - 8);
  else if constexpr (sh >= 8) y = w[word] >> (sh - 8);
  else y = w[word] << (8 - sh);
  return *reinterpret_cast<const uint32_t*>(table + and_or<mask>(y, lane4));
}
// Bit i of word W of a stream of 2 KB-bit fields: 1 in the lower half of its field.
template <int KB>
constexpr uint32_t low_half_mask(int word) {
  uint32_t m = 0;
  for (int i = 0; i < 32; ++i)
    if ((32 * word + i) % (2 * KB) < KB) m |= 1u << i;
  return m;
}
// For two rows' streams of KB-bit codes, a and b, with field j = codes (2j, 2j + 1): x gets
// field j = (a's code 2j, b's code 2j), y = (a's code 2j + 1, b's code 2j + 1); the lower code
// in the lower KB bits. Two funnel shifts and two LOP3s per word.
template <int KB, int N>
__device__ __forceinline__ void interleave_codes(const uint32_t (&a)[N], const uint32_t (&b)[N], uint32_t (&x)[N],
                                                 uint32_t (&y)[N]) {
  static_for<N>([&](auto I) {
    constexpr int i = decltype(I)::value;
    constexpr uint32_t m = low_half_mask<KB>(i);
    uint32_t b_up, a_down;  // (b << KB) and (a >> KB) of the whole streams, word i
    if constexpr (i == 0) b_up = b[0] << KB;
    else b_up = __funnelshift_l(b[i - 1], b[i], KB);
    if constexpr (i + 1 < N) a_down = __funnelshift_r(a[i], a[i + 1], KB);
    else a_down = a[i] >> KB;
    x[i] = (a[i] & m) | (b_up & ~m);
    y[i] = (a_down & m) | (b[i] & ~m);
  });
}
// Entry indexed by byte K of x (one PRMT builds the offset).
template <int K>
__device__ __forceinline__ uint32_t table_at_byte(const uint8_t* table, uint32_t x, uint32_t lane4) {
  return *reinterpret_cast<const uint32_t*>(table + __byte_perm(x, lane4, 0x5504 | (K << 4)));
}
// tq2: the 64-bit entry indexed by byte K of x; lane8 = 8 (lane % 16), so that the 16 lanes of a
// load's phase read 16 different bank pairs. One PRMT and one load give two fp16 pairs, where a
// table of code pairs took a split of the words into nibbles, two PRMTs and two loads.
template <int K>
__device__ __forceinline__ uint2 quad_at_byte(const uint8_t* table, uint32_t x, uint32_t lane8) {
  return *reinterpret_cast<const uint2*>(table + __byte_perm(x, lane8, 0x5504 | (K << 4)));
}
// Table entry for `row`: a pair of lambda-scaled fp16 levels, or (tq8) one level as hi + lo.
template <Format F>
__device__ __forceinline__ uint32_t table_entry(const float* levels, int row, float lambda) {
  if constexpr (pair_table(F)) {
    constexpr int mask = (1 << bits_of(F)) - 1;
    return half2_bits(__floats2half2_rn(lambda * levels[row & mask], lambda * levels[row >> bits_of(F)]));
  } else {
    (void)lambda;  // tq8 tables carry the residue instead
    const __half h = __float2half_rn(levels[row]);
    const __half l = __float2half_rn(levels[row] - __half2float(h));
    return half2_bits(__halves2half2(h, l));
  }
}

// 16 bytes of table row `row` (of the key table if KEY): its entry, 4 lane copies, or 2 of a
// 64-bit entry. A pair table's entry is a pair of lambda-scaled fp16 levels, (tq8) one level as
// hi + lo. A tq2 byte of codes c0..c3 (2 bits each, c0 lowest) holds, for keys, one lane's four
// consecutive coordinates: the entry is the mma's B pair (c0, c1), (c2, c3). For values it holds
// the codes of coordinates (2j, 2j + 1) of two positions a (c0, c1) and b (c2, c3): the entry is the
// A rows (a's 2j, b's 2j), (a's 2j + 1, b's 2j + 1).
template <Format F, bool KEY>
__device__ __forceinline__ uint4 table_quad(const float* levels, int row, float lambda) {
  if constexpr (quad_table(F)) {
    auto l = [&](int shift) { return lambda * levels[(row >> shift) & 3]; };
    const uint32_t lo = half2_bits(KEY ? __floats2half2_rn(l(0), l(2)) : __floats2half2_rn(l(0), l(4)));
    const uint32_t hi = half2_bits(KEY ? __floats2half2_rn(l(4), l(6)) : __floats2half2_rn(l(2), l(6)));
    return make_uint4(lo, hi, lo, hi);
  } else {
    const uint32_t v = table_entry<F>(levels, row, lambda);
    return make_uint4(v, v, v, v);
  }
}

// Calls copy(idx) for idx = first, first + STRIDE, ... below N: unrolled up to 4 calls per
// thread; more (f16 rows) as a loop unrolled by 4, which keeps f16 at d = 128 from spilling.
template <int N, int STRIDE, typename F>
__device__ __forceinline__ void copy_rows(int first, F&& copy) {
  constexpr int kCalls = (N + STRIDE - 1) / STRIDE;
  if constexpr (kCalls <= 4) {
    static_for<kCalls>([&](auto U) {
      const int idx = first + decltype(U)::value * STRIDE;
      if (N % STRIDE == 0 || idx < N) copy(idx);
    });
  } else {
#pragma unroll 4
    for (int idx = first; idx < N; idx += STRIDE) copy(idx);
  }
}

// The kernel copies tiles in groups of STAGES / 2, two groups in flight, and takes one group per
// loop iteration: each tile with its own score mma chain and table lookups, one softmax update
// for the group. The transposed kernel's loop waits on its own dependency chains (r165), so two
// independent tiles per iteration give the scheduler work from both. Pairs exist where they fit
// at two blocks per SM beside the code table (DecodeInstance asserts it): tq3 at d <= 128 (r170:
// 426-563 instead of 482-598 instructions per tile) and tq2 at d = 64 (363 instead of 380; r174:
// 2-3 % shorter steps from 16k at batch 8); 127-128 registers, no spills. tq4's table, and tq2's
// at d >= 80, leave no room for them: r173/r174 moved the query into the second copy group to fit
// tq2 at d = 96 and 128, and its steps stayed within 1 % at batch 8 (reverted). decode_launch.cuh
// says when a launch takes them.
constexpr bool has_tile_pairs(Format kf, Format vf, int d, bool packed_lo) {
  if (!packed_lo || kf != vf) return false;
  return (kf == Format::tq3 && d <= 128) || (kf == Format::tq2 && d == 64);
}
// Tile pairs in a block that has its SM alone: tq4 at d <= 128 and tq2 at d = 128, whose 4 stages
// beside the 64 KB table fit once per SM (the launch bound then allows 168 registers at
// d = 128: tq4 472 instructions per tile instead of 511; tq2 165 registers, no spills). Only grids
// of at most one block per SM take them (r180, tq4, 8 KV heads, graph steps: d = 128 16k 13.2 ->
// 12.3 us, 64k 33.4 -> 32.4; three tiles per iteration were slower than one, r181; r227, tq2 at
// d = 128: 16k 11.7 -> 11.3, 64k 26.0 -> 23.6, where batches 2-8 at one block per SM, as tq4's
// rule in resolve_splits would give them, lost 1-4 % at 64k; tq2 at d = 80 and 96 is not measured).
constexpr bool has_lone_tile_pairs(Format kf, Format vf, int d, bool packed_lo) {
  return packed_lo && kf == vf && (kf == Format::tq4 ? d <= 128 : kf == Format::tq2 && d == 128);
}
// Pairs with which a batch-1 grid is faster at one block per SM than at two from 64k (the split
// rule, resolve_splits): the lone pairs (r182, tq4 d = 64: 64k 23.9 -> 21.2 us; r227, tq2 d = 128)
// and tq3's (r177, r182, with the SM reserved, DecodeInstance::alone_smem: d = 128 64k 32.2 ->
// 29.8, d = 64 24.4 -> 23.3). Not tq2's pairs at d = 64, which fit twice per SM (r182: equal at
// 64k, slower at 128k).
constexpr bool pairs_prefer_sm_alone(Format kf, Format vf, int d, bool packed_lo) {
  return has_lone_tile_pairs(kf, vf, d, packed_lo) || (kf == Format::tq3 && has_tile_pairs(kf, vf, d, packed_lo));
}

template <Format KF, Format VF, int D, int WARPS, int STAGES>
constexpr int mma_min_blocks() {
  if (STAGES > kTileGroupsInFlight && has_lone_tile_pairs(KF, VF, D, true)) return 1;
  return D <= 128 ? 16 / WARPS : 1;  // 128 registers at d <= 128 (2 blocks of 8 warps per SM)
}

// PACKED_LO: at most 4 query heads per block (the launcher checks; decode_launch.cuh says where it
// is used), so half of each mma's 8 head columns or 16 head rows would be idle. Instead:
// - scores are transposed: S[16 positions x 8] += K[16 x 16] * Q^T, with the keys of positions g and
//   8 + g as A (the same fp16 pairs that are B in the other layout) and column 2h / 2h + 1 holding
//   head h's hi / lo query parts; one mma per k step covers the tile's 16 positions, not two;
// - lane (g, t) then has head t's scores at positions g and 8 + g: half the softmax work;
// - the value mma's B columns 4-7 carry the lo halves of heads 0-3's weights, so one mma per m tile
//   takes hi and lo together; columns h and h + 4 are added in the workers' merge. The weights reach
//   the B layout (head by column g) through 4 shuffles per tile.
template <Format KF, Format VF, int D, int WARPS, int STAGES, bool PACKED_LO>
__global__ void __launch_bounds__(WARPS * 32, (mma_min_blocks<KF, VF, D, WARPS, STAGES>()))
    decode_mma_kernel(const DecodeLaunch a) {
  using S = MmaShape<KF, VF, D, WARPS, STAGES>;
  constexpr int G = kMaxHeadsPerBlock;
  constexpr int T = 16;  // positions per tile
  extern __shared__ __align__(16) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + S::kOffQ);
  float* m_s = reinterpret_cast<float*>(smem + S::kOffStats);
  float* d_s = m_s + G;
  float* qmax_s = d_s + G;  // [G]: per-head max |q|
  uint4* qfrag = reinterpret_cast<uint4*>(smem + S::kOffQFrag);
  const uint8_t* table = smem + S::kOffTable;

  timeline_mark(a, 0);
  const CacheView& c = a.cache;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const uint32_t lane4 = static_cast<uint32_t>(lane) * 4;
  const uint32_t lane8 = static_cast<uint32_t>(lane & 15) * 8;  // tq2's 64-bit entries
  const int worker = warp / S::kWpt, wi = warp % S::kWpt;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.head_chunks;
  const int first_in_group = (blockIdx.y % a.head_chunks) * G;
  const int n_heads = min(G, a.group - first_in_group);
  if constexpr (PACKED_LO) {
    if (n_heads > 4) __trap();  // the launcher picks PACKED_LO only for groups of at most 4
  }
  const int h0 = kv_head * a.group + first_in_group;
  const int b = blockIdx.z;

  // ---- the code tables, before the previous kernel's results are visible (programmatic launch) ----
  // They need only the codebook, so they are built while that kernel finishes (r142, graph steps of
  // back-to-back decodes: tq4 b1 4k 9.35 -> 8.85 us, b8 16k 61.9 -> 61.2; after append_step, whose
  // commit lets a decode start only as it finishes, the step is unchanged). A codebook that kernel
  // may have written (not a DeviceKvCache's: codebook_settled is false) is read after waiting for
  // it. Each thread computes one entry (a row's key or value half) once and writes its lane copies
  // as 8 16-byte stores, starting at part `lane` so that the 8 lanes of a store phase hit 8
  // different bank groups. The levels come from global memory up to d = 128 and through shared
  // memory above: the other way round, ptxas allocated the loops worse (SASS per tile, tq4: +33 to
  // +63 instructions at d = 64-128 through shared memory, +16 to +193 at d = 256-576 from global).
  // tq4 at d = 128 issues its first tile copies from the token count as it reads it here, before
  // the wait (possibly stale: the previous kernel may be the one that advances it), and checks that
  // guess against the count read after the wait: the copies need not wait for that load's round trip.
  // r219, alternated 4x against the copies after the count, graph us: b1 64k 32.5 -> 32.2, b8 16k
  // 58.2 -> 57.8, b8 64k 212.5 -> 211.9, b32 16k 214.9 -> 214.1, b1 4k 7.9 -> 7.9. Elsewhere it did
  // not pay (r217/r219: tq3 b1 +0.1-0.2 us, tq4 d = 64 mixed, +1.6-1.8 % at two shapes; d = 256 and
  // 512 within their spread), so every other kernel keeps the old order, and the same SASS.
  constexpr bool kGuessedCopies = KF == Format::tq4 && VF == Format::tq4 && D == 128;
  [[maybe_unused]] int64_t tokens_guess = 0;
  if constexpr (kGuessedCopies)
    asm volatile("ld.relaxed.gpu.global.s64 %0, [%1];" : "=l"(tokens_guess) : "l"(c.tokens + b));
  if (!a.codebook_settled) wait_for_previous_grid();
  if constexpr (S::kTableBytes > 0) {
    const float* k_levels = c.k_levels;
    const float* v_levels = c.v_levels;
    if constexpr (D > 128) {
      float* levels_s = reinterpret_cast<float*>(smem + S::kOffLevels);
      if (quantized(KF) && tid < (1 << S::kKB)) levels_s[tid] = k_levels[tid];
      if (quantized(VF) && tid < (1 << S::kVB)) levels_s[256 + tid] = v_levels[tid];
      __syncthreads();
      k_levels = levels_s, v_levels = levels_s + 256;
    }
    constexpr int rows = S::kTableBytes / kTableRowBytes;
    for (int e = tid; e < 2 * rows; e += S::kThreads) {
      const int r = e >> 1, col = e & 1;
      uint4 quad = make_uint4(0u, 0u, 0u, 0u);
      if (col == 0) {
        if constexpr (quantized(KF))
          if (r < table_rows(KF)) quad = table_quad<KF, true>(k_levels, r, a.k_lambda);
      } else {
        if constexpr (quantized(VF))
          if (r < table_rows(VF)) quad = table_quad<VF, false>(v_levels, r, a.v_lambda);
      }
      uint8_t* dst = smem + S::kOffTable + r * kTableRowBytes + col * kTableV;
#pragma unroll
      for (int p = 0; p < 8; ++p) *reinterpret_cast<uint4*>(dst + ((p + lane) & 7) * 16) = quad;
    }
  }
  wait_for_previous_grid();  // everything below reads the cache, the query or the workspace
  // The real count's load goes out now, before the guessed copies (r216: behind them, every phase
  // after its use came ~0.5 us later).
  [[maybe_unused]] int64_t tokens_now = 0;
  if constexpr (kGuessedCopies) tokens_now = c.tokens[b];

  // Up to d = 128 the query and its signs go to shared memory first (cp.async, their own group):
  // loaded after the token count's use in split_positions(), they came back one round trip later
  // (ncu r151, b1 4k: the warps stalled on the count, then on the query). Lane l of warp h copies
  // head h's coordinates l + 32 j, which it alone reads back. Shared memory, not registers: with
  // the query or the signs waiting in registers the loops of d = 64-576 grew by up to 56
  // instructions per tile. Above d = 128 the copies changed the loops too (tq3's d = 512 loop ran
  // 14 % slower in r152), so those load the query after split_positions() as before.
  static_assert(WARPS >= kMaxHeadsPerBlock && S::kThreads >= 256, "one head per warp, one level per thread");
  constexpr bool kQueryFirst = D <= 128;
  const int h = warp;  // the query head this warp rotates, if h < n_heads
  // The signs' words go to the fragments' area (written only after the rotation), a copy per warp.
  static_assert(kMaxHeadsPerBlock * kWarpSlots<D> * 4 <= S::kKSteps * 32 * 16, "the signs' copies must fit");
  uint32_t* signs_s = reinterpret_cast<uint32_t*>(smem + S::kOffQFrag) + h * kWarpSlots<D>;
  if constexpr (kQueryFirst) {
    if (h < n_heads) {
      const float* q_in = a.q + (static_cast<std::size_t>(b) * a.q_heads + h0 + h) * D;
      static_for<kWarpSlots<D>>([&](auto J) {
        const int i = lane + 32 * decltype(J)::value;
        if (i < D) cp_async4(q_s + h * D + i, q_in + i);
      });
      if (quantized(KF) && lane < kWarpSlots<D>)
        cp_async4(signs_s + lane, head_signs(c, kv_head) + lane);
    }
    cp_async_commit();
  }

  // This split's positions (as decode_kernel), in 16-position tiles dealt round-robin to workers;
  // with guessed copies, the guess's until the first copies are out. Any count the counter has held
  // gives rows inside the cache; one it cannot hold (negative, past a contiguous cache's capacity)
  // gives no copies.
  const bool plausible = tokens_guess >= 0 && (c.ring || tokens_guess <= c.capacity);
  const SplitPositions positions =
      kGuessedCopies ? split_positions_at(a, plausible ? tokens_guess : 0, split, T) : split_positions(a, b, split, T);
  int64_t begin = positions.begin;
  int n_pos = positions.count;
  int n_tiles = (n_pos + T - 1) / T;
  int my_tiles = n_tiles > worker ? (n_tiles - worker + S::kWorkers - 1) / S::kWorkers : 0;

  const std::size_t head_row0 = row_index(c, b, kv_head, 0);
  const uint8_t* k_rows = c.k_codes + head_row0 * S::kRowK;
  const uint8_t* v_rows = c.v_codes + head_row0 * S::kRowV;
  const ScalePair* scales = c.scales + head_row0;
  uint8_t* my_stages = smem + S::kOffStages + worker * STAGES * S::kStageBytes;
  const int wt = wi * 32 + lane;  // thread index inside the worker

  // Copies tile i of this worker into its stage; rows past the end are zero-filled (finite).
  constexpr int kPiecesK = S::kRowK / 16, kPiecesV = S::kRowV / 16;  // rows are padded to 16 bytes
  auto load_tile = [&](int i) {
    const int tile = worker + i * S::kWorkers;
    uint8_t* st = my_stages + (i % STAGES) * S::kStageBytes;
    const int64_t p0 = begin + static_cast<int64_t>(tile) * T;
    const int n = min(T, n_pos - tile * T);
    const int slot0 = position_slot(p0, c.capacity, c.ring);
    if (n == T && slot0 <= c.capacity - T) {
      // All but the last tile (and one at a ring's wrap): 16 valid rows in consecutive slots, so
      // the copies need no per-row checks (ncu, r23: the checked path cost ~75 of ~410
      // instructions per tile at tq4).
      const uint8_t* kt = k_rows + static_cast<std::size_t>(slot0) * S::kRowK;
      const uint8_t* vt = v_rows + static_cast<std::size_t>(slot0) * S::kRowV;
      copy_rows<T * kPiecesK, S::kWpt * 32>(wt, [&](int idx) {
        const int j = idx / kPiecesK;
        cp_async16(st + j * S::kStrideK + (idx - j * kPiecesK) * 16, kt + idx * 16);
      });
      copy_rows<T * kPiecesV, S::kWpt * 32>(wt, [&](int idx) {
        const int j = idx / kPiecesV;
        cp_async16(st + S::kStageV + j * S::kStrideV + (idx - j * kPiecesV) * 16, vt + idx * 16);
      });
      if constexpr (quantized(KF) || quantized(VF))
        if (wt < 2 * T) cp_async4_zfill(st + S::kStageScales + wt * 4, scales + slot0 + (wt & (T - 1)), wt < T);
      return;
    }
    // A tile holds at most `valid` <= capacity positions, so one wrap at most.
    auto slot_of = [&](int j) { return slot0 + j < c.capacity ? slot0 + j : slot0 + j - c.capacity; };
    copy_rows<T * kPiecesK, S::kWpt * 32>(wt, [&](int idx) {
      const int j = idx / kPiecesK, piece = idx - j * kPiecesK;
      const int slot = j < n ? slot_of(j) : slot0;
      cp_async16_zfill(st + j * S::kStrideK + piece * 16,
                       k_rows + static_cast<std::size_t>(slot) * S::kRowK + piece * 16, j < n);
    });
    copy_rows<T * kPiecesV, S::kWpt * 32>(wt, [&](int idx) {
      const int j = idx / kPiecesV, piece = idx - j * kPiecesV;
      const int slot = j < n ? slot_of(j) : slot0;
      cp_async16_zfill(st + S::kStageV + j * S::kStrideV + piece * 16,
                       v_rows + static_cast<std::size_t>(slot) * S::kRowV + piece * 16, j < n);
    });
    if constexpr (quantized(KF) || quantized(VF))
      if (wt < 2 * T) {
        const int j = wt & (T - 1);
        cp_async4_zfill(st + S::kStageScales + wt * 4, scales + (j < n ? slot_of(j) : slot0), wt < n);
      }
  };
  // A worker of one warp syncs with __syncwarp, a worker of several warps with its own named
  // barrier, so that workers do not wait for each other inside the loop (r41: d = 512 10-16 %
  // faster than with block barriers). All workers still run the same number of iterations (one
  // with a tile fewer only joins its barriers): when such a worker left the loop early, racecheck
  // reported hazards on the block barriers after it (r42; r20 likewise), which it does not report
  // with equal iterations (r41, r43).
  auto worker_sync = [&] {
    if constexpr (S::kWpt == 1) __syncwarp();
    else asm volatile("bar.sync %0, %1;\n" ::"r"(1 + worker), "r"(S::kWpt * 32) : "memory");
  };

  // ---- set-up after the wait: rotated query, its fp16 hi/lo fragments; two block barriers ----
  // (ncu, run r10: the shared-memory FWHT with a barrier per stage and the table/fragment
  // barriers were ~1,300 of the ~2,450 instructions per warp at batch 1, 4k.)
  // The query's copies (up to d = 128, issued above) or loads (above d = 128, here) go out before
  // the first tile copies: behind them (4.5 MB at batch 1, 4k) they came back late (r43 timeline:
  // query rotated at 2.5 us). Start the first copies; the set-up below overlaps them.
  float x[kWarpSlots<D>];
  uint32_t sign_word[kWarpSlots<D>];
  if constexpr (!kQueryFirst) {
    const uint32_t* signs = head_signs(c, kv_head);
    const float* q_in = a.q + (static_cast<std::size_t>(b) * a.q_heads + h0) * D;
    static_for<kWarpSlots<D>>([&](auto J) {
      constexpr int j = decltype(J)::value;
      const int i = lane + 32 * j;
      x[j] = h < n_heads && i < D ? q_in[h * D + i] : 0.0f;
      sign_word[j] = quantized(KF) && h < n_heads && i < D ? signs[i >> 5] : 0u;
    });
  }
  // Tiles are copied in groups of K (one cp.async group each), kGroups groups in flight.
  constexpr int kGroups = kTileGroupsInFlight, K = STAGES / kGroups;
  static_assert(STAGES % kGroups == 0, "the stages hold whole groups of tiles");
  static_assert(K == 1 || (PACKED_LO && S::kWpt == 1 && S::kKGroups == 1 && S::kScoreChains == 1 && quantized(VF)),
                "several tiles per iteration: transposed scores, one warp per tile, one key group, and "
                "quantized values (a missing tile's stale stage must decode to finite values)");
  auto first_copies = [&] {
#pragma unroll
    for (int s = 0; s < kGroups - 1; ++s) {
#pragma unroll
      for (int u = 0; u < K; ++u)
        if (s * K + u < my_tiles) load_tile(s * K + u);
      cp_async_commit();
    }
  };
  first_copies();
  if constexpr (kGuessedCopies) {
    // The guessed copies stand if they hold the rows the real count gives, with the same zero-filled
    // ones: the same first position, and the same count or counts that fill all of the worker's
    // first tiles. Otherwise each thread waits for its own copies before writing those bytes again.
    const SplitPositions real = split_positions_at(a, tokens_now, split, T);
    constexpr int kFirstTiles = (kGroups - 1) * K;
    const int filled = (worker + (kFirstTiles - 1) * S::kWorkers + 1) * T;
    const bool same_rows = real.begin == begin && (real.count == n_pos || (real.count >= filled && n_pos >= filled));
    begin = real.begin;
    n_pos = real.count;
    n_tiles = (n_pos + T - 1) / T;
    my_tiles = n_tiles > worker ? (n_tiles - worker + S::kWorkers - 1) / S::kWorkers : 0;
    if (!same_rows) {
      cp_async_wait<0>();
      first_copies();
    }
  }

  // The query, scaled and rotated into the key domain: one warp per head, in registers.
  if constexpr (kQueryFirst) {
    cp_async_wait<kGroups - 1>();  // the query's group (the tiles' come after it)
    __syncwarp();                  // the signs' words came by other lanes' copies
    static_for<kWarpSlots<D>>([&](auto J) {
      constexpr int j = decltype(J)::value;
      const int i = lane + 32 * j;
      x[j] = h < n_heads && i < D ? q_s[h * D + i] : 0.0f;
      sign_word[j] = quantized(KF) && h < n_heads && i < D ? signs_s[j] : 0u;
    });
  }
  if (h < n_heads) {
    static_for<kWarpSlots<D>>([&](auto J) {
      constexpr int j = decltype(J)::value;
      x[j] *= a.scale;
      if (quantized(KF) && ((sign_word[j] >> lane) & 1u)) x[j] = -x[j];
    });
    if constexpr (quantized(KF)) warp_fwht_unnormalized<D>(x);
    float mx = 0.0f;
    static_for<kWarpSlots<D>>([&](auto J) {
      constexpr int j = decltype(J)::value;
      const int i = lane + 32 * j;
      if (i >= D) return;
      const float v = quantized(KF) ? x[j] * warp_hadamard_norm<D>(j) : x[j];
      q_s[h * D + i] = v;
      mx = fmaxf(mx, fabsf(v));
    });
    mx = warp_max(mx);
    if (lane == 0) qmax_s[h] = mx;
  }
  __syncthreads();
  timeline_mark(a, 1);
  // Scale q by 2^e so that its largest coordinate sits just under 2^15: the lo halves stay normal.
  int q_exp = 0;
  {
    float mx = 0.0f;
    for (int h = 0; h < n_heads; ++h) mx = fmaxf(mx, qmax_s[h]);
    if (mx > 0.0f && isfinite(mx)) {
      int e2 = 0;
      frexpf(mx, &e2);  // mx < 2^e2
      q_exp = 15 - e2;
    }
  }
  for (int idx = tid; idx < S::kKSteps * 32; idx += S::kThreads) {
    const int s = idx >> 5, ln = idx & 31, gg = ln >> 2, tt = ln & 3;
    const int c0 = tt * (D / 4) + 4 * s;
    const int qh = PACKED_LO ? gg >> 1 : gg;  // PACKED_LO: column gg is head gg / 2, hi or (odd) lo
    float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (qh < n_heads)
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] = ldexpf(q_s[qh * D + c0 + e], q_exp);
    uint4 f;
    split_half2(x[0], x[1], f.x, f.y);
    split_half2(x[2], x[3], f.z, f.w);
    if constexpr (PACKED_LO)  // B: b0 = (c0, c0+1), b1 = (c0+2, c0+3) of column gg
      reinterpret_cast<uint2*>(qfrag)[idx] = gg & 1 ? make_uint2(f.y, f.w) : make_uint2(f.x, f.z);
    else
      qfrag[idx] = f;  // A: a0 = hi(c0, c0+1), a1 = lo, a2 = hi(c0+2, c0+3), a3 = lo
  }
  __syncthreads();

  using QFrag = std::conditional_t<PACKED_LO, uint2, uint4>;
  QFrag qreg[S::kQInRegisters ? S::kKSteps : 1];
  if constexpr (S::kQInRegisters) {
#pragma unroll
    for (int s = 0; s < S::kKSteps; ++s) qreg[s] = reinterpret_cast<const QFrag*>(qfrag)[s * 32 + lane];
  }
  // Fragment of k step s: a compile-time index (std::integral_constant) when q is in registers,
  // any int otherwise.
  auto q_at = [&](auto s) -> QFrag {
    if constexpr (S::kQInRegisters) return qreg[decltype(s)::value];
    else return reinterpret_cast<const QFrag*>(qfrag)[static_cast<int>(s) * 32 + lane];
  };
  // Score = acc * k_scale * k_mul (undoes 2^q_exp and lambda), in log2 units for exp2.
  const float k_mul = ldexpf(1.0f, -q_exp) / a.k_lambda;
  constexpr float kLog2e = 1.4426950408889634f;

  float o[S::kMTiles][4];
#pragma unroll
  for (int j = 0; j < S::kMTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;

  timeline_mark(a, 2);
  const int loop_tiles = S::kWpt == 1 ? my_tiles : (n_tiles + S::kWorkers - 1) / S::kWorkers;
  for (int i = 0; i < loop_tiles; i += K) {
#pragma unroll
    for (int u = 0; u < K; ++u)
      if (i + STAGES - K + u < my_tiles) load_tile(i + STAGES - K + u);
    cp_async_commit();
    cp_async_wait<kGroups - 1>();
    worker_sync();
    if (i >= my_tiles) {  // a worker with one tile fewer only joins the barriers (see worker_sync)
      if constexpr (S::kSplitKeys) worker_sync();  // the score exchange's
      worker_sync();
      continue;
    }
    // Sub-tile u of this iteration: its stage at st + u * kStageBytes (i and STAGES are multiples
    // of K; the offset, not an array of pointers, keeps K = 1's code as it was) and n[u] valid
    // positions, <= 0 for a tile past the end, whose stale stage is masked below.
    const uint8_t* st = my_stages + (i % STAGES) * S::kStageBytes;
    int n[K];
#pragma unroll
    for (int u = 0; u < K; ++u) n[u] = min(T, n_pos - (worker + (i + u) * S::kWorkers) * T);

    // Scores of positions g (block 0) and 8 + g (block 1) against the lane's 4 coordinates per k step
    // (odd steps into s*_odd when kScoreChains is 2).
    float s0[K][4] = {}, s1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float s0_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s1_odd[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const uint8_t* krow0 = st + g * S::kStrideK;
    const uint8_t* krow1 = krow0 + 8 * S::kStrideK;
    const uint8_t* ktable = table;
    // One group of STEPS k steps from step FIRST (an integral_constant, or an int when the two
    // warps of a tile split the steps; then q is in shared memory).
    auto score_group = [&](auto STEPS, auto FIRST) {
      constexpr int steps = decltype(STEPS)::value;
      constexpr int nb = steps * S::kKStepBits;
      BitWords<nb> w0[K], w1[K];
      const int pos = t * S::kLaneBitsK + static_cast<int>(FIRST) * S::kKStepBits;
#pragma unroll
      for (int u = 0; u < K; ++u) {
        load_bits<nb, S::kAlignK>(krow0 + u * S::kStageBytes, pos, w0[u]);
        load_bits<nb, S::kAlignK>(krow1 + u * S::kStageBytes, pos, w1[u]);
      }
      static_for<steps>([&](auto SL) {
        constexpr int sl = decltype(SL)::value;
        QFrag qa;
        if constexpr (std::is_integral_v<decltype(FIRST)>) qa = q_at(FIRST + sl);
        else qa = q_at(std::integral_constant<int, decltype(FIRST)::value + sl>{});
        // The row's fp16 pairs of this step: (c0, c1), (c2, c3); tq8 also their lo halves.
        struct KeyPairs {
          uint32_t p01, p23, lo01 = 0, lo23 = 0;
        };
        auto key_pairs = [&](const auto& w) -> KeyPairs {
          if constexpr (KF == Format::f16) {
            return {w[2 * sl], w[2 * sl + 1]};
          } else if constexpr (KF == Format::tq4) {
            const uint32_t x = w[sl / 2];
            return {table_at_byte<(sl % 2) * 2>(ktable, x, lane4), table_at_byte<(sl % 2) * 2 + 1>(ktable, x, lane4)};
          } else if constexpr (KF == Format::tq8) {
            const uint32_t x = w[sl];
            const uint32_t e0 = table_at_byte<0>(ktable, x, lane4), e1 = table_at_byte<1>(ktable, x, lane4);
            const uint32_t e2 = table_at_byte<2>(ktable, x, lane4), e3 = table_at_byte<3>(ktable, x, lane4);
            return {__byte_perm(e0, e1, 0x5410), __byte_perm(e2, e3, 0x5410), __byte_perm(e0, e1, 0x7632),
                    __byte_perm(e2, e3, 0x7632)};
          } else if constexpr (KF == Format::tq2) {  // byte sl: the step's 4 codes
            const uint2 b = quad_at_byte<sl % 4>(ktable, w[sl / 4], lane8);
            return {b.x, b.y};
          } else {
            constexpr int pb = 2 * S::kKB;  // a pair of codes indexes the table
            return {table_at_bits<sl * S::kKStepBits, pb>(ktable, w, lane4),
                    table_at_bits<sl * S::kKStepBits + pb, pb>(ktable, w, lane4)};
          }
        };
        constexpr bool even_chain = S::kScoreChains == 1 || sl % 2 == 0;
        [[maybe_unused]] float(&acc0)[4] = even_chain ? s0[0] : s0_odd;  // the untransposed form's
        if constexpr (PACKED_LO) {
          // Transposed: S[16 positions x 8 columns] += K[rows g, 8 + g] * Q^T, one mma for both blocks.
#pragma unroll
          for (int u = 0; u < K; ++u) {
            float(&acc)[4] = even_chain ? s0[u] : s0_odd;
            if constexpr (KF == Format::tq2) {
              // As the values do: rows g and 8 + g's nibbles interleaved, so that one entry is (a0, a1)
              // and another (a2, a3). An entry per row was (a0, a2), (a1, a3): 4 register moves per
              // mma to put the operands in order (SASS, r244).
              const uint32_t x0 = w0[u][sl / 4], x1 = w1[u][sl / 4];
              const uint32_t lo = (x0 & 0x0f0f0f0fu) | ((x1 << 4) & 0xf0f0f0f0u);
              const uint32_t hi = ((x0 >> 4) & 0x0f0f0f0fu) | (x1 & 0xf0f0f0f0u);
              const uint2 a01 = quad_at_byte<sl % 4>(ktable, lo, lane8), a23 = quad_at_byte<sl % 4>(ktable, hi, lane8);
              mma_f16(acc, a01.x, a01.y, a23.x, a23.y, qa.x, qa.y);
            } else {
              const KeyPairs r0 = key_pairs(w0[u]), r1 = key_pairs(w1[u]);
              mma_f16(acc, r0.p01, r1.p01, r0.p23, r1.p23, qa.x, qa.y);
              if constexpr (KF == Format::tq8) mma_f16(acc, r0.lo01, r1.lo01, r0.lo23, r1.lo23, qa.x, qa.y);
            }
          }
        } else {
          auto one = [&](const auto& w, float (&acc)[4]) {
            const KeyPairs r = key_pairs(w);
            mma_f16(acc, qa.x, qa.y, qa.z, qa.w, r.p01, r.p23);
            if constexpr (KF == Format::tq8) mma_f16(acc, qa.x, qa.y, qa.z, qa.w, r.lo01, r.lo23);
          };
          one(w0[0], acc0);
          one(w1[0], even_chain ? s1 : s1_odd);
        }
      });
    };
    if constexpr (S::kSplitKeys) {
      constexpr int per_warp = S::kKGroups / S::kWpt;
      static_for<per_warp>([&](auto GI) {
        score_group(std::integral_constant<int, S::kKGroup>{}, (wi * per_warp + decltype(GI)::value) * S::kKGroup);
      });
    } else {
      static_for<S::kKGroups>([&](auto GI) {
        constexpr int first = decltype(GI)::value * S::kKGroup;
        score_group(std::integral_constant<int, cmin(S::kKGroup, S::kKSteps - first)>{},
                    std::integral_constant<int, first>{});
      });
    }

    // Online softmax. Lane (g, t) holds head g at positions 2t, 2t+1 (block 0) and 8+2t, 9+2t
    // (block 1); PACKED_LO: head t at positions g and 8 + g (columns 2t, 2t+1 = its hi and lo parts).
    // Sub-tile u's scores are x[u * NX ...].
    constexpr int NX = PACKED_LO ? 2 : 4;
    // A position's ScalePair word: the key's bfloat16 scale in the low half, the value's in the high.
    const uint32_t* sc = reinterpret_cast<const uint32_t*>(st + S::kStageScales);
    auto key_scale = [](uint32_t w) { return __uint_as_float(__byte_perm(w, 0u, 0x1044)); };
    auto value_scale = [](uint32_t w) { return __uint_as_float(w & 0xffff0000u); };
    if constexpr (S::kScoreChains == 2) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s0[0][e] += s0_odd[e], s1[e] += s1_odd[e];
    }
    float x[K * NX];
    int pos[K * NX];
    // Both scales of a position come in one word. Groups of at most 4 (PACKED_LO) take both here;
    // larger groups take the value scales where P is scaled (below): each the form that spills
    // nothing (the other spilled 8 B in tq8 d = 96, and in tq2 / tq4 d = 64).
    float ks[K * NX];
    [[maybe_unused]] float vs[K * NX];
    // The warps of a tile add up their partial scores (kSplitKeys): every warp sums the parts in the
    // same order, so all of them hold equal scores.
    auto sum_over_tile_warps = [&](auto& part) {
      using V = std::remove_reference_t<decltype(part)>;  // float2 (PACKED_LO) or float4
      V* scratch = reinterpret_cast<V*>(smem + S::kOffKeyScratch) + worker * S::kWpt * 32;
      scratch[wi * 32 + lane] = part;
      worker_sync();
      V sum = scratch[lane];
#pragma unroll
      for (int w = 1; w < S::kWpt; ++w) {
        const V other = scratch[w * 32 + lane];
        sum.x += other.x, sum.y += other.y;
        if constexpr (std::is_same_v<V, float4>) sum.z += other.z, sum.w += other.w;
      }
      part = sum;
    };
    if constexpr (PACKED_LO) {
#pragma unroll
      for (int u = 0; u < K; ++u) {
        const uint32_t* scu = sc + u * S::kStageBytes / 4;
        x[2 * u] = s0[u][0] + s0[u][1], x[2 * u + 1] = s0[u][2] + s0[u][3];
        if constexpr (S::kSplitKeys) {  // then K = 1: tile pairs take one warp per tile
          float2 part = make_float2(x[0], x[1]);
          sum_over_tile_warps(part);
          x[0] = part.x, x[1] = part.y;
        }
        pos[2 * u] = g, pos[2 * u + 1] = 8 + g;
#pragma unroll
        for (int k = 2 * u; k < 2 * u + 2; ++k) {
          ks[k] = quantized(KF) ? key_scale(scu[pos[k]]) : 1.0f;
          vs[k] = quantized(VF) ? value_scale(scu[pos[k]]) : 1.0f;
          if (u > 0 && pos[k] >= n[u]) vs[k] = 0.0f;  // a stale stage's scales may be anything
        }
      }
    } else {
      x[0] = s0[0][0] + s0[0][2], x[1] = s0[0][1] + s0[0][3], x[2] = s1[0] + s1[2], x[3] = s1[1] + s1[3];
      if constexpr (S::kSplitKeys) {
        float4 part = make_float4(x[0], x[1], x[2], x[3]);
        sum_over_tile_warps(part);
        x[0] = part.x, x[1] = part.y, x[2] = part.z, x[3] = part.w;
      }
      pos[0] = 2 * t, pos[1] = 2 * t + 1, pos[2] = 8 + 2 * t, pos[3] = 9 + 2 * t;
      if constexpr (quantized(KF)) {
        const uint2 w0 = *reinterpret_cast<const uint2*>(sc + 2 * t);
        const uint2 w1 = *reinterpret_cast<const uint2*>(sc + 8 + 2 * t);
        ks[0] = key_scale(w0.x), ks[1] = key_scale(w0.y), ks[2] = key_scale(w1.x), ks[3] = key_scale(w1.y);
      } else {
        ks[0] = ks[1] = ks[2] = ks[3] = 1.0f;
      }
    }
#pragma unroll
    for (int k = 0; k < K * NX; ++k) x[k] *= ks[k] * k_mul;
    if (a.softcap > 0.0f) {  // one uniform branch per tile, not one per logit
#pragma unroll
      for (int k = 0; k < K * NX; ++k) x[k] = a.softcap * tanhf(x[k] / a.softcap);
    }
    float lane_max = -INFINITY;
#pragma unroll
    for (int k = 0; k < K * NX; ++k) {
      x[k] = pos[k] < n[k / NX] ? x[k] * kLog2e : -INFINITY;
      lane_max = fmaxf(lane_max, x[k]);
    }
    // After the first tiles a head's running max rarely grows. While no lane's scores exceed it,
    // the max stays, alpha is exactly 1 and o keeps its scale: the shuffles for the tile's max,
    // alpha's exponential and the rescale are skipped, with the results of the full update (r73:
    // d = 256 and 512 4-8 % faster, d = 128 unchanged).
    float alpha = 1.0f;
    const bool grew = __any_sync(0xffffffffu, lane_max > m_run);
    if (grew) {
      float tile_max = lane_max;
      if constexpr (PACKED_LO) {  // over the lanes of head t: g
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 4));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 8));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 16));
      } else {  // over the lanes of head g: t
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      }
      const float m_new = fmaxf(m_run, tile_max);
      // While nothing is visible yet (m_new = -inf) subtract 0 instead: exp2(-inf) = 0 then gives
      // p = 0 for masked positions and alpha = 0 for the empty (all-zero) state, with no NaN and
      // no per-weight branches.
      alpha = fast_exp2(m_run - (m_new == -INFINITY ? 0.0f : m_new));
      m_run = m_new;
    }
    const float m_use = m_run == -INFINITY ? 0.0f : m_run;
    float p[K * NX], psum = 0.0f;
#pragma unroll
    for (int k = 0; k < K * NX; ++k) {
      p[k] = fast_exp2(x[k] - m_use);
      psum += p[k];
    }
    l_run = l_run * alpha + psum;
    if (grew) {
      // Output fragments hold columns 2t and 2t+1: heads 2t and 2t+1, whose alphas live in lanes
      // 8t and 8t+4, or (PACKED_LO) heads 2t mod 4 and 2t+1 mod 4, in lanes 2t mod 4 and 2t+1 mod 4.
      const int src0 = PACKED_LO ? (2 * t) & 3 : 8 * t, src1 = PACKED_LO ? (2 * t + 1) & 3 : 8 * t + 4;
      const float a0 = __shfl_sync(0xffffffffu, alpha, src0);
      const float a1 = __shfl_sync(0xffffffffu, alpha, src1);
#pragma unroll
      for (int j = 0; j < S::kMTiles; ++j) o[j][0] *= a0, o[j][1] *= a1, o[j][2] *= a0, o[j][3] *= a1;
    }
    // Values of each sub-tile, into the same output fragments.
#pragma unroll
    for (int u = 0; u < K; ++u) {
      // B fragments of P^T: positions 2t, 2t+1 (ph0) and 8+2t, 9+2t (ph1) of column g, split into
      // fp16 hi + lo (pl0, pl1) for a second mma; PACKED_LO: column g is head g mod 4's hi (g < 4)
      // or lo part, so one mma takes both.
      uint32_t ph0, pl0, ph1, pl1;
      if constexpr (PACKED_LO) {
        // Head t's weights at positions g and 8 + g go to the lanes of column t (hi) and 4 + t (lo):
        // lane (g, t) takes them from lanes (2t, g mod 4) and (2t + 1, g mod 4).
        uint32_t hi, lo;
        split_half2(p[NX * u] * vs[NX * u], p[NX * u + 1] * vs[NX * u + 1], hi, lo);
        const int src = 8 * t + (g & 3);
        const uint32_t h_even = __shfl_sync(0xffffffffu, hi, src), l_even = __shfl_sync(0xffffffffu, lo, src);
        const uint32_t h_odd = __shfl_sync(0xffffffffu, hi, src + 4), l_odd = __shfl_sync(0xffffffffu, lo, src + 4);
        const uint32_t even = g < 4 ? h_even : l_even, odd = g < 4 ? h_odd : l_odd;  // (position, position + 8)
        ph0 = __byte_perm(even, odd, 0x5410);
        ph1 = __byte_perm(even, odd, 0x7632);
        pl0 = pl1 = 0u;
      } else {
        float vs4[4] = {1.0f, 1.0f, 1.0f, 1.0f};
        if constexpr (quantized(VF)) {
          const uint2 w0 = *reinterpret_cast<const uint2*>(sc + 2 * t);
          const uint2 w1 = *reinterpret_cast<const uint2*>(sc + 8 + 2 * t);
          vs4[0] = value_scale(w0.x), vs4[1] = value_scale(w0.y), vs4[2] = value_scale(w1.x), vs4[3] = value_scale(w1.y);
        }
        split_half2(p[0] * vs4[0], p[1] * vs4[1], ph0, pl0);
        split_half2(p[2] * vs4[2], p[3] * vs4[3], ph1, pl1);
      }

      // Values: rows 2t, 2t+1, 2t+8, 2t+9; the lane's 2 coordinates per m tile.
      const uint8_t* vbase = st + u * S::kStageBytes + S::kStageV;
      const int vpos = (g * (D / 8) + wi * S::kMTiles * 2) * S::kVB;
      BitWords<S::kLaneBitsV> va, vb, vc, vd;
      load_bits<S::kLaneBitsV, S::kAlignV>(vbase + (2 * t) * S::kStrideV, vpos, va);
      load_bits<S::kLaneBitsV, S::kAlignV>(vbase + (2 * t + 1) * S::kStrideV, vpos, vb);
      load_bits<S::kLaneBitsV, S::kAlignV>(vbase + (2 * t + 8) * S::kStrideV, vpos, vc);
      load_bits<S::kLaneBitsV, S::kAlignV>(vbase + (2 * t + 9) * S::kStrideV, vpos, vd);
      const uint8_t* vtable = table + kTableV;
      // tq3 values: the rows of a0..a3 pair a code of row a (or c) with the same coordinate's code
      // of row b (or d). Interleaving the two rows' bitstreams word by word builds all of them at
      // once: field j of xab = (a's code of coordinate 2j, b's), of yab the same for 2j + 1.
      BitWords<S::kLaneBitsV> xab, yab, xcd, ycd;
      if constexpr (VF == Format::tq3) {
        interleave_codes<S::kVB>(va, vb, xab, yab);
        interleave_codes<S::kVB>(vc, vd, xcd, ycd);
      }
      static_for<S::kMTiles>([&](auto J) {
        constexpr int j = decltype(J)::value;
        if constexpr (VF == Format::f16) {
          const uint32_t a0 = __byte_perm(va[j], vb[j], 0x5410), a1 = __byte_perm(va[j], vb[j], 0x7632);
          const uint32_t a2 = __byte_perm(vc[j], vd[j], 0x5410), a3 = __byte_perm(vc[j], vd[j], 0x7632);
          mma_f16(o[j], a0, a1, a2, a3, ph0, ph1);
          if constexpr (!PACKED_LO) mma_f16(o[j], a0, a1, a2, a3, pl0, pl1);
        } else if constexpr (VF == Format::tq4) {
          // Byte j%4 of x_ab = (code 2j of row a, code 2j of row b); y_ab the same for code 2j+1.
          constexpr int wd = j / 4, by = j % 4;
          const uint32_t xab = (va[wd] & 0x0f0f0f0fu) | ((vb[wd] << 4) & 0xf0f0f0f0u);
          const uint32_t yab = ((va[wd] >> 4) & 0x0f0f0f0fu) | (vb[wd] & 0xf0f0f0f0u);
          const uint32_t xcd = (vc[wd] & 0x0f0f0f0fu) | ((vd[wd] << 4) & 0xf0f0f0f0u);
          const uint32_t ycd = ((vc[wd] >> 4) & 0x0f0f0f0fu) | (vd[wd] & 0xf0f0f0f0u);
          const uint32_t a0 = table_at_byte<by>(vtable, xab, lane4), a1 = table_at_byte<by>(vtable, yab, lane4);
          const uint32_t a2 = table_at_byte<by>(vtable, xcd, lane4), a3 = table_at_byte<by>(vtable, ycd, lane4);
          mma_f16(o[j], a0, a1, a2, a3, ph0, ph1);
          if constexpr (!PACKED_LO) mma_f16(o[j], a0, a1, a2, a3, pl0, pl1);
        } else if constexpr (VF == Format::tq8) {
          const uint32_t ea0 = table_at_byte<(16 * j) % 32 / 8>(vtable, va[(16 * j) / 32], lane4);
          const uint32_t eb0 = table_at_byte<(16 * j) % 32 / 8>(vtable, vb[(16 * j) / 32], lane4);
          const uint32_t ea1 = table_at_byte<(16 * j + 8) % 32 / 8>(vtable, va[(16 * j + 8) / 32], lane4);
          const uint32_t eb1 = table_at_byte<(16 * j + 8) % 32 / 8>(vtable, vb[(16 * j + 8) / 32], lane4);
          const uint32_t ec0 = table_at_byte<(16 * j) % 32 / 8>(vtable, vc[(16 * j) / 32], lane4);
          const uint32_t ed0 = table_at_byte<(16 * j) % 32 / 8>(vtable, vd[(16 * j) / 32], lane4);
          const uint32_t ec1 = table_at_byte<(16 * j + 8) % 32 / 8>(vtable, vc[(16 * j + 8) / 32], lane4);
          const uint32_t ed1 = table_at_byte<(16 * j + 8) % 32 / 8>(vtable, vd[(16 * j + 8) / 32], lane4);
          const uint32_t h0 = __byte_perm(ea0, eb0, 0x5410), h1 = __byte_perm(ea1, eb1, 0x5410);
          const uint32_t h2 = __byte_perm(ec0, ed0, 0x5410), h3 = __byte_perm(ec1, ed1, 0x5410);
          const uint32_t l0 = __byte_perm(ea0, eb0, 0x7632), l1 = __byte_perm(ea1, eb1, 0x7632);
          const uint32_t l2 = __byte_perm(ec0, ed0, 0x7632), l3 = __byte_perm(ec1, ed1, 0x7632);
          mma_f16(o[j], h0, h1, h2, h3, ph0, ph1);
          if constexpr (!PACKED_LO) mma_f16(o[j], h0, h1, h2, h3, pl0, pl1);
          mma_f16(o[j], l0, l1, l2, l3, ph0, ph1);
        } else if constexpr (VF == Format::tq2) {
          // Nibble j of a row holds coordinates 2j, 2j + 1; byte j%8/2 of ab = (a's nibble j, b's),
          // from the even or the odd nibbles: the table row of (a0, a1).
          constexpr int wd = j / 8, by = j % 8 / 2;
          const uint32_t ab = j % 2 ? ((va[wd] >> 4) & 0x0f0f0f0fu) | (vb[wd] & 0xf0f0f0f0u)
                                    : (va[wd] & 0x0f0f0f0fu) | ((vb[wd] << 4) & 0xf0f0f0f0u);
          const uint32_t cd = j % 2 ? ((vc[wd] >> 4) & 0x0f0f0f0fu) | (vd[wd] & 0xf0f0f0f0u)
                                    : (vc[wd] & 0x0f0f0f0fu) | ((vd[wd] << 4) & 0xf0f0f0f0u);
          const uint2 a01 = quad_at_byte<by>(vtable, ab, lane8), a23 = quad_at_byte<by>(vtable, cd, lane8);
          mma_f16(o[j], a01.x, a01.y, a23.x, a23.y, ph0, ph1);
          if constexpr (!PACKED_LO) mma_f16(o[j], a01.x, a01.y, a23.x, a23.y, pl0, pl1);
        } else {
          // Field j of xab / yab (2 kb bits) is the table row of a0 / a1 (built before the loop).
          constexpr int f = 2 * S::kVB;
          const uint32_t a0 = table_at_bits<j * f, f>(vtable, xab, lane4);
          const uint32_t a1 = table_at_bits<j * f, f>(vtable, yab, lane4);
          const uint32_t a2 = table_at_bits<j * f, f>(vtable, xcd, lane4);
          const uint32_t a3 = table_at_bits<j * f, f>(vtable, ycd, lane4);
          mma_f16(o[j], a0, a1, a2, a3, ph0, ph1);
          if constexpr (!PACKED_LO) mma_f16(o[j], a0, a1, a2, a3, pl0, pl1);
        }
      });
    }
    worker_sync();  // the next load_tile overwrites this stage
  }
  cp_async_wait<0>();
  allow_next_grid();  // the next step's blocks may take free SMs during this one's merge
  timeline_mark(a, 3);
  if constexpr (PACKED_LO) {  // head t's sum over the lanes g
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 4);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 8);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 16);
  } else {  // head g's sum over the lanes t
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
    l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  }
  __syncthreads();  // every worker is done with the stages and tables: reuse them for the merge
  timeline_mark(a, 4);

  // Log-sum-exp combination of the workers: their (m, l) first; then each lane scales its own
  // output by its worker's weight exp2(m_w - max_w m) before storing it, so the sum over workers
  // needs no exponentials per coordinate.
  float* wm = reinterpret_cast<float*>(smem + S::kOffMerge) + worker * S::kMergeFloats;
  if constexpr (PACKED_LO) {  // heads 0-3 from lanes t of g = 0; heads 4-7 are empty (weight 0)
    if (wi == 0 && g < 2) {
      wm[4 * g + t] = g == 0 ? m_run : -INFINITY;
      wm[G + 4 * g + t] = g == 0 ? l_run : 0.0f;
    }
  } else if (wi == 0 && t == 0) {
    wm[g] = m_run;
    wm[G + g] = l_run;
  }
  __syncthreads();
  const float* merge = reinterpret_cast<const float*>(smem + S::kOffMerge);
  auto worker_weight = [&](int h) {  // this worker's weight for head h (0 when it saw nothing)
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < S::kWorkers; ++w) mx = fmaxf(mx, merge[w * S::kMergeFloats + h]);
    const float mine = merge[worker * S::kMergeFloats + h];
    return mine == -INFINITY ? 0.0f : exp2f(mine - mx);
  };
  // Lane t's columns 2t, 2t + 1; PACKED_LO: heads 2t mod 4 and 2t + 1 mod 4 (t >= 2: their lo halves).
  const int col_head = PACKED_LO ? (2 * t) & 3 : 2 * t;
  const float f0 = worker_weight(col_head), f1 = worker_weight(col_head + 1);
  if (tid < n_heads) {
    float mx = -INFINITY;
    for (int w = 0; w < S::kWorkers; ++w) mx = fmaxf(mx, merge[w * S::kMergeFloats + tid]);
    float l = 0.0f;
    if (mx != -INFINITY)
      for (int w = 0; w < S::kWorkers; ++w) {
        const float mw = merge[w * S::kMergeFloats + tid];
        if (mw != -INFINITY) l += merge[w * S::kMergeFloats + G + tid] * exp2f(mw - mx);
      }
    m_s[tid] = mx == -INFINITY ? -INFINITY : mx * 0.6931471805599453f;  // natural-log units
    d_s[tid] = l;
  }
  // The outputs go out in fragment order, one 16-byte store per m tile (slot jj of lane l at
  // l * kSlots + (jj + l) % kSlots, so the 8 lanes of a store phase hit 8 bank groups); in
  // (head, coordinate) order the stores of a warp hit the same banks 16 times over (head rows are
  // D floats apart). Every worker uses the same slots, so the sum over workers is slot by slot.
  constexpr int kSlots = S::kWpt * S::kMTiles;  // = D / 16
  float4* wo = reinterpret_cast<float4*>(wm + 2 * G);
  static_for<S::kMTiles>([&](auto J) {
    constexpr int j = decltype(J)::value;
    const int jj = wi * S::kMTiles + j;
    wo[lane * kSlots + (jj + lane) % kSlots] = make_float4(o[j][0] * f0, o[j][1] * f1, o[j][2] * f0, o[j][3] * f1);
  });
  __syncthreads();
  const float inv_v_lambda = 1.0f / a.v_lambda;
  // With several splits the sums go straight to this split's partial in the workspace (rows
  // a.splits * D apart), not through shared memory: one barrier and a copy fewer after the loop
  // (sm_90: tq3 d = 128 2-3 % shorter steps at batch 8, r158). The block's indices are read afresh:
  // sharing them with the set-up's kept them live through the loop, and the tq8 d = 128 kernel
  // spilled. On sm_80 that kernel spilled even so (16 B), so there the sums go through shared
  // memory and finish_decode_block() copies them.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kPartialsStored = true;
#else
  constexpr bool kPartialsStored = false;
#endif
  float* partial = nullptr;
  if constexpr (kPartialsStored) {
    unsigned bx, by, bz;
    asm volatile("mov.u32 %0, %%ctaid.x;\n\tmov.u32 %1, %%ctaid.y;\n\tmov.u32 %2, %%ctaid.z;"
                 : "=r"(bx), "=r"(by), "=r"(bz));
    const int first_head = (by / a.head_chunks) * a.group + (by % a.head_chunks) * G;
    partial = a.part_o + ((static_cast<std::size_t>(bz) * a.q_heads + first_head) * a.splits + bx) * D;
  }
  auto store_out = [&](int head, int coord, float2 v) {
    if (kPartialsStored && a.splits > 1)
      *reinterpret_cast<float2*>(partial + static_cast<std::size_t>(head) * a.splits * D + coord) = v;
    else *reinterpret_cast<float2*>(q_s + head * D + coord) = v;
  };
  for (int pos = tid; pos < 32 * kSlots; pos += S::kThreads) {
    // Back to (head, coordinate): the fragment of lane l, m tile jj (as in the value mma above).
    const int l = pos / kSlots, jj = (pos % kSlots - l % kSlots + kSlots) % kSlots;
    const int lg = l >> 2, lt = l & 3;
    // PACKED_LO: lane l + 2's fragment (columns 4-7, the lo halves) is summed into lane l's here,
    // not by shuffles after the loop (r162: 32 shuffles and adds per lane fewer, b1 4k 7.9 -> 7.8 us).
    if (PACKED_LO && lt >= 2) continue;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < S::kWorkers; ++w) {
      const float4* fragments = reinterpret_cast<const float4*>(merge + w * S::kMergeFloats + 2 * G);
      const float4 x = fragments[pos];
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
      if constexpr (PACKED_LO) {  // lane l + 2's slot of the same m tile
        const float4 y = fragments[(l + 2) * kSlots + (jj + l + 2) % kSlots];
        acc.x += y.x, acc.y += y.y, acc.z += y.z, acc.w += y.w;
      }
    }
    const int coord = lg * (D / 8) + (jj / S::kMTiles) * S::kMTiles * 2 + 2 * (jj % S::kMTiles);
    if (2 * lt < n_heads) store_out(2 * lt, coord, make_float2(acc.x * inv_v_lambda, acc.z * inv_v_lambda));
    if (2 * lt + 1 < n_heads) store_out(2 * lt + 1, coord, make_float2(acc.y * inv_v_lambda, acc.w * inv_v_lambda));
  }
  // The workers' area is free again: scratch for the split merge (8 x (D + 1) floats at most).
  static_assert(S::kWorkers * S::kMergeFloats >= kMaxHeadsPerBlock * (D + 1), "merge scratch must fit");
  finish_decode_block<D, quantized(VF), kPartialsStored>(q_s, m_s, d_s, n_heads, h0, b, a, kv_head, split,
                                                         reinterpret_cast<float*>(smem + S::kOffMerge));
}

}  // namespace tqkv::cuda_detail
