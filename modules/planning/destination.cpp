// Destination memory: strided slices, the fqn → destination map, and row-chunk shares.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
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

TensorSlice contiguous_slice(std::byte* data, DType dtype, Shape sizes) {
  Shape strides = layout::contiguous_strides(sizes);
  return TensorSlice{data, dtype, std::move(sizes), std::move(strides)};
}

TensorSlice narrow(const TensorSlice& slice, const Shape& offsets, const Shape& lengths) {
  const std::size_t rank = slice.sizes.size();
  if (slice.strides.size() != rank || offsets.size() != rank || lengths.size() != rank)
    throw Error(Errc::invalid_argument, "cannot narrow a slice of rank " + std::to_string(rank) + " by box " +
                                            layout::format_box({offsets, lengths}));
  std::uint64_t byte_offset = 0;
  bool empty = false;
  for (std::size_t d = 0; d < rank; ++d) {
    if (offsets[d] < 0 || lengths[d] < 0 || slice.strides[d] < 0 || offsets[d] > slice.sizes[d] - lengths[d])
      throw Error(Errc::invalid_argument, "box " + layout::format_box({offsets, lengths}) +
                                              " lies outside a slice of shape " + layout::format_shape(slice.sizes));
    empty = empty || lengths[d] == 0;
    const std::uint64_t step = mul_or_throw(static_cast<std::uint64_t>(offsets[d]),
                                            static_cast<std::uint64_t>(slice.strides[d]), "slice offset");
    byte_offset = add_or_throw(byte_offset, step, "slice offset");
  }
  byte_offset = mul_or_throw(byte_offset, dtype_itemsize(slice.dtype), "slice byte offset");
  if (byte_offset > static_cast<std::uint64_t>(std::numeric_limits<std::ptrdiff_t>::max()))
    throw Error(Errc::out_of_range, "slice byte offset " + std::to_string(byte_offset) + " overflows a pointer");
  TensorSlice out{slice.data, slice.dtype, lengths, slice.strides};
  if (!empty && byte_offset != 0) {
    if (!slice.data) throw Error(Errc::invalid_argument, "cannot narrow a slice without memory");
    out.data = slice.data + byte_offset;
  }
  return out;
}

bool is_contiguous(const TensorSlice& slice) { return layout::is_row_major(slice.sizes, slice.strides); }

std::uint64_t numel(const TensorSlice& slice) { return metadata::numel(slice.sizes); }

void Destination::insert(std::string fqn, Entry entry) {
  auto [it, inserted] = index_.try_emplace(fqn, entries_.size());
  if (!inserted) {
    Error e(Errc::invalid_argument, "destination key added twice");
    e.for_key(fqn);
    throw e;
  }
  entries_.emplace_back(std::move(fqn), std::move(entry));
}

void Destination::add_tensor(std::string fqn, TensorDestination tensor) { insert(std::move(fqn), std::move(tensor)); }

void Destination::add_object(std::string fqn) { insert(std::move(fqn), ObjectDestination{}); }

const Destination::Entry* Destination::find(std::string_view fqn) const {
  auto it = index_.find(std::string(fqn));
  return it == index_.end() ? nullptr : &entries_[it->second].second;
}

Destination::Entry* Destination::find(std::string_view fqn) {
  return const_cast<Entry*>(std::as_const(*this).find(fqn));
}

std::vector<LocalChunk> row_chunks(const Shape& global_size, DType dtype, int rank, int world_size,
                                   std::byte* data) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(Errc::invalid_argument,
                "rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world_size));
  layout::Box box = global_size.empty() ? layout::full_box(global_size)
                                        : layout::chunk_split(global_size, 0, world_size)[static_cast<std::size_t>(rank)];
  if (!box.sizes.empty() && box.sizes[0] == 0) return {};
  TensorSlice memory = contiguous_slice(data, dtype, box.sizes);
  return {LocalChunk{std::move(box.offsets), std::move(box.sizes), std::move(memory)}};
}

}  // namespace dcp::planning
