// dcpp's command-line layer: the flag table, parsed arguments and the subcommands. dcpp
// (main.cpp) is the core alone; dcpp-torch (torch_main.cpp) is the same command line with
// libtorch, which dcpp runs for what needs tensors (load --device cuda) or a c10d process
// group (load and reshard as ranks of a launcher, WORLD_SIZE > 1).
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.collective;
import dcp.checkpoint;

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

/// What the two binaries run differently.
struct Binary {
  int (*load)(const Args& args);
  int (*reshard)(const Args& args);
};

/// Parses the command line, runs the command and turns errors into a one-line message and an
/// exit status.
int main_with(int argc, char** argv, const Binary& binary);

/// Prints `error` on stderr as its one line: "dcpp: error: FILE: key 'K': byte N: message
/// [code]", every part escaped (dcp::escape_text).
void print_error(const dcp::Error& error);

int run_inspect(const Args& args);
/// `inspect --stats` (stats_command.cpp).
int run_stats(const Args& args);
/// `diff A B` (diff_command.cpp).
int run_diff(const Args& args);
/// `load` into host buffers (no libtorch); the device must be the CPU.
int run_load(const Args& args);
int run_verify(const Args& args);
int run_convert(const Args& args);

/// Every rank's load together (rank 0 gathers it).
struct DistTotal {
  std::uint64_t bytes = 0;
  std::uint64_t storage_bytes = 0;
  std::uint64_t received_bytes = 0;
  double seconds = 0;  ///< the slowest rank's
};
/// A rank's place in a distributed load.
struct DistResult {
  int rank = 0;
  int world_size = 1;
  std::uint64_t storage_bytes = 0;   ///< bytes this rank read from storage
  std::uint64_t received_bytes = 0;  ///< stored bytes it received from the rank that read them (read-once)
  std::optional<DistTotal> total;   ///< on rank 0
};

/// What `load` prints (--json: one document; otherwise a summary line unless --quiet).
struct LoadResult {
  std::uint64_t tensors = 0;
  std::uint64_t objects = 0;
  std::uint64_t bytes = 0;
  double seconds = 0;
  std::uint64_t items_read = 0;
  std::uint64_t storage_bytes = 0;  ///< bytes read from storage (whole process)
  std::uint64_t requests = 0;       ///< object-store requests this process issued (0 for files)
  std::string device;
  std::optional<DistResult> dist;  ///< a rank of a distributed load
};
void print_load_result(const Args& args, const LoadResult& result);

// ---- Ranks of a launcher (dist_commands.cpp).

/// WORLD_SIZE from the environment (1 when unset); a malformed value is a usage error.
int launcher_world_size();
/// --timeout (120 s when absent): the longest a rank waits for the others.
std::chrono::seconds timeout_of(const Args& args);
/// --layout rows|cols|2d:AxB over `world_size` ranks (dcp.layout's parse_layout) and
/// --slowest-link host|storage; a usage error when malformed.
void check_dist_flags(const Args& args, int world_size);
/// --format torch2|torch1.13 (convert_command.cpp).
dcp::metadata::Flavor parse_flavor(const Args& args);
/// `load` of this rank's rows (torch.chunk along dim 0) of every tensor, with every object,
/// reporting this rank's and (on rank 0) every rank's bytes and GB/s.
int run_load_distributed(const Args& args, dcp::collective::ProcessGroup& group);
/// `reshard SRC DST`: every rank loads its rows of every tensor of SRC and the ranks save them
/// together as a checkpoint of `group`'s size in DST; a null group is one process.
int run_reshard(const Args& args, dcp::collective::ProcessGroup* group);

}  // namespace dcpp_cli
