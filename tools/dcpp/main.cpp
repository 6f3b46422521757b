// dcpp: the command-line tool, without libtorch. It starts in milliseconds and runs help,
// inspect, verify, convert, `load` into host memory and a one-process `reshard` itself; a
// `load` that needs tensors on a GPU, and `load` or `reshard` as ranks of a launcher
// (WORLD_SIZE > 1: a c10d process group) run dcpp-torch (the same command line, with
// libtorch) in its place. Built with -Dtorch=disabled there is no dcpp-torch, and those are
// usage errors (exit 2).
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <unistd.h>

#include "cli.hpp"
import dcp.error;
import dcp.memory;

#ifndef DCPP_WITH_TORCH
#error "tools/dcpp/meson.build defines DCPP_WITH_TORCH (1 when dcpp-torch is built, else 0)"
#endif

namespace dcpp_cli {
dcp::memory::Device device_of(const Args& args);  // load_command.cpp

namespace {

// dcpp-torch: next to this executable (the build tree, or both in one bin directory), else
// where `meson install` puts it (<prefix>/libexec/dcpp/).
std::filesystem::path torch_helper() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw dcp::Error(dcp::Errc::io, "cannot find dcpp's own path (/proc/self/exe): " + ec.message());
  const auto dir = self.parent_path();
  for (const auto& candidate : {dir / "dcpp-torch", dir.parent_path() / "libexec" / "dcpp" / "dcpp-torch"})
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  throw dcp::Error(dcp::Errc::not_found, "this command needs dcpp-torch, which is not installed next to " + self.string());
}

[[noreturn]] void run_torch_helper(const Args& args, const std::string& why) {
  if (!DCPP_WITH_TORCH) throw UsageError{why + " needs libtorch, and this dcpp was built without it (-Dtorch=disabled)"};
  const auto helper = torch_helper();
  ::execv(helper.c_str(), args.argv);
  throw dcp::Error(dcp::Errc::io, "cannot run " + helper.string() + ": " + std::strerror(errno));
}

int load(const Args& args) {
  const auto device = device_of(args);
  (void)timeout_of(args);  // usage errors before handing over
  check_dist_flags(args, launcher_world_size());
  if (launcher_world_size() > 1) run_torch_helper(args, "a load by the ranks of a launcher (WORLD_SIZE > 1)");
  if (device.kind == dcp::memory::DeviceKind::cpu) return run_load(args);
  run_torch_helper(args, "--device " + device.to_string());
}

// Ranks of a launcher need a c10d process group (dcpp-torch); one process needs none.
int reshard(const Args& args) {
  check_dist_flags(args, launcher_world_size());
  (void)parse_flavor(args);
  (void)timeout_of(args);
  if (launcher_world_size() > 1) run_torch_helper(args, "reshard by the ranks of a launcher (WORLD_SIZE > 1)");
  return run_reshard(args, nullptr);
}

}  // namespace
}  // namespace dcpp_cli

int main(int argc, char** argv) { return dcpp_cli::main_with(argc, argv, {dcpp_cli::load, dcpp_cli::reshard}); }
