// The save half of the planner protocol: state dicts, write items and the default planner
// (torch's default_planner.py); the coordinator's passes are in global_plan.cpp.
module;
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>
module dcp.planning;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.layout;

namespace dcp::planning {

std::optional<std::uint64_t> WriteItem::tensor_storage_size() const {
  if (!tensor_data) return std::nullopt;
  return metadata::byte_size(tensor_data->size, tensor_data->properties.dtype);
}

static bool same_index(const metadata::MetadataIndex& a, const metadata::MetadataIndex& b) {
  return a.fqn == b.fqn && a.offset == b.offset && a.index == b.index;
}

bool operator==(const TensorWriteData& a, const TensorWriteData& b) {
  const auto& p = a.properties;
  const auto& q = b.properties;
  return a.chunk == b.chunk && a.size == b.size && p.dtype == q.dtype && p.requires_grad == q.requires_grad &&
         p.memory_format == q.memory_format && p.pin_memory == q.pin_memory;
}

bool operator==(const WriteItem& a, const WriteItem& b) {
  return same_index(a.index, b.index) && a.type == b.type && a.tensor_data == b.tensor_data;
}

// ---- Objects ---------------------------------------------------------------------------------

namespace {
template <class Add>
ObjectValue make_scalar(Add add) {
  auto doc = std::make_shared<pickle::Document>();
  const auto id = add(*doc);
  doc->set_root(id);
  return ObjectValue{std::move(doc), id};
}
}  // namespace

ObjectValue ObjectValue::integer(std::int64_t value) {
  return make_scalar([&](pickle::Document& d) { return d.add_integer(0, value); });
}
ObjectValue ObjectValue::floating(double value) {
  return make_scalar([&](pickle::Document& d) { return d.add_floating(0, value); });
}
ObjectValue ObjectValue::string(std::string_view utf8) {
  return make_scalar([&](pickle::Document& d) { return d.add_text(pickle::NodeKind::string, 0, utf8); });
}
ObjectValue ObjectValue::boolean(bool value) {
  return make_scalar([&](pickle::Document&) { return value ? pickle::Document::kTrue : pickle::Document::kFalse; });
}
ObjectValue ObjectValue::none() {
  return make_scalar([&](pickle::Document&) { return pickle::Document::kNone; });
}

// ---- StateDict --------------------------------------------------------------------------------

std::string join_path(const std::vector<metadata::PathPart>& path) {
  std::string fqn;
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (i) fqn += '.';
    if (const auto* key = std::get_if<std::string>(&path[i])) fqn += *key;
    else fqn += std::to_string(std::get<std::int64_t>(path[i]));
  }
  return fqn;
}

namespace {
// Whether Python reads `s` back: pickle decodes strings as UTF-8 with "surrogatepass", so lone
// surrogates (which Python keys may hold) pass, and nothing else that is not UTF-8 does. A
// string Python cannot decode makes torch's load of the whole `.metadata` or object fail.
bool python_reads_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t code = 0, least = 0;
    if ((c & 0xE0) == 0xC0) len = 2, code = c & 0x1Fu, least = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, code = c & 0x0Fu, least = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, code = c & 0x07u, least = 0x10000;
    else return false;
    if (s.size() - i < len) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      code = (code << 6) | (cc & 0x3Fu);
    }
    if (code < least || code > 0x10FFFF) return false;
    i += len;
  }
  return true;
}

// Every string of the value at `root` (dict keys included) must be one Python reads back. A
// set of the value's nodes, not a vector over the document: an imported file's one document
// holds every object of the state dict, so that would cost O(objects × document).
void check_object_strings(std::string_view fqn, const pickle::Document& doc, pickle::NodeId root) {
  std::unordered_set<pickle::NodeId> seen;
  std::vector<pickle::NodeId> stack{root};
  while (!stack.empty()) {
    const auto id = stack.back();
    stack.pop_back();
    if (id == pickle::kNoNode || id >= doc.size() || !seen.insert(id).second) continue;
    const auto node = doc.at(id);
    if (node.kind() == pickle::NodeKind::string && !python_reads_utf8(node.text()))
      fail_for_key(Errc::invalid_argument, fqn, "the object holds a string that is not UTF-8, which Python cannot load");
    for (auto child : node.items()) stack.push_back(child);
    stack.push_back(node.callee());
    stack.push_back(node.args());
    stack.push_back(node.state());
  }
}
}  // namespace

void StateDict::insert(std::vector<metadata::PathPart> path, Value value) {
  if (path.empty()) throw Error(Errc::invalid_argument, "a state dict entry needs a non-empty path");
  std::string fqn = join_path(path);
  if (!python_reads_utf8(fqn))
    fail_for_key(Errc::invalid_argument, fqn, "the key is not UTF-8, which Python cannot load from .metadata");
  if (index_.contains(fqn))
    fail_for_key(Errc::invalid_argument, fqn, "the state dict holds this key twice after flattening");
  index_.emplace(fqn, entries_.size());
  entries_.push_back(Entry{std::move(fqn), std::move(path), std::move(value)});
}

namespace {
void check_chunk_memory(std::string_view fqn, DType dtype, const SaveChunk& chunk, const Shape& global_size) {
  const auto& m = chunk.memory;
  if (dtype_info(dtype).rebuild == TensorRebuild::none)
    fail_for_key(Errc::unimplemented, fqn, std::string("saving ") + std::string(dtype_name(dtype)) + " tensors is not supported");
  if (m.dtype != dtype)
    fail_for_key(Errc::invalid_argument, fqn, std::string("chunk memory is ") + std::string(dtype_name(m.dtype)) +
                                                  ", the tensor " + std::string(dtype_name(dtype)));
  if (m.strides.size() != m.sizes.size())
    fail_for_key(Errc::invalid_argument, fqn, "chunk memory has " + std::to_string(m.strides.size()) + " strides for " +
                                                  std::to_string(m.sizes.size()) + " dims");
  for (auto s : m.strides)
    if (s < 0) fail_for_key(Errc::invalid_argument, fqn, "chunk memory has a negative stride");
  const layout::Box box{chunk.offsets, m.sizes};
  if (!layout::is_inside(box, global_size))
    fail_for_key(Errc::invalid_argument, fqn, "chunk " + layout::format_box(box) + " lies outside the tensor of shape " +
                                                  layout::format_shape(global_size));
  if (!m.data && numel(m) != 0) fail_for_key(Errc::invalid_argument, fqn, "chunk has no memory");
}
}  // namespace

void StateDict::add_tensor(std::vector<metadata::PathPart> path, TensorSlice memory, bool requires_grad) {
  SaveTensor t;
  t.global_size = memory.sizes;
  t.properties.dtype = memory.dtype;
  t.properties.requires_grad = requires_grad;
  t.chunks.push_back(SaveChunk{Shape(memory.sizes.size(), 0), std::move(memory)});
  check_chunk_memory(join_path(path), t.properties.dtype, t.chunks[0], t.global_size);
  insert(std::move(path), std::move(t));
}

void StateDict::add_sharded_tensor(std::vector<metadata::PathPart> path, Shape global_size,
                                   metadata::TensorProperties properties, std::vector<SaveChunk> chunks) {
  const auto fqn = join_path(path);
  for (auto s : global_size)
    if (s < 0) fail_for_key(Errc::invalid_argument, fqn, "negative size in " + layout::format_shape(global_size));
  for (const auto& c : chunks) check_chunk_memory(fqn, properties.dtype, c, global_size);
  insert(std::move(path), SaveTensor{std::move(global_size), properties, std::move(chunks), /*sharded=*/true});
}

void StateDict::add_object(std::vector<metadata::PathPart> path, ObjectValue value) {
  if (!value.document || value.id == pickle::kNoNode || value.id >= value.document->size())
    fail_for_key(Errc::invalid_argument, join_path(path), "object value without a document node");
  check_object_strings(join_path(path), *value.document, value.id);
  insert(std::move(path), std::move(value));
}

const StateDict::Entry* StateDict::find(std::string_view fqn) const {
  auto it = index_.find(std::string(fqn));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::uint64_t StateDict::tensor_bytes() const {
  std::uint64_t total = 0;
  for (const auto& e : entries_)
    if (const auto* t = std::get_if<SaveTensor>(&e.value))
      for (const auto& c : t->chunks) total = add_or_throw(total, metadata::byte_size(c.memory.sizes, c.memory.dtype), "state dict bytes");
  return total;
}

// ---- DefaultSavePlanner -----------------------------------------------------------------------

void DefaultSavePlanner::set_up_planner(const StateDict& state_dict, bool is_coordinator) {
  state_dict_ = &state_dict;
  is_coordinator_ = is_coordinator;
}

SavePlan DefaultSavePlanner::create_local_plan() {
  if (!state_dict_) throw Error(Errc::failed_precondition, "create_local_plan before set_up_planner");
  SavePlan plan;
  for (const auto& entry : state_dict_->entries()) {
    plan.planner_data.emplace_back(entry.fqn, entry.path);
    if (const auto* t = std::get_if<SaveTensor>(&entry.value)) {
      for (const auto& chunk : t->chunks) {
        WriteItem item;
        item.index = metadata::MetadataIndex{entry.fqn, chunk.offsets, std::nullopt};
        item.type = t->sharded ? WriteItemType::shard : WriteItemType::tensor;
        item.tensor_data = TensorWriteData{layout::Box{chunk.offsets, chunk.memory.sizes}, t->properties, t->global_size};
        plan.items.push_back(std::move(item));
      }
    } else {
      WriteItem item;
      item.index = metadata::MetadataIndex{entry.fqn, std::nullopt, std::nullopt};
      item.type = WriteItemType::byte_io;
      plan.items.push_back(std::move(item));
    }
  }
  return plan;
}

SavePlan DefaultSavePlanner::finish_plan(SavePlan central_plan) { return central_plan; }

ResolvedData DefaultSavePlanner::resolve_data(const WriteItem& item) {
  if (!state_dict_) throw Error(Errc::failed_precondition, "resolve_data before set_up_planner");
  const auto* entry = state_dict_->find(item.index.fqn);
  if (!entry) fail_for_key(Errc::invalid_argument, item.index.fqn, "write item names no state dict entry");
  if (item.type == WriteItemType::byte_io) {
    const auto* object = std::get_if<ObjectValue>(&entry->value);
    if (!object) fail_for_key(Errc::invalid_argument, item.index.fqn, "object write item for a tensor entry");
    return *object;
  }
  const auto* tensor = std::get_if<SaveTensor>(&entry->value);
  if (!tensor || !item.index.offset)
    fail_for_key(Errc::invalid_argument, item.index.fqn, "tensor write item for an object entry");
  for (const auto& chunk : tensor->chunks)
    if (chunk.offsets == *item.index.offset) return chunk.memory;
  fail_for_key(Errc::invalid_argument, item.index.fqn,
               "no local chunk at offsets " + layout::format_shape(*item.index.offset));
}

}  // namespace dcp::planning
