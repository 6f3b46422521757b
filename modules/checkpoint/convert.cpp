// Converting a checkpoint into one torch.save file, tensor by tensor, and what the converters
// share: choosing the keys, decoding the objects, streaming the tensors in bounded batches.
// The safetensors side is safetensors.cpp; the output file, temp_file.cpp; the data.pkl
// pickler, dcp.record's StateDictPickler; dtype facts, dcp.metadata's dtype table.
module;
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.memory;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.zip;

namespace dcp::checkpoint {
namespace detail {

LoadOptions streaming_options(const LoadOptions& options) {
  LoadOptions o = options;
  o.batch_bytes = std::min(options.batch_bytes == 0 ? kStreamingBatchBytes : options.batch_bytes, kStreamingBatchBytes);
  return o;
}

void locate_object_error(Error& e, const std::filesystem::path& dir, const metadata::Metadata& md, std::string_view fqn) {
  if (const auto* info = md.find_storage(fqn, nullptr)) {
    e.add_offset(info->offset);
    e.in_file((dir / info->relative_path).string());
  }
  e.for_key(fqn);
}

bool is_selected(const LoadOptions& options, std::string_view fqn) { return !options.select || options.select(fqn); }

Selection select_items(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md, const LoadOptions& options) {
  Selection s;
  for (const auto& item : md->items) {
    if (!is_selected(options, item.fqn)) continue;
    s.fqns.push_back(item.fqn);
    if (item.is_tensor()) s.tensors.push_back(&item);
  }
  s.objects = load_object_values(dir, md, options);
  return s;
}

namespace {

// A box of one tensor whose bytes are one contiguous range of its row-major form.
struct Piece {
  const metadata::ItemMetadata* item = nullptr;
  metadata::Shape offsets;
  metadata::Shape lengths;
  std::uint64_t byte_offset = 0;  // in the tensor's row-major bytes
  std::uint64_t bytes = 0;
  bool last = false;
};

// Splits a tensor into such boxes of at most `limit` bytes, in row-major order: runs of indices
// of the first dim whose one index (a slab of the dims after it) fits, under every index of the
// dims before it. Packed dtypes, 0-dim and small tensors are one piece.
void split_tensor(const metadata::ItemMetadata& item, std::uint64_t limit, std::vector<Piece>& out) {
  const auto& t = item.tensor();
  const auto& shape = t.size;
  const auto total = metadata::byte_size(shape, t.properties.dtype);
  std::uint64_t numel = 1;
  for (const auto d : shape) numel *= static_cast<std::uint64_t>(d);
  const std::size_t first = out.size();
  if (total <= limit || shape.empty() || numel == 0 || numel * dtype_itemsize(t.properties.dtype) != total) {
    out.push_back({&item, metadata::Shape(shape.size(), 0), shape, 0, total, true});
    return;
  }
  std::size_t k = 0;
  std::uint64_t slab = total / static_cast<std::uint64_t>(shape[0]);
  while (slab > limit) slab /= static_cast<std::uint64_t>(shape[++k]);
  const auto step = static_cast<std::int64_t>(std::max<std::uint64_t>(1, limit / slab));
  metadata::Shape index(k, 0);
  std::uint64_t at = 0;
  for (;;) {
    for (std::int64_t start = 0; start < shape[k]; start += step) {
      const auto count = std::min(step, shape[k] - start);
      Piece piece{&item, index, metadata::Shape(k, 1), at, static_cast<std::uint64_t>(count) * slab, false};
      piece.offsets.push_back(start);
      piece.lengths.push_back(count);
      for (std::size_t d = k + 1; d < shape.size(); ++d) {
        piece.offsets.push_back(0);
        piece.lengths.push_back(shape[d]);
      }
      at += piece.bytes;
      out.push_back(std::move(piece));
    }
    std::size_t d = k;
    while (d > 0 && ++index[d - 1] == shape[d - 1]) index[--d] = 0;
    if (d == 0) break;
  }
  if (out.size() > first) out.back().last = true;
}

}  // namespace

std::uint64_t stream_tensors(const std::filesystem::path& dir, const metadata::ValidatedMetadata& md, const LoadOptions& options,
                             const Selection& selection, const Progress& progress, const PieceWriter& write) {
  LoadOptions streaming = streaming_options(options);
  streaming.read.collect_errors = false;  // a conversion stops at the first error
  const std::uint64_t piece_limit = std::min(kStreamingPieceBytes, streaming.batch_bytes);
  std::vector<Piece> pieces;
  for (const auto* item : selection.tensors) split_tensor(*item, piece_limit, pieces);
  std::uint64_t largest = 0, sum = 0;
  for (const auto& piece : pieces) {
    largest = std::max(largest, piece.bytes);
    sum += piece.bytes;
  }
  // One buffer for every batch: a batch holds whole pieces up to batch_bytes (one, if larger).
  auto buffer = memory::allocate(std::max(largest, std::min(streaming.batch_bytes, sum)));
  const auto reader = storage::open_reader(dir, streaming.read);
  std::uint64_t bytes = 0;
  std::size_t count = 0;
  for (std::size_t next = 0; next < pieces.size();) {
    planning::Destination destination;
    std::vector<std::pair<const Piece*, std::byte*>> batch;
    std::uint64_t used = 0;
    planning::TensorDestination dest;
    const metadata::ItemMetadata* open = nullptr;  // the tensor `dest` gathers pieces of
    while (next < pieces.size() && (batch.empty() || used + pieces[next].bytes <= streaming.batch_bytes)) {
      const auto& piece = pieces[next++];
      const auto& t = piece.item->tensor();
      if (open != piece.item) {
        if (open) destination.add_tensor(open->fqn, std::move(dest));
        dest = planning::TensorDestination{t.size, t.properties.dtype, {}};
        open = piece.item;
      }
      std::byte* at = buffer.data() + used;
      dest.chunks.push_back({piece.offsets, piece.lengths, planning::contiguous_slice(at, t.properties.dtype, piece.lengths)});
      batch.emplace_back(&piece, at);
      used += piece.bytes;
    }
    if (open) destination.add_tensor(open->fqn, std::move(dest));
    planning::DefaultLoadPlanner planner;
    (void)load(destination, *reader, planner, md);
    for (const auto& [piece, at] : batch) {
      write(piece->item->fqn, piece->byte_offset, std::span<const std::byte>(at, piece->bytes), piece->last);
      bytes += piece->bytes;
      if (piece->last) ++count;
      if (progress) progress(piece->bytes);
    }
  }
  if (count != selection.tensors.size())
    throw Error(Errc::internal, "converter streamed " + std::to_string(count) + " of " +
                                    std::to_string(selection.tensors.size()) + " tensors");
  return bytes;
}

void pickle_nested(record::StateDictPickler& pickler, const planning::NestedNode& node,
                   const std::function<void(const std::string& fqn)>& leaf) {
  switch (node.kind) {
    case planning::NestedNode::Kind::none: return pickler.none();
    case planning::NestedNode::Kind::leaf: return leaf(node.fqn);
    case planning::NestedNode::Kind::dict:
      pickler.begin_dict();
      return pickler.dict_items(node.children.size(), [&](std::size_t i) {
        pickler.key(node.keys[i]);
        pickle_nested(pickler, node.children[i], leaf);
      });
    case planning::NestedNode::Kind::list:
      pickler.begin_list();
      return pickler.list_items(node.children.size(), [&](std::size_t i) { pickle_nested(pickler, node.children[i], leaf); });
    default: throw Error(Errc::internal, "unknown nested node kind");
  }
}

}  // namespace detail

using namespace detail;

ConvertReport convert_to_torch_save(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                    const LoadOptions& options, const Progress& progress,
                                    bool overwrite) {
  check_output_path(out, overwrite);
  const auto md = inspect(checkpoint_dir);
  // Everything data.pkl needs comes from metadata and the objects (held in memory with the
  // tensors inside them): check and encode it all before the output file exists.
  for (const auto& item : md->items) {
    if (!is_selected(options, item.fqn) || !item.is_tensor()) continue;
    const auto& info = dtype_info(item.tensor().properties.dtype);
    if (info.rebuild == TensorRebuild::none)
      fail_for_key(Errc::unimplemented, item.fqn, "torch.save output cannot hold " + std::string(info.name) + " tensors");
  }
  Selection selection = select_items(checkpoint_dir, md, options);
  std::unordered_map<std::string, const planning::ObjectValue*> objects;
  for (const auto& object : selection.objects) objects.emplace(object.fqn, &object.value);
  const auto tree = planning::unflatten(*md, selection.fqns);

  // Storage keys "0", "1", ... in pickling order, as torch.save numbers them: the tensors'
  // (streamed later), and those of the tensors inside objects (already in memory).
  std::unordered_map<std::string, std::string> storage_keys;
  std::vector<std::pair<std::string, std::span<const std::byte>>> object_storages;
  const auto next_key = [&] { return std::to_string(storage_keys.size() + object_storages.size()); };
  record::StateDictPickler pickler;
  pickle_nested(pickler, tree, [&](const std::string& fqn) {
    const auto* item = md->find_item(fqn);
    if (!item) fail_for_key(Errc::internal, fqn, "unflatten produced an unknown key");
    if (!item->is_tensor()) {
      const auto it = objects.find(fqn);
      if (it == objects.end()) fail_for_key(Errc::internal, fqn, "object was not loaded");
      const auto& object = *it->second;
      std::unordered_map<std::string, std::string> keys;  // the object's storage keys → the file's
      try {
        return pickler.object(*object.document, object.id, [&](std::string_view key) {
          if (const auto k = keys.find(std::string(key)); k != keys.end()) return k->second;
          const auto bytes = object.storages.find(std::string(key));
          if (bytes == object.storages.end()) fail_for_key(Errc::internal, fqn, "a storage of the object was not found");
          auto name = next_key();
          object_storages.emplace_back(name, bytes->second);
          return keys.emplace(std::string(key), std::move(name)).first->second;
        });
      } catch (Error& e) {
        locate_object_error(e, checkpoint_dir, *md, fqn);
        throw;
      }
    }
    const auto& t = item->tensor();
    auto key = next_key();
    pickler.tensor(t.properties.dtype, t.size, key);
    storage_keys.emplace(fqn, std::move(key));
  });
  const auto data_pkl = pickler.finish();

  TempFile file(out, overwrite);
  zip::ArchiveWriter writer([&](std::span<const std::byte> bytes) { file.write(bytes); }, "archive");
  writer.add_record("data.pkl", data_pkl);
  for (const auto& [key, bytes] : object_storages) writer.add_record("data/" + key, bytes);
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::uint64_t offset, std::span<const std::byte> data, bool last) {
                                  if (offset == 0) {
                                    const auto& t = md->find_item(fqn)->tensor();
                                    writer.begin_record("data/" + storage_keys.at(fqn),
                                                        metadata::byte_size(t.size, t.properties.dtype));
                                  }
                                  writer.write(data);
                                  if (last) writer.end_record();
                                });
  const char version[] = "3\n";
  writer.add_record("version", std::as_bytes(std::span(version, 2)));
  writer.finish();
  file.commit();
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

}  // namespace dcp::checkpoint
