// `dcpp convert`: a checkpoint as one torch.save (.pt/.pth) or safetensors file.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <unistd.h>

#include "cli.hpp"
import dcp.error;
import dcp.metadata;
import dcp.checkpoint;

namespace dcpp_cli {
namespace {

enum class Format { torch_save, safetensors };

Format format_of(const std::string& out) {
  const auto ext = std::filesystem::path(out).extension().string();
  if (ext == ".pt" || ext == ".pth") return Format::torch_save;
  if (ext == ".safetensors") return Format::safetensors;
  throw UsageError{"cannot tell the output format of '" + out + "': name it *.pt, *.pth or *.safetensors"};
}

dcp::checkpoint::LoadOptions convert_options(const Args& args) {
  dcp::checkpoint::LoadOptions options;
  if (const auto text = args.get("threads")) {
    int n = 0;
    try {
      n = std::stoi(*text);
    } catch (...) {
    }
    if (n < 1 || n > 1024) throw UsageError{"--threads takes a number from 1 to 1024, not '" + *text + "'"};
    options.threads = n;
  }
  if (const auto keys = args.get("keys")) {
    try {
      auto re = std::make_shared<std::regex>(*keys, std::regex::ECMAScript);
      options.select = [re](std::string_view fqn) { return std::regex_search(fqn.begin(), fqn.end(), *re); };
    } catch (const std::regex_error& e) {
      throw UsageError{"--keys: bad regular expression '" + *keys + "': " + e.what()};
    }
  }
  return options;
}

// A progress bar on stderr, only on a terminal and without --quiet.
class Progress {
 public:
  Progress(bool enabled, std::uint64_t total) : enabled_(enabled && ::isatty(2) && total > 0), total_(total) {}
  void advance(std::uint64_t bytes) {
    done_ += bytes;
    if (!enabled_) return;
    const int width = 30, filled = static_cast<int>(width * done_ / total_);
    std::fprintf(stderr, "\rconverting [%s%s] %3d%%", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), static_cast<int>(100 * done_ / total_));
  }
  ~Progress() {
    if (enabled_) std::fprintf(stderr, "\r%*s\r", 50, "");
  }

 private:
  bool enabled_;
  std::uint64_t total_, done_ = 0;
};

}  // namespace

int run_convert(const Args& args) {
  const std::string checkpoint = args.positional[0];
  const std::string out = args.positional[1];
  const Format format = format_of(out);  // usage errors before any I/O
  const auto options = convert_options(args);
  const auto start = std::chrono::steady_clock::now();

  std::uint64_t total = 0;
  for (const auto& item : dcp::checkpoint::inspect(checkpoint).items)
    if (item.is_tensor() && (!options.select || options.select(item.fqn)))
      total += dcp::metadata::numel(item.tensor().size) * dcp::dtype_itemsize(item.tensor().properties.dtype);
  dcp::checkpoint::ConvertReport report;
  {
    Progress progress(!args.has("quiet"), total);
    const auto on_tensor = [&](std::uint64_t bytes) { progress.advance(bytes); };
    report = format == Format::torch_save ? dcp::checkpoint::convert_to_torch_save(checkpoint, out, options, on_tensor)
                                          : dcp::checkpoint::convert_to_safetensors(checkpoint, out, options, on_tensor);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.has("quiet"))
    std::printf("converted %llu tensors (%llu bytes) and %llu objects to %s (%s) in %.3f s\n",
                static_cast<unsigned long long>(report.tensors), static_cast<unsigned long long>(report.bytes),
                static_cast<unsigned long long>(report.objects), out.c_str(),
                format == Format::torch_save ? "torch.save" : "safetensors", seconds);
  return 0;
}

}  // namespace dcpp_cli
