// dcpp's command-line layer: the flag table, parsed arguments and the subcommands. dcpp
// (main.cpp) is the core alone; dcpp-torch (torch_main.cpp) is the same command line with
// libtorch, which dcpp runs for what needs tensors (load --device cuda).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp_cli {

/// One logical flag; this table drives parsing and help alike.
struct Flag {
  std::string_view name;        ///< long name without dashes
  std::string_view value_name;  ///< empty for a switch
  std::string_view commands;    ///< space-separated subcommands that accept it
  std::string_view help;
};

/// Arguments after validation, before any I/O.
struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string, std::less<>> flags;  ///< switches map to ""
  char** argv = nullptr;  ///< the command line as given (dcpp hands it on to dcpp-torch)
  bool has(std::string_view name) const { return flags.find(name) != flags.end(); }
  std::optional<std::string> get(std::string_view name) const {
    auto it = flags.find(name);
    return it == flags.end() ? std::nullopt : std::optional(it->second);
  }
};

/// A usage error: printed as "dcpp: error: ..." with exit status 2.
struct UsageError {
  std::string message;
};

/// Parses the command line, runs the command (`load` runs `load`, the one command the two
/// binaries run differently) and turns errors into a one-line message and an exit status.
int main_with(int argc, char** argv, int (*load)(const Args& args));

int run_inspect(const Args& args);
/// `load` into host buffers (no libtorch); the device must be the CPU.
int run_load(const Args& args);
int run_verify(const Args& args);
int run_convert(const Args& args);

/// What `load` prints (--json: one document; otherwise a summary line unless --quiet).
struct LoadResult {
  std::uint64_t tensors = 0;
  std::uint64_t objects = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  std::uint64_t items_read = 0;
  std::string device;
};
void print_load_result(const Args& args, const LoadResult& result);

}  // namespace dcpp_cli
