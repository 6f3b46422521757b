// torch.save's data.pkl for a nested state dict, written over pickle::Encoder.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
module dcp.record;
import dcp.error;
import dcp.pickle;
import dcp.layout;
import dcp.metadata;

namespace dcp::record {
namespace {

constexpr std::size_t kBatch = 1000;  // CPython's BATCHSIZE for APPENDS/SETITEMS

}  // namespace

StateDictPickler::StateDictPickler() : e_(2) {}

void StateDictPickler::global(std::string_view module, std::string_view name) {
  std::string id = std::string(module) + '\n' + std::string(name);
  if (auto it = globals_.find(id); it != globals_.end()) return e_.get(it->second);
  e_.global(module, name);
  globals_.emplace(std::move(id), e_.put());
}

void StateDictPickler::text(std::string_view utf8) {
  e_.string(utf8);
  (void)e_.put();
}

void StateDictPickler::constant(std::string_view utf8, std::optional<std::uint32_t>& memo) {
  if (memo) return e_.get(*memo);
  e_.string(utf8);
  memo = e_.put();
}

void StateDictPickler::int_tuple(const metadata::Shape& values) {
  if (values.empty()) return e_.empty_tuple();  // EMPTY_TUPLE is not memoized
  if (values.size() > 3) e_.mark();
  for (const auto v : values) e_.integer(v);
  if (values.size() > 3) e_.tuple_from_mark();
  else e_.tuple(values.size());
  (void)e_.put();
}

void StateDictPickler::storage_id(std::string_view module, std::string_view cls, std::string_view key,
                                  std::string_view location, std::int64_t numel) {
  e_.mark();
  constant("storage", storage_);
  global(module, cls);
  text(key);
  if (location == "cpu") constant("cpu", cpu_);
  else text(location);
  e_.integer(numel);
  e_.tuple_from_mark();
  (void)e_.put();
}

void StateDictPickler::tensor(DType dtype, const metadata::Shape& sizes, std::string_view key) {
  const auto& info = dtype_info(dtype);
  if (info.rebuild == TensorRebuild::none)
    throw Error(Errc::unimplemented, "torch.save output cannot hold " + std::string(info.name) + " tensors");
  const bool v3 = info.rebuild == TensorRebuild::v3;
  const auto numel = metadata::numel(sizes);
  const auto count = v3 ? mul_or_throw(numel, info.itemsize, "storage bytes") : numel;
  if (count > static_cast<std::uint64_t>(INT64_MAX)) throw Error(Errc::out_of_range, "storage size past 2^63");
  global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
  e_.mark();
  // torch 2.x's own torch.save names torch.storage.UntypedStorage; its weights_only
  // torch.load (the default since 2.6) refuses the torch.UntypedStorage alias.
  if (v3) storage_id("torch.storage", "UntypedStorage", key, "cpu", static_cast<std::int64_t>(count));
  else storage_id("torch", info.storage_class, key, "cpu", static_cast<std::int64_t>(count));
  e_.persistent_id();
  e_.integer(0);  // storage_offset
  int_tuple(sizes);
  int_tuple(layout::contiguous_strides(sizes));
  e_.boolean(false);  // requires_grad
  global("collections", "OrderedDict");
  e_.empty_tuple();
  e_.reduce();
  (void)e_.put();
  if (v3) global("torch", info.name);
  e_.tuple_from_mark();
  (void)e_.put();
  e_.reduce();
  (void)e_.put();
}

void StateDictPickler::none() { e_.none(); }

void StateDictPickler::begin_dict() {
  e_.empty_dict();
  (void)e_.put();
}

void StateDictPickler::begin_list() {
  e_.empty_list();
  (void)e_.put();
}

void StateDictPickler::key(std::string_view name) { text(name); }

void StateDictPickler::dict_items(std::size_t count, const std::function<void(std::size_t)>& element) {
  if (count == 0) return;
  if (count == 1) {
    element(0);
    return e_.setitem();
  }
  std::size_t next = 0, batch = 0;
  do {  // a dict of exactly 1000·k items ends with an empty batch, as in batch_dict_exact
    batch = 0;
    e_.mark();
    while (next < count) {
      element(next++);
      if (++batch == kBatch) break;
    }
    e_.setitems_from_mark();
  } while (batch == kBatch);
}

void StateDictPickler::list_items(std::size_t count, const std::function<void(std::size_t)>& element) {
  if (count == 0) return;
  if (count == 1) {
    element(0);
    return e_.append();
  }
  std::size_t next = 0;
  do {
    std::size_t batch = 0;
    e_.mark();
    while (next < count) {
      element(next++);
      if (++batch == kBatch) break;
    }
    e_.appends_from_mark();
  } while (next < count);
}

void StateDictPickler::object(const pickle::Document& doc) { e_.value(doc, doc.root()); }

void StateDictPickler::object(const pickle::Document& doc, pickle::NodeId id) { e_.value(doc, id); }

void StateDictPickler::object(const pickle::Document& doc, pickle::NodeId id,
                              const std::function<std::string(std::string_view key)>& storage_key) {
  e_.value(doc, id, 256, [&](const pickle::Document& d, pickle::NodeId pid) {
    const auto node = d.at(pid);
    const auto parts = node.items();
    const auto is = [&](std::size_t i, pickle::NodeKind kind) { return d.at(parts[i]).kind() == kind; };
    if (node.kind() != pickle::NodeKind::tuple || parts.size() != 5 || !is(0, pickle::NodeKind::string) ||
        d.at(parts[0]).text() != "storage" || !is(1, pickle::NodeKind::global) || !is(2, pickle::NodeKind::string) ||
        !is(3, pickle::NodeKind::string) || !is(4, pickle::NodeKind::integer))
      throw Error(Errc::invalid_argument, "persistent id " + d.describe(pid) + " is not a storage's");
    const auto cls = d.at(parts[1]);
    storage_id(cls.text(), cls.name(), storage_key(d.at(parts[2]).text()), d.at(parts[3]).text(), d.at(parts[4]).integer());
  });
}

std::vector<std::byte> StateDictPickler::finish() { return e_.finish(); }

}  // namespace dcp::record
