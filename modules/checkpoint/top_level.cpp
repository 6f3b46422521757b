// State dicts as torch 1.13's save_state_dict takes them: nothing is flattened. Each item of
// the root dict is one entry under its own key: a tensor stays a tensor, anything else is one
// object holding that whole value, with the storages of the tensors inside it. Two ways in: a
// torch.save file (`dcpp convert --format torch1.13`; untrusted input: every byte of the
// file), and a state dict with nested paths regrouped under its top-level keys (`dcpp reshard
// --format torch1.13` of a torch 2.x checkpoint).
module;
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;

namespace dcp::checkpoint {
namespace {

using pickle::Document;
using pickle::NodeId;
using pickle::NodeKind;

// What the state dict points into: the mapping and the decoded data.pkl.
struct Holder {
  storage::MappedFile file;
  std::shared_ptr<const record::TorchSave> saved;
  explicit Holder(const std::filesystem::path& path) : file(path) {}
};

Error at_node(Error e, const Document& doc, NodeId id) {
  if (auto offset = doc.at(id).offset()) e.at_offset(*offset);
  return e;
}

bool is_ordered_dict(const Document& doc, NodeId id) {
  const auto n = doc.at(id);
  return n.kind() == NodeKind::call && doc.is_global(n.callee(), "collections", "OrderedDict");
}

class TopLevelImport {
 public:
  TopLevelImport(std::shared_ptr<const record::TorchSave> saved, std::span<const std::byte> whole,
                 planning::StateDict& out, detail::OutputBudget& output)
      : saved_(std::move(saved)), doc_(saved_->document), whole_(whole), out_(out), output_(output) {
    // Objects that share values by memo are each walked whole: the walks together are bounded.
    budget_ = checked_add(checked_mul(doc_.source_size(), detail::kImportWalkPerByte).value_or(UINT64_MAX),
                          detail::kImportWalkFloor)
                  .value_or(UINT64_MAX);
  }

  void run() {
    const NodeId root = doc_.root();
    if (doc_.at(root).kind() != NodeKind::dict && !is_ordered_dict(doc_, root))
      throw at_node(Error(Errc::unimplemented, "the file holds " + doc_.describe(root) + ", not a dict (a state dict)"),
                    doc_, root);
    if (is_ordered_dict(doc_, root) && !doc_.at(doc_.at(root).args()).items().empty())
      throw at_node(Error(Errc::unimplemented, "OrderedDict built from constructor arguments"), doc_, root);
    const auto items = doc_.at(root).items();
    for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
      const auto key = doc_.at(items[i]);
      // torch 1.13 keeps any key as it is; a checkpoint's keys are strings here.
      if (key.kind() != NodeKind::string)
        throw at_node(Error(Errc::unimplemented, "top-level key " + doc_.describe(items[i]) +
                                                     " is not a str: dcpp writes checkpoint keys as strings"),
                      doc_, items[i]);
      const std::string fqn(key.text());
      try {
        add(fqn, items[i + 1]);
      } catch (Error& e) {
        throw e.for_key(fqn);
      }
    }
  }

 private:
  void add(const std::string& fqn, NodeId id) {
    std::uint64_t visited = 0;
    auto storages = record::find_storages(*saved_, whole_, id, budget_, &visited);
    if (visited > budget_) throw Error(Errc::resource_exhausted, "import walk over budget");
    budget_ -= visited;
    if (!record::is_tensor_rebuild(doc_, id)) {
      // What its item will hold: its pickle, and each storage it views once.
      auto bytes = record::check_object_savable(doc_, id, UINT64_MAX, /*with_storages=*/true).pickle_bytes;
      for (const auto& [key, data] : storages) bytes = add_or_throw(bytes, data.size(), "an object's bytes");
      output_.object(fqn, bytes);
      const std::shared_ptr<const Document> doc(saved_, &saved_->document);
      out_.add_object({fqn}, planning::ObjectValue{doc, id, std::move(storages)});
      return;
    }
    // find_storages checked the tensor: its storage's size and CRC-32, its view inside it.
    const auto r = record::tensor_record(doc_, id);
    output_.tensor(fqn, r.dtype, r.sizes);
    const auto data = storages.at(r.storage_key);
    const bool empty = metadata::numel(r.sizes) == 0;  // touches nothing: keep the base
    const auto byte_offset = empty ? 0 : r.storage_offset * dtype_itemsize(r.dtype);
    out_.add_tensor({fqn}, planning::TensorSlice{const_cast<std::byte*>(data.data()) + byte_offset, r.dtype, r.sizes, r.strides},
                    r.requires_grad);
  }

  std::shared_ptr<const record::TorchSave> saved_;
  const Document& doc_;
  std::span<const std::byte> whole_;
  planning::StateDict& out_;
  detail::OutputBudget& output_;
  std::uint64_t budget_ = 0;
};

// Entry `entry` of another state dict, under `path`.
void add_entry(planning::StateDict& out, std::vector<metadata::PathPart> path, const planning::StateDict::Entry& entry) {
  if (const auto* object = std::get_if<planning::ObjectValue>(&entry.value)) return out.add_object(std::move(path), *object);
  const auto& t = std::get<planning::SaveTensor>(entry.value);
  if (t.sharded) return out.add_sharded_tensor(std::move(path), t.global_size, t.properties, t.chunks);
  out.add_tensor(std::move(path), t.chunks.at(0).memory, t.properties.requires_grad);
}

// The object torch.save(value) pickles for a nested group of `state_dict`'s entries: its
// data.pkl decoded again, with the storages its tensors view.
planning::ObjectValue group_object(const planning::StateDict& state_dict, const planning::NestedNode& node) {
  record::StateDictPickler pickler;
  std::unordered_map<std::string, std::span<const std::byte>> storages;
  const auto next_key = [&] { return std::to_string(storages.size()); };
  detail::pickle_nested(pickler, node, [&](const std::string& fqn) {
    const auto* entry = state_dict.find(fqn);
    if (const auto* object = std::get_if<planning::ObjectValue>(&entry->value)) {
      std::unordered_map<std::string, std::string> keys;  // this object's storage keys → the group's
      return pickler.object(*object->document, object->id, [&](std::string_view key) {
        const auto it = keys.find(std::string(key));
        if (it != keys.end()) return it->second;
        const auto bytes = object->storages.find(std::string(key));
        if (bytes == object->storages.end())
          fail_for_key(Errc::invalid_argument, fqn, "the object's tensors view storage '" + std::string(key) +
                                                                "', which the object value does not carry");
        auto name = next_key();
        storages.emplace(name, bytes->second);
        return keys.emplace(std::string(key), std::move(name)).first->second;
      });
    }
    const auto& t = std::get<planning::SaveTensor>(entry->value);
    if (t.chunks.size() != 1 || t.chunks[0].memory.sizes != t.global_size || !planning::is_contiguous(t.chunks[0].memory))
      fail_for_key(Errc::invalid_argument, fqn,
                           "a tensor inside a torch 1.13 object must be whole and contiguous on the rank that saves it");
    auto name = next_key();
    pickler.tensor(t.properties.dtype, t.global_size, name);
    storages.emplace(std::move(name), std::span<const std::byte>(t.chunks[0].memory.data,
                                                                 metadata::byte_size(t.global_size, t.properties.dtype)));
  });
  const auto data_pkl = pickler.finish();
  pickle::Limits limits;
  limits.allow_persistent_ids = true;
  auto doc = std::make_shared<const Document>(pickle::decode(data_pkl, record::object_allow_list(), limits));
  const auto root = doc->root();
  return planning::ObjectValue{std::move(doc), root, std::move(storages)};
}

}  // namespace

planning::StateDict group_top_level(const planning::StateDict& state_dict) {
  const auto tree = planning::unflatten(state_dict);
  planning::StateDict out;
  for (std::size_t i = 0; i < tree.children.size(); ++i) {
    const auto& child = tree.children[i];
    if (child.kind == planning::NestedNode::Kind::leaf) {
      add_entry(out, {tree.keys[i]}, *state_dict.find(child.fqn));
    } else {
      try {
        out.add_object({tree.keys[i]}, group_object(state_dict, child));
      } catch (Error& e) {
        throw e.for_key(tree.keys[i]);
      }
    }
  }
  return out;
}

ImportedStateDict import_torch_save_top_level(const std::filesystem::path& file, const ImportOptions& options) {
  std::shared_ptr<Holder> holder;
  try {
    holder = std::make_shared<Holder>(file);
    const auto whole = holder->file.bytes();
    holder->saved = std::make_shared<const record::TorchSave>(record::parse_torch_save(whole));
    ImportedStateDict out;
    detail::OutputBudget output(options, whole.size());
    TopLevelImport(holder->saved, whole, out.state_dict, output).run();
    out.options = output.options();
    out.output_bytes = output.charged();
    out.source = std::shared_ptr<const storage::MappedFile>(holder, &holder->file);
    out.keep_alive = std::move(holder);
    return out;
  } catch (Error& e) {
    detail::throw_import_error(std::move(e), file, holder ? &holder->file : nullptr);
  }
}

}  // namespace dcp::checkpoint
