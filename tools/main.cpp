// The `tqkv` command-line tool. Every error is one clear line on stderr and a non-zero exit.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "tools/commands.hpp"
#include "tqkv/tqkv.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "tqkv: a KV cache compressed with TurboQuant (random-sign Hadamard rotation, Lloyd-Max "
      "codebook, one scale per vector), with decode attention computed on the compressed bytes.\n"
      "Start with `tqkv demo`; `tqkv COMMAND --help` explains each command.",
      "tqkv"};
  app.set_version_flag("--version", tqkv::version());
  app.require_subcommand(1);
  tqkv::tools::add_demo_command(app);
  tqkv::tools::add_quality_command(app);
  tqkv::tools::add_codebook_command(app);
  tqkv::tools::add_info_command(app);
  tqkv::tools::add_model_commands(app);
  tqkv::tools::add_bench_command(app);
  if (argc == 1) {  // no command: show what there is
    std::fputs(app.help().c_str(), stdout);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const tqkv::Error& e) {
    std::fprintf(stderr, "tqkv: error (%s): %s\n", tqkv::status_name(e.status()), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tqkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
