// libFuzzer target, structure-aware: the input chooses a torch.save file's tensors rather than
// its bytes (a byte-level fuzzer seldom gets past the CRCs and the pickle to a view), so that
// every run is a well-formed file full of views: storages of a few elements shared by up to
// four tensors, each of up to 6 dims with sizes from 0 to 2^62, strides from 0 (broadcast)
// through overlapping to past the storage, and a storage offset; then a rank count and an
// output budget. The file is imported as `dcpp convert` imports it. Whatever is accepted
// must have been charged: its dense bytes within the budget, and, when the charge is small,
// its conversion (written into a scratch directory) no larger than the charge.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>
#include <variant>
#include <vector>
import dcp.error;
import dcp.metadata;
import dcp.pickle;
import dcp.planning;
import dcp.storage;
import dcp.zip;
import dcp.checkpoint;

namespace {

struct StorageKind {
  const char* storage_class;
  std::size_t itemsize;
};
constexpr StorageKind kKinds[] = {{"FloatStorage", 4}, {"LongStorage", 8}, {"BFloat16Storage", 2}, {"BoolStorage", 1},
                                  {"ByteStorage", 1}};

std::int64_t some_size(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: return in.ConsumeIntegralInRange<std::int64_t>(0, 4);
    case 1: return in.ConsumeIntegralInRange<std::int64_t>(0, 100);
    case 2: return std::int64_t{1} << in.ConsumeIntegralInRange(10, 40);
    default: return in.ConsumeIntegralInRange<std::int64_t>(0, std::int64_t{1} << 62);
  }
}

std::int64_t some_stride(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 0: return 0;
    case 1: return in.ConsumeIntegralInRange<std::int64_t>(1, 8);
    default: return in.ConsumeIntegralInRange<std::int64_t>(0, 1000);
  }
}

// The torch.save archive of {"t0": view, ...} over `storages` storages of the input's choosing.
std::vector<std::byte> make_file(FuzzedDataProvider& in, std::uint64_t& dense_bytes) {
  const int storages = in.ConsumeIntegralInRange(1, 2);
  const auto& kind = kKinds[in.ConsumeIntegralInRange<std::size_t>(0, std::size(kKinds) - 1)];
  std::vector<std::int64_t> numel(static_cast<std::size_t>(storages));
  for (auto& n : numel) n = in.ConsumeIntegralInRange<std::int64_t>(0, 64);
  dcp::pickle::Encoder e(2);
  e.empty_dict();
  e.mark();
  const int tensors = in.ConsumeIntegralInRange(1, 4);
  dense_bytes = 0;
  for (int t = 0; t < tensors; ++t) {
    const int s = in.ConsumeIntegralInRange(0, storages - 1);
    const int dims = in.ConsumeIntegralInRange(0, 6);
    e.string("t" + std::to_string(t));
    e.global("torch._utils", "_rebuild_tensor_v2");
    e.mark();
    e.mark();
    e.string("storage");
    e.global("torch", kind.storage_class);
    e.string(std::to_string(s));
    e.string("cpu");
    e.integer(numel[static_cast<std::size_t>(s)]);
    e.tuple_from_mark();
    e.persistent_id();
    e.integer(in.ConsumeIntegralInRange<std::int64_t>(0, numel[static_cast<std::size_t>(s)]));
    std::uint64_t count = 1;
    e.mark();
    for (int d = 0; d < dims; ++d) {
      const auto size = some_size(in);
      e.integer(size);
      count = dcp::checked_mul(count, static_cast<std::uint64_t>(size)).value_or(UINT64_MAX);
    }
    e.tuple_from_mark();
    e.mark();
    for (int d = 0; d < dims; ++d) e.integer(some_stride(in));
    e.tuple_from_mark();
    e.boolean(false);
    e.global("collections", "OrderedDict");
    e.empty_tuple();
    e.reduce();
    e.tuple_from_mark();
    e.reduce();
    dense_bytes = dcp::checked_add(dense_bytes, dcp::checked_mul(count, kind.itemsize).value_or(UINT64_MAX))
                      .value_or(UINT64_MAX);
  }
  e.setitems_from_mark();
  const auto data_pkl = e.finish();
  std::vector<std::byte> out;
  dcp::zip::ArchiveWriter w([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); }, "archive");
  w.add_record("data.pkl", data_pkl);
  for (int s = 0; s < storages; ++s) {
    std::vector<std::byte> bytes(static_cast<std::size_t>(numel[static_cast<std::size_t>(s)]) * kind.itemsize);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 7 + 1);
    w.add_record("data/" + std::to_string(s), bytes);
  }
  w.add_record("version", std::as_bytes(std::span("3\n", 2)));
  w.finish();
  return out;
}

std::uint64_t directory_bytes(const std::filesystem::path& dir) {
  std::uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) total += e.file_size();
  return total;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto scratch = std::filesystem::temp_directory_path() / ("fuzz_import_views-" + std::to_string(::getpid()));
  FuzzedDataProvider in(data, size);
  std::uint64_t dense_bytes = 0;
  const auto file = make_file(in, dense_bytes);
  dcp::checkpoint::ImportOptions options;
  options.ranks = in.ConsumeIntegralInRange(1, 8);
  options.max_output_bytes = in.ConsumeIntegralInRange<std::uint64_t>(1, std::uint64_t{64} << 20);
  // The importers take a path (they map the file): an in-memory file stands in.
  const int fd = ::memfd_create("fuzz_import_views.pt", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (::write(fd, file.data(), file.size()) != static_cast<ssize_t>(file.size())) {
    ::close(fd);
    return 0;
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  try {
    const auto imported = dcp::checkpoint::import_torch_save(path, options);
    if (dense_bytes > options.max_output_bytes || imported.output_bytes > options.max_output_bytes ||
        imported.output_bytes < dense_bytes)
      std::abort();  // accepted beyond its budget, or charged less than its tensors' bytes
    if (imported.output_bytes <= (std::uint64_t{4} << 20)) {
      std::filesystem::remove_all(scratch);
      dcp::storage::WriteOptions write;
      write.sync_files = false;
      (void)dcp::checkpoint::save_as_checkpoint(imported, scratch, write);
      if (directory_bytes(scratch) > imported.output_bytes) std::abort();  // wrote more than it charged
    }
  } catch (const dcp::Error&) {
  }
  std::error_code ec;
  std::filesystem::remove_all(scratch, ec);
  ::close(fd);
  return 0;
}
