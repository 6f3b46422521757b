// LoadPlans, SavePlans and WriteResults as bytes for gather and scatter between ranks.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.bytes;
import dcp.metadata;

namespace dcp::planning {
namespace {

constexpr char magic[4] = {'D', 'L', 'P', '1'};
constexpr std::uint8_t has_offset = 1, has_index = 2;
// type + two indexes (length + flags) + three shape ranks: the least bytes an item takes.
constexpr std::size_t min_item_size = 1 + 2 * (4 + 1) + 3 * 4;

class Writer {
 public:
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    out.insert(out.end(), b, b + n);
  }
  void uint(std::uint64_t v, int width) { append_le(out, v, static_cast<std::size_t>(width)); }
  void shape(const Shape& s) {
    uint(s.size(), 4);
    for (std::int64_t d : s) uint(static_cast<std::uint64_t>(d), 8);
  }
  void text(std::string_view t) {
    uint(t.size(), 4);
    bytes(t.data(), t.size());
  }
  void index(const metadata::MetadataIndex& i) {
    text(i.fqn);
    uint((i.offset ? has_offset : 0) | (i.index ? has_index : 0), 1);
    if (i.offset) shape(*i.offset);
    if (i.index) uint(static_cast<std::uint64_t>(*i.index), 8);
  }
  std::vector<std::byte> out;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in, const char* what = "load plan") : in_(in), what_(what) {}
  [[noreturn]] void fail(const std::string& message) const {
    Error e(Errc::data_loss, std::string(what_) + ": " + message);
    e.at_offset(pos_);
    throw e;
  }
  std::size_t remaining() const { return in_.size() - pos_; }
  const std::byte* take(std::size_t n, const char* what) {
    if (n > remaining())
      fail(std::string(what) + " needs " + std::to_string(n) + " bytes, " + std::to_string(remaining()) + " left");
    const std::byte* p = in_.data() + pos_;
    pos_ += n;
    return p;
  }
  std::uint64_t uint(int width, const char* what) {
    const std::byte* p = take(static_cast<std::size_t>(width), what);
    return load_le(std::span(p, static_cast<std::size_t>(width)), static_cast<std::size_t>(width));
  }
  Shape shape() {
    const std::uint64_t rank = uint(4, "shape rank");
    if (rank > remaining() / 8) fail("shape rank " + std::to_string(rank) + " exceeds the input");
    Shape s(rank);
    for (auto& d : s) d = static_cast<std::int64_t>(uint(8, "shape entry"));
    return s;
  }
  metadata::MetadataIndex index() {
    metadata::MetadataIndex i;
    i.fqn = text("key");
    const std::uint64_t flags = uint(1, "index flags");
    if (flags & ~std::uint64_t{has_offset | has_index}) fail("unknown index flags " + std::to_string(flags));
    if (flags & has_offset) i.offset = shape();
    if (flags & has_index) i.index = static_cast<std::int64_t>(uint(8, "chunk index"));
    return i;
  }

  std::string text(const char* what) {
    const std::size_t n = uint(4, what);
    const std::byte* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  void magic(const char (&expected)[4], const char* kind) {
    if (std::memcmp(take(4, "magic"), expected, 4) != 0) fail(std::string("bad magic (not a dcpp ") + kind + ")");
  }
  // A count of records of at least `min_size` bytes each, checked against what is left.
  std::uint64_t count(std::size_t min_size, const char* what) {
    const std::uint64_t n = uint(8, what);
    if (n > remaining() / min_size) fail(std::string(what) + " " + std::to_string(n) + " exceeds the input");
    return n;
  }
  void finish() {
    if (remaining() != 0) fail(std::to_string(remaining()) + " trailing bytes");
  }

 private:
  std::span<const std::byte> in_;
  const char* what_;
  std::size_t pos_ = 0;
};

}  // namespace

std::vector<std::byte> encode_plan(const LoadPlan& plan) {
  Writer w;
  w.bytes(magic, sizeof magic);
  w.uint(plan.items.size(), 8);
  for (const ReadItem& item : plan.items) {
    w.uint(static_cast<std::uint8_t>(item.type), 1);
    w.index(item.dest_index);
    w.shape(item.dest_offsets);
    w.index(item.storage_index);
    w.shape(item.storage_offsets);
    w.shape(item.lengths);
  }
  return std::move(w.out);
}

LoadPlan decode_plan(std::span<const std::byte> bytes) {
  Reader r(bytes);
  r.magic(magic, "load plan");
  const std::uint64_t count = r.count(min_item_size, "item count");
  LoadPlan plan;
  plan.items.reserve(count);
  for (std::uint64_t k = 0; k < count; ++k) {
    ReadItem item;
    const std::uint64_t type = r.uint(1, "item type");
    if (type > static_cast<std::uint8_t>(LoadItemType::byte_io)) r.fail("unknown item type " + std::to_string(type));
    item.type = static_cast<LoadItemType>(type);
    item.dest_index = r.index();
    item.dest_offsets = r.shape();
    item.storage_index = r.index();
    item.storage_offsets = r.shape();
    item.lengths = r.shape();
    plan.items.push_back(std::move(item));
  }
  r.finish();
  return plan;
}

namespace {
constexpr char read_once_magic[4] = {'D', 'R', 'O', '1'};
// An index (length + flags) + reader + stored bytes: the least bytes a shared read takes.
constexpr std::size_t min_shared_read_size = 4 + 1 + 4 + 8;
}  // namespace

bool operator==(const SharedRead& a, const SharedRead& b) {
  return a.item.fqn == b.item.fqn && a.item.offset == b.item.offset && a.item.index == b.item.index &&
         a.reader == b.reader && a.stored_bytes == b.stored_bytes;
}

std::vector<std::byte> encode_shared_reads(std::span<const SharedRead> reads) {
  Writer w;
  w.bytes(read_once_magic, sizeof read_once_magic);
  w.uint(reads.size(), 8);
  for (const SharedRead& read : reads) {
    w.index(read.item);
    w.uint(static_cast<std::uint32_t>(read.reader), 4);
    w.uint(read.stored_bytes, 8);
  }
  return std::move(w.out);
}

std::vector<SharedRead> decode_shared_reads(std::span<const std::byte> bytes) {
  Reader r(bytes, "shared reads");
  r.magic(read_once_magic, "shared-read list");
  const std::uint64_t count = r.count(min_shared_read_size, "shared read count");
  std::vector<SharedRead> reads;
  reads.reserve(count);
  for (std::uint64_t k = 0; k < count; ++k) {
    SharedRead read;
    read.item = r.index();
    const std::uint64_t reader = r.uint(4, "reader rank");
    if (reader > 0x7fffffff) r.fail("reader rank " + std::to_string(reader) + " out of range");
    read.reader = static_cast<int>(reader);
    read.stored_bytes = r.uint(8, "stored bytes");
    reads.push_back(std::move(read));
  }
  r.finish();
  return reads;
}

namespace {
constexpr char save_magic[4] = {'D', 'S', 'P', '1'};
constexpr char results_magic[4] = {'D', 'W', 'R', '1'};
constexpr std::uint8_t has_tensor_data = 1;

void put_properties(Writer& w, const metadata::TensorProperties& p) {
  w.uint(static_cast<std::uint8_t>(p.dtype), 1);
  w.uint(p.requires_grad, 1);
  w.uint(static_cast<std::uint8_t>(p.memory_format), 1);
  w.uint(p.pin_memory, 1);
}

metadata::TensorProperties get_properties(Reader& r) {
  metadata::TensorProperties p;
  const auto dtype = r.uint(1, "dtype");
  if (dtype >= dtype_table().size()) r.fail("unknown dtype " + std::to_string(dtype));
  p.dtype = static_cast<DType>(dtype);
  p.requires_grad = r.uint(1, "requires_grad") != 0;
  const auto format = r.uint(1, "memory format");
  if (format > static_cast<std::uint8_t>(metadata::MemoryFormat::preserve)) r.fail("unknown memory format");
  p.memory_format = static_cast<metadata::MemoryFormat>(format);
  p.pin_memory = r.uint(1, "pin_memory") != 0;
  return p;
}

void put_path(Writer& w, const std::vector<metadata::PathPart>& path) {
  w.uint(path.size(), 4);
  for (const auto& part : path) {
    if (const auto* key = std::get_if<std::string>(&part)) {
      w.uint(0, 1);
      w.text(*key);
    } else {
      w.uint(1, 1);
      w.uint(static_cast<std::uint64_t>(std::get<std::int64_t>(part)), 8);
    }
  }
}

std::vector<metadata::PathPart> get_path(Reader& r) {
  const std::uint64_t n = r.uint(4, "path length");
  if (n > r.remaining() / 5) r.fail("path length " + std::to_string(n) + " exceeds the input");
  std::vector<metadata::PathPart> path;
  for (std::uint64_t i = 0; i < n; ++i) {
    const auto kind = r.uint(1, "path part kind");
    if (kind == 0) path.emplace_back(r.text("path key"));
    else if (kind == 1) path.emplace_back(static_cast<std::int64_t>(r.uint(8, "path index")));
    else r.fail("unknown path part kind " + std::to_string(kind));
  }
  return path;
}
}  // namespace

std::vector<std::byte> encode_save_plan(const SavePlan& plan) {
  Writer w;
  w.bytes(save_magic, sizeof save_magic);
  w.text(plan.storage_data);
  w.uint(plan.usable, 1);
  w.uint(plan.items.size(), 8);
  for (const WriteItem& item : plan.items) {
    w.uint(static_cast<std::uint8_t>(item.type), 1);
    w.index(item.index);
    w.uint(item.tensor_data ? has_tensor_data : 0, 1);
    if (item.tensor_data) {
      w.shape(item.tensor_data->chunk.offsets);
      w.shape(item.tensor_data->chunk.sizes);
      put_properties(w, item.tensor_data->properties);
      w.shape(item.tensor_data->size);
    }
  }
  w.uint(plan.planner_data.size(), 8);
  for (const auto& [fqn, path] : plan.planner_data) {
    w.text(fqn);
    put_path(w, path);
  }
  return std::move(w.out);
}

SavePlan decode_save_plan(std::span<const std::byte> bytes) {
  Reader r(bytes, "save plan");
  r.magic(save_magic, "save plan");
  SavePlan plan;
  plan.storage_data = r.text("storage data");
  plan.usable = r.uint(1, "usable") != 0;
  const auto count = r.count(1 + 5 + 1, "item count");
  plan.items.reserve(count);
  for (std::uint64_t k = 0; k < count; ++k) {
    WriteItem item;
    const auto type = r.uint(1, "item type");
    if (type > static_cast<std::uint8_t>(WriteItemType::byte_io)) r.fail("unknown item type " + std::to_string(type));
    item.type = static_cast<WriteItemType>(type);
    item.index = r.index();
    const auto flags = r.uint(1, "item flags");
    if (flags & ~std::uint64_t{has_tensor_data}) r.fail("unknown item flags " + std::to_string(flags));
    if (flags & has_tensor_data) {
      TensorWriteData data;
      data.chunk.offsets = r.shape();
      data.chunk.sizes = r.shape();
      data.properties = get_properties(r);
      data.size = r.shape();
      item.tensor_data = std::move(data);
    }
    plan.items.push_back(std::move(item));
  }
  const auto paths = r.count(4 + 4, "path count");
  for (std::uint64_t k = 0; k < paths; ++k) {
    auto fqn = r.text("path key");
    plan.planner_data.emplace_back(std::move(fqn), get_path(r));
  }
  r.finish();
  return plan;
}

std::vector<SavePlan> decode_save_plans(std::span<const std::span<const std::byte>> bodies) {
  std::vector<SavePlan> plans(bodies.size());
  std::uint64_t bytes = 0;
  for (const auto& body : bodies) bytes += body.size();
  parallel_for(bodies.size(), bytes / 64, [&](std::size_t r) { plans[r] = decode_save_plan(bodies[r]); });
  return plans;
}

std::vector<std::vector<std::byte>> encode_save_plans(std::span<const SavePlan> plans) {
  std::vector<std::vector<std::byte>> out(plans.size());
  std::uint64_t items = 0;
  for (const auto& plan : plans) items += plan.items.size();
  parallel_for(plans.size(), items, [&](std::size_t r) { out[r] = encode_save_plan(plans[r]); });
  return out;
}

std::vector<std::byte> encode_write_results(std::span<const WriteResult> results) {
  Writer w;
  w.bytes(results_magic, sizeof results_magic);
  w.uint(results.size(), 8);
  for (const auto& result : results) {
    w.index(result.index);
    w.uint(result.size_in_bytes, 8);
    w.text(result.storage_data.relative_path);
    w.uint(result.storage_data.offset, 8);
    w.uint(result.storage_data.length, 8);
    w.uint(result.storage_data.transform_descriptors.size(), 4);
    for (const auto& d : result.storage_data.transform_descriptors) w.text(d);
  }
  return std::move(w.out);
}

std::vector<WriteResult> decode_write_results(std::span<const std::byte> bytes) {
  Reader r(bytes, "write results");
  r.magic(results_magic, "write results");
  const auto count = r.count(5 + 8 + 4 + 16 + 4, "result count");
  std::vector<WriteResult> results;
  results.reserve(count);
  for (std::uint64_t k = 0; k < count; ++k) {
    WriteResult result;
    result.index = r.index();
    result.size_in_bytes = r.uint(8, "size");
    result.storage_data.relative_path = r.text("relative path");
    result.storage_data.offset = r.uint(8, "offset");
    result.storage_data.length = r.uint(8, "length");
    const auto descriptors = r.uint(4, "descriptor count");
    if (descriptors > r.remaining() / 4) r.fail("descriptor count exceeds the input");
    for (std::uint64_t d = 0; d < descriptors; ++d) result.storage_data.transform_descriptors.push_back(r.text("descriptor"));
    results.push_back(std::move(result));
  }
  r.finish();
  return results;
}

}  // namespace dcp::planning
