// Sub-commands of the `tqkv` tool. Each adds itself to the CLI11 app; main.cpp wires them up.
#pragma once

#include <CLI/CLI.hpp>

namespace tqkv::tools {

void add_demo_command(CLI::App& app);        // tools/cmd_demo.cpp
void add_codebook_command(CLI::App& app);    // tools/cmd_codebook.cpp
void add_info_command(CLI::App& app);        // tools/cmd_info.cpp
void add_quality_command(CLI::App& app);     // tools/cmd_demo.cpp (synthetic quality table)
void add_model_commands(CLI::App& app);      // tools/cmd_model.cpp (perplexity, generate)
void add_bench_command(CLI::App& app);       // tools/cmd_bench.cpp (decode benchmark, CPU/GPU)

}  // namespace tqkv::tools
