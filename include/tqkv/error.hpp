// Errors: every rejected input raises tqkv::Error with a status and a message that names the
// parameter and its value. The C ABI turns these into a status code plus message.
#pragma once

#include <stdexcept>
#include <string>

namespace tqkv {

enum class Status : int {
  ok = 0,
  invalid_argument = 1,     // a parameter is out of its domain (shape, null pointer, alignment)
  unsupported = 2,          // a valid request this build cannot serve (head dim, format pair)
  out_of_range = 3,         // an index or a capacity is exceeded
  non_finite = 4,           // NaN or Inf in an input vector
  backend_unavailable = 5,  // CUDA not built in, or no GPU present
  backend_error = 6,        // a CUDA runtime call failed
  io_error = 7,             // a file could not be read or is malformed
  internal = 8,             // a bug in tqkv
};

const char* status_name(Status s) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

// Throws Error(status, message). Kept out of line so call sites stay small.
[[noreturn]] void raise(Status status, const std::string& message);

}  // namespace tqkv
