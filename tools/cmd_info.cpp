// `tqkv info`: what this build can do on this machine.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tools/commands.hpp"
#include "tqkv/tqkv.hpp"

namespace tqkv::tools {

void add_info_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "info", "Print the version, the backends built in, the CPU's SIMD targets and the GPU.");
  cmd->callback([] {
    fmt::print("tqkv {}\n", version());
    fmt::print("backends built: {}\n", fmt::join(built_backends(), ", "));
    fmt::print("cpu: {}\n", cpu_description());
    fmt::print("gpu: {}\n", gpu_description());
    fmt::print("formats: f16, tq8, tq4, tq3, tq2 (keys and values chosen independently, e.g. k8v4)\n");
    fmt::print("head dims: multiples of 16 from 32 to 1024\n");
  });
}

}  // namespace tqkv::tools
