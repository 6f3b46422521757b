// encode_plan / decode_plan: LoadPlans as bytes for gather and scatter between ranks.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>
module dcp.planning;
import dcp.error;
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
  void uint(std::uint64_t v, int width) {
    for (int i = 0; i < width; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  void shape(const Shape& s) {
    uint(s.size(), 4);
    for (std::int64_t d : s) uint(static_cast<std::uint64_t>(d), 8);
  }
  void index(const metadata::MetadataIndex& i) {
    uint(i.fqn.size(), 4);
    bytes(i.fqn.data(), i.fqn.size());
    uint((i.offset ? has_offset : 0) | (i.index ? has_index : 0), 1);
    if (i.offset) shape(*i.offset);
    if (i.index) uint(static_cast<std::uint64_t>(*i.index), 8);
  }
  std::vector<std::byte> out;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  [[noreturn]] void fail(const std::string& message) const {
    Error e(Errc::data_loss, "load plan: " + message);
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
    std::uint64_t v = 0;
    for (int i = 0; i < width; ++i) v |= std::to_integer<std::uint64_t>(p[i]) << (8 * i);
    return v;
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
    const std::size_t n = uint(4, "key length");
    const std::byte* p = take(n, "key");
    i.fqn.assign(reinterpret_cast<const char*>(p), n);
    const std::uint64_t flags = uint(1, "index flags");
    if (flags & ~std::uint64_t{has_offset | has_index}) fail("unknown index flags " + std::to_string(flags));
    if (flags & has_offset) i.offset = shape();
    if (flags & has_index) i.index = static_cast<std::int64_t>(uint(8, "chunk index"));
    return i;
  }

 private:
  std::span<const std::byte> in_;
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
  if (std::memcmp(r.take(sizeof magic, "magic"), magic, sizeof magic) != 0) r.fail("bad magic (not a dcpp load plan)");
  const std::uint64_t count = r.uint(8, "item count");
  if (count > r.remaining() / min_item_size) r.fail("item count " + std::to_string(count) + " exceeds the input");
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
  if (r.remaining() != 0) r.fail(std::to_string(r.remaining()) + " trailing bytes");
  return plan;
}

}  // namespace dcp::planning
