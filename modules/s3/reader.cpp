// ObjectStoreReader: `.metadata` with one GET, the data objects listed once, and a LoadPlan
// executed as coalesced ranged GETs straight into destination memory.
//
// read_data runs in three rounds of requests, each a set of byte ranges coalesced per object
// (neighbours closer than Options::coalesce_gap share a request, the gap's bytes discarded;
// none larger than Options::max_request_bytes) and fetched on Options::max_requests threads:
//  1. probes: the head and tail of every tensor item's archive (its local headers, data.pkl
//     and central directory; small items whole) and every object item whole, neighbours
//     closer than kProbeGap in one request whose bytes are all kept;
//  2. record::locate_tensor over the probed bytes (a read outside them is a request of its own);
//  3. the data: a region contiguous in the record and in the destination goes straight into the
//     destination; anything strided or of another dtype through bounce buffers of at most
//     ReadOptions::bounce_bytes, copied out by the thread that fetched them. Bytes the probes
//     already hold are copied from there.
// Items another rank sent (read-once) are read from those bytes instead. Every error names the
// object URL, the key and the byte offset in the object.
module;
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>
module dcp.s3;
import dcp.error;
import dcp.layout;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.zip;

namespace dcp::s3 {
namespace {

using metadata::Shape;
using planning::ReadItem;
using planning::TensorSlice;

// What a probe reads of an archive: its start holds the local header, data.pkl and the storage
// record's header (a large record starts on a 4 KiB boundary), its end the central directory
// and end records.
constexpr std::uint64_t kProbeHead = std::uint64_t{8} << 10;
constexpr std::uint64_t kProbeTail = std::uint64_t{8} << 10;
// Probes closer than this are one request whose bytes are all kept (at most this much of a
// gap is held per request): small items arrive whole with their neighbours' probes.
constexpr std::uint64_t kProbeGap = std::uint64_t{64} << 10;
// Listing a prefix that holds more objects than this is refused (a hostile or wrong prefix).
constexpr std::uint64_t kMaxListedObjects = 1'000'000;

struct Group {
  const metadata::StorageInfo* info = nullptr;
  std::string fqn;
  const metadata::ChunkStorageMetadata* chunk = nullptr;  // nullptr for a bytes item
  DType dtype = DType::float32;
  std::vector<std::size_t> items;
  const std::span<const std::byte>* shared = nullptr;
  record::TensorLocation location;
  std::vector<std::byte> object_bytes;
  std::optional<Error> error;
  std::mutex error_mutex;
  void fail(Error e) {
    e.for_key(fqn);
    std::lock_guard lock(error_mutex);
    if (!error) error = std::move(e);
  }
};

// Bytes of one object already fetched (probes), by object offset.
class ProbeCache {
 public:
  void add(const std::string& file, std::uint64_t offset, std::vector<std::byte> bytes) {
    std::lock_guard lock(mutex_);
    spans_[file].emplace(offset, std::move(bytes));
  }
  // Copies [offset, offset + out.size()) when one fetched span holds all of it.
  bool read(const std::string& file, std::uint64_t offset, std::span<std::byte> out) const {
    const auto* bytes = find(file, offset, out.size());
    if (!bytes) return false;
    if (!out.empty()) std::memcpy(out.data(), bytes, out.size());
    return true;
  }
  const std::byte* find(const std::string& file, std::uint64_t offset, std::uint64_t size) const {
    const auto f = spans_.find(file);
    if (f == spans_.end()) return nullptr;
    auto it = f->second.upper_bound(offset);
    if (it == f->second.begin()) return nullptr;
    --it;
    if (offset + size > it->first + it->second.size()) return nullptr;
    return it->second.data() + (offset - it->first);
  }

 private:
  std::mutex mutex_;  // add() runs on the fetching threads; reads only after they joined
  std::map<std::string, std::map<std::uint64_t, std::vector<std::byte>>, std::less<>> spans_;
};

// One byte range wanted from an object: into `destination`, or (null) into a buffer made when
// its request starts and handed to `done`.
struct Range {
  const std::string* file = nullptr;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::byte* destination = nullptr;
  std::function<void(std::span<const std::byte>)> done;
  Group* group = nullptr;
};

// Ranges coalesced into one request.
struct Fetch {
  const std::string* file = nullptr;
  std::uint64_t offset = 0;
  std::uint64_t end = 0;
  std::vector<Range*> ranges;
};

// Runs task(i) for i in [0, count) on up to `threads` threads; nothing escapes a worker: a
// failure goes to fail(i, error) on this thread after they joined.
void run_parallel(int threads, std::size_t count, const std::function<void(std::size_t)>& task,
                  const std::function<void(std::size_t, Error)>& fail) {
  std::vector<std::optional<Error>> errors(count);
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < count;) {
      try {
        task(i);
      } catch (...) {
        errors[i] = current_exception_as_error();
      }
    }
  };
  std::vector<std::thread> pool;
  const auto extra = std::min<std::size_t>(count, static_cast<std::size_t>(std::max(threads, 1))) - (count > 0 ? 1 : 0);
  for (std::size_t t = 0; t < extra; ++t) {
    try {
      pool.emplace_back(worker);
    } catch (...) {
      break;  // fewer threads: the others do the work
    }
  }
  worker();
  for (auto& t : pool) t.join();
  for (std::size_t i = 0; i < count; ++i)
    if (errors[i]) fail(i, std::move(*errors[i]));
}

std::vector<Fetch> coalesce(std::vector<Range>& ranges, std::uint64_t gap, std::uint64_t max_bytes) {
  std::vector<Range*> order;
  for (auto& r : ranges)
    if (r.size > 0) order.push_back(&r);
  std::stable_sort(order.begin(), order.end(),
                   [](const Range* a, const Range* b) { return std::tie(*a->file, a->offset) < std::tie(*b->file, b->offset); });
  std::vector<Fetch> fetches;
  for (Range* r : order) {
    if (!fetches.empty()) {
      auto& f = fetches.back();
      if (*f.file == *r->file && r->offset >= f.end && r->offset - f.end <= gap && r->offset + r->size - f.offset <= max_bytes) {
        f.ranges.push_back(r);
        f.end = r->offset + r->size;
        continue;
      }
    }
    fetches.push_back(Fetch{r->file, r->offset, r->offset + r->size, {r}});
  }
  return fetches;
}

bool is_row_major(const record::TensorRecord& r) {
  const auto want = layout::contiguous_strides(r.sizes);
  for (std::size_t d = 0; d < r.sizes.size(); ++d)
    if (r.sizes[d] > 1 && r.strides[d] != want[d]) return false;
  return true;
}

// The box [offsets, offsets + lengths) of a row-major array of `sizes` is one run of memory.
bool is_single_run(const Shape& sizes, const Shape& offsets, const Shape& lengths) {
  std::size_t d = 0;
  while (d < sizes.size() && lengths[d] == 1) ++d;
  if (d == sizes.size()) return true;
  for (std::size_t k = d + 1; k < sizes.size(); ++k)
    if (offsets[k] != 0 || lengths[k] != sizes[k]) return false;
  return true;
}

std::string object_limit_text(std::uint64_t length, std::uint64_t limit) {
  return "object of " + std::to_string(length) + " bytes exceeds the limit of " + std::to_string(limit) +
         " (ReadOptions::max_object_bytes)";
}

}  // namespace

ObjectStoreReader::ObjectStoreReader(Location location, Options options, storage::ReadOptions read)
    : location_(std::move(location)), read_(read), client_(std::make_shared<Client>(std::move(options))) {}

ObjectStoreReader::~ObjectStoreReader() = default;

Stats ObjectStoreReader::stats() const { return client_->stats(); }

std::string ObjectStoreReader::location_of(std::string_view relative_path) const { return location_.url(relative_path); }

std::vector<std::byte> ObjectStoreReader::read_metadata_bytes() const {
  auto bytes = client_->get_object(location_.bucket, location_.key(".metadata"), storage::kMaxMetadataBytes);
  if (!bytes)
    throw Error(Errc::not_found, "no .metadata: not a DCP checkpoint location").in_file(location_.url(".metadata"));
  return *std::move(bytes);
}

metadata::ValidatedMetadata ObjectStoreReader::read_metadata() const { return metadata_from_bytes(read_metadata_bytes()); }

const std::map<std::string, ObjectStoreReader::ObjectInfo, std::less<>>& ObjectStoreReader::objects(
    const metadata::Metadata& md) const {
  std::lock_guard lock(objects_mutex_);
  if (objects_) return *objects_;
  std::map<std::string, ObjectInfo, std::less<>> found;
  const auto prefix = location_.prefix.empty() ? std::string() : location_.prefix + "/";
  for (auto& [key, head] : client_->list(location_.bucket, prefix, true, kMaxListedObjects))
    found.emplace(key.substr(prefix.size()), ObjectInfo{head.size, std::move(head.etag)});
  // Names below the prefix's first level are not in a delimited listing: asked one by one.
  for (const auto& [index, info] : md.storage_data) {
    if (found.contains(info.relative_path) || !metadata::is_safe_relative_path(info.relative_path)) continue;
    if (info.relative_path.find('/') == std::string::npos) continue;
    if (const auto head = client_->head(location_.bucket, location_.key(info.relative_path)))
      found.emplace(info.relative_path, ObjectInfo{head->size, head->etag});
  }
  objects_ = std::move(found);
  return *objects_;
}

const ObjectStoreReader::ObjectInfo& ObjectStoreReader::object(std::string_view relative_path) const {
  std::lock_guard lock(objects_mutex_);
  if (objects_)
    if (const auto it = objects_->find(relative_path); it != objects_->end()) return it->second;
  throw Error(Errc::not_found, "the data object is missing").in_file(location_.url(relative_path));
}

metadata::ValidatedMetadata ObjectStoreReader::metadata_from_bytes(std::span<const std::byte> bytes) const {
  const auto url = location_.url(".metadata");
  std::optional<metadata::ValidatedMetadata> validated;
  try {
    validated = metadata::decode_validated(bytes);
  } catch (Error& e) {
    e.in_file(url);
    throw;
  } catch (const std::bad_alloc&) {
    throw Error(Errc::resource_exhausted, "out of memory decoding it").in_file(url);
  }
  const auto& listed = objects(**validated);
  try {
    metadata::check_storage_bounds(*validated, [&](std::string_view name) -> std::optional<std::uint64_t> {
      if (!metadata::is_safe_relative_path(name)) return std::nullopt;
      const auto it = listed.find(name);
      if (it == listed.end()) return std::nullopt;
      return it->second.size;
    });
  } catch (Error& e) {
    Error full(e.code(), e.message());
    full.in_file(e.context().file.empty() ? url : location_.url(e.context().file)).for_key(e.context().key);
    if (e.context().byte_offset) full.at_offset(*e.context().byte_offset);
    throw full;
  }
  return *std::move(validated);
}

void ObjectStoreReader::set_up_storage_reader(metadata::ValidatedMetadata metadata, bool) {
  (void)objects(*metadata);  // a rank that did not decode .metadata itself lists now
  metadata_ = std::move(metadata);
}

void ObjectStoreReader::read_item(const metadata::MetadataIndex& item, std::span<std::byte> out,
                                  storage::ReadReport& report) {
  if (!metadata_) throw Error(Errc::failed_precondition, "read_item before set_up_storage_reader");
  const metadata::Metadata& md = **metadata_;
  const auto* saved = md.find_item(item.fqn);
  const auto* info = md.find_storage(item.fqn, item.offset ? &*item.offset : nullptr);
  if (!saved || !info || saved->is_tensor() != item.offset.has_value())
    throw Error(Errc::invalid_argument, "shared read names no saved item").for_key(item.fqn);
  try {
    if (!saved->is_tensor() && info->length > read_.max_object_bytes)
      throw Error(Errc::resource_exhausted, object_limit_text(info->length, read_.max_object_bytes)).at_offset(info->offset);
    if (out.size() != info->length)
      throw Error(Errc::invalid_argument,
                  std::to_string(out.size()) + " bytes for an item stored in " + std::to_string(info->length))
          .at_offset(info->offset);
    const auto before = client_->stats();
    const Segment whole{out.data(), out.size()};
    client_->get_range(location_.bucket, location_.key(info->relative_path), object(info->relative_path).etag,
                       info->offset, std::span(&whole, 1));
    report.storage_bytes += out.size();
    report.requests += client_->stats().requests - before.requests;
  } catch (Error& e) {
    e.in_file(location_.url(info->relative_path));
    e.for_key(item.fqn);
    throw;
  }
}

storage::ReadReport ObjectStoreReader::read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner) {
  return read_data(plan, planner, storage::SharedItems{});
}

storage::ReadReport ObjectStoreReader::read_data(const planning::LoadPlan& plan, planning::LoadPlanner& planner,
                                                 const storage::SharedItems& shared) {
  if (!metadata_) throw Error(Errc::failed_precondition, "read_data before set_up_storage_reader");
  const metadata::Metadata& md = **metadata_;
  const auto& options = client_->options();
  const int threads = std::max(options.max_requests, 1);
  const auto before = client_->stats();
  storage::ReadReport report;
  std::atomic<std::uint64_t> storage_bytes{0};

  // 1. Group items per saved item and resolve destinations (planner calls on this thread).
  std::vector<std::unique_ptr<Group>> groups;
  std::map<std::pair<std::string, Shape>, std::size_t> group_of;
  std::vector<TensorSlice> destinations(plan.items.size());
  for (std::size_t i = 0; i < plan.items.size(); ++i) {
    const ReadItem& item = plan.items[i];
    const auto& index = item.storage_index;
    const bool is_tensor = item.type == planning::LoadItemType::tensor;
    if (is_tensor && !index.offset)
      throw Error(Errc::invalid_argument, "tensor read item without chunk offsets").for_key(index.fqn);
    auto [it, inserted] = group_of.try_emplace(std::make_pair(index.fqn, is_tensor ? *index.offset : Shape{}), groups.size());
    if (inserted) {
      auto g = std::make_unique<Group>();
      g->fqn = index.fqn;
      g->info = md.find_storage(index.fqn, is_tensor ? &*index.offset : nullptr);
      const metadata::ItemMetadata* saved = md.find_item(index.fqn);
      if (!g->info || !saved || saved->is_tensor() != is_tensor)
        throw Error(Errc::invalid_argument, "read item names no saved " + std::string(is_tensor ? "chunk" : "object"))
            .for_key(index.fqn);
      if (is_tensor) {
        g->chunk = &saved->tensor().chunks[*metadata_->chunk_position(index.fqn, *index.offset)];
        g->dtype = saved->tensor().properties.dtype;
      }
      g->shared = shared.find(index.fqn, is_tensor ? &*index.offset : nullptr);
      if (g->shared && g->shared->size() != g->info->length)
        throw Error(Errc::invalid_argument, "shared bytes of " + std::to_string(g->shared->size()) +
                                                " for an item stored in " + std::to_string(g->info->length))
            .for_key(index.fqn);
      if (g->shared) report.received_bytes += g->info->length;
      groups.push_back(std::move(g));
    }
    Group& g = *groups[it->second];
    g.items.push_back(i);
    if (!is_tensor) continue;
    if (!layout::is_inside(item.storage_offsets, item.lengths, g.chunk->sizes))
      throw Error(Errc::invalid_argument, "read item " + layout::format_box({item.storage_offsets, item.lengths}) +
                                              " reaches outside the saved chunk of sizes " + format_shape(g.chunk->sizes))
          .for_key(index.fqn);
    destinations[i] = planner.resolve_tensor(item);
    if (!storage::can_convert(g.dtype, destinations[i].dtype))
      throw Error(Errc::unimplemented, "loading " + std::string(dtype_name(g.dtype)) + " into " +
                                           std::string(dtype_name(destinations[i].dtype)) + " is not supported")
          .for_key(index.fqn);
  }
  report.items = groups.size();

  // Fetches `ranges` (coalesced across gaps under `gap`) on the pool; a failed request fails
  // every group it served. With `keep`, each request's bytes, gaps included, stay in `probes`
  // (the probe round: later reads inside them need no request).
  ProbeCache probes;
  auto fetch_all = [&](std::vector<Range>& ranges, std::uint64_t gap, bool keep) {
    auto fetches = coalesce(ranges, gap, std::max<std::uint64_t>(options.max_request_bytes, 1));
    run_parallel(
        threads, fetches.size(),
        [&](std::size_t i) {
          auto& f = fetches[i];
          std::vector<std::vector<std::byte>> buffers(keep ? 1 : f.ranges.size());
          std::vector<Segment> segments;
          if (keep) {
            buffers[0].resize(f.end - f.offset);
            segments.push_back({buffers[0].data(), buffers[0].size()});
          } else {
            std::uint64_t at = f.offset;
            for (std::size_t k = 0; k < f.ranges.size(); ++k) {
              Range& r = *f.ranges[k];
              if (r.offset > at) segments.push_back({nullptr, r.offset - at});
              std::byte* into = r.destination;
              if (!into) {
                buffers[k].resize(r.size);
                into = buffers[k].data();
              }
              segments.push_back({into, r.size});
              at = r.offset + r.size;
            }
          }
          client_->get_range(location_.bucket, location_.key(*f.file), object(*f.file).etag, f.offset, segments);
          storage_bytes.fetch_add(f.end - f.offset, std::memory_order_relaxed);
          for (std::size_t k = 0; k < f.ranges.size(); ++k) {
            Range& r = *f.ranges[k];
            const std::span<const std::byte> bytes =
                keep ? std::span<const std::byte>(buffers[0]).subspan(r.offset - f.offset, r.size)
                     : r.destination ? std::span<const std::byte>(r.destination, r.size) : std::span<const std::byte>(buffers[k]);
            try {
              if (keep && r.destination && r.size > 0) std::memcpy(r.destination, bytes.data(), r.size);
              if (r.done) r.done(bytes);
            } catch (...) {
              r.group->fail(current_exception_as_error());
            }
          }
          if (keep) probes.add(*f.file, f.offset, std::move(buffers[0]));
        },
        [&](std::size_t i, Error e) {
          for (Range* r : fetches[i].ranges) r->group->fail(e);
        });
  };

  // 2. Probes: every object whole, the head and tail of every tensor archive; ranges closer
  //    than kProbeGap are read together and kept, so a small item's data needs no request of
  //    its own while a large one's is not read twice.
  {
    std::vector<Range> ranges;
    for (auto& gp : groups) {
      Group& g = *gp;
      const auto base = g.info->offset, length = g.info->length;
      if (!g.chunk) {
        if (length > read_.max_object_bytes) {
          g.fail(Error(Errc::resource_exhausted, object_limit_text(length, read_.max_object_bytes))
                     .in_file(location_.url(g.info->relative_path))
                     .at_offset(base));
          continue;
        }
        g.object_bytes.resize(length);
        if (g.shared) {
          if (length > 0) std::memcpy(g.object_bytes.data(), g.shared->data(), length);
          continue;
        }
        ranges.push_back(Range{&g.info->relative_path, base, length, g.object_bytes.data(), {}, &g});
        continue;
      }
      if (g.shared) continue;
      if (length <= kProbeHead + kProbeTail) {
        ranges.push_back(Range{&g.info->relative_path, base, length, nullptr, {}, &g});
      } else {
        ranges.push_back(Range{&g.info->relative_path, base, kProbeHead, nullptr, {}, &g});
        ranges.push_back(Range{&g.info->relative_path, base + length - kProbeTail, kProbeTail, nullptr, {}, &g});
      }
    }
    fetch_all(ranges, std::min(options.coalesce_gap, kProbeGap), true);
  }

  // 3. Locate every tensor's storage record in its archive (from the probes; a read they do not
  //    cover is a request of its own).
  auto read_stored = [&](const Group& g, std::uint64_t at, std::span<std::byte> out) {
    if (g.shared) {
      const auto start = at - g.info->offset;
      if (at < g.info->offset || start > g.shared->size() || out.size() > g.shared->size() - start)
        throw Error(Errc::internal, "read outside the shared item").at_offset(at);
      if (!out.empty()) std::memcpy(out.data(), g.shared->data() + start, out.size());
      return;
    }
    if (probes.read(g.info->relative_path, at, out)) return;
    const Segment whole{out.data(), out.size()};
    client_->get_range(location_.bucket, location_.key(g.info->relative_path), object(g.info->relative_path).etag, at,
                       std::span(&whole, 1));
    storage_bytes.fetch_add(out.size(), std::memory_order_relaxed);
  };
  std::vector<Group*> tensors;
  for (auto& g : groups)
    if (g->chunk && !g->error) tensors.push_back(g.get());
  run_parallel(
      threads, tensors.size(),
      [&](std::size_t i) {
        Group& g = *tensors[i];
        const std::uint64_t base = g.info->offset, length = g.info->length;
        if (!g.info->transform_descriptors.empty())
          throw Error(Errc::unimplemented, "stream transform '" + g.info->transform_descriptors.front() + "' is not supported")
              .at_offset(base);
        try {
          g.location = record::locate_tensor(length, [&](std::uint64_t offset, std::span<std::byte> out) {
            if (offset > length || out.size() > length - offset)
              throw Error(Errc::data_loss, "read past the item end").at_offset(offset);
            try {
              read_stored(g, base + offset, out);
            } catch (const Error& e) {
              throw Error(e.code(), e.message()).at_offset(e.context().byte_offset.value_or(base + offset) - base);
            }
          });
          record::check_against_chunk(g.location, g.dtype, g.chunk->sizes);
        } catch (Error& e) {
          throw e.add_offset(base);  // archive offsets -> object offsets
        }
        if (read_.verify_crc && g.location.crc32 != 0) {
          std::vector<std::byte> data(g.location.data_size);
          read_stored(g, base + g.location.data_offset, data);
          if (zip::crc32(data) != g.location.crc32)
            throw Error(Errc::data_loss, "CRC-32 mismatch in the storage record").at_offset(base + g.location.data_offset);
        }
      },
      [&](std::size_t i, Error e) {
        e.in_file(location_.url(tensors[i]->info->relative_path));
        tensors[i]->fail(std::move(e));
      });

  // 4. The data: straight into the destination where record and destination are both dense,
  //    else through bounded bounce buffers; from the probes or shared bytes where they hold it.
  std::vector<Range> ranges;
  for (Group* gp : tensors) {
    Group& g = *gp;
    if (g.error) continue;
    const auto& r = g.location.record;
    const std::size_t itemsize = dtype_itemsize(r.dtype);
    const std::uint64_t storage_base = g.info->offset + g.location.data_offset;
    for (std::size_t i : g.items) {
      const ReadItem& item = plan.items[i];
      const TensorSlice& dst = destinations[i];
      if (planning::numel(dst) == 0) continue;
      std::uint64_t first = r.storage_offset;
      for (std::size_t d = 0; d < r.strides.size(); ++d)
        first += static_cast<std::uint64_t>(item.storage_offsets[d] * r.strides[d]);
      const std::uint64_t count = planning::numel(dst);
      report.bytes_read += count * itemsize;
      auto add = [&](std::uint64_t at, std::uint64_t size, std::byte* into,
                     std::function<void(std::span<const std::byte>)> done) {
        const std::byte* held = g.shared ? g.shared->data() + (at - g.info->offset)
                                         : probes.find(g.info->relative_path, at, size);
        if (held) {  // no request: the bytes are here already
          try {
            if (into) std::memcpy(into, held, size);
            else done(std::span<const std::byte>(held, size));
          } catch (...) {
            g.fail(current_exception_as_error());
          }
          return;
        }
        ranges.push_back(Range{&g.info->relative_path, at, size, into, std::move(done), &g});
      };
      if (dst.dtype == r.dtype && is_row_major(r) && is_single_run(r.sizes, item.storage_offsets, item.lengths) &&
          planning::is_contiguous(dst)) {
        const std::uint64_t bytes = count * itemsize;
        const auto piece = std::max<std::uint64_t>(options.max_request_bytes, 1);
        for (std::uint64_t done = 0; done < bytes; done += piece)
          add(storage_base + first * itemsize + done, std::min(piece, bytes - done), dst.data + done, {});
        continue;
      }
      const auto bound = std::max<std::uint64_t>(std::min(read_.bounce_bytes, options.max_request_bytes) / itemsize, 1);
      for (auto& box : layout::bounded_boxes(item.lengths, r.strides, bound)) {
        std::uint64_t sub_first = first, dst_offset = 0;
        for (std::size_t d = 0; d < box.offsets.size(); ++d) {
          sub_first += static_cast<std::uint64_t>(box.offsets[d] * r.strides[d]);
          dst_offset += static_cast<std::uint64_t>(box.offsets[d] * dst.strides[d]);
        }
        const auto span = layout::span_elements(box.sizes, r.strides) * itemsize;
        add(storage_base + sub_first * itemsize, span, nullptr,
            [&dst, &r, dst_offset, lengths = std::move(box.sizes)](std::span<const std::byte> bytes) {
              storage::copy_box(dst.data + dst_offset * dtype_itemsize(dst.dtype), dst.strides, dst.dtype, bytes.data(),
                                r.strides, r.dtype, lengths);
            });
      }
    }
  }
  fetch_all(ranges, options.coalesce_gap, false);
  report.storage_bytes = storage_bytes.load();
  report.requests = client_->stats().requests - before.requests;

  // 5. Errors in plan order; results to the planner on this thread.
  for (auto& g : groups) {
    if (!g->error) continue;
    g->error->in_file(location_.url(g->info->relative_path));
    if (!read_.collect_errors) throw *g->error;
    report.errors.push_back(*g->error);
  }
  for (auto& g : groups) {
    if (g->error) continue;
    for (std::size_t i : g->items) {
      const ReadItem& item = plan.items[i];
      if (item.type == planning::LoadItemType::byte_io) planner.load_bytes(item, g->object_bytes);
      else planner.commit_tensor(item, destinations[i]);
    }
  }
  return report;
}

namespace {

// `s3://` locations open here wherever dcpp takes a checkpoint (storage::open_reader); the
// library is linked whole (meson.build), as nothing names this initializer.
const bool kRegistered = [] {
  storage::register_scheme(
      "s3", storage::SchemeBackend{
                [](std::string_view location, const storage::ReadOptions& read) -> std::unique_ptr<storage::StorageReader> {
                  return std::make_unique<ObjectStoreReader>(parse_url(location), options_from_environment(), read);
                },
                [](std::string_view location, const storage::WriteOptions& write) -> std::unique_ptr<storage::StorageWriter> {
                  return std::make_unique<ObjectStoreWriter>(parse_url(location), options_from_environment(), write);
                }});
  return true;
}();

}  // namespace

}  // namespace dcp::s3
