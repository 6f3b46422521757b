// libFuzzer target: a whole checkpoint directory through FileSystemReader, the way a load
// goes (read_metadata validates and bounds-checks, the default planner plans full tensors,
// read_data locates and copies on a thread pool, objects are decoded).
//
// Input: u32 little-endian N, N bytes of `.metadata`, then the bytes of one data file, which
// appears under every file name storage_data uses (hard links, so it costs nothing). Memory
// for destinations is capped (kDestinationBudget); float32 tensors load as float64 in odd
// runs, to cover dtype conversion.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <span>
#include <string>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;

namespace {

constexpr std::uint64_t kDestinationBudget = 8u << 20;

void write_file(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path shm = "/dev/shm";
    auto d = (std::filesystem::is_directory(shm) ? shm : std::filesystem::temp_directory_path()) /
             ("dcpp-fuzz-storage-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

void load(const std::filesystem::path& dir, bool convert) {
  dcp::storage::ReadOptions options;
  options.threads = 2;
  options.max_object_bytes = 1u << 20;
  options.bounce_bytes = 4096;
  options.max_open_files = 3;
  dcp::storage::FileSystemReader reader(dir, options);
  const auto validated = reader.read_metadata();
  dcp::planning::Destination destination;
  std::vector<std::vector<std::byte>> buffers;
  std::uint64_t total = 0;
  for (const auto& item : validated->items) {
    if (!item.is_tensor()) {
      destination.add_object(item.fqn);
      continue;
    }
    const auto& t = item.tensor();
    auto dtype = t.properties.dtype;
    if (convert && dtype == dcp::DType::float32) dtype = dcp::DType::float64;
    const std::uint64_t bytes = dcp::metadata::byte_size(t.size, dtype);
    if (bytes > kDestinationBudget - total) continue;
    total += bytes;
    auto& buffer = buffers.emplace_back(bytes);
    destination.add_tensor(item.fqn, {t.size, dtype, {{dcp::metadata::Shape(t.size.size(), 0), t.size,
                                                        dcp::planning::contiguous_slice(buffer.data(), dtype, t.size)}}});
  }
  dcp::planning::DefaultLoadPlanner planner({.allow_partial_load = false, .allow_dtype_conversion = true});
  planner.set_up_planner(destination, validated, true);
  reader.set_up_storage_reader(validated, true);
  (void)reader.read_data(planner.create_local_plan(), planner);
  for (const auto& [fqn, entry] : destination.entries())
    if (const auto* bytes = planner.loaded_bytes(fqn)) {
      const auto doc = dcp::record::parse_object(*bytes);
      (void)dcp::record::object_to_json(doc, doc.root());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  std::uint32_t n = 0;
  std::memcpy(&n, data, 4);  // little-endian hosts only, as the rest of dcpp
  if (n > size - 4) return 0;
  const std::span<const std::uint8_t> metadata(data + 4, n), blob(data + 4 + n, size - 4 - n);
  const auto& dir = scratch();
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) std::filesystem::remove(entry.path(), ec);
  write_file(dir / ".metadata", metadata);
  write_file(dir / "blob", blob);
  std::set<std::string> names;
  try {
    const auto md = dcp::metadata::decode_metadata(std::as_bytes(metadata));
    for (const auto& [index, info] : md.storage_data)
      if (names.size() < 32 && dcp::metadata::is_safe_relative_path(info.relative_path) && info.relative_path != "blob" &&
          info.relative_path != ".metadata")
        names.insert(info.relative_path);
  } catch (const dcp::Error&) {
    return 0;
  }
  for (const auto& name : names) std::filesystem::create_hard_link(dir / "blob", dir / name, ec);
  try {
    load(dir, (size & 1) != 0);
  } catch (const dcp::Error&) {
  }
  return 0;
}
