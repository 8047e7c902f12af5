#include "gguf.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include <fmt/format.h>

#include "tqkv/error.hpp"
#include "tqkv/format.hpp"

namespace tqkv::model {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747u;  // "GGUF" read as a little-endian u32
constexpr std::size_t kDefaultAlignment = 32;
// ggml tensors have at most 4 dimensions.
constexpr uint32_t kMaxDims = 4;

[[noreturn]] void corrupt(const std::string& origin, std::size_t at, const std::string& what) {
  raise(Status::io_error, fmt::format("GGUF {}: {} (at byte {})", origin, what, at));
}

// Bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& origin)
      : bytes_(bytes), origin_(origin) {}

  std::size_t pos() const { return pos_; }
  std::size_t remaining() const { return bytes_.size() - pos_; }

  const uint8_t* take(std::size_t n, const char* what) {
    if (n > remaining()) {
      corrupt(origin_, pos_,
              fmt::format("file truncated reading {}: need {} bytes, {} left", what, n, remaining()));
    }
    const uint8_t* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <typename T>
  T read(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string read_string(const char* what) {
    const std::size_t at = pos_;
    const uint64_t len = read<uint64_t>(what);
    if (len > remaining()) {
      corrupt(origin_, at,
              fmt::format("{} has length {} but only {} bytes remain", what, len, remaining()));
    }
    const uint8_t* p = take(static_cast<std::size_t>(len), what);
    return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
  }

 private:
  std::span<const uint8_t> bytes_;
  const std::string& origin_;
  std::size_t pos_ = 0;
};

// Size in bytes of one scalar of a metadata type; 0 for string and array.
std::size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    case GgufType::string: case GgufType::array: return 0;
  }
  return 0;
}

bool is_known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::f64); }

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::u16: case GgufType::i16:
    case GgufType::u32: case GgufType::i32: case GgufType::u64: case GgufType::i64: return true;
    default: return false;
  }
}
bool is_signed(GgufType t) {
  return t == GgufType::i8 || t == GgufType::i16 || t == GgufType::i32 || t == GgufType::i64;
}

// Reads one scalar into (u, i, f, b). Signed values land in `i` and, when non-negative, `u`.
void read_scalar(Cursor& c, GgufType t, GgufValue& v) {
  switch (t) {
    case GgufType::u8: v.u = c.read<uint8_t>("u8 value"); break;
    case GgufType::i8: v.i = c.read<int8_t>("i8 value"); break;
    case GgufType::u16: v.u = c.read<uint16_t>("u16 value"); break;
    case GgufType::i16: v.i = c.read<int16_t>("i16 value"); break;
    case GgufType::u32: v.u = c.read<uint32_t>("u32 value"); break;
    case GgufType::i32: v.i = c.read<int32_t>("i32 value"); break;
    case GgufType::u64: v.u = c.read<uint64_t>("u64 value"); break;
    case GgufType::i64: v.i = c.read<int64_t>("i64 value"); break;
    case GgufType::f32: v.f = c.read<float>("f32 value"); break;
    case GgufType::f64: v.f = c.read<double>("f64 value"); break;
    case GgufType::boolean: v.b = c.read<uint8_t>("bool value") != 0; break;
    default: break;
  }
  if (is_integer(t)) {
    if (is_signed(t)) {
      if (v.i >= 0) v.u = static_cast<uint64_t>(v.i);
    } else {
      v.i = v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                ? static_cast<int64_t>(v.u)
                : -1;
    }
  }
}

GgufValue read_value(Cursor& c, GgufType t, const std::string& origin, const std::string& key) {
  GgufValue v;
  v.type = t;
  if (t == GgufType::string) {
    v.s = c.read_string("string value");
    return v;
  }
  if (t != GgufType::array) {
    read_scalar(c, t, v);
    return v;
  }
  const std::size_t at = c.pos();
  const uint32_t raw_elem = c.read<uint32_t>("array element type");
  if (!is_known_type(raw_elem)) {
    corrupt(origin, at, fmt::format("key '{}': unknown array element type {}", key, raw_elem));
  }
  v.element_type = static_cast<GgufType>(raw_elem);
  if (v.element_type == GgufType::array) {
    corrupt(origin, at, fmt::format("key '{}': nested arrays are not supported", key));
  }
  const uint64_t count = c.read<uint64_t>("array length");
  // Every element takes at least one byte (strings at least their 8-byte length), so a count
  // larger than the remaining bytes is corrupt; checking first keeps allocations bounded.
  const std::size_t min_elem =
      v.element_type == GgufType::string ? sizeof(uint64_t) : scalar_size(v.element_type);
  if (count > c.remaining() / min_elem) {
    corrupt(origin, at,
            fmt::format("key '{}': array of {} elements does not fit in the {} bytes left", key,
                        count, c.remaining()));
  }
  v.array_size = count;
  const auto n = static_cast<std::size_t>(count);
  if (v.element_type == GgufType::string) {
    v.strings.reserve(n);
    for (std::size_t j = 0; j < n; ++j) v.strings.push_back(c.read_string("array string"));
  } else if (v.element_type == GgufType::f32 || v.element_type == GgufType::f64) {
    v.floats.reserve(n);
    for (std::size_t j = 0; j < n; ++j) {
      GgufValue e;
      read_scalar(c, v.element_type, e);
      v.floats.push_back(e.f);
    }
  } else {
    v.ints.reserve(n);
    for (std::size_t j = 0; j < n; ++j) {
      GgufValue e;
      read_scalar(c, v.element_type, e);
      v.ints.push_back(v.element_type == GgufType::boolean ? (e.b ? 1 : 0)
                       : is_signed(v.element_type)         ? e.i
                                                           : static_cast<int64_t>(e.u));
    }
  }
  return v;
}

bool is_supported_tensor_type(uint32_t t) {
  switch (static_cast<TensorType>(t)) {
    case TensorType::f32: case TensorType::f16: case TensorType::q4_0: case TensorType::q4_1:
    case TensorType::q8_0: case TensorType::bf16: return true;
  }
  return false;
}

// a * b, or false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace

std::string_view gguf_type_name(GgufType t) noexcept {
  switch (t) {
    case GgufType::u8: return "u8";
    case GgufType::i8: return "i8";
    case GgufType::u16: return "u16";
    case GgufType::i16: return "i16";
    case GgufType::u32: return "u32";
    case GgufType::i32: return "i32";
    case GgufType::f32: return "f32";
    case GgufType::boolean: return "bool";
    case GgufType::string: return "string";
    case GgufType::array: return "array";
    case GgufType::u64: return "u64";
    case GgufType::i64: return "i64";
    case GgufType::f64: return "f64";
  }
  return "?";
}

std::string_view tensor_type_name(TensorType t) noexcept {
  switch (t) {
    case TensorType::f32: return "F32";
    case TensorType::f16: return "F16";
    case TensorType::q4_0: return "Q4_0";
    case TensorType::q4_1: return "Q4_1";
    case TensorType::q8_0: return "Q8_0";
    case TensorType::bf16: return "BF16";
  }
  return "?";
}

// Block formats (ggml): Q4_0 = {f16 d; u8 qs[16]}, x = d * (q - 8);
// Q4_1 = {f16 d; f16 m; u8 qs[16]}, x = d * q + m; Q8_0 = {f16 d; i8 qs[32]}, x = d * q.
// In the 4-bit blocks byte j holds element j (low nibble) and element j + 16 (high nibble).
constexpr int kQuantBlock = 32;

int tensor_block_elements(TensorType t) noexcept {
  switch (t) {
    case TensorType::q4_0: case TensorType::q4_1: case TensorType::q8_0: return kQuantBlock;
    default: return 1;
  }
}

std::size_t tensor_block_bytes(TensorType t) noexcept {
  switch (t) {
    case TensorType::f32: return 4;
    case TensorType::f16: case TensorType::bf16: return 2;
    case TensorType::q4_0: return 2 + kQuantBlock / 2;
    case TensorType::q4_1: return 4 + kQuantBlock / 2;
    case TensorType::q8_0: return 2 + kQuantBlock;
  }
  return 0;
}

void dequantize_row(TensorType type, const uint8_t* src, std::size_t count, float* dst) {
  const auto block = static_cast<std::size_t>(tensor_block_elements(type));
  if (count % block != 0) {
    raise(Status::invalid_argument,
          fmt::format("dequantize_row: count {} is not a multiple of the {} block size {}", count,
                      tensor_type_name(type), block));
  }
  auto half_at = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return half_to_float(h);
  };
  switch (type) {
    case TensorType::f32: std::memcpy(dst, src, count * sizeof(float)); return;
    case TensorType::f16:
      for (std::size_t j = 0; j < count; ++j) dst[j] = half_at(src + 2 * j);
      return;
    case TensorType::bf16:
      for (std::size_t j = 0; j < count; ++j) {
        uint16_t h;
        std::memcpy(&h, src + 2 * j, 2);
        dst[j] = bf16_to_float(h);
      }
      return;
    case TensorType::q4_0:
    case TensorType::q4_1: {
      const bool has_min = type == TensorType::q4_1;
      const std::size_t bytes = tensor_block_bytes(type);
      for (std::size_t blk = 0; blk < count / block; ++blk, src += bytes, dst += block) {
        const float d = half_at(src);
        const float m = has_min ? half_at(src + 2) : -8.0f * d;
        const uint8_t* qs = src + (has_min ? 4 : 2);
        for (std::size_t j = 0; j < block / 2; ++j) {
          dst[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
          dst[j + block / 2] = static_cast<float>(qs[j] >> 4) * d + m;
        }
      }
      return;
    }
    case TensorType::q8_0: {
      const std::size_t bytes = tensor_block_bytes(type);
      for (std::size_t blk = 0; blk < count / block; ++blk, src += bytes, dst += block) {
        const float d = half_at(src);
        for (std::size_t j = 0; j < block; ++j) {
          dst[j] = static_cast<float>(static_cast<int8_t>(src[2 + j])) * d;
        }
      }
      return;
    }
  }
  raise(Status::unsupported,
        fmt::format("dequantize_row: tensor type {} is not supported", static_cast<uint32_t>(type)));
}

struct GgufFile::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) munmap(addr, size);
  }
};

GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    raise(Status::io_error, fmt::format("GGUF: cannot open '{}': {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    raise(Status::io_error, fmt::format("GGUF: '{}' is not a regular file", path));
  }
  auto mapping = std::make_unique<Mapping>();
  mapping->size = static_cast<std::size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->addr = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping->addr == MAP_FAILED) {
      mapping->addr = nullptr;
      const int err = errno;
      ::close(fd);
      raise(Status::io_error, fmt::format("GGUF: cannot map '{}': {}", path, std::strerror(err)));
    }
  }
  ::close(fd);
  std::span<const uint8_t> bytes(static_cast<const uint8_t*>(mapping->addr), mapping->size);
  GgufFile file = parse(bytes, path);
  file.mapping_ = std::move(mapping);
  return file;
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string origin) {
  GgufFile file;
  file.bytes_ = bytes;
  file.origin_ = std::move(origin);
  const std::string& org = file.origin_;
  Cursor c(bytes, org);

  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kGgufMagic) corrupt(org, 0, fmt::format("bad magic 0x{:08x}, not a GGUF file", magic));
  file.version_ = c.read<uint32_t>("version");
  if (file.version_ != 2 && file.version_ != 3) {
    corrupt(org, 4, fmt::format("GGUF version {} is not supported (2 and 3 are)", file.version_));
  }
  const uint64_t tensor_count = c.read<uint64_t>("tensor count");
  const uint64_t kv_count = c.read<uint64_t>("metadata count");
  // A key/value pair takes at least 12 bytes (8-byte key length + 4-byte type).
  if (kv_count > c.remaining() / 12) {
    corrupt(org, 16, fmt::format("metadata count {} does not fit in the file", kv_count));
  }
  for (uint64_t k = 0; k < kv_count; ++k) {
    const std::size_t at = c.pos();
    std::string key = c.read_string("metadata key");
    const uint32_t raw_type = c.read<uint32_t>("metadata type");
    if (!is_known_type(raw_type)) {
      corrupt(org, at, fmt::format("key '{}': unknown value type {}", key, raw_type));
    }
    GgufValue value = read_value(c, static_cast<GgufType>(raw_type), org, key);
    if (!file.metadata_.emplace(key, std::move(value)).second) {
      corrupt(org, at, fmt::format("duplicate metadata key '{}'", key));
    }
  }

  file.alignment_ = kDefaultAlignment;
  if (file.has("general.alignment")) {
    const uint64_t a = file.get_uint("general.alignment");
    if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
      corrupt(org, c.pos(), fmt::format("general.alignment {} is not a power of two <= 2^20", a));
    }
    file.alignment_ = static_cast<std::size_t>(a);
  }

  // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
  if (tensor_count > c.remaining() / 24) {
    corrupt(org, 8, fmt::format("tensor count {} does not fit in the file", tensor_count));
  }
  file.tensors_.reserve(static_cast<std::size_t>(tensor_count));
  for (uint64_t t = 0; t < tensor_count; ++t) {
    const std::size_t at = c.pos();
    GgufTensorInfo info;
    info.name = c.read_string("tensor name");
    const uint32_t n_dims = c.read<uint32_t>("tensor n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      corrupt(org, at, fmt::format("tensor '{}': n_dims {} is not in [1, {}]", info.name, n_dims,
                                   kMaxDims));
    }
    info.elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dim");
      if (dim == 0 || !checked_mul(info.elements, dim, info.elements) ||
          info.elements > (uint64_t{1} << 48)) {
        corrupt(org, at, fmt::format("tensor '{}': dim {} = {} is zero or too large", info.name,
                                     d, dim));
      }
      info.dims.push_back(dim);
    }
    const uint32_t raw_type = c.read<uint32_t>("tensor type");
    if (!is_supported_tensor_type(raw_type)) {
      corrupt(org, at, fmt::format("tensor '{}': tensor type {} is not supported (F32, F16, BF16, "
                                   "Q4_0, Q4_1, Q8_0 are)", info.name, raw_type));
    }
    info.type = static_cast<TensorType>(raw_type);
    const auto block = static_cast<uint64_t>(tensor_block_elements(info.type));
    if (info.dims[0] % block != 0) {
      corrupt(org, at, fmt::format("tensor '{}': row length {} is not a multiple of the {} block "
                                   "size {}", info.name, info.dims[0],
                                   tensor_type_name(info.type), block));
    }
    info.bytes = info.elements / block * tensor_block_bytes(info.type);
    info.offset = c.read<uint64_t>("tensor offset");
    if (info.offset % file.alignment_ != 0) {
      corrupt(org, at, fmt::format("tensor '{}': offset {} is not a multiple of the alignment {}",
                                   info.name, info.offset, file.alignment_));
    }
    if (!file.tensor_index_.emplace(info.name, file.tensors_.size()).second) {
      corrupt(org, at, fmt::format("duplicate tensor name '{}'", info.name));
    }
    file.tensors_.push_back(std::move(info));
  }

  // The data section starts at the next multiple of the alignment.
  const std::size_t end_of_infos = c.pos();
  const std::size_t pad = (file.alignment_ - end_of_infos % file.alignment_) % file.alignment_;
  if (!file.tensors_.empty() && pad > c.remaining()) {
    corrupt(org, end_of_infos, "file truncated before the tensor data section");
  }
  file.data_offset_ = end_of_infos + pad;
  const uint64_t data_size = file.tensors_.empty() ? 0 : bytes.size() - file.data_offset_;
  for (const GgufTensorInfo& info : file.tensors_) {
    if (info.offset > data_size || info.bytes > data_size - info.offset) {
      corrupt(org, file.data_offset_,
              fmt::format("tensor '{}': data [{}, {}) lies outside the {} data bytes (file "
                          "truncated?)", info.name, info.offset, info.offset + info.bytes,
                          data_size));
    }
  }
  return file;
}

namespace {
const GgufValue& need(const std::map<std::string, GgufValue>& md, const std::string& origin,
                      const std::string& key) {
  auto it = md.find(key);
  if (it == md.end()) raise(Status::io_error, fmt::format("GGUF {}: missing key '{}'", origin, key));
  return it->second;
}
[[noreturn]] void wrong_type(const std::string& origin, const std::string& key, GgufType got,
                             const char* want) {
  raise(Status::io_error, fmt::format("GGUF {}: key '{}' is {}, expected {}", origin, key,
                                      gguf_type_name(got), want));
}
}  // namespace

uint64_t GgufFile::get_uint(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (!is_integer(v.type)) wrong_type(origin_, key, v.type, "an integer");
  if (is_signed(v.type) && v.i < 0) {
    raise(Status::io_error, fmt::format("GGUF {}: key '{}' = {} is negative", origin_, key, v.i));
  }
  return v.u;
}
double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (v.type != GgufType::f32 && v.type != GgufType::f64) wrong_type(origin_, key, v.type, "a float");
  return v.f;
}
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (v.type != GgufType::boolean) wrong_type(origin_, key, v.type, "a bool");
  return v.b;
}
const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (v.type != GgufType::string) wrong_type(origin_, key, v.type, "a string");
  return v.s;
}
const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (v.type != GgufType::array || v.element_type != GgufType::string) {
    wrong_type(origin_, key, v.type, "an array of strings");
  }
  return v.strings;
}
const std::vector<int64_t>& GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = need(metadata_, origin_, key);
  if (v.type != GgufType::array || !(is_integer(v.element_type) ||
                                     v.element_type == GgufType::boolean)) {
    wrong_type(origin_, key, v.type, "an array of integers");
  }
  return v.ints;
}
uint64_t GgufFile::get_uint(const std::string& key, uint64_t fallback) const {
  return has(key) ? get_uint(key) : fallback;
}
double GgufFile::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}
const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* info = find_tensor(name);
  if (info == nullptr) {
    raise(Status::io_error, fmt::format("GGUF {}: missing tensor '{}'", origin_, name));
  }
  return *info;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensorInfo& info) const {
  // Offsets were checked in parse(); this only guards against infos from another file.
  if (data_offset_ + info.offset + info.bytes > bytes_.size()) {
    raise(Status::invalid_argument,
          fmt::format("GGUF {}: tensor '{}' does not belong to this file", origin_, info.name));
  }
  return bytes_.subspan(data_offset_ + static_cast<std::size_t>(info.offset),
                        static_cast<std::size_t>(info.bytes));
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& info) const {
  std::span<const uint8_t> src = tensor_bytes(info);
  std::vector<float> out(static_cast<std::size_t>(info.elements));
  dequantize_row(info.type, src.data(), out.size(), out.data());
  return out;
}

}  // namespace tqkv::model
