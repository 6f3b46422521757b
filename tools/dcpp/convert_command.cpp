// `dcpp convert`: a checkpoint as one torch.save (.pt/.pth) or safetensors file.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.metadata;
import dcp.checkpoint;

namespace dcpp_cli {

// Shared with load/verify (load_command.cpp): --threads, --io, --keys.
dcp::checkpoint::LoadOptions load_options(const Args& args);

namespace {

enum class Format { torch_save, safetensors };

Format format_of(const std::string& out) {
  const auto ext = std::filesystem::path(out).extension().string();
  if (ext == ".pt" || ext == ".pth") return Format::torch_save;
  if (ext == ".safetensors") return Format::safetensors;
  throw UsageError{"cannot tell the output format of '" + out + "': name it *.pt, *.pth or *.safetensors"};
}



}  // namespace

int run_convert(const Args& args) {
  const std::string checkpoint = args.positional[0];
  const std::string out = args.positional[1];
  const Format format = format_of(out);  // usage errors before any I/O
  const auto options = load_options(args);
  const auto start = std::chrono::steady_clock::now();

  const std::uint64_t total = dcp::checkpoint::selected_tensor_bytes(*dcp::checkpoint::inspect(checkpoint), options);
  dcp::checkpoint::ConvertReport report;
  {
    Progress progress(!args.has("quiet"), total, "converting");
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
