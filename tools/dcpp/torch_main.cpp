// dcpp-torch: dcpp's command line with libtorch, for the commands that need tensors or a c10d
// process group. dcpp runs it in its own place (exec, same arguments) for `load --device
// cuda[:N]`, whose load reads through dcp.torch into at::Tensors (pinned host memory, then the
// device), and for `load` and `reshard` as ranks of a launcher (WORLD_SIZE > 1), which form a
// Gloo process group from the environment (dcp.dist).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include "cli.hpp"
#include "progress.hpp"
import dcp.error;
import dcp.memory;
import dcp.collective;
import dcp.checkpoint;
import dcp.dist;
import dcp.torch;

namespace dcpp_cli {
dcp::checkpoint::LoadOptions load_options(const Args& args);  // load_command.cpp
dcp::memory::Device device_of(const Args& args);

namespace {

std::unique_ptr<dcp::collective::ProcessGroup> launcher_group(const Args& args) {
  return dcp::dist::from_environment({.timeout = timeout_of(args), .backend = dcp::dist::Backend::gloo});
}

int load(const Args& args) {
  const auto device = device_of(args);
  check_dist_flags(args, launcher_world_size());
  if (launcher_world_size() > 1) {
    if (device.kind != dcp::memory::DeviceKind::cpu)
      throw UsageError{"--device " + device.to_string() + " with WORLD_SIZE > 1: the ranks load rows into host memory only, for now"};
    const auto group = launcher_group(args);
    return run_load_distributed(args, *group);
  }
  dcp::torch::LoadOptions options{load_options(args), {}};
  options.allocation.device = device;
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
  result.objects = dcp::checkpoint::load_object_values(args.positional[0], md, options).size();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tensors = tensors.size();
  result.items_read = report.items;
  result.device = options.allocation.device.to_string();
  print_load_result(args, result);
  return 0;
}

int reshard(const Args& args) {
  check_dist_flags(args, launcher_world_size());
  (void)parse_flavor(args);
  const auto group = launcher_world_size() > 1 ? launcher_group(args) : nullptr;
  return run_reshard(args, group.get());
}

}  // namespace
}  // namespace dcpp_cli

int main(int argc, char** argv) {
  const int status = dcpp_cli::main_with(argc, argv, {dcpp_cli::load, dcpp_cli::reshard});
  // A rank leaves at once: after a lost peer, c10d's threads and destructors may still wait
  // for it (dcp.dist abandons a broken group instead of destroying it).
  std::fflush(nullptr);
  std::_Exit(status);
}
