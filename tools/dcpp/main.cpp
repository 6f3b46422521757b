// dcpp: the command-line tool, without libtorch. It starts in milliseconds and runs help,
// inspect, verify, convert and `load` into host memory itself; a `load` that needs tensors
// on a GPU runs dcpp-torch (the same command line, with libtorch) in its place. Built with
// -Dtorch=disabled there is no dcpp-torch, and such a load is a usage error (exit 2).
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

int load(const Args& args) {
  const auto device = device_of(args);
  if (device.kind == dcp::memory::DeviceKind::cpu) return run_load(args);
  if (!DCPP_WITH_TORCH)
    throw UsageError{"--device " + device.to_string() + " needs libtorch, and this dcpp was built without it (-Dtorch=disabled)"};
  const auto helper = torch_helper();
  ::execv(helper.c_str(), args.argv);
  throw dcp::Error(dcp::Errc::io, "cannot run " + helper.string() + ": " + std::strerror(errno));
}

}  // namespace
}  // namespace dcpp_cli

int main(int argc, char** argv) { return dcpp_cli::main_with(argc, argv, dcpp_cli::load); }
