#include "tqkv/error.hpp"

namespace tqkv {

const char* status_name(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid_argument";
    case Status::unsupported: return "unsupported";
    case Status::out_of_range: return "out_of_range";
    case Status::non_finite: return "non_finite";
    case Status::backend_unavailable: return "backend_unavailable";
    case Status::backend_error: return "backend_error";
    case Status::io_error: return "io_error";
    case Status::internal: return "internal";
  }
  return "unknown";
}

void raise(Status status, const std::string& message) { throw Error(status, message); }

}  // namespace tqkv
