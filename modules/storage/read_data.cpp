// Executing a LoadPlan: group items per saved archive, locate, then copy on an Asio pool.
module;
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.zip;

namespace dcp::storage {
namespace {

namespace asio = boost::asio;
using metadata::Shape;
using planning::ReadItem;
using planning::TensorSlice;

constexpr std::uint64_t kPieceBytes = 32u << 20;  // contiguous reads split for parallelism

// One saved item (a torch.save archive) and the plan items that read from it.
struct Group {
  const metadata::StorageInfo* info = nullptr;
  std::string fqn;
  const metadata::ChunkStorageMetadata* chunk = nullptr;  // nullptr for a bytes item
  DType dtype = DType::float32;
  std::vector<std::size_t> items;  // indices into the plan
  // Filled by the locate phase:
  record::TensorLocation location;
  std::vector<std::byte> object_bytes;
  std::optional<Error> error;
};

// Files opened once per read_data, shared by the workers (pread is thread-safe).
class FileTable {
 public:
  explicit FileTable(const std::filesystem::path& dir) : dir_(dir) {}
  const Fd& get(const std::string& name) {
    std::lock_guard lock(mutex_);
    auto& slot = files_[name];
    if (!slot) slot = std::make_unique<Fd>(dir_ / name);
    return *slot;
  }
  std::filesystem::path path(const std::string& name) const { return dir_ / name; }

 private:
  std::filesystem::path dir_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Fd>> files_;
};

Shape contiguous_strides(const Shape& sizes) {
  Shape strides(sizes.size(), 1);
  for (std::size_t d = sizes.size(); d-- > 1;) strides[d - 1] = strides[d] * sizes[d];
  return strides;
}

bool is_row_major(const record::TensorRecord& r) {
  const auto want = contiguous_strides(r.sizes);
  for (std::size_t d = 0; d < r.sizes.size(); ++d)
    if (r.sizes[d] > 1 && r.strides[d] != want[d]) return false;
  return true;
}

// True when the box [offsets, offsets+lengths) of a row-major array of `sizes` is one run.
bool is_single_run(const Shape& sizes, const Shape& offsets, const Shape& lengths) {
  std::size_t d = 0;
  while (d < sizes.size() && lengths[d] == 1) ++d;  // leading dims of length 1
  if (d == sizes.size()) return true;
  for (std::size_t k = d + 1; k < sizes.size(); ++k)
    if (offsets[k] != 0 || lengths[k] != sizes[k]) return false;
  return true;
}

// Copies a strided box element by element (inner runs with memcpy when both are dense).
void strided_copy(std::byte* dst, const Shape& dst_strides, const std::byte* src, const Shape& src_strides,
                  const Shape& lengths, std::size_t itemsize, std::size_t dim = 0) {
  if (lengths.empty()) {
    std::memcpy(dst, src, itemsize);
    return;
  }
  const auto n = lengths[dim];
  if (dim + 1 == lengths.size()) {
    if (dst_strides[dim] == 1 && src_strides[dim] == 1) {
      std::memcpy(dst, src, static_cast<std::size_t>(n) * itemsize);
      return;
    }
    for (std::int64_t i = 0; i < n; ++i)
      std::memcpy(dst + i * dst_strides[dim] * static_cast<std::int64_t>(itemsize),
                  src + i * src_strides[dim] * static_cast<std::int64_t>(itemsize), itemsize);
    return;
  }
  for (std::int64_t i = 0; i < n; ++i)
    strided_copy(dst + i * dst_strides[dim] * static_cast<std::int64_t>(itemsize), dst_strides,
                 src + i * src_strides[dim] * static_cast<std::int64_t>(itemsize), src_strides, lengths, itemsize, dim + 1);
}

Error with_item_context(Error e, const FileTable& files, const Group& g) {
  e.add_offset(g.info->offset);  // archive offsets → file offsets
  e.in_file(files.path(g.info->relative_path).string());
  e.for_key(g.fqn);
  return e;
}

// Runs `tasks` on a pool of `threads` and waits; each task records its own failure.
template <class Task>
void run_all(int threads, std::vector<Task>& tasks) {
  asio::thread_pool pool(static_cast<std::size_t>(std::max(1, threads)));
  for (auto& task : tasks) asio::post(pool, [&task] { task(); });
  pool.join();
}

}  // namespace

ReadReport FileSystemReader::read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) {
  if (!metadata_) throw Error(Errc::failed_precondition, "read_data before set_up_storage_reader");
  const int threads = options_.threads > 0 ? options_.threads
                                           : static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  FileTable files(dir_);
  ReadReport report;

  // 1. Group items per saved item, resolve destinations (planner calls stay on this thread).
  std::vector<Group> groups;
  std::map<std::pair<std::string, Shape>, std::size_t> group_of;
  std::vector<TensorSlice> destinations(plan.items.size());
  for (std::size_t i = 0; i < plan.items.size(); ++i) {
    const ReadItem& item = plan.items[i];
    const auto& index = item.storage_index;
    const bool is_tensor = item.type == planning::LoadItemType::tensor;
    auto key = std::make_pair(index.fqn, is_tensor && index.offset ? *index.offset : Shape{});
    auto [it, inserted] = group_of.try_emplace(key, groups.size());
    if (inserted) {
      Group g;
      g.fqn = index.fqn;
      g.info = metadata_->find_storage(index.fqn, is_tensor ? &*index.offset : nullptr);
      if (!g.info) {
        Error e(Errc::data_loss, "storage_data has no entry for this item");
        e.for_key(index.fqn);
        throw e;
      }
      if (is_tensor) {
        const auto* md_item = metadata_->find_item(index.fqn);
        for (const auto& c : md_item->tensor().chunks)
          if (c.offsets == *index.offset) g.chunk = &c;
        g.dtype = md_item->tensor().properties.dtype;
      }
      groups.push_back(std::move(g));
    }
    groups[it->second].items.push_back(i);
    if (is_tensor) destinations[i] = planner.resolve_tensor(item);
  }
  report.items = groups.size();

  // 2. Locate every tensor's storage record; read whole objects.
  std::vector<std::function<void()>> locate;
  for (auto& g : groups) {
    locate.push_back([&g, &files, this] {
      try {
        const Fd& fd = files.get(g.info->relative_path);
        const auto path = files.path(g.info->relative_path);
        if (!g.chunk) {
          g.object_bytes.resize(g.info->length);
          pread_all(fd.get(), path, g.info->offset, g.object_bytes);
          return;
        }
        if (!g.info->transform_descriptors.empty())
          throw Error(Errc::unimplemented, "stream transform '" + g.info->transform_descriptors.front() + "' is not supported");
        const std::uint64_t base = g.info->offset, length = g.info->length;
        g.location = record::locate_tensor(length, [&](std::uint64_t offset, std::span<std::byte> out) {
          if (offset > length || out.size() > length - offset)
            throw Error(Errc::data_loss, "read past the item end").at_offset(offset);
          pread_all(fd.get(), path, base + offset, out);
        });
        record::check_against_chunk(g.location, g.dtype, g.chunk->sizes);
        if (options_.verify_crc && g.location.crc32 != 0) {
          std::vector<std::byte> data(g.location.data_size);
          pread_all(fd.get(), path, base + g.location.data_offset, data);
          const auto crc = zip::crc32(data);
          if (crc != g.location.crc32)
            throw Error(Errc::data_loss, "CRC-32 mismatch in the storage record").at_offset(g.location.data_offset);
        }
      } catch (const Error& e) {
        g.error = with_item_context(e, files, g);
      }
    });
  }
  run_all(threads, locate);

  // 3. Copy: one task per contiguous piece or per strided item.
  struct CopyTask {
    Group* group;
    std::function<void()> run;
    void operator()() {
      try {
        run();
      } catch (const Error& e) {
        static std::mutex mutex;
        std::lock_guard lock(mutex);  // first error per group wins
        if (!group->error) group->error = e;
      }
    }
  };
  std::vector<CopyTask> copies;
  std::vector<ReadPiece> pieces;
  std::vector<Group*> piece_group;
  for (auto& g : groups) {
    if (g.error || !g.chunk) continue;
    const auto& r = g.location.record;
    const std::size_t itemsize = dtype_itemsize(r.dtype);
    const auto path = files.path(g.info->relative_path);
    const std::uint64_t storage_base = g.info->offset + g.location.data_offset;
    for (std::size_t i : g.items) {
      const ReadItem& item = plan.items[i];
      const TensorSlice dst = destinations[i];
      if (dst.dtype != r.dtype) {  // the planner allowed a conversion this reader cannot do
        g.error = with_item_context(Error(Errc::unimplemented, "converting " + std::string(dtype_name(r.dtype)) + " to " +
                                                                   std::string(dtype_name(dst.dtype)) + " is not supported"),
                                    files, g);
        break;
      }
      if (planning::numel(dst) == 0) continue;
      const Shape src_strides = r.strides;
      std::uint64_t first = r.storage_offset;  // element index of the region's first element
      for (std::size_t d = 0; d < src_strides.size(); ++d)
        first += static_cast<std::uint64_t>(item.storage_offsets[d] * src_strides[d]);
      const std::uint64_t count = planning::numel(dst);
      report.bytes_read += count * itemsize;
      if (is_row_major(r) && is_single_run(r.sizes, item.storage_offsets, item.lengths) && planning::is_contiguous(dst)) {
        const std::uint64_t bytes = count * itemsize;
        for (std::uint64_t done = 0; done < bytes; done += kPieceBytes) {
          pieces.push_back({path, storage_base + first * itemsize + done, dst.data + done, std::min(kPieceBytes, bytes - done)});
          piece_group.push_back(&g);
        }
        continue;
      }
      // Strided: read the span the box touches into a bounce buffer, then copy element-wise.
      copies.push_back({&g, [&files, &g, dst, src_strides, first, itemsize, storage_base, lengths = item.lengths, path] {
                          std::uint64_t last = first;
                          for (std::size_t d = 0; d < lengths.size(); ++d)
                            last += static_cast<std::uint64_t>((lengths[d] - 1) * src_strides[d]);
                          std::vector<std::byte> buffer((last - first + 1) * itemsize);
                          const Fd& fd = files.get(g.info->relative_path);
                          pread_all(fd.get(), path, storage_base + first * itemsize, buffer);
                          strided_copy(dst.data, dst.strides, buffer.data(), src_strides, lengths, itemsize);
                        }});
    }
  }
  std::vector<std::optional<Error>> piece_errors(pieces.size());
  const bool uring = options_.backend == ReadBackend::io_uring &&
                     read_pieces_uring(pieces, threads, 64, piece_errors);
  if (!uring) {
    for (std::size_t i = 0; i < pieces.size(); ++i)
      copies.push_back({piece_group[i], [&files, &piece = pieces[i], group = piece_group[i]] {
                          const Fd& fd = files.get(group->info->relative_path);
                          pread_all(fd.get(), piece.path, piece.offset, std::span(piece.destination, piece.size));
                        }});
  }
  run_all(threads, copies);
  for (std::size_t i = 0; i < pieces.size(); ++i)
    if (piece_errors[i] && !piece_group[i]->error) piece_group[i]->error = piece_errors[i];

  // 4. Report errors in plan order; hand results to the planner on this thread.
  for (auto& g : groups) {
    if (!g.error) continue;
    if (!options_.collect_errors) throw *g.error;
    report.errors.push_back(*g.error);
  }
  for (auto& g : groups) {
    if (g.error) continue;
    for (std::size_t i : g.items) {
      const ReadItem& item = plan.items[i];
      if (item.type == planning::LoadItemType::byte_io) planner.load_bytes(item, g.object_bytes);
      else planner.commit_tensor(item, destinations[i]);
    }
  }
  return report;
}

}  // namespace dcp::storage
