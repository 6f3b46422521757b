// dcpp's command line, shared by dcpp and dcpp-torch: one flag table, the parser, help, and
// the mapping of errors to exit status (0 success, 1 the checkpoint or another input is bad,
// 2 bad usage). Each binary says what `load` and `reshard` run (main.cpp, torch_main.cpp);
// every other subcommand is a few calls into dcp.checkpoint.
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "cli.hpp"
import dcp.error;

namespace dcpp_cli {
namespace {

constexpr std::string_view kVersion = "dcpp 0.1.0";

struct Command {
  std::string_view name;
  std::string_view usage;
  std::string_view summary;
  int (*run)(const Args&);  ///< nullptr: the binary's own (Binary)
  std::size_t positional;
};

constexpr Command kCommands[] = {
    {"inspect", "dcpp inspect [--json] [--stats [--fail-on-nonfinite] [--keys REGEX] [--threads N]] CKPT",
     "print what a checkpoint holds (keys, dtypes, shapes, chunks, files), read from .metadata "
     "without running any pickle code (or built from safetensors headers), after checking it against "
     "the data files. CKPT, here and below: a DCP directory (.metadata), a Hugging Face model "
     "directory (model.safetensors.index.json or *.safetensors files), torch's per-rank safetensors "
     "files (there or in sharded/), or one .safetensors file. With --stats: per tensor (of CKPT or a "
     ".pt/.pth file) the NaN, Inf and zero counts and min, max, mean, std (ddof 0) and absmax of its "
     "finite elements, in float64, and a line naming the tensors that hold NaN or Inf",
     run_inspect, 1},
    {"diff", "dcpp diff [--rtol R] [--atol A] [--equal-nan] [--keys REGEX] [--json] [--threads N] A B",
     "are two checkpoints the same? A and B: any CKPT, or a .pt/.pth file, each of any layout. Prints the "
     "keys only in one, kind, dtype and shape differences, objects that differ as values (JSON), and per "
     "tensor the count of differing elements, the max abs and max rel difference and the first "
     "differing index. Tensors compare bit-exactly (--equal-nan: any two NaNs equal), or with --rtol/--atol "
     "as torch.allclose (defaults 1e-05, 1e-08). Exit 0 same, 1 different",
     run_diff, 2},
    {"load", "dcpp load [--threads N] [--device cpu|cuda[:i]] [--keys REGEX] [--json] [--timeout S] [--layout L] [--no-read-once] [--slowest-link host|storage] CKPT",
     "load every tensor (or those whose key matches --keys) into full, unsharded tensors and every "
     "object, and print bytes, seconds and GB/s. As a rank of a launcher (torchrun; WORLD_SIZE > 1): "
     "each rank loads its rows (torch.chunk along dim 0) of every tensor over a Gloo process group "
     "and prints its own and (rank 0) every rank's bytes and GB/s",
     nullptr, 1},
    {"verify", "dcpp verify [--all] [--threads N] [--keys REGEX] CKPT",
     "read every record, check every bound, dtype, size and CRC-32; exit 1 on the first problem "
     "(--all: report every problem)",
     run_verify, 1},
    {"convert",
     "dcpp convert [--threads N] [--keys REGEX] [--overwrite] [--quiet] CKPT OUT.pt|OUT.pth|OUT.safetensors; "
     "dcpp convert [--ranks N] [--format torch2|torch1.13] [--overwrite] [--max-output-bytes SIZE] [--quiet] "
     "IN.pt|IN.pth|IN.safetensors OUT_DIR; "
     "dcpp convert --format hf [--max-shard-size SIZE] [--threads N] [--keys REGEX] [--overwrite] [--quiet] CKPT OUT_DIR",
     "write the checkpoint (or the keys matching --keys) as one file: torch.save for .pt/.pth "
     "(nested as saved, torch.load reads it), safetensors for .safetensors (objects as JSON in "
     "__metadata__); streams tensor by tensor, writes OUT only when complete (an existing OUT is "
     "replaced only with --overwrite). Given a torch.save "
     "or safetensors file, the reverse: a checkpoint directory as if saved by N ranks (rows split "
     "as torch.chunk does), nested state dicts flattened as dcp.save does, written crash-safely "
     "(a checkpoint appears in OUT_DIR only when complete, and never from an input that changed while it "
     "was read; other files there are left alone). The checkpoint may take at most --max-output-bytes "
     "(default 2 x the input + 1 GiB): every tensor at its dense size (a stride-0 view is written whole), "
     "every entry and rank's part an item of its own. With --format hf, a Hugging Face model directory: "
     "model.safetensors, or shards model-0000i-of-0000N.safetensors of at most --max-shard-size with "
     "model.safetensors.index.json, split as huggingface_hub splits them; published crash-safely",
     run_convert, 2},
    {"reshard",
     "dcpp reshard [--layout rows|cols|2d:AxB|replicated] [--format torch2|torch1.13] [--overwrite] [--timeout S] [--no-read-once] [--slowest-link host|storage] [--quiet] SRC DST_DIR",
     "write the checkpoint SRC as one saved by this many ranks: each rank loads its rows "
     "(torch.chunk along dim 0) of every tensor and the ranks save them together into DST_DIR "
     "(crash-safely). Run as the ranks of a launcher (torchrun, WORLD_SIZE > 1; needs libtorch for "
     "the process group), or alone as one rank",
     nullptr, 2},
};

constexpr Flag kFlags[] = {
    {"json", "", "inspect load diff", "print one JSON document (schema in README.md)"},
    {"stats", "", "inspect", "read every tensor and print its statistics (NaN, Inf, zeros, min, max, mean, std, absmax)"},
    {"fail-on-nonfinite", "", "inspect", "with --stats: exit 1 when any tensor holds NaN or Inf"},
    {"rtol", "R", "diff", "relative tolerance, as torch.allclose (default 1e-05 once --atol is given)"},
    {"atol", "A", "diff", "absolute tolerance, as torch.allclose (default 1e-08 once --rtol is given)"},
    {"equal-nan", "", "diff", "NaN equals NaN"},
    {"threads", "N", "inspect load verify convert reshard diff", "storage worker threads (default: up to 8; convert: checkpoint to file)"},
    {"io", "KIND", "inspect load verify convert reshard diff", "how bytes are read: pread (default: a thread pool) or uring (Asio io_uring files)"},
    {"device", "DEV", "load", "where tensors go: cpu (default), cuda or cuda:N"},
    {"keys", "REGEX", "inspect load verify convert diff", "only keys matching this regular expression"},
    {"all", "", "verify", "report every problem, not only the first"},
    {"ranks", "N", "convert", "file to checkpoint: save as N ranks, each tensor's rows split as torch.chunk (default 1)"},
    {"format", "KIND", "convert reshard", "file to checkpoint, reshard: torch2 (default, torch 2.x's layout, nested values flattened) or torch1.13 (top-level keys, nested values one object each); checkpoint to directory: hf (a Hugging Face model directory)"},
    {"max-shard-size", "SIZE", "convert", "with --format hf: the largest shard, in bytes or with a unit KB, MB, GB, TB (powers of 1000, as Hugging Face counts) or KiB, MiB, GiB, TiB; default 5GB"},
    {"overwrite", "", "convert reshard", "replace the file OUT, or the checkpoint already in OUT_DIR / DST_DIR (its data files go, nothing else there does)"},
    {"max-output-bytes", "SIZE", "convert", "file to checkpoint: the most the checkpoint may take, in bytes or with a suffix K, M, G, T (powers of 1024); default 2 x the input's size + 1 GiB"},
    {"layout", "KIND", "load reshard", "how the ranks of a launcher split each tensor: rows (torch.chunk along dim 0, the default), cols (dim 1), 2d:AxB (an A x B mesh, Shard(0) x Shard(1)), replicated (every rank holds every tensor whole; reshard stores each once); a tensor without the dim is split by rows"},
    {"no-read-once", "", "load reshard", "as ranks of a launcher: every rank reads what it needs from storage itself (default: read-once, below)"},
    {"slowest-link", "LINK", "load reshard", "as ranks of a launcher, read-once: host (the default: each host's own link; a saved item is read from storage once per host that needs it, its ranks sharing the page cache, never broadcast) or storage (a storage service slower than the hosts' links together: an item that several hosts need is read by one rank and broadcast). DCPP_HOST=NAME overrides this rank's host"},
    {"timeout", "S", "load reshard", "as ranks of a launcher: the longest a rank waits for the others, in seconds (default 120)"},
    {"quiet", "", "load verify convert reshard", "no progress bar and no summary line"},
    {"help", "", "*", "print help (-h: short)"},
    {"version", "", "*", "print the version"},
};

const Command* find_command(std::string_view name) {
  for (const auto& c : kCommands)
    if (c.name == name) return &c;
  return nullptr;
}

bool flag_applies(const Flag& f, std::string_view command) {
  if (f.commands == "*") return true;
  std::string_view list = f.commands;
  while (!list.empty()) {
    const auto space = list.find(' ');
    if (list.substr(0, space) == command) return true;
    if (space == std::string_view::npos) break;
    list.remove_prefix(space + 1);
  }
  return false;
}

void print_help(const Command* command, bool long_help) {
  if (!command) {
    std::printf("%s: PyTorch Distributed Checkpoint tools, without Python\n\n", kVersion.data());
    std::printf("usage: dcpp COMMAND [FLAGS] ARGS\n\ncommands:\n");
    for (const auto& c : kCommands) std::printf("  %-10s %s\n", std::string(c.name).c_str(), std::string(c.summary).c_str());
    std::printf("\nflags: -h, --help; --version\nrun 'dcpp COMMAND --help' for a command's flags.\n");
    if (long_help)
      std::printf("\nexit status: 0 success, 1 a checkpoint or input problem, 2 bad usage.\n");
    return;
  }
  std::printf("usage: %s\n\n%s\n\nflags:\n", std::string(command->usage).c_str(), std::string(command->summary).c_str());
  for (const auto& f : kFlags) {
    if (!flag_applies(f, command->name)) continue;
    std::string left = "--" + std::string(f.name);
    if (!f.value_name.empty()) left += " " + std::string(f.value_name);
    std::printf("  %-22s %s\n", left.c_str(), std::string(f.help).c_str());
  }
}

Args parse(int argc, char** argv) {
  Args args;
  args.argv = argv;
  int i = 1;
  for (; i < argc; ++i) {  // global flags before the command
    std::string_view a = argv[i];
    if (a == "-h" || a == "--help") {
      args.flags["help"] = "";
    } else if (a == "--version") {
      args.flags["version"] = "";
    } else if (!a.empty() && a[0] == '-') {
      throw UsageError{"unknown flag '" + std::string(a) + "' before the command"};
    } else {
      args.command = a;
      ++i;
      break;
    }
  }
  for (; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "-h") {
      args.flags["help"] = "";
      continue;
    }
    if (a.size() < 3 || a.substr(0, 2) != "--") {
      args.positional.emplace_back(a);
      continue;
    }
    std::string_view name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string_view::npos) {
      value = std::string(name.substr(eq + 1));
      name = name.substr(0, eq);
    }
    const Flag* flag = nullptr;
    for (const auto& f : kFlags)
      if (f.name == name && flag_applies(f, args.command)) flag = &f;
    if (!flag) throw UsageError{"unknown flag '--" + std::string(name) + "' for '" + args.command + "'"};
    if (flag->value_name.empty()) {
      if (value) throw UsageError{"flag '--" + std::string(name) + "' takes no value"};
      args.flags[std::string(name)] = "";
    } else {
      if (!value) {
        if (i + 1 >= argc) throw UsageError{"flag '--" + std::string(name) + "' needs a value " + std::string(flag->value_name)};
        value = argv[++i];
      }
      args.flags[std::string(name)] = *value;
    }
  }
  return args;
}

int run(int argc, char** argv, const Binary& binary) {
  const Args args = parse(argc, argv);
  if (args.has("version")) {
    std::printf("%s\n", kVersion.data());
    return 0;
  }
  const Command* command = args.command.empty() ? nullptr : find_command(args.command);
  if (!args.command.empty() && !command) throw UsageError{"unknown command '" + args.command + "'"};
  if (args.has("help") || !command) {
    if (!command && !args.has("help")) {
      print_help(nullptr, false);
      return 2;
    }
    print_help(command, true);
    return 0;
  }
  if (args.positional.size() != command->positional)
    throw UsageError{"'" + args.command + "' takes " + std::to_string(command->positional) +
                     " argument(s); usage: " + std::string(command->usage)};
  // Every argument names a file or directory; an empty one names none (and "" would reach the
  // filesystem as the current directory or an internal error).
  for (std::size_t i = 0; i < args.positional.size(); ++i)
    if (args.positional[i].empty())
      throw UsageError{"argument " + std::to_string(i + 1) + " of '" + args.command +
                       "' is empty: it names a path; usage: " + std::string(command->usage)};
  if (command->run) return command->run(args);
  return (command->name == "load" ? binary.load : binary.reshard)(args);
}

}  // namespace

int main_with(int argc, char** argv, const Binary& binary) {
  try {
    return run(argc, argv, binary);
  } catch (const UsageError& e) {
    // Messages quote the command line, which may hold anything a terminal would act on.
    std::fprintf(stderr, "dcpp: error: %s\n", dcp::escape_text(e.message, dcp::Escape::message).c_str());
    return 2;
  } catch (...) {
    // Any exception as a worker reports it: std::bad_alloc is resource_exhausted.
    print_error(dcp::current_exception_as_error());
    return 1;
  }
}

void print_error(const dcp::Error& error) {
  std::fprintf(stderr, "dcpp: error: %s [%s]\n", error.what(), std::string(dcp::errc_name(error.code())).c_str());
}

}  // namespace dcpp_cli
