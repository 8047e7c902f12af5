// libFuzzer entry point for the GGUF reader: any input must either parse or raise tqkv::Error,
// never crash, hang or read out of bounds (built with ASan + UBSan).
//   cmake -DCMAKE_CXX_COMPILER=clang++ -DTQKV_FUZZ=ON ... && ./fuzz_gguf corpus/
#include <cstddef>
#include <cstdint>
#include <span>

#include "gguf.hpp"
#include "tqkv/error.hpp"

namespace {
// Dequantize only small tensors so the fuzzer spends its time on parsing, not on memory.
constexpr uint64_t kMaxFuzzElements = 1 << 16;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = tqkv::model::GgufFile::parse(std::span<const uint8_t>(data, size), "fuzz");
    for (const auto& info : file.tensors()) {
      if (info.elements <= kMaxFuzzElements) (void)file.dequantize(info);
    }
    for (const auto& [key, value] : file.metadata()) (void)key, (void)value;
  } catch (const tqkv::Error&) {
  }
  return 0;
}
