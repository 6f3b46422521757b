// The `dcpp inspect --json` document.
module;
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>
module dcp.metadata;
import dcp.error;
import dcp.json;
import dcp.layout;

namespace dcp::metadata {
namespace {

void write_storage(json::JsonWriter& w, const StorageInfo* info) {
  if (!info) {
    w.key("file").null().key("offset").null().key("length").null();
    return;
  }
  w.key("file").value(info->relative_path);
  w.key("offset").value(info->offset);
  w.key("length").value(info->length);
  if (!info->transform_descriptors.empty()) {
    w.key("transform_descriptors").begin_array();
    for (const auto& d : info->transform_descriptors) w.value(d);
    w.end_array();
  }
}

// "layout": {"kind", ...}, the parameters each kind has (README.md, "dcpp inspect --json").
void write_layout(json::JsonWriter& w, const TensorStorageMetadata& t) {
  const auto d = describe_layout(t);
  w.key("layout").begin_object().key("kind").value(layout::layout_kind_name(d));
  switch (d.kind) {
    case layout::LayoutKind::whole: break;
    case layout::LayoutKind::split: w.key("dim").value(d.dims[0]).key("parts").value(d.parts[0]); break;
    case layout::LayoutKind::nested: w.key("dim").value(d.dims[0]).key("parts").int_array(d.parts); break;
    case layout::LayoutKind::grid:
      w.key("dims").begin_array().value(d.dims[0]).value(d.dims[1]).end_array().key("parts").int_array(d.parts);
      break;
    case layout::LayoutKind::irregular: w.key("chunks").value(d.parts[0]); break;
  }
  w.end_object();
}

void write_optional(json::JsonWriter& w, const char* key, const std::optional<std::string>& v) {
  w.key(key);
  if (v) w.value(*v);
  else w.null();
}

}  // namespace

layout::LayoutDescription describe_layout(const TensorStorageMetadata& tensor) {
  std::vector<layout::Box> boxes;
  boxes.reserve(tensor.chunks.size());
  for (const auto& c : tensor.chunks) boxes.push_back(c.box());
  return layout::describe_layout(tensor.size, boxes);
}

std::string to_json(const Metadata& md, int indent) {
  json::JsonWriter w(indent);
  w.begin_object();
  w.key("format").value(flavor_name(md.flavor));
  w.key("source").value(source_name(md.source));
  write_optional(w, "version", md.version);
  w.key("storage_meta");
  if (md.storage_meta) {
    w.begin_object();
    write_optional(w, "checkpoint_id", md.storage_meta->checkpoint_id);
    write_optional(w, "save_id", md.storage_meta->save_id);
    write_optional(w, "load_id", md.storage_meta->load_id);
    w.key("modules").begin_array();
    for (const auto& m : md.storage_meta->modules) w.value(m);
    w.end_array().end_object();
  } else {
    w.null();
  }
  w.key("items").begin_array();
  for (const auto& item : md.items) {
    w.begin_object().key("fqn").value(item.fqn);
    if (!item.is_tensor()) {
      w.key("kind").value("bytes");
      write_storage(w, md.find_storage(item.fqn, nullptr));
      w.end_object();
      continue;
    }
    const auto& t = item.tensor();
    w.key("kind").value("tensor");
    w.key("dtype").value(dtype_name(t.properties.dtype));
    w.key("shape").int_array(t.size);
    w.key("requires_grad").value(t.properties.requires_grad);
    w.key("memory_format").value(memory_format_name(t.properties.memory_format));
    w.key("pin_memory").value(t.properties.pin_memory);
    w.key("nbytes").value(byte_size(t.size, t.properties.dtype));
    write_layout(w, t);
    w.key("chunks").begin_array();
    for (const auto& c : t.chunks) {
      w.begin_object().key("offsets").int_array(c.offsets).key("sizes").int_array(c.sizes);
      write_storage(w, md.find_storage(item.fqn, &c.offsets));
      w.end_object();
    }
    w.end_array().end_object();
  }
  w.end_array();
  w.key("planner_data");
  if (md.planner_data) {
    w.begin_object();
    for (const auto& [fqn, path] : *md.planner_data) {
      w.key(fqn).begin_array();
      for (const auto& part : path) {
        if (part.index() == 0) w.value(std::get<0>(part));
        else w.value(std::get<1>(part));
      }
      w.end_array();
    }
    w.end_object();
  } else {
    w.null();
  }
  w.key("extra_attributes").begin_array();
  for (const auto& a : md.extra_attributes) w.value(a);
  w.end_array();
  w.end_object();
  return w.take();
}

}  // namespace dcp::metadata
