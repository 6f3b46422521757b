// Importing a torch.save file as a planning::StateDict whose tensors view a read-only mapping
// of the file, flattened as torch's flatten_state_dict does, and saving an imported state dict
// as a checkpoint of N ranks (`dcpp convert FILE.pt CKPT_DIR`). The safetensors importer is in
// import_safetensors.cpp. Untrusted input: every byte of the file.
module;
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;

namespace dcp::checkpoint {

namespace {

using pickle::Document;
using pickle::NodeId;
using pickle::NodeKind;
using Path = std::vector<metadata::PathPart>;

// Deeper nesting than this is refused (as a value that contains itself would recurse forever).
constexpr int kMaxDepth = static_cast<int>(pickle::kMaxDepth);

// What an import keeps alive: the mapping and the decoded data.pkl.
struct TorchSaveHolder {
  storage::MappedFile file;
  std::shared_ptr<const Document> doc;
  explicit TorchSaveHolder(const std::filesystem::path& path) : file(path) {}
};

Error at_node(Error e, const Document& doc, NodeId id) {
  if (auto offset = doc.at(id).offset()) e.at_offset(*offset);
  return e;
}

// torch's flatten_state_dict over a decoded data.pkl (torch 2.4+'s traverse_state_dict):
// mappings are descended with str(key), a list only when it (recursively) holds a tensor or a
// mapping, everything else is one object.
class Flattener {
 public:
  Flattener(std::shared_ptr<const Document> doc, const zip::Archive& archive, std::span<const std::byte> whole,
            planning::StateDict& out, detail::OutputBudget& output)
      : doc_(*doc), shared_(std::move(doc)), archive_(archive), whole_(whole), out_(out), output_(output),
        terminal_(doc_.size(), kUnknown), on_path_(doc_.size(), false) {
    // Visits and key bytes in proportion to data.pkl (a shared value is walked again at each
    // reference, so the memo could otherwise make the walk exponential).
    limit_ = checked_add(checked_mul(doc_.source_size(), 32).value_or(UINT64_MAX), std::uint64_t{16} << 20)
                 .value_or(UINT64_MAX);
    budget_ = limit_;
  }

  void run() {
    const NodeId root = doc_.root();
    if (!is_mapping(root))
      throw at_node(Error(Errc::unimplemented, "the file holds " + doc_.describe(root) + ", not a dict (a state dict)"), doc_,
                    root);
    Path path;
    on_path_[root] = true;
    visit_mapping(path, root, 0);
  }

 private:
  enum : std::uint8_t { kUnknown, kInProgress, kTerminal, kNonTerminal };

  void charge(std::uint64_t cost, const Path& path) {
    if (cost > budget_)
      throw Error(Errc::resource_exhausted, "the state dict's values and keys pass " + std::to_string(limit_) +
                                                " units of work for a data.pkl of " + std::to_string(doc_.source_size()) +
                                                " bytes (shared values are walked at each reference)")
          .for_key(planning::join_path(path));
    budget_ -= cost;
  }

  bool is_ordered_dict(NodeId id) const {
    const auto n = doc_.at(id);
    return n.kind() == NodeKind::call && doc_.is_global(n.callee(), "collections", "OrderedDict");
  }
  bool is_mapping(NodeId id) const { return doc_.at(id).kind() == NodeKind::dict || is_ordered_dict(id); }

  // Python's str(key) for the key types a state dict uses.
  std::string key_text(NodeId key, const Path& path) const {
    const auto k = doc_.at(key);
    switch (k.kind()) {
      case NodeKind::string: return std::string(k.text());
      case NodeKind::integer: return std::to_string(k.integer());
      case NodeKind::boolean: return k.boolean() ? "True" : "False";
      case NodeKind::none: return "None";
      default:
        throw at_node(Error(Errc::unimplemented, "dict key " + doc_.describe(key) + " is not a str, int, bool or None"), doc_,
                      key)
            .for_key(planning::join_path(path));
    }
  }

  // torch's _is_terminal for a list: false when an entry is a mapping, a tensor, or a list
  // that is not terminal. Memoized per node; a list that contains itself is refused.
  bool is_terminal_list(NodeId id, const Path& path, int depth) {
    auto& state = terminal_[id];
    if (state == kTerminal || state == kNonTerminal) return state == kTerminal;
    if (state == kInProgress || depth > kMaxDepth)
      throw at_node(Error(Errc::unimplemented, "a list contains itself (or is nested more than " + std::to_string(kMaxDepth) + " levels deep)"), doc_, id)
          .for_key(planning::join_path(path));
    state = kInProgress;
    bool terminal = true;
    for (NodeId entry : doc_.at(id).items()) {
      charge(1, path);
      if (is_mapping(entry) || record::is_tensor_rebuild(doc_, entry) ||
          (doc_.at(entry).kind() == NodeKind::list && !is_terminal_list(entry, path, depth + 1))) {
        terminal = false;
        break;
      }
    }
    terminal_[id] = terminal ? kTerminal : kNonTerminal;
    return terminal;
  }

  void visit_mapping(Path& path, NodeId id, int depth) {
    const auto items = doc_.at(id).items();
    if (is_ordered_dict(id) && !doc_.at(doc_.at(id).args()).items().empty())
      throw at_node(Error(Errc::unimplemented, "OrderedDict built from constructor arguments"), doc_, id)
          .for_key(planning::join_path(path));
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      auto key = key_text(items[i], path);
      charge(key.size(), path);  // the path holds it while the value is walked
      path.emplace_back(std::move(key));
      visit(path, items[i + 1], depth + 1);
      path.pop_back();
    }
  }

  void visit(Path& path, NodeId id, int depth) {
    charge(1, path);
    if (depth > kMaxDepth || on_path_[id])
      throw at_node(Error(Errc::unimplemented, "the state dict contains itself (or is nested more than " + std::to_string(kMaxDepth) + " levels deep)"),
                    doc_, id)
          .for_key(planning::join_path(path));
    on_path_[id] = true;
    if (is_mapping(id)) {
      visit_mapping(path, id, depth);
    } else if (record::is_tensor_rebuild(doc_, id)) {
      add_tensor(path, id);
    } else if (doc_.at(id).kind() == NodeKind::list && !is_terminal_list(id, path, depth)) {
      const auto items = doc_.at(id).items();
      for (std::size_t i = 0; i < items.size(); ++i) {
        path.emplace_back(static_cast<std::int64_t>(i));
        visit(path, items[i], depth + 1);
        path.pop_back();
      }
    } else {
      add_object(path, id);
    }
    on_path_[id] = false;
  }

  void add_object(const Path& path, NodeId id) {
    const auto fqn = planning::join_path(path);
    charge(2 * fqn.size() + 64, path);
    record::ObjectExtent extent;
    try {
      extent = record::check_object_savable(doc_, id, budget_);
      charge(extent.nodes, path);
    } catch (Error& e) {
      if (e.code() != Errc::unimplemented) throw e.for_key(fqn);
      throw Error(Errc::unimplemented, doc_.describe(id) +
                                           " holds a tensor: DCP saves tuples, and lists that hold no tensor at their "
                                           "top, as objects, and an object cannot hold a tensor")
          .for_key(fqn)
          .at_offset(e.context().byte_offset.value_or(doc_.at(id).offset().value_or(0)));
    }
    try {
      output_.object(fqn, extent.pickle_bytes);
    } catch (Error& e) {
      throw at_node(std::move(e), doc_, id);
    }
    out_.add_object(path, planning::ObjectValue{shared_, id});
  }

  // The storage record "data/<key>", checked (size, CRC) the first time a tensor uses it.
  const zip::Entry& storage_entry(const record::TensorRecord& r, std::span<const std::byte>& data) {
    const zip::Entry* entry = zip::find(archive_.entries, archive_.prefix + "data/" + r.storage_key);
    if (!entry) throw Error(Errc::data_loss, "archive has no storage record data/" + r.storage_key);
    const auto index = static_cast<std::size_t>(entry - archive_.entries.data());
    data = whole_.subspan(archive_.data_offsets[index], entry->size);
    if (checked_.insert(index).second) {
      try {
        zip::verify_crc32(*entry, data);
      } catch (Error& e) {
        throw e.at_offset(entry->local_header_offset);
      }
    }
    return *entry;
  }

  void add_tensor(const Path& path, NodeId id) {
    const auto fqn = planning::join_path(path);
    charge(2 * fqn.size() + 64, path);
    try {
      const auto r = record::tensor_record(doc_, id);
      const auto offset = doc_.at(id).offset().value_or(doc_.stop_offset());
      if (r.sizes.size() > metadata::kMaxRank)
        throw Error(Errc::unimplemented, "tensor of " + std::to_string(r.sizes.size()) + " dims (at most " +
                                             std::to_string(metadata::kMaxRank) + ")")
            .at_offset(offset);
      if (dtype_info(r.dtype).rebuild == TensorRebuild::none)
        throw Error(Errc::unimplemented, std::string(dtype_name(r.dtype)) + " tensors are not supported").at_offset(offset);
      // Before any of its bytes are read: a view is written out at its dense size, however
      // few storage elements it repeats.
      try {
        output_.tensor(fqn, r.dtype, r.sizes);
      } catch (Error& e) {
        throw e.at_offset(offset);
      }
      std::span<const std::byte> data;
      const auto& entry = storage_entry(r, data);
      try {
        record::check_storage_size(r, entry.size);
      } catch (Error& e) {
        throw e.at_offset(entry.local_header_offset);
      }
      try {
        record::check_view(r);
      } catch (Error& e) {
        throw e.at_offset(offset);
      }
      // The view lies inside the storage (an empty view touches nothing: keep the base).
      const bool empty = metadata::numel(r.sizes) == 0;
      const auto byte_offset = empty ? 0 : r.storage_offset * dtype_itemsize(r.dtype);
      planning::TensorSlice slice{const_cast<std::byte*>(data.data()) + byte_offset, r.dtype, r.sizes, r.strides};
      out_.add_tensor(path, std::move(slice), r.requires_grad);
    } catch (Error& e) {
      throw e.for_key(fqn);
    }
  }

  const Document& doc_;
  std::shared_ptr<const Document> shared_;
  const zip::Archive& archive_;
  std::span<const std::byte> whole_;
  planning::StateDict& out_;
  detail::OutputBudget& output_;
  std::vector<std::uint8_t> terminal_;
  std::vector<bool> on_path_;
  std::unordered_set<std::size_t> checked_;  // storage records whose CRC was verified
  std::uint64_t limit_ = 0, budget_ = 0;
};

void refuse_other_formats(std::span<const std::byte> whole) {
  if (whole.size() >= 2 && whole[0] == std::byte{0x80})
    throw Error(Errc::unimplemented,
                "legacy (non-zip) torch.save format is not supported; re-save it with torch >= 1.6 "
                "(_use_new_zipfile_serialization=True)")
        .at_offset(0);
  if (whole.size() < 4 || std::memcmp(whole.data(), "PK\x03\x04", 4) != 0)
    throw Error(Errc::data_loss, "not a torch.save zip archive (no PK\\3\\4 signature)").at_offset(0);
}

}  // namespace

ImportedStateDict import_torch_save(const std::filesystem::path& file, const ImportOptions& options) {
  std::shared_ptr<TorchSaveHolder> holder;
  try {
    holder = std::make_shared<TorchSaveHolder>(file);
    const auto whole = holder->file.bytes();
    refuse_other_formats(whole);
    const auto archive = zip::parse_archive(whole);
    if (const auto* order = zip::find(archive.entries, archive.prefix + "byteorder")) {
      const auto text = zip::record_data(archive, whole, "byteorder");
      if (std::string_view(reinterpret_cast<const char*>(text.data()), text.size()) != "little")
        throw Error(Errc::unimplemented, "big-endian tensor data (byteorder record) is not supported")
            .at_offset(order->local_header_offset);
    }
    const auto pkl = zip::record_data(archive, whole, "data.pkl");
    pickle::Limits limits;
    limits.allow_persistent_ids = true;
    limits.base_offset = static_cast<std::uint64_t>(pkl.data() - whole.data());  // offsets in the file
    holder->doc = std::make_shared<const Document>(pickle::decode(pkl, record::object_allow_list(), limits));
    ImportedStateDict out;
    detail::OutputBudget output(options, whole.size());
    Flattener(holder->doc, archive, whole, out.state_dict, output).run();
    out.options = output.options();
    out.output_bytes = output.charged();
    out.source = std::shared_ptr<const storage::MappedFile>(holder, &holder->file);
    out.keep_alive = std::move(holder);
    return out;
  } catch (Error& e) {
    detail::throw_import_error(std::move(e), file, holder ? &holder->file : nullptr);
  }
}

ImportedStateDict import_file(const std::filesystem::path& file, const ImportOptions& options) {
  return file.extension() == ".safetensors" ? import_safetensors(file, options) : import_torch_save(file, options);
}

ConvertReport save_as_checkpoint(const ImportedStateDict& imported, const std::filesystem::path& checkpoint_dir,
                                 const storage::WriteOptions& options) {
  const int ranks = imported.options.ranks;
  const auto parts = split_rows(imported.state_dict, ranks);
  // The ranks already write in parallel, one thread each: by default one file per rank (torch's
  // thread_count=1), instead of a pool of writers per rank.
  storage::WriteOptions rank_options = options;
  if (ranks > 1 && rank_options.files_per_rank == 0) rank_options.files_per_rank = 1;
  // The tensors are the source file's pages: what the writers copied is the file as it was
  // only if it still is, once every data file is durable.
  const storage::MappedFile* source = imported.source.get();
  rank_options.before_publish = [source, then = options.before_publish] {
    if (source) source->check_unchanged();
    if (then) then();
  };
  // Each piece written is dropped from memory: a tensor larger than memory streams through.
  if (source)
    rank_options.written = [source, then = options.written](std::span<const std::byte> bytes) {
      source->release(bytes);
      if (then) then(bytes);
    };
  try {
    (void)save_ranks(parts, checkpoint_dir, rank_options);
  } catch (Error& e) {
    if (source && source->changed()) detail::throw_import_error(std::move(e), source->path(), source);
    // An error that names no file is a value of the input that cannot be saved (at its key and
    // byte in the input); the writer's own errors name the file it was writing.
    if (source && e.context().file.empty()) e.in_file(source->path().string());
    throw;
  }
  ConvertReport report;
  for (const auto& entry : imported.state_dict.entries())
    ++(std::holds_alternative<planning::SaveTensor>(entry.value) ? report.tensors : report.objects);
  report.bytes = imported.state_dict.tensor_bytes();
  return report;
}

}  // namespace dcp::checkpoint
