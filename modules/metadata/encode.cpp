// Writes Metadata as a `.metadata` pickle that PyTorch 1.13 or 2.x unpickles.
module;
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>
module dcp.metadata;
import dcp.error;
import dcp.pickle;

namespace dcp::metadata {
namespace {

class MetadataEncoder {
 public:
  explicit MetadataEncoder(Flavor flavor)
      : e_(2),
        module_(flavor == Flavor::torch_1_13 ? "torch.distributed._shard.checkpoint.metadata"
                                             : "torch.distributed.checkpoint.metadata"),
        filesystem_(flavor == Flavor::torch_1_13 ? "torch.distributed._shard.checkpoint.filesystem"
                                                 : "torch.distributed.checkpoint.filesystem"),
        flavor_(flavor) {}

  std::vector<std::byte> run(const Metadata& md) {
    begin_object(module_, "Metadata");
    e_.string("state_dict_metadata");
    e_.empty_dict();
    if (!md.items.empty()) {
      e_.mark();
      for (const auto& item : md.items) {
        e_.string(item.fqn);
        if (item.is_tensor()) tensor(item.tensor());
        else begin_object(module_, "BytesStorageMetadata", /*with_state=*/false);
      }
      e_.setitems_from_mark();
    }
    e_.string("planner_data");
    planner_data(md);
    e_.string("storage_data");
    storage_data(md);
    if (flavor_ == Flavor::torch_2x) {
      e_.string("storage_meta");
      storage_meta(md);
      if (md.version) {
        e_.string("version");
        e_.string(*md.version);
      }
    }
    end_object();
    return e_.finish();
  }

 private:
  // Dataclass instance: cls.__new__(cls), then BUILD with the attribute dict that follows.
  void begin_object(std::string_view module, std::string_view cls, bool with_state = true) {
    e_.global(module, cls);
    e_.empty_tuple();
    e_.newobj();
    if (with_state) {
      e_.empty_dict();
      e_.mark();
    }
  }
  void end_object() {
    e_.setitems_from_mark();
    e_.build();
  }

  void size(const Shape& shape) {
    e_.global("torch", "Size");
    e_.mark();
    for (std::int64_t d : shape) e_.integer(d);
    e_.tuple_from_mark();
    e_.tuple(1);
    e_.reduce();
  }

  void tensor(const TensorStorageMetadata& t) {
    begin_object(module_, "TensorStorageMetadata");
    e_.string("properties");
    // The sharded-tensor TensorProperties loads on 1.13 and on every 2.x.
    constexpr std::string_view props_module = "torch.distributed._shard.sharded_tensor.metadata";
    e_.global(props_module, "TensorProperties");
    e_.empty_tuple();
    e_.newobj();
    e_.mark();
    e_.global("torch", dtype_name(t.properties.dtype));
    e_.global("torch.serialization", "_get_layout");
    e_.string("torch.strided");
    e_.tuple(1);
    e_.reduce();
    e_.boolean(t.properties.requires_grad);
    e_.global(props_module, "MEM_FORMAT_ENCODING");  // cls(value) works on every Python
    e_.integer(static_cast<std::int64_t>(t.properties.memory_format));
    e_.tuple(1);
    e_.reduce();
    e_.boolean(t.properties.pin_memory);
    e_.tuple_from_mark();
    e_.build();
    e_.string("size");
    size(t.size);
    e_.string("chunks");
    e_.empty_list();
    if (!t.chunks.empty()) {
      e_.mark();
      for (const auto& c : t.chunks) {
        begin_object(module_, "ChunkStorageMetadata");
        e_.string("offsets");
        size(c.offsets);
        e_.string("sizes");
        size(c.sizes);
        end_object();
      }
      e_.appends_from_mark();
    }
    end_object();
  }

  void planner_data(const Metadata& md) {
    if (!md.planner_data) return e_.none();
    e_.empty_dict();
    if (md.planner_data->empty()) return;
    e_.mark();
    for (const auto& [fqn, path] : *md.planner_data) {
      e_.string(fqn);
      e_.mark();
      for (const auto& part : path) {
        if (part.index() == 0) e_.string(std::get<0>(part));
        else e_.integer(std::get<1>(part));
      }
      e_.tuple_from_mark();
    }
    e_.setitems_from_mark();
  }

  void storage_data(const Metadata& md) {
    e_.empty_dict();
    if (md.storage_data.empty()) return;
    e_.mark();
    for (const auto& [index, info] : md.storage_data) {
      begin_object(module_, "MetadataIndex");
      e_.string("fqn");
      e_.string(index.fqn);
      if (index.offset) {
        e_.string("offset");
        size(*index.offset);
      }
      e_.string("index");
      if (index.index) e_.integer(*index.index);
      else e_.none();
      end_object();
      begin_object(filesystem_, "_StorageInfo");
      e_.string("relative_path");
      e_.string(info.relative_path);
      e_.string("offset");
      e_.integer(static_cast<std::int64_t>(info.offset));
      e_.string("length");
      e_.integer(static_cast<std::int64_t>(info.length));
      if (!info.transform_descriptors.empty()) {
        e_.string("transform_descriptors");
        e_.empty_list();
        e_.mark();
        for (const auto& d : info.transform_descriptors) e_.string(d);
        e_.appends_from_mark();
      }
      end_object();
    }
    e_.setitems_from_mark();
  }

  void optional_string(const std::optional<std::string>& v) {
    if (v) e_.string(*v);
    else e_.none();
  }

  void storage_meta(const Metadata& md) {
    if (!md.storage_meta) return e_.none();
    begin_object(module_, "StorageMeta");
    e_.string("checkpoint_id");
    optional_string(md.storage_meta->checkpoint_id);
    e_.string("save_id");
    optional_string(md.storage_meta->save_id);
    e_.string("load_id");
    optional_string(md.storage_meta->load_id);
    e_.string("modules");
    e_.empty_list();
    if (!md.storage_meta->modules.empty()) {
      e_.mark();
      for (const auto& m : md.storage_meta->modules) e_.string(m);
      e_.appends_from_mark();
    }
    end_object();
  }

  pickle::Encoder e_;
  std::string_view module_;
  std::string_view filesystem_;
  Flavor flavor_;
};

}  // namespace

std::vector<std::byte> encode_metadata(const Metadata& metadata, Flavor flavor) {
  return MetadataEncoder(flavor).run(metadata);
}

}  // namespace dcp::metadata
