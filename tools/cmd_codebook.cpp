// `tqkv codebook`: prints a Lloyd–Max codebook as the library computes it.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tools/commands.hpp"
#include "tqkv/tqkv.hpp"

namespace tqkv::tools {

void add_codebook_command(CLI::App& app) {
  struct Options {
    int bits = 4;
    std::string kind = "gaussian";
    int head_dim = 128;
    bool json = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "codebook", "Print the Lloyd-Max codebook (levels, decision boundaries, MSE per coordinate) "
                  "that tq formats use, computed by Lloyd iteration on the exact density.");
  cmd->add_option("-b,--bits", opt->bits, "bits per coordinate: 1, 2, 3, 4 or 8")
      ->capture_default_str();
  cmd->add_option("-k,--kind", opt->kind,
                  "density: gaussian (N(0,1), the default) or beta (exact for --head-dim)")
      ->capture_default_str();
  cmd->add_option("-d,--head-dim", opt->head_dim, "head dim for --kind beta")->capture_default_str();
  cmd->add_flag("--json", opt->json, "print JSON instead of a table");
  cmd->callback([opt] {
    const CodebookKind kind = parse_codebook_kind(opt->kind);
    const Codebook cb = compute_codebook(kind, opt->bits, opt->head_dim);
    if (opt->json) {
      nlohmann::json j = {{"kind", codebook_kind_name(kind)},
                          {"bits", cb.bits},
                          {"head_dim", cb.head_dim},
                          {"levels", cb.levels},
                          {"boundaries", cb.boundaries},
                          {"mse_per_coordinate", cb.mse},
                          {"lloyd_iterations", cb.iterations}};
      fmt::print("{}\n", j.dump(2));
      return;
    }
    fmt::print("{}-bit Lloyd-Max codebook, {} density{}: {} levels, MSE per coordinate {:.7g} "
               "({} Lloyd iterations)\n",
               cb.bits, codebook_kind_name(kind),
               kind == CodebookKind::beta ? fmt::format(" (head dim {})", cb.head_dim) : "",
               cb.size(), cb.mse, cb.iterations);
    fmt::print("{:>5}  {:>12}  {:>12}\n", "index", "level", "upper bound");
    for (int i = 0; i < cb.size(); ++i)
      fmt::print("{:>5}  {:>12.7f}  {:>12}\n", i, cb.levels[i],
                 i + 1 < cb.size() ? fmt::format("{:.7f}", cb.boundaries[i]) : "+inf");
  });
}

}  // namespace tqkv::tools
