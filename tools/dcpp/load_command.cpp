// `dcpp load` (into host buffers, no libtorch) and `dcpp verify` (checkpoint::verify); the
// options and the load report they share with dcpp-torch's load.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.json;
import dcp.metadata;
import dcp.memory;
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

// Shared with convert (convert_command.cpp) and dcpp-torch's load: --threads, --io, --keys.
dcp::checkpoint::LoadOptions load_options(const Args& args) {
  dcp::checkpoint::LoadOptions options;
  options.read.threads = parse_threads(args);
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

// --device (the CPU when absent); a malformed name is a usage error.
dcp::memory::Device device_of(const Args& args) {
  const auto text = args.get("device");
  if (!text) return {};
  try {
    return dcp::memory::Device::parse(*text);
  } catch (const dcp::Error& e) {
    throw UsageError{e.message()};
  }
}

void print_load_result(const Args& args, const LoadResult& r) {
  auto gbps_of = [](std::uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0; };
  const double gbps = gbps_of(r.bytes, r.seconds);
  if (args.has("json")) {
    dcp::json::JsonWriter w;
    w.begin_object()
        .key("tensors").value(r.tensors)
        .key("objects").value(r.objects)
        .key("bytes").value(r.bytes)
        .key("seconds").value(r.seconds)
        .key("gbps").value(gbps)
        .key("items_read").value(r.items_read)
        .key("device").value(r.device);
    w.key("requests").value(r.requests);
    if (!r.dist) w.key("storage_bytes").value(r.storage_bytes);
    if (r.dist) {
      w.key("rank").value(static_cast<std::int64_t>(r.dist->rank))
          .key("world_size").value(static_cast<std::int64_t>(r.dist->world_size))
          .key("storage_bytes").value(r.dist->storage_bytes)
          .key("received_bytes").value(r.dist->received_bytes);
      if (const auto& t = r.dist->total)
        w.key("total").begin_object()
            .key("bytes").value(t->bytes)
            .key("storage_bytes").value(t->storage_bytes)
            .key("received_bytes").value(t->received_bytes)
            .key("seconds").value(t->seconds)
            .key("gbps").value(gbps_of(t->bytes, t->seconds))
            .end_object();
    }
    w.end_object();
    std::printf("%s\n", w.str().c_str());
  } else if (!args.has("quiet")) {
    std::string who;
    if (r.dist) who = "rank " + std::to_string(r.dist->rank) + " of " + std::to_string(r.dist->world_size) + ": ";
    std::printf("%sloaded %llu tensors (%llu bytes) and %llu objects in %.3f s: %.2f GB/s", who.c_str(),
                static_cast<unsigned long long>(r.tensors), static_cast<unsigned long long>(r.bytes),
                static_cast<unsigned long long>(r.objects), r.seconds, gbps);
    if (r.dist)
      std::printf("; read %llu bytes from storage, received %llu from other ranks",
                  static_cast<unsigned long long>(r.dist->storage_bytes),
                  static_cast<unsigned long long>(r.dist->received_bytes));
    std::printf("\n");
    if (r.dist && r.dist->total)
      std::printf("all %d ranks: %llu bytes (%llu read from storage, %llu received) in %.3f s: %.2f GB/s\n",
                  r.dist->world_size, static_cast<unsigned long long>(r.dist->total->bytes),
                  static_cast<unsigned long long>(r.dist->total->storage_bytes),
                  static_cast<unsigned long long>(r.dist->total->received_bytes), r.dist->total->seconds,
                  gbps_of(r.dist->total->bytes, r.dist->total->seconds));
  }
}

int run_load(const Args& args) {
  const auto device = device_of(args);
  if (device.kind != dcp::memory::DeviceKind::cpu)
    throw UsageError{"--device " + device.to_string() + " needs libtorch (dcpp-torch)"};
  const auto options = load_options(args);
  const auto start = std::chrono::steady_clock::now();
  const auto md = dcp::checkpoint::inspect(args.positional[0]);
  Progress progress(!args.has("quiet") && !args.has("json"), dcp::checkpoint::selected_tensor_bytes(*md, options), "loading");
  std::vector<std::pair<std::string, dcp::checkpoint::TensorBuffer>> tensors;
  LoadResult result;
  const auto report = dcp::checkpoint::for_each_tensor(args.positional[0], md, options,
                                                       [&](const std::string& fqn, dcp::checkpoint::TensorBuffer t) {
                                                         progress.advance(t.bytes().size());
                                                         result.bytes += t.bytes().size();
                                                         tensors.emplace_back(fqn, std::move(t));
                                                       });
  result.objects = dcp::checkpoint::load_object_values(args.positional[0], md, options).size();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tensors = tensors.size();
  result.items_read = report.items;
  result.storage_bytes = report.storage_bytes;
  result.requests = report.requests;
  result.device = device.to_string();
  print_load_result(args, result);
  return 0;
}

int run_verify(const Args& args) {
  auto options = load_options(args);
  options.read.collect_errors = args.has("all");
  const auto total = dcp::checkpoint::selected_tensor_bytes(*dcp::checkpoint::inspect(args.positional[0]), options);
  dcp::checkpoint::VerifyReport report;
  {
    Progress progress(!args.has("quiet"), total, "verifying");
    report = dcp::checkpoint::verify(args.positional[0], options, [&](std::uint64_t bytes) { progress.advance(bytes); });
  }
  for (const auto& e : report.errors) print_error(e);
  if (!report.errors.empty()) return 1;
  if (!args.has("quiet"))
    std::printf("ok: %llu tensors (%llu bytes, CRC-32 checked) and %llu objects\n",
                static_cast<unsigned long long>(report.tensors), static_cast<unsigned long long>(report.bytes),
                static_cast<unsigned long long>(report.objects));
  return 0;
}

}  // namespace dcpp_cli
