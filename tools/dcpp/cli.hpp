// dcpp's command-line layer: the flag table, parsed arguments and the subcommands.
#pragma once
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

int run_inspect(const Args& args);
int run_load(const Args& args);
int run_verify(const Args& args);
int run_convert(const Args& args);

}  // namespace dcpp_cli
