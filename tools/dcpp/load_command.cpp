// `dcpp load` and `dcpp verify`: read every record of a checkpoint into full tensors.
#include <ATen/core/Tensor.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <regex>
#include <string>
#include <unistd.h>

#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.json;
import dcp.metadata;
import dcp.alloc;
import dcp.storage;
import dcp.checkpoint;

namespace dcpp_cli {
namespace {

int parse_threads(const Args& args) {
  const auto text = args.get("threads");
  if (!text) return 0;
  try {
    const int n = std::stoi(*text);
    if (n >= 1 && n <= 1024) return n;
  } catch (...) {
  }
  throw UsageError{"--threads takes a number from 1 to 1024, not '" + *text + "'"};
}

}  // namespace

dcp::checkpoint::LoadOptions load_options(const Args& args) {
  dcp::checkpoint::LoadOptions options;
  options.read.threads = parse_threads(args);
  if (auto device = args.get("device")) {
    try {
      options.allocation.device = dcp::alloc::Device::parse(*device);
    } catch (const dcp::Error& e) {
      throw UsageError{e.message()};
    }
  }
  if (auto io = args.get("io")) {
    if (*io == "uring") options.read.backend = dcp::storage::ReadBackend::io_uring;
    else if (*io == "pread") options.read.backend = dcp::storage::ReadBackend::pread;
    else throw UsageError{"--io takes uring or pread, not '" + *io + "'"};
  }
  if (auto keys = args.get("keys")) {
    try {
      auto re = std::make_shared<std::regex>(*keys, std::regex::ECMAScript);
      options.select = [re](std::string_view fqn) { return std::regex_search(fqn.begin(), fqn.end(), *re); };
    } catch (const std::regex_error& e) {
      throw UsageError{"--keys: bad regular expression '" + *keys + "': " + e.what()};
    }
  }
  return options;
}

namespace {



}  // namespace

int run_load(const Args& args) {
  const auto options = load_options(args);
  const auto start = std::chrono::steady_clock::now();
  const auto md = dcp::checkpoint::inspect(args.positional[0]);
  Progress progress(!args.has("quiet") && !args.has("json"), dcp::checkpoint::selected_tensor_bytes(*md, options), "loading");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  const auto report = dcp::checkpoint::for_each_tensor(args.positional[0], md, options, [&](const std::string& fqn, at::Tensor t) {
    progress.advance(static_cast<std::uint64_t>(t.numel()) * t.element_size());
    tensors.emplace_back(fqn, std::move(t));
  });
  const auto objects = dcp::checkpoint::load_objects(args.positional[0], md, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::uint64_t bytes = 0;
  for (const auto& [fqn, t] : tensors) bytes += static_cast<std::uint64_t>(t.numel()) * t.element_size();
  const double gbps = seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0;
  if (args.has("json")) {
    dcp::json::JsonWriter w;
    w.begin_object()
        .key("tensors").value(static_cast<std::uint64_t>(tensors.size()))
        .key("objects").value(static_cast<std::uint64_t>(objects.size()))
        .key("bytes").value(bytes)
        .key("seconds").value(seconds)
        .key("gbps").value(gbps)
        .key("items_read").value(report.items)
        .key("device").value(options.allocation.device.to_string())
        .end_object();
    std::printf("%s\n", w.str().c_str());
  } else if (!args.has("quiet")) {
    std::printf("loaded %zu tensors (%llu bytes) and %zu objects in %.3f s: %.2f GB/s\n", tensors.size(),
                static_cast<unsigned long long>(bytes), objects.size(), seconds, gbps);
  }
  return 0;
}

int run_verify(const Args& args) {
  auto options = load_options(args);
  options.read.verify_crc = true;
  options.read.collect_errors = args.has("all");
  const auto md = dcp::checkpoint::inspect(args.positional[0]);
  Progress progress(!args.has("quiet"), dcp::checkpoint::selected_tensor_bytes(*md, options), "verifying");
  std::uint64_t tensors = 0, bytes = 0;
  auto report = dcp::checkpoint::for_each_tensor(args.positional[0], md, options, [&](const std::string&, at::Tensor t) {
    ++tensors;
    bytes += static_cast<std::uint64_t>(t.numel()) * t.element_size();
    progress.advance(static_cast<std::uint64_t>(t.numel()) * t.element_size());
  });
  std::size_t objects = 0;
  try {
    objects = dcp::checkpoint::load_objects(args.positional[0], md, options).size();
  } catch (const dcp::Error& e) {
    if (!options.read.collect_errors) throw;
    report.errors.push_back(e);
  }
  for (const auto& e : report.errors) std::fprintf(stderr, "dcpp: error: %s\n", e.what());
  if (!report.errors.empty()) return 1;
  if (!args.has("quiet"))
    std::printf("ok: %llu tensors (%llu bytes, CRC-32 checked) and %zu objects\n",
                static_cast<unsigned long long>(tensors), static_cast<unsigned long long>(bytes), objects);
  return 0;
}

}  // namespace dcpp_cli
