// dcpp-torch: dcpp's command line with libtorch, for the commands that need tensors. dcpp
// runs it in its own place (exec, same arguments) for `load --device cuda[:N]`; its `load`
// reads through dcp.torch into at::Tensors (pinned host memory, then the device).
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.memory;
import dcp.checkpoint;
import dcp.torch;

namespace dcpp_cli {
dcp::checkpoint::LoadOptions load_options(const Args& args);  // load_command.cpp
dcp::memory::Device device_of(const Args& args);

namespace {

int load(const Args& args) {
  dcp::torch::LoadOptions options{load_options(args), {}};
  options.allocation.device = device_of(args);
  const auto start = std::chrono::steady_clock::now();
  const auto md = dcp::checkpoint::inspect(args.positional[0]);
  Progress progress(!args.has("quiet") && !args.has("json"), dcp::checkpoint::selected_tensor_bytes(*md, options), "loading");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  LoadResult result;
  const auto report = dcp::torch::for_each_tensor(args.positional[0], md, options, [&](const std::string& fqn, at::Tensor t) {
    const auto bytes = static_cast<std::uint64_t>(t.numel()) * t.element_size();
    progress.advance(bytes);
    result.bytes += bytes;
    tensors.emplace_back(fqn, std::move(t));
  });
  result.objects = dcp::checkpoint::load_objects(args.positional[0], md, options).size();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tensors = tensors.size();
  result.items_read = report.items;
  result.device = options.allocation.device.to_string();
  print_load_result(args, result);
  return 0;
}

}  // namespace
}  // namespace dcpp_cli

int main(int argc, char** argv) { return dcpp_cli::main_with(argc, argv, dcpp_cli::load); }
