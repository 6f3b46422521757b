// `dcpp convert`: a checkpoint (a DCP directory, or safetensors: a model directory, torch's
// per-rank files, one file) as one torch.save (.pt/.pth) or safetensors file, and back: a
// torch.save or safetensors file as a checkpoint of N ranks. The input picks the direction.
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unistd.h>

#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.metadata;
import dcp.storage;
import dcp.checkpoint;

namespace dcpp_cli {

// Shared with load/verify (load_command.cpp): --threads, --io, --keys.
dcp::checkpoint::LoadOptions load_options(const Args& args);

namespace {

enum class Format { torch_save, safetensors };

std::optional<Format> file_format(const std::string& name) {
  const auto ext = std::filesystem::path(name).extension().string();
  if (ext == ".pt" || ext == ".pth") return Format::torch_save;
  if (ext == ".safetensors") return Format::safetensors;
  return std::nullopt;
}

std::string_view format_label(Format format) { return format == Format::torch_save ? "torch.save" : "safetensors"; }

Format format_of(const std::string& out) {
  if (auto format = file_format(out)) return *format;
  throw UsageError{"cannot tell the output format of '" + out + "': name it *.pt, *.pth or *.safetensors"};
}

// Flags of one direction only (--format hf is the export's; its other values the import's).
constexpr std::string_view kImportOnly[] = {"ranks", "max-output-bytes"};
constexpr std::string_view kExportOnly[] = {"threads", "io", "keys"};

int parse_ranks(const Args& args) {
  const auto text = args.get("ranks");
  if (!text) return 1;
  int n = 0;
  bool ok = !text->empty() && text->size() <= 4;
  for (char c : *text) {
    ok = ok && c >= '0' && c <= '9';
    n = ok ? n * 10 + (c - '0') : 0;
  }
  if (!ok || n < 1 || n > 1024) throw UsageError{"--ranks takes a number from 1 to 1024, not '" + *text + "'"};
  return n;
}

// --max-output-bytes: digits with an optional suffix K, M, G or T (powers of 1024, an optional
// "iB" or "B" after it); 0 when absent (the default limit).
std::uint64_t parse_max_output_bytes(const Args& args) {
  const auto text = args.get("max-output-bytes");
  if (!text) return 0;
  const char* end = text->data() + text->size();
  std::uint64_t n = 0;
  const auto [rest, ec] = std::from_chars(text->data(), end, n);
  std::string_view suffix(rest, static_cast<std::size_t>(end - rest));
  int shift = 0;
  if (!suffix.empty())
    if (const auto unit = std::string_view("KMGT").find(static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0]))));
        unit != std::string_view::npos) {
      shift = 10 * static_cast<int>(unit + 1);
      suffix.remove_prefix(1);
    }
  const bool ok = ec == std::errc() && rest != text->data() && (suffix.empty() || suffix == "iB" || suffix == "B") &&
                  n > 0 && n <= (UINT64_MAX >> shift);
  if (!ok) throw UsageError{"--max-output-bytes takes a positive size such as 5000000000, 64G or 1T, not '" + *text + "'"};
  return n << shift;
}

// FILE.pt|FILE.safetensors → CKPT_DIR.
int run_import(const Args& args, Format format) {
  const std::string in = args.positional[0];
  const std::string out = args.positional[1];
  for (auto flag : kExportOnly)
    if (args.has(flag))
      throw UsageError{"--" + std::string(flag) + " applies only when converting a checkpoint to a file"};
  if (args.get("format") == "hf" || args.has("max-shard-size"))
    throw UsageError{"--format hf and --max-shard-size apply only when converting a checkpoint (a directory or a "
                     "safetensors file) to a model directory"};
  dcp::checkpoint::ImportOptions import;
  import.ranks = parse_ranks(args);
  import.max_output_bytes = parse_max_output_bytes(args);
  const int ranks = import.ranks;
  dcp::storage::WriteOptions options;
  options.format = parse_flavor(args);
  options.overwrite = args.has("overwrite");
  const auto start = std::chrono::steady_clock::now();

  // torch 1.13's save_state_dict keeps the top-level keys; torch 2.x's dcp.save flattens.
  const auto imported = format == Format::safetensors ? dcp::checkpoint::import_safetensors(in, import)
                        : options.format == dcp::metadata::Flavor::torch_1_13
                            ? dcp::checkpoint::import_torch_save_top_level(in, import)
                            : dcp::checkpoint::import_torch_save(in, import);
  dcp::checkpoint::ConvertReport report;
  {
    Progress progress(!args.has("quiet"), imported.state_dict.tensor_bytes(), "converting");
    std::mutex mutex;  // each rank's writer reports from its own threads
    options.progress = [&](std::uint64_t bytes) {
      std::lock_guard lock(mutex);
      progress.advance(bytes);
    };
    report = dcp::checkpoint::save_as_checkpoint(imported, out, options);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.has("quiet"))
    std::printf("converted %llu tensors (%llu bytes) and %llu objects from %s (%s) to checkpoint %s (%s, %d rank%s) in %.3f s\n",
                static_cast<unsigned long long>(report.tensors), static_cast<unsigned long long>(report.bytes),
                static_cast<unsigned long long>(report.objects), dcp::escape_text(in).c_str(),
                std::string(format_label(format)).c_str(), dcp::escape_text(out).c_str(),
                std::string(dcp::metadata::flavor_name(options.format)).c_str(), ranks, ranks == 1 ? "" : "s", seconds);
  return 0;
}

// --max-shard-size: digits, optionally with a unit as huggingface_hub's parse_size_to_int
// takes it (KB, MB, GB, TB: powers of 1000) or a binary one (KiB, MiB, GiB, TiB).
std::uint64_t parse_max_shard_size(const Args& args) {
  const auto text = args.get("max-shard-size");
  if (!text) return dcp::checkpoint::kDefaultMaxShardBytes;
  const char* end = text->data() + text->size();
  std::uint64_t n = 0;
  const auto [rest, ec] = std::from_chars(text->data(), end, n);
  std::string suffix(rest, static_cast<std::size_t>(end - rest));
  for (auto& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::uint64_t unit = 1;
  const std::string_view units = "KMGT";
  if (!suffix.empty() && units.find(suffix[0]) != std::string_view::npos) {
    const auto power = units.find(suffix[0]) + 1;
    const bool binary = suffix.size() == 3 && suffix.substr(1) == "IB";
    if (binary || suffix.substr(1) == "B")
      for (std::size_t i = 0; i < power; ++i) unit *= binary ? 1024 : 1000;
    else
      unit = 0;
  } else if (!suffix.empty() && suffix != "B") {
    unit = 0;
  }
  if (ec != std::errc() || rest == text->data() || unit == 0 || n == 0 || n > UINT64_MAX / unit)
    throw UsageError{"--max-shard-size takes a positive size such as 5GB (5 x 10^9 bytes), 500MB, 2GiB or 1000000, not '" +
                     *text + "'"};
  return n * unit;
}

// CKPT → a Hugging Face model directory.
int run_export_hf(const Args& args) {
  const std::string checkpoint = args.positional[0];
  const std::string out = args.positional[1];
  const auto max_shard = parse_max_shard_size(args);
  const auto options = load_options(args);
  const auto start = std::chrono::steady_clock::now();
  const std::uint64_t total = dcp::checkpoint::selected_tensor_bytes(*dcp::checkpoint::inspect(checkpoint), options);
  dcp::checkpoint::ConvertReport report;
  {
    Progress progress(!args.has("quiet"), total, "converting");
    report = dcp::checkpoint::convert_to_hf(checkpoint, out, options, [&](std::uint64_t bytes) { progress.advance(bytes); },
                                            args.has("overwrite"), max_shard);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.has("quiet"))
    std::printf("converted %llu tensors (%llu bytes) and %llu objects to %s (Hugging Face model directory) in %.3f s\n",
                static_cast<unsigned long long>(report.tensors), static_cast<unsigned long long>(report.bytes),
                static_cast<unsigned long long>(report.objects), dcp::escape_text(out).c_str(), seconds);
  return 0;
}

}  // namespace

dcp::metadata::Flavor parse_flavor(const Args& args) {
  const auto text = args.get("format").value_or("torch2");
  if (text == "torch2") return dcp::metadata::Flavor::torch_2x;
  if (text == "torch1.13") return dcp::metadata::Flavor::torch_1_13;
  throw UsageError{"--format takes torch2 or torch1.13, not '" + text + "'"};
}

int run_convert(const Args& args) {
  // A regular file (not a checkpoint directory) named *.pt, *.pth or *.safetensors is an input,
  // except a .safetensors file going to a file: that one is a checkpoint (a one-file model).
  const auto in_format = file_format(args.positional[0]);
  const bool to_hf = args.get("format") == "hf";
  const bool safetensors_out = in_format == Format::safetensors && (to_hf || file_format(args.positional[1]).has_value());
  if (in_format && !safetensors_out && !std::filesystem::is_directory(args.positional[0])) {
    if (to_hf)
      throw UsageError{"--format hf takes a checkpoint: a DCP or safetensors directory, or a .safetensors file"};
    return run_import(args, *in_format);
  }
  for (auto flag : kImportOnly)
    if (args.has(flag))
      throw UsageError{"--" + std::string(flag) + " applies only when converting a .pt or .safetensors file to a checkpoint"};
  if (to_hf) return run_export_hf(args);
  if (args.has("format") || args.has("max-shard-size"))
    throw UsageError{"--format applies to a checkpoint only as --format hf (with --max-shard-size), writing a model "
                     "directory"};
  const std::string checkpoint = args.positional[0];
  const std::string out = args.positional[1];
  const Format format = format_of(out);  // usage errors before any I/O
  const auto options = load_options(args);
  const bool overwrite = args.has("overwrite");
  const auto start = std::chrono::steady_clock::now();

  dcp::checkpoint::check_output_path(out, overwrite);  // before the checkpoint is read
  const std::uint64_t total = dcp::checkpoint::selected_tensor_bytes(*dcp::checkpoint::inspect(checkpoint), options);
  dcp::checkpoint::ConvertReport report;
  {
    Progress progress(!args.has("quiet"), total, "converting");
    const auto on_tensor = [&](std::uint64_t bytes) { progress.advance(bytes); };
    report = format == Format::torch_save
                 ? dcp::checkpoint::convert_to_torch_save(checkpoint, out, options, on_tensor, overwrite)
                 : dcp::checkpoint::convert_to_safetensors(checkpoint, out, options, on_tensor, overwrite);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!args.has("quiet"))
    std::printf("converted %llu tensors (%llu bytes) and %llu objects to %s (%s) in %.3f s\n",
                static_cast<unsigned long long>(report.tensors), static_cast<unsigned long long>(report.bytes),
                static_cast<unsigned long long>(report.objects), dcp::escape_text(out).c_str(),
                std::string(format_label(format)).c_str(), seconds);
  return 0;
}

}  // namespace dcpp_cli
