// A reader for GGUF model files (versions 2 and 3): metadata, tensor infos and tensor data.
//
// The file is untrusted input: every count, length, offset and size is checked against the bytes
// that are really there before it is used, and anything malformed raises Error(io_error) naming
// the field, its value and its file offset. Tensor data stays in the mapped file; `dequantize`
// turns one tensor into float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tqkv::model {

// Metadata value types as numbered in the GGUF specification.
enum class GgufType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8,
  array = 9, u64 = 10, i64 = 11, f64 = 12,
};
std::string_view gguf_type_name(GgufType t) noexcept;

// Tensor element types (ggml numbering). Only these are read; others raise Error(unsupported).
enum class TensorType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, bf16 = 30 };
std::string_view tensor_type_name(TensorType t) noexcept;
// Elements per block and bytes per block (1 and the element size for f32/f16/bf16).
int tensor_block_elements(TensorType t) noexcept;
std::size_t tensor_block_bytes(TensorType t) noexcept;

// One metadata value. Scalars live in `u`/`i`/`f`/`b`/`s`; arrays in the vector matching their
// element type (integers and booleans in `ints`, floats in `floats`, strings in `strings`).
struct GgufValue {
  GgufType type = GgufType::u8;
  GgufType element_type = GgufType::u8;  // arrays only
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  uint64_t array_size = 0;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // dims[0] is the contiguous (row) dimension, as in ggml
  TensorType type = TensorType::f32;
  uint64_t offset = 0;         // from the start of the data section
  uint64_t elements = 0;
  uint64_t bytes = 0;
  // Rows of dims[0] elements: the product of the other dims.
  uint64_t rows() const { return dims.empty() ? 0 : elements / dims[0]; }
};

class GgufFile {
 public:
  // Maps and parses a file. Throws Error(io_error) if it cannot be opened or is malformed.
  static GgufFile open(const std::string& path);
  // Parses bytes held by the caller (they must outlive the object). For tests and fuzzing.
  static GgufFile parse(std::span<const uint8_t> bytes, std::string origin = "<memory>");

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  uint32_t version() const { return version_; }
  std::size_t alignment() const { return alignment_; }
  const std::string& origin() const { return origin_; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  // Typed getters: throw Error(io_error) naming the key when it is missing or of another type.
  // Integer getters accept any integer type whose value fits.
  uint64_t get_uint(const std::string& key) const;
  double get_float(const std::string& key) const;  // f32 or f64
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  const std::vector<int64_t>& get_int_array(const std::string& key) const;
  // With a default for absent keys (a present key of the wrong type still throws).
  uint64_t get_uint(const std::string& key, uint64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // null when absent
  const GgufTensorInfo& tensor(const std::string& name) const;       // throws when absent
  // The raw bytes of a tensor inside the file.
  std::span<const uint8_t> tensor_bytes(const GgufTensorInfo& info) const;
  // The tensor as float32, row-major with dims[0] contiguous.
  std::vector<float> dequantize(const GgufTensorInfo& info) const;

 private:
  GgufFile() = default;
  struct Mapping;
  std::unique_ptr<Mapping> mapping_;  // owns the mmap when opened from a path
  std::span<const uint8_t> bytes_;
  std::string origin_;
  uint32_t version_ = 0;
  std::size_t alignment_ = 32;
  std::size_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> tensor_index_;
};

// Dequantizes `count` elements (a multiple of the type's block size) from `src` into `dst`.
void dequantize_row(TensorType type, const uint8_t* src, std::size_t count, float* dst);

}  // namespace tqkv::model
