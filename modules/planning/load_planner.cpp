// DefaultLoadPlanner: destination checks, read items from chunk overlaps, item resolution.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.metadata;
import dcp.layout;

namespace dcp::planning {

namespace {

layout::Box box_of(const LocalChunk& chunk) { return layout::Box{chunk.offsets, chunk.sizes}; }

void check_destination(const std::string& fqn, const TensorDestination& t) {
  for (std::int64_t s : t.global_size)
    if (s < 0) fail_for_key(Errc::invalid_argument, fqn, "negative size in " + layout::format_shape(t.global_size));
  for (std::size_t i = 0; i < t.chunks.size(); ++i) {
    const LocalChunk& c = t.chunks[i];
    const std::string name = "local chunk " + std::to_string(i) + " at " + layout::format_box(box_of(c));
    if (!layout::is_inside(box_of(c), t.global_size))
      fail_for_key(Errc::invalid_argument, fqn, name + " lies outside the tensor of shape " + layout::format_shape(t.global_size));
    if (c.memory.sizes != c.sizes || c.memory.strides.size() != c.sizes.size())
      fail_for_key(Errc::invalid_argument, fqn, name + " has memory of shape " + layout::format_shape(c.memory.sizes));
    if (c.memory.dtype != t.dtype)
      fail_for_key(Errc::invalid_argument, fqn, name + " has memory of dtype " + std::string(dtype_name(c.memory.dtype)) +
                                            ", not the tensor's " + std::string(dtype_name(t.dtype)));
  }
}

}  // namespace

bool operator==(const ReadItem& a, const ReadItem& b) {
  auto same_index = [](const metadata::MetadataIndex& x, const metadata::MetadataIndex& y) {
    return x.fqn == y.fqn && x.offset == y.offset && x.index == y.index;
  };
  return a.type == b.type && same_index(a.dest_index, b.dest_index) && a.dest_offsets == b.dest_offsets &&
         same_index(a.storage_index, b.storage_index) && a.storage_offsets == b.storage_offsets &&
         a.lengths == b.lengths;
}

void DefaultLoadPlanner::set_up_planner(Destination& destination, metadata::ValidatedMetadata metadata,
                                        bool is_coordinator) {
  for (const auto& [fqn, entry] : destination.entries())
    if (const auto* tensor = std::get_if<TensorDestination>(&entry)) check_destination(fqn, *tensor);
  destination_ = &destination;
  metadata_ = std::move(metadata);
  is_coordinator_ = is_coordinator;
  bytes_.clear();
}

LoadPlan DefaultLoadPlanner::create_local_plan() {
  if (!destination_ || !metadata_) throw Error(Errc::failed_precondition, "set_up_planner was not called");
  LoadPlan plan;
  for (const auto& [fqn, entry] : destination_->entries()) {
    const metadata::ItemMetadata* item = (*metadata_)->find_item(fqn);
    if (!item) {
      if (options_.allow_partial_load) continue;
      fail_for_key(Errc::not_found, fqn, "missing key in checkpoint");
    }
    if (const auto* tensor = std::get_if<TensorDestination>(&entry)) {
      if (!item->is_tensor())
        fail_for_key(Errc::failed_precondition, fqn, "checkpoint holds an object, the destination expects a tensor");
      plan_tensor(fqn, *tensor, item->tensor(), *metadata_->chunk_index(fqn), plan);
    } else {
      if (item->is_tensor())
        fail_for_key(Errc::failed_precondition, fqn, "checkpoint holds a tensor, the destination expects an object");
      // torch's dummy (0,) shapes: a bytes item is always read whole.
      plan.items.push_back(ReadItem{LoadItemType::byte_io, metadata::MetadataIndex{fqn, {}, {}}, Shape{0},
                                    metadata::MetadataIndex{fqn, {}, {}}, Shape{0}, Shape{0}});
    }
  }
  return plan;
}

void DefaultLoadPlanner::plan_tensor(const std::string& fqn, const TensorDestination& dest,
                                     const metadata::TensorStorageMetadata& saved, const layout::ChunkIndex& index,
                                     LoadPlan& plan) {
  if (saved.size != dest.global_size)
    fail_for_key(Errc::failed_precondition, fqn, "size mismatch: saved " + layout::format_shape(saved.size) +
                                             ", destination " + layout::format_shape(dest.global_size));
  if (saved.properties.dtype != dest.dtype && !options_.allow_dtype_conversion)
    fail_for_key(Errc::failed_precondition, fqn, "dtype mismatch: saved " + std::string(dtype_name(saved.properties.dtype)) +
                                             ", destination " + std::string(dtype_name(dest.dtype)));

  for (std::size_t li = 0; li < dest.chunks.size(); ++li) {
    const layout::Box local = box_of(dest.chunks[li]);
    if (layout::is_empty(local)) continue;  // nothing to read
    std::uint64_t covered = 0;
    const std::vector<std::size_t> hits = index.overlapping(local);
    for (std::size_t si : hits) {
      const layout::Box& stored = index.box(si);
      std::optional<layout::Overlap> overlap = layout::intersect(local, stored);
      if (!overlap) continue;  // unreachable: the index returns only chunks that meet
      covered += layout::volume(layout::Box{overlap->dest_offsets, overlap->lengths});
      plan.items.push_back(ReadItem{LoadItemType::tensor,
                                    metadata::MetadataIndex{fqn, local.offsets, static_cast<std::int64_t>(li)},
                                    std::move(overlap->dest_offsets),
                                    metadata::MetadataIndex{fqn, stored.offsets, static_cast<std::int64_t>(si)},
                                    std::move(overlap->storage_offsets), std::move(overlap->lengths)});
    }
    // Validated chunks are disjoint and cover the tensor, so the overlaps tile the box.
    if (covered != layout::volume(local))
      fail_for_key(Errc::internal, fqn, "saved chunks cover " + std::to_string(covered) + " of " +
                                            std::to_string(layout::volume(local)) + " elements of " +
                                            layout::format_box(local));
  }
}

std::vector<LoadPlan> DefaultLoadPlanner::create_global_plan(std::vector<LoadPlan> plans) { return plans; }

LoadPlan DefaultLoadPlanner::finish_plan(LoadPlan central_plan) { return central_plan; }

const TensorDestination& DefaultLoadPlanner::tensor_destination(const ReadItem& item) const {
  const std::string& fqn = item.dest_index.fqn;
  if (!destination_) throw Error(Errc::failed_precondition, "set_up_planner was not called");
  const Destination::Entry* entry = destination_->find(fqn);
  const auto* tensor = entry ? std::get_if<TensorDestination>(entry) : nullptr;
  if (item.type != LoadItemType::tensor || !tensor)
    fail_for_key(Errc::invalid_argument, fqn, "read item does not name a destination tensor");
  const auto& i = item.dest_index.index;
  if (!i || *i < 0 || static_cast<std::uint64_t>(*i) >= tensor->chunks.size() ||
      (item.dest_index.offset && *item.dest_index.offset != tensor->chunks[static_cast<std::size_t>(*i)].offsets))
    fail_for_key(Errc::invalid_argument, fqn, "read item names no local chunk of the destination");
  return *tensor;
}

TensorSlice DefaultLoadPlanner::resolve_tensor(const ReadItem& item) {
  const TensorDestination& tensor = tensor_destination(item);
  const LocalChunk& chunk = tensor.chunks[static_cast<std::size_t>(*item.dest_index.index)];
  if (!chunk.memory.data && numel(chunk.memory) > 0)
    fail_for_key(Errc::failed_precondition, item.dest_index.fqn, "local chunk has no memory to load into");
  try {
    return narrow(chunk.memory, item.dest_offsets, item.lengths);
  } catch (Error& e) {
    e.for_key(item.dest_index.fqn);
    throw;
  }
}

void DefaultLoadPlanner::commit_tensor(const ReadItem&, const TensorSlice&) {}

void DefaultLoadPlanner::load_bytes(const ReadItem& item, std::span<const std::byte> bytes) {
  const std::string& fqn = item.dest_index.fqn;
  const Destination::Entry* entry = destination_ ? destination_->find(fqn) : nullptr;
  if (item.type != LoadItemType::byte_io || !entry || !std::holds_alternative<ObjectDestination>(*entry))
    fail_for_key(Errc::invalid_argument, fqn, "read item does not name a destination object");
  bytes_[fqn].assign(bytes.begin(), bytes.end());
}

const std::vector<std::byte>* DefaultLoadPlanner::loaded_bytes(std::string_view fqn) const {
  auto it = bytes_.find(std::string(fqn));
  return it == bytes_.end() ? nullptr : &it->second;
}

std::optional<std::vector<std::byte>> DefaultLoadPlanner::take_bytes(std::string_view fqn) {
  auto it = bytes_.find(std::string(fqn));
  if (it == bytes_.end()) return std::nullopt;
  std::vector<std::byte> out = std::move(it->second);
  bytes_.erase(it);
  return out;
}

}  // namespace dcp::planning
