// Hostile inputs for the budget tests; see hostile.hpp.
#include "hostile.hpp"

#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unistd.h>
import dcp.zip;

namespace dcp_hostile {
namespace {

constexpr std::string_view k2x = "torch.distributed.checkpoint.metadata";

// Raw pickle opcodes (protocol 2), just enough for the files below.
class Pickle {
 public:
  Pickle() { bytes({0x80, 0x02}); }
  void op(char c) { out_.push_back(static_cast<std::byte>(c)); }
  void bytes(std::initializer_list<std::uint8_t> b) {
    for (auto v : b) out_.push_back(static_cast<std::byte>(v));
  }
  void le(std::uint64_t v, int width) {
    for (int i = 0; i < width; ++i) out_.push_back(static_cast<std::byte>(v >> (8 * i)));
  }
  void str(std::string_view s) {  // BINUNICODE
    op('X');
    le(s.size(), 4);
    for (char c : s) op(c);
  }
  void global(std::string_view module, std::string_view name) {
    op('c');
    for (char c : module) op(c);
    op('\n');
    for (char c : name) op(c);
    op('\n');
  }
  void integer(std::uint64_t v) {
    if (v < 256) {
      op('K');
      le(v, 1);
    } else if (v < (1u << 31)) {
      op('J');
      le(v, 4);
    } else {
      bytes({0x8a, 0x08});  // LONG1, 8 bytes (v < 2^63)
      le(v, 8);
    }
  }
  void put(std::uint32_t i) { memo('q', 'r', i); }
  void get(std::uint32_t i) { memo('h', 'j', i); }
  void memo(char short_op, char long_op, std::uint32_t i) {  // BINPUT/BINGET or the LONG_ forms
    op(i < 256 ? short_op : long_op);
    le(i, i < 256 ? 1 : 4);
  }
  // NEWOBJ of module.cls with no arguments, then `{` MARK (the caller adds key/values, then
  // end_object()).
  std::size_t begin_object(std::string_view module, std::string_view cls) {  // -> NEWOBJ's offset
    global(module, cls);
    op(')');
    const auto at = out_.size();
    bytes({0x81});
    op('}');
    op('(');
    return at;
  }
  void end_object() {
    op('u');
    op('b');
  }
  std::size_t size(std::size_t rank, std::uint64_t value) {  // torch.Size((value,) * rank) -> REDUCE's offset
    global("torch", "Size");
    op('(');
    for (std::size_t i = 0; i < rank; ++i) integer(value);
    op('t');
    bytes({0x85});
    op('R');
    return out_.size() - 1;
  }
  std::size_t position() const { return out_.size(); }
  std::vector<std::byte> finish() {
    op('.');
    return std::move(out_);
  }

 private:
  std::vector<std::byte> out_;
};

std::vector<std::byte> flood(std::size_t count, char opcode) {
  Pickle p;
  for (std::size_t i = 0; i < count; ++i) p.op(opcode);
  return p.finish();
}

// MetadataIndex(fqn=memo[fqn_memo], offset=<offsets_memo or None>, index=None) and its
// _StorageInfo('__0_0.distcp', 0, length).
// Returns the offset of the MetadataIndex's NEWOBJ.
std::size_t storage_entry(Pickle& p, std::uint32_t fqn_memo, std::optional<std::uint32_t> offsets_memo,
                          std::uint64_t length, std::optional<std::uint32_t> index_memo = std::nullopt,
                          std::optional<std::uint32_t> info_memo = std::nullopt) {
  const auto at = p.begin_object(k2x, "MetadataIndex");
  p.str("fqn");
  p.get(fqn_memo);
  p.str("offset");
  if (offsets_memo) p.get(*offsets_memo);
  else p.op('N');
  p.str("index");
  p.op('N');
  p.end_object();
  if (index_memo) p.put(*index_memo);
  p.begin_object("torch.distributed.checkpoint.filesystem", "_StorageInfo");
  p.str("relative_path");
  p.str("__0_0.distcp");
  p.str("offset");
  p.integer(0);
  p.str("length");
  p.integer(length);
  p.end_object();
  if (info_memo) p.put(*info_memo);
  return at;
}

}  // namespace

std::vector<std::byte> none_flood(std::size_t count) { return flood(count, 'N'); }
std::vector<std::byte> empty_list_flood(std::size_t count) { return flood(count, ']'); }

std::vector<std::byte> shared_chunk_metadata(std::size_t refs, std::size_t rank, SharedChunkLayout* layout,
                                             std::size_t storage_refs) {
  enum : std::uint32_t { kFqn, kSizes, kOffsets, kChunk, kIndex, kInfo };
  Pickle p;
  p.begin_object(k2x, "Metadata");
  p.str("state_dict_metadata");
  p.op('}');
  p.op('(');
  p.str("w");
  p.put(kFqn);
  p.begin_object(k2x, "TensorStorageMetadata");
  p.str("properties");
  p.begin_object(k2x, "TensorProperties");
  p.str("dtype");
  p.global("torch", "float32");
  p.end_object();
  p.str("size");
  SharedChunkLayout where;
  where.tensor_size = p.size(rank, 1);
  p.put(kSizes);
  p.str("chunks");
  p.op(']');
  p.op('(');
  where.chunk = p.begin_object(k2x, "ChunkStorageMetadata");
  p.str("offsets");
  where.chunk_offsets = p.size(rank, 0);
  p.put(kOffsets);
  p.str("sizes");
  p.get(kSizes);
  p.end_object();
  p.put(kChunk);
  where.first_reference = p.position();
  for (std::size_t i = 1; i < refs; ++i) p.get(kChunk);
  p.op('e');
  p.end_object();  // TensorStorageMetadata
  p.op('u');       // state_dict_metadata
  p.str("storage_data");
  p.op('}');
  p.op('(');
  where.index = storage_entry(p, kFqn, kOffsets, 4, kIndex, kInfo);
  for (std::size_t i = 1; i < storage_refs; ++i) {
    p.get(kIndex);
    p.get(kInfo);
  }
  p.op('u');
  p.str("planner_data");
  p.op('N');
  p.end_object();  // Metadata
  if (layout) *layout = where;
  return p.finish();
}

std::vector<std::byte> dag_list_pickle(std::size_t levels, bool cycle) {
  Pickle p;
  p.op(']');
  p.put(0);
  for (std::uint32_t k = 1; k <= levels; ++k) {
    p.op('0');  // POP the previous level (it stays in the memo)
    p.op(']');
    p.put(k);
    p.op('(');
    p.get(k - 1);
    p.get(k - 1);
    p.op('e');
  }
  if (cycle) {
    p.get(static_cast<std::uint32_t>(levels));
    p.op('a');
  }
  return p.finish();
}

std::vector<std::byte> tuple_cycle_pickle() {
  Pickle p;
  p.op(']');
  p.put(0);      // L
  p.get(0);
  p.bytes({0x85});  // T = (L,)
  p.put(1);
  p.op('0');
  p.get(0);
  p.get(1);
  p.op('a');     // L.append(T)
  p.op('0');
  p.get(1);      // root: T
  return p.finish();
}

std::vector<std::byte> torch_save_archive(std::span<const std::byte> data_pkl) {
  std::vector<std::byte> out;
  dcp::zip::ArchiveWriter writer([&](std::span<const std::byte> b) { out.insert(out.end(), b.begin(), b.end()); });
  writer.add_record("data.pkl", data_pkl);
  const std::byte version[] = {std::byte{'3'}, std::byte{'\n'}};
  writer.add_record("version", version);
  writer.finish();
  return out;
}

void write_object_checkpoint(const std::filesystem::path& dir, std::string_view fqn, std::span<const std::byte> item,
                             std::optional<std::uint64_t> declared_length, std::optional<std::uint64_t> file_size) {
  Pickle p;
  p.begin_object(k2x, "Metadata");
  p.str("state_dict_metadata");
  p.op('}');
  p.op('(');
  p.str(fqn);
  p.put(0);
  p.global(k2x, "BytesStorageMetadata");
  p.op(')');
  p.bytes({0x81});
  p.op('u');
  p.str("storage_data");
  p.op('}');
  p.op('(');
  storage_entry(p, 0, std::nullopt, declared_length.value_or(item.size()));
  p.op('u');
  p.str("planner_data");
  p.op('N');
  p.end_object();
  const auto metadata = p.finish();

  std::filesystem::create_directories(dir);
  auto write = [](const std::filesystem::path& path, std::span<const std::byte> bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + path.string());
  };
  write(dir / ".metadata", metadata);
  write(dir / "__0_0.distcp", item);
  if (file_size) std::filesystem::resize_file(dir / "__0_0.distcp", *file_size);  // sparse
}

}  // namespace dcp_hostile
