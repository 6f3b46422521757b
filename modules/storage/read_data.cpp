// Executing a LoadPlan: check items, group them per saved archive, locate, then copy on an Asio pool.
module;
#include <algorithm>
#include <atomic>
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
#include <tuple>
#include <utility>
#include <vector>
module dcp.storage;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.zip;

namespace dcp::storage {
namespace {

using metadata::Shape;
using planning::ReadItem;
using planning::TensorSlice;

constexpr std::uint64_t kPieceBytes = 32u << 20;  // contiguous reads split for parallelism

// One saved item (a torch.save archive) and the plan items that read from it.
struct Group {
  const metadata::StorageInfo* info = nullptr;
  std::string fqn;
  const metadata::ChunkStorageMetadata* chunk = nullptr;  // nullptr for a bytes item
  DType dtype = DType::float32;                           // the saved tensor's dtype
  std::vector<std::size_t> items;                         // indices into the plan
  const std::span<const std::byte>* shared = nullptr;     // stored bytes another rank sent
  // Filled by the locate phase:
  record::TensorLocation location;
  std::vector<std::byte> object_bytes;
  std::optional<Error> error;
};

// Failures from worker threads: the first per group wins; context added once, here.
class Failures {
 public:
  explicit Failures(const FileTable& files) : files_(files) {}
  void record(Group& g, Error e) {
    e.in_file(files_.path(g.info->relative_path).string());
    e.for_key(g.fqn);
    std::lock_guard lock(mutex_);
    if (!g.error) g.error = std::move(e);
  }

 private:
  const FileTable& files_;
  std::mutex mutex_;
};

// Where a group's bytes come from: its data file, or the stored bytes another rank sent. Reads
// are at file offsets either way, so errors name the same offsets.
class Source {
 public:
  explicit Source(FileTable& files) : files_(files) {}
  void read(const Group& g, std::uint64_t file_offset, std::span<std::byte> out) {
    if (!g.shared) {
      const auto fd = files_.get(g.info->relative_path);
      pread_all(fd->get(), files_.path(g.info->relative_path), file_offset, out);
      storage_bytes_.fetch_add(out.size(), std::memory_order_relaxed);
      return;
    }
    const std::uint64_t start = file_offset - g.info->offset;  // the caller stays inside the item
    if (file_offset < g.info->offset || start > g.shared->size() || out.size() > g.shared->size() - start)
      throw Error(Errc::internal, "read outside the shared item").at_offset(file_offset);
    if (!out.empty()) std::memcpy(out.data(), g.shared->data() + start, out.size());
  }
  std::uint64_t storage_bytes() const { return storage_bytes_.load(); }
  void add_storage_bytes(std::uint64_t n) { storage_bytes_.fetch_add(n, std::memory_order_relaxed); }

 private:
  FileTable& files_;
  std::atomic<std::uint64_t> storage_bytes_{0};
};

struct Task {
  Group* group;
  std::function<void()> run;
};

// Runs every task on a pool of `threads`; each failure becomes its group's error.
void run_all(int threads, std::vector<Task>& tasks, Failures& failures) {
  run_on_pool(threads, tasks.size(), [&](std::size_t i) { tasks[i].run(); },
              [&](std::size_t i, Error e) { failures.record(*tasks[i].group, std::move(e)); });
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

using layout::span_elements;  // the bounce span of a strided read

// Splits a non-empty box into sub-boxes (offsets relative to it) whose storage span is at most
// `bound_elements`, or a single element: the bounce buffer of a strided read stays bounded.
void split_box(Shape& offsets, Shape& lengths, const Shape& strides, std::uint64_t bound_elements, std::size_t dim,
               std::vector<std::pair<Shape, Shape>>& out) {
  if (dim == lengths.size() || span_elements(lengths, strides) <= bound_elements) {
    out.emplace_back(offsets, lengths);
    return;
  }
  const std::int64_t start = offsets[dim], full = lengths[dim];
  lengths[dim] = 1;
  const std::uint64_t row_span = span_elements(lengths, strides);
  if (row_span > bound_elements || strides[dim] == 0) {
    for (std::int64_t i = 0; i < full; ++i) {
      offsets[dim] = start + i;
      split_box(offsets, lengths, strides, bound_elements, dim + 1, out);
    }
  } else {
    const auto per = static_cast<std::int64_t>(
        std::min<std::uint64_t>((bound_elements - row_span) / static_cast<std::uint64_t>(strides[dim]) + 1,
                                static_cast<std::uint64_t>(full)));
    for (std::int64_t i = 0; i < full; i += per) {
      offsets[dim] = start + i;
      lengths[dim] = std::min(per, full - i);
      out.emplace_back(offsets, lengths);
    }
  }
  offsets[dim] = start;
  lengths[dim] = full;
}

// A raw item (a safetensors tensor): the chunk's elements, row-major, from the item's first
// byte; nothing to locate.
record::TensorLocation raw_location(const Group& g) {
  record::TensorLocation l;
  l.record.dtype = g.dtype;
  l.record.sizes = g.chunk->sizes;
  l.record.strides = layout::contiguous_strides(g.chunk->sizes);
  l.record.storage_numel = metadata::numel(g.chunk->sizes);
  l.data_size = g.info->length;
  if (metadata::byte_size(g.chunk->sizes, g.dtype) != g.info->length)
    throw Error(Errc::data_loss, "raw item of " + std::to_string(g.info->length) + " bytes is not a " +
                                     std::string(dtype_name(g.dtype)) + " chunk of sizes " + format_shape(g.chunk->sizes))
        .at_offset(g.info->offset);
  return l;
}

// Plans may come from other ranks: a tensor item must stay inside the saved chunk it names.
void check_against_saved_chunk(const ReadItem& item, const metadata::ChunkStorageMetadata& chunk) {
  if (!layout::is_inside(item.storage_offsets, item.lengths, chunk.sizes))
    throw Error(Errc::invalid_argument, "read item " + layout::format_box({item.storage_offsets, item.lengths}) +
                                            " reaches outside the saved chunk of sizes " + format_shape(chunk.sizes))
        .for_key(item.storage_index.fqn);
}

}  // namespace

ReadReport FileSystemReader::read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) {
  return read_data(plan, planner, SharedItems{});
}

void FileSystemReader::read_item(const metadata::MetadataIndex& item, std::span<std::byte> out, ReadReport& report) {
  if (!metadata_) throw Error(Errc::failed_precondition, "read_item before set_up_storage_reader");
  const metadata::Metadata& md = **metadata_;
  const auto* saved = md.find_item(item.fqn);
  const auto* info = md.find_storage(item.fqn, item.offset ? &*item.offset : nullptr);
  if (!saved || !info || saved->is_tensor() != item.offset.has_value())
    throw Error(Errc::invalid_argument, "shared read names no saved item").for_key(item.fqn);
  const auto path = path_of(info->relative_path);
  try {
    if (!saved->is_tensor() && info->length > options_.max_object_bytes)
      throw Error(Errc::resource_exhausted, "object of " + std::to_string(info->length) + " bytes exceeds the limit of " +
                                                std::to_string(options_.max_object_bytes) +
                                                " (ReadOptions::max_object_bytes)")
          .at_offset(info->offset);
    if (out.size() != info->length)
      throw Error(Errc::invalid_argument, std::to_string(out.size()) + " bytes for an item stored in " +
                                              std::to_string(info->length))
          .at_offset(info->offset);
    Fd fd(path);
    pread_all(fd.get(), path, info->offset, out);
    report.storage_bytes += out.size();
  } catch (Error& e) {
    e.in_file(path.string());
    e.for_key(item.fqn);
    throw;
  }
}

ReadReport FileSystemReader::read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner,
                                       const SharedItems& shared) {
  if (!metadata_) throw Error(Errc::failed_precondition, "read_data before set_up_storage_reader");
  const metadata::Metadata& md = **metadata_;
  const int threads = options_.threads > 0 ? options_.threads : default_threads();
  FileTable files(dir_, open_file_budget(options_.max_open_files));
  Failures failures(files);
  Source source(files);
  ReadReport report;

  // 1. Check and group items per saved item, resolve destinations (planner calls stay on
  //    this thread).
  std::vector<Group> groups;
  std::map<std::pair<std::string, Shape>, std::size_t> group_of;
  std::vector<TensorSlice> destinations(plan.items.size());
  for (std::size_t i = 0; i < plan.items.size(); ++i) {
    const ReadItem& item = plan.items[i];
    const auto& index = item.storage_index;
    const bool is_tensor = item.type == planning::LoadItemType::tensor;
    if (is_tensor && !index.offset)
      throw Error(Errc::invalid_argument, "tensor read item without chunk offsets").for_key(index.fqn);
    auto key = std::make_pair(index.fqn, is_tensor ? *index.offset : Shape{});
    auto [it, inserted] = group_of.try_emplace(key, groups.size());
    if (inserted) {
      Group g;
      g.fqn = index.fqn;
      g.info = md.find_storage(index.fqn, is_tensor ? &*index.offset : nullptr);
      const metadata::ItemMetadata* saved = md.find_item(index.fqn);
      if (!g.info || !saved || saved->is_tensor() != is_tensor)
        throw Error(Errc::invalid_argument, "read item names no saved " + std::string(is_tensor ? "chunk" : "object"))
            .for_key(index.fqn);
      if (is_tensor) {
        g.chunk = &saved->tensor().chunks[*metadata_->chunk_position(index.fqn, *index.offset)];
        g.dtype = saved->tensor().properties.dtype;
      }
      g.shared = shared.find(index.fqn, is_tensor ? &*index.offset : nullptr);
      if (g.shared && g.shared->size() != g.info->length)
        throw Error(Errc::invalid_argument, "shared bytes of " + std::to_string(g.shared->size()) +
                                                " for an item stored in " + std::to_string(g.info->length))
            .for_key(index.fqn);
      if (g.shared) report.received_bytes += g.info->length;
      groups.push_back(std::move(g));
    }
    Group& g = groups[it->second];
    g.items.push_back(i);
    if (!is_tensor) continue;
    check_against_saved_chunk(item, *g.chunk);
    destinations[i] = planner.resolve_tensor(item);
    if (!can_convert(g.dtype, destinations[i].dtype))
      throw Error(Errc::unimplemented, "loading " + std::string(dtype_name(g.dtype)) + " into " +
                                           std::string(dtype_name(destinations[i].dtype)) + " is not supported")
          .for_key(index.fqn);
  }
  report.items = groups.size();

  // 2. Locate every tensor's storage record; read whole objects (after checking their size).
  std::vector<Task> locate;
  for (auto& g : groups) {
    locate.push_back({&g, [&g, &source, this] {
                        const std::uint64_t base = g.info->offset, length = g.info->length;
                        if (!g.chunk) {
                          if (length > options_.max_object_bytes)
                            throw Error(Errc::resource_exhausted,
                                        "object of " + std::to_string(length) + " bytes exceeds the limit of " +
                                            std::to_string(options_.max_object_bytes) + " (ReadOptions::max_object_bytes)")
                                .at_offset(base);
                          g.object_bytes.resize(length);
                          source.read(g, base, g.object_bytes);
                          return;
                        }
                        if (g.info->raw) {
                          g.location = raw_location(g);
                          return;
                        }
                        if (!g.info->transform_descriptors.empty())
                          throw Error(Errc::unimplemented, "stream transform '" + g.info->transform_descriptors.front() +
                                                               "' is not supported")
                              .at_offset(base);
                        try {
                          // dcp.record works in archive offsets; reads past the item are its bug or a lie.
                          g.location = record::locate_tensor(length, [&](std::uint64_t offset, std::span<std::byte> out) {
                            if (offset > length || out.size() > length - offset)
                              throw Error(Errc::data_loss, "read past the item end").at_offset(offset);
                            try {
                              source.read(g, base + offset, out);
                            } catch (const Error& e) {
                              throw Error(e.code(), e.message()).at_offset(e.context().byte_offset.value_or(base + offset) - base);
                            }
                          });
                          record::check_against_chunk(g.location, g.dtype,
                                                      g.chunk->sizes);
                        } catch (Error& e) {
                          throw e.add_offset(base);  // archive offsets -> file offsets
                        }
                        if (options_.verify_crc && g.location.crc32 != 0) {
                          std::vector<std::byte> data(g.location.data_size);
                          source.read(g, base + g.location.data_offset, data);
                          if (zip::crc32(data) != g.location.crc32)
                            throw Error(Errc::data_loss, "CRC-32 mismatch in the storage record")
                                .at_offset(base + g.location.data_offset);
                        }
                      }});
  }
  run_all(threads, locate, failures);

  // 3. Copy: contiguous pieces straight into the destination; strided or converting reads
  //    through bounce buffers of at most bounce_bytes.
  std::vector<Task> copies;
  std::vector<std::pair<ReadPiece, Group*>> pieces;
  for (auto& g : groups) {
    if (g.error || !g.chunk) continue;
    const auto& r = g.location.record;
    const std::size_t itemsize = dtype_itemsize(r.dtype);
    const std::uint64_t storage_base = g.info->offset + g.location.data_offset;
    for (std::size_t i : g.items) {
      const ReadItem& item = plan.items[i];
      const TensorSlice& dst = destinations[i];
      if (planning::numel(dst) == 0) continue;
      std::uint64_t first = r.storage_offset;  // element index of the region's first element
      for (std::size_t d = 0; d < r.strides.size(); ++d)
        first += static_cast<std::uint64_t>(item.storage_offsets[d] * r.strides[d]);
      const std::uint64_t count = planning::numel(dst);
      report.bytes_read += count * itemsize;
      if (dst.dtype == r.dtype && layout::is_row_major(r.sizes, r.strides) && is_single_run(r.sizes, item.storage_offsets, item.lengths) &&
          planning::is_contiguous(dst)) {
        const std::uint64_t bytes = count * itemsize;
        for (std::uint64_t done = 0; done < bytes; done += kPieceBytes)
          pieces.push_back({{g.info->relative_path, storage_base + first * itemsize + done, dst.data + done,
                             std::min(kPieceBytes, bytes - done)},
                            &g});
        continue;
      }
      std::vector<std::pair<Shape, Shape>> boxes;
      Shape offsets(item.lengths.size(), 0), lengths = item.lengths;
      split_box(offsets, lengths, r.strides, std::max<std::uint64_t>(options_.bounce_bytes / itemsize, 1), 0, boxes);
      for (auto& [sub_offsets, sub_lengths] : boxes) {
        std::uint64_t sub_first = first, dst_offset = 0;
        for (std::size_t d = 0; d < sub_offsets.size(); ++d) {
          sub_first += static_cast<std::uint64_t>(sub_offsets[d] * r.strides[d]);
          dst_offset += static_cast<std::uint64_t>(sub_offsets[d] * dst.strides[d]);
        }
        copies.push_back({&g, [&g, &source, &r, &dst, itemsize, storage_base, sub_first, dst_offset,
                               sub_lengths = std::move(sub_lengths)] {
                            std::vector<std::byte> buffer(span_elements(sub_lengths, r.strides) * itemsize);
                            source.read(g, storage_base + sub_first * itemsize, buffer);
                            copy_box(dst.data + dst_offset * dtype_itemsize(dst.dtype), dst.strides, dst.dtype, buffer.data(),
                                     r.strides, r.dtype, sub_lengths);
                          }});
      }
    }
  }
  // Pieces in file order: sequential reads, and io_uring keeps only the files in flight open.
  std::stable_sort(pieces.begin(), pieces.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first.file, a.first.offset) < std::tie(b.first.file, b.first.offset);
  });
  // Pieces of shared items are copies from memory; io_uring (when asked for) reads the rest.
  std::vector<ReadPiece> file_pieces;
  std::vector<Group*> file_piece_groups;
  for (const auto& [piece, group] : pieces)
    if (group->shared) {
      copies.push_back({group, [&source, &piece, group] {
                          source.read(*group, piece.offset, std::span(piece.destination, piece.size));
                        }});
    } else {
      file_pieces.push_back(piece);
      file_piece_groups.push_back(group);
    }
  std::vector<std::optional<Error>> piece_errors(file_pieces.size());
  const bool uring = options_.backend == ReadBackend::io_uring && read_pieces_uring(files, file_pieces, 64, piece_errors);
  if (uring)
    for (const auto& piece : file_pieces) source.add_storage_bytes(piece.size);
  else
    for (std::size_t i = 0; i < file_pieces.size(); ++i)
      copies.push_back({file_piece_groups[i], [&source, &piece = file_pieces[i], group = file_piece_groups[i]] {
                          source.read(*group, piece.offset, std::span(piece.destination, piece.size));
                        }});
  run_all(threads, copies, failures);
  for (std::size_t i = 0; i < file_pieces.size(); ++i)
    if (piece_errors[i]) failures.record(*file_piece_groups[i], *piece_errors[i]);
  report.storage_bytes = source.storage_bytes();

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
