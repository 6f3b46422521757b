// Durable saves (sync_files on) send large records to the disk directly (O_DIRECT): the bytes
// must come out exactly, whether the caller's memory is aligned (written as it is) or not
// (through the bounce buffer), strided, or of a length that leaves a tail; large records start
// on a 4 KiB boundary of their file; and the page cache keeps none of their pages, which is how
// a direct write shows. On a file system without direct I/O (tmpfs) the same save is buffered.
// torch 2.13 loads both.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../support/support.hpp"
#include "save_support.hpp"

import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.zip;
import dcp.checkpoint;

using namespace save_test;

namespace {

// Memory aligned to 4 KiB that the test owns.
struct Aligned {
  std::unique_ptr<std::byte, void (*)(void*)> data{nullptr, std::free};
  explicit Aligned(std::size_t n) : data(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096)), std::free) {}
};

// The large tensors of the test: aligned memory, memory 8 bytes off alignment, a length that
// leaves a tail after the last full block, a strided view, and a small one beside them.
struct Tensors {
  Case c;
  Aligned aligned{std::size_t{3} << 20}, unaligned{(std::size_t{5} << 20) + 4096}, strided{std::size_t{4} << 20};
  explicit Tensors(const fs::path& bins) : c(bins) {
    auto fill = [](std::byte* p, std::size_t n, unsigned seed) {
      for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::byte>((i * 131 + seed + i / 4093) & 0xff);
    };
    fill(aligned.data.get(), std::size_t{3} << 20, 1);
    fill(unaligned.data.get(), (std::size_t{5} << 20) + 4096, 2);
    fill(strided.data.get(), std::size_t{4} << 20, 3);
    auto add = [&](const char* name, pl::TensorSlice slice) {
      const auto isz = dcp::dtype_itemsize(slice.dtype);
      c.expect({std::string(name)}, slice.dtype, slice.sizes, gather(slice.data, isz, slice.sizes, slice.strides));
      c.sd.add_tensor({std::string(name)}, slice);
    };
    add("aligned", pl::contiguous_slice(aligned.data.get(), DType::float32, {768, 1024}));
    // 5 MiB + 1,000 bytes, 8 bytes past a 4 KiB boundary: bounce buffer and a tail.
    add("unaligned", pl::contiguous_slice(unaligned.data.get() + 8, DType::uint8, {(std::int64_t{5} << 20) + 1000}));
    // Every other column of a 1024 x 1024 float32 matrix: 2 MiB through the strided path.
    add("strided", pl::TensorSlice{strided.data.get(), DType::float32, {1024, 512}, {1024, 2}});
    c.tensor({std::string("small")}, DType::int16, {7, 3});
  }
};

// Where each large item's record data starts in its file.
void check_records(const fs::path& dir) {
  const auto md = ck::inspect(dir);
  for (const auto& [index, info] : md->storage_data) {
    const auto bytes = dcp_test::read_bytes(dir / info.relative_path);
    const std::span<const std::byte> item(bytes.data() + info.offset, info.length);
    const auto archive = dcp::zip::parse_archive(item);
    for (std::size_t i = 0; i < archive.entries.size(); ++i) {
      const auto& e = archive.entries[i];
      if (!e.name.ends_with("/data/0") || e.size < dcp::record::kLargeRecordBytes) continue;
      const auto at = info.offset + archive.data_offsets[i];
      BOOST_TEST(at % dcp::record::kLargeRecordAlignment == 0u, index.fqn << ": record data at byte " << at);
    }
  }
}

// Pages of `file` in the page cache, and its pages.
std::pair<std::size_t, std::size_t> cached_pages(const fs::path& file) {
  const auto size = fs::file_size(file);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t pages = (size + page - 1) / page;
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  BOOST_TEST_REQUIRE(fd >= 0);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  BOOST_TEST_REQUIRE(map != MAP_FAILED);
  std::vector<unsigned char> resident(pages);
  BOOST_TEST_REQUIRE(::mincore(map, size, resident.data()) == 0);
  ::munmap(map, size);
  std::size_t cached = 0;
  for (auto r : resident) cached += r & 1;
  return {cached, pages};
}

}  // namespace

BOOST_AUTO_TEST_CASE(durable_saves_write_large_records_directly) {
  dcp_test::TempDir tmp;
  Tensors t(tmp.path() / "bins");
  auto durable = options(/*sync=*/true);
  durable.files_per_rank = 1;
  const auto dir = tmp.path() / "ckpt";
  save_one(t.c.sd, dir, durable);
  // Before anything reads the data file: a direct write leaves its pages out of the cache.
  std::size_t cached = 0, pages = 0;
  for (const auto& name : dcp_test::list_names(dir))
    if (name.ends_with(".distcp")) {
      const auto [c, p] = cached_pages(dir / name);
      cached += c;
      pages += p;
    }
  BOOST_TEST_MESSAGE(cached << " of " << pages << " pages of the data file cached after a durable save");
  BOOST_TEST(cached * 4 < pages, cached << " of " << pages << " pages cached: the large records went through the page cache");
  check_records(dir);
  const auto got = dcpp_tensors(dir);
  for (const auto& [fqn, want] : t.c.expected) BOOST_TEST((got.at(fqn) == want), fqn);
  if (dcp_test::python2x_available()) {
    write_manifest(tmp.path() / "manifest.json", {t.c.check("direct", dir)});
    run_checks(dcp_test::python2x(), "save_check.py", "load " + dcp_test::quote(tmp.path() / "manifest.json"), {"direct"});
  }
}

BOOST_AUTO_TEST_CASE(durable_saves_where_direct_io_is_refused) {
  if (!fs::is_directory("/dev/shm")) {
    BOOST_TEST_MESSAGE("skipping: no /dev/shm (tmpfs) here");
    return;
  }
  const auto shm = fs::path("/dev/shm") / ("dcpp-direct-" + std::to_string(::getpid()));
  fs::create_directories(shm);
  struct Cleanup {
    fs::path p;
    ~Cleanup() { fs::remove_all(p); }
  } cleanup{shm};
  dcp_test::TempDir tmp;
  Tensors t(tmp.path() / "bins");
  save_one(t.c.sd, shm / "ckpt", options(/*sync=*/true));
  check_records(shm / "ckpt");
  const auto got = dcpp_tensors(shm / "ckpt");
  for (const auto& [fqn, want] : t.c.expected) BOOST_TEST((got.at(fqn) == want), fqn);
}
