// Converting a checkpoint into one torch.save file or one safetensors file, tensor by tensor.
module;
#include <ATen/core/Tensor.h>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>
module dcp.checkpoint;
import dcp.error;
import dcp.pickle;
import dcp.metadata;
import dcp.planning;
import dcp.alloc;
import dcp.record;
import dcp.zip;
import dcp.json;

namespace dcp::checkpoint {
namespace {

// for_each_tensor's batch bound while converting: at most this much tensor memory at once
// (or one tensor, if larger).
constexpr std::uint64_t kConvertBatchBytes = std::uint64_t{256} << 20;
constexpr std::size_t kWriteBuffer = std::size_t{8} << 20;

[[noreturn]] void fail_for_key(Errc code, std::string_view fqn, std::string message) {
  Error e(code, std::move(message));
  e.for_key(fqn);
  throw e;
}

std::span<const std::byte> as_bytes(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

// ---------------------------------------------------------------------------------------
// The output: a temporary file next to `out`, renamed over it on success and removed on
// any failure, so a failed conversion leaves nothing behind.
class TempOutput {
 public:
  explicit TempOutput(const std::filesystem::path& out)
      : out_(out), tmp_(out.string() + ".tmp-" + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create output file", out_.string());  // nothing to remove
  }
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;
  ~TempOutput() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  /// Appends at the current position (buffered).
  void write(std::span<const std::byte> data) {
    if (buffer_.size() + data.size() > kWriteBuffer) flush();
    if (data.size() >= kWriteBuffer) {
      write_at(data, position_);
    } else {
      buffer_.insert(buffer_.end(), data.begin(), data.end());
    }
    position_ += data.size();
  }

  /// Writes at an absolute offset (unbuffered; pending appends are flushed first).
  void write_at(std::span<const std::byte> data, std::uint64_t offset) {
    flush();
    while (!data.empty()) {
      const auto chunk = std::min<std::size_t>(data.size(), std::size_t{1} << 30);
      const ssize_t n = ::pwrite(fd_, data.data(), chunk, static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("cannot write", tmp_);
      }
      data = data.subspan(static_cast<std::size_t>(n));
      offset += static_cast<std::uint64_t>(n);
    }
  }

  /// Flushes, sets the final size (if given), syncs and renames the file over `out`.
  void commit(std::optional<std::uint64_t> size = std::nullopt) {
    flush();
    if (size && ::ftruncate(fd_, static_cast<off_t>(*size)) != 0) fail("cannot set the size", tmp_);
    if (::fsync(fd_) != 0) fail("cannot sync", tmp_);
    const int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) fail("cannot close", tmp_);
    std::error_code ec;
    std::filesystem::rename(tmp_, out_, ec);
    if (ec) throw Error(Errc::io, "cannot rename " + tmp_ + " to it: " + ec.message()).in_file(out_.string());
    committed_ = true;
  }

 private:
  void flush() {
    if (buffer_.empty()) return;
    std::vector<std::byte> pending;
    pending.swap(buffer_);
    write_at(pending, position_ - pending.size());
    pending.clear();
    buffer_.swap(pending);  // keeps the capacity
  }
  [[noreturn]] static void fail(const char* what, const std::string& path) {
    const int err = errno;
    throw Error(Errc::io, std::string(what) + ": " + std::strerror(err)).in_file(path);
  }

  std::filesystem::path out_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t position_ = 0;
  std::vector<std::byte> buffer_;
};

// ---------------------------------------------------------------------------------------
// What a checkpoint's selection holds, in metadata order.
struct Selection {
  std::vector<const metadata::ItemMetadata*> tensors;
  std::vector<std::pair<std::string, pickle::Document>> objects;
  std::vector<std::string> fqns;  // tensors and objects, metadata order
};

bool is_selected(const LoadOptions& options, std::string_view fqn) { return !options.select || options.select(fqn); }

std::uint64_t tensor_bytes(const metadata::ItemMetadata& item) {
  const auto& t = item.tensor();
  return mul_or_throw(metadata::numel(t.size), dtype_itemsize(t.properties.dtype), "tensor size in bytes");
}

// The options for_each_tensor gets: CPU memory, bounded batches, stop at the first error.
LoadOptions streaming_options(const LoadOptions& options) {
  LoadOptions o = options;
  o.batch_bytes = std::min(options.batch_bytes == 0 ? kConvertBatchBytes : options.batch_bytes, kConvertBatchBytes);
  o.collect_errors = false;
  o.allocation = {};
  return o;
}

Selection select_items(const std::filesystem::path& dir, const metadata::Metadata& md, const LoadOptions& options) {
  Selection s;
  for (const auto& item : md.items) {
    if (!is_selected(options, item.fqn)) continue;
    s.fqns.push_back(item.fqn);
    if (item.is_tensor()) s.tensors.push_back(&item);
  }
  s.objects = load_objects(dir, md, options);
  return s;
}

// Streams every selected tensor's bytes to `write`, checking that each arrives contiguous
// and of the size the metadata promised; returns the bytes streamed.
std::uint64_t stream_tensors(const std::filesystem::path& dir, const metadata::Metadata& md, const LoadOptions& options,
                             const Selection& selection, const ConvertProgress& progress,
                             const std::function<void(const std::string&, std::span<const std::byte>)>& write) {
  std::size_t count = 0;
  std::uint64_t bytes = 0;
  (void)for_each_tensor(dir, md, streaming_options(options), [&](const std::string& fqn, at::Tensor tensor) {
    const auto* item = md.find_item(fqn);
    if (!item || !item->is_tensor()) fail_for_key(Errc::internal, fqn, "converter got a tensor it did not ask for");
    const auto slice = alloc::slice_of(tensor);
    const auto size = tensor_bytes(*item);
    if (!planning::is_contiguous(slice) || planning::numel(slice) * dtype_itemsize(slice.dtype) != size)
      fail_for_key(Errc::internal, fqn, "loaded tensor is not a dense " + std::to_string(size) + "-byte block");
    write(fqn, std::span<const std::byte>(slice.data, static_cast<std::size_t>(size)));
    ++count;
    bytes += size;
    if (progress) progress(size);
  });
  if (count != selection.tensors.size())
    throw Error(Errc::internal, "converter streamed " + std::to_string(count) + " of " +
                                    std::to_string(selection.tensors.size()) + " tensors");
  return bytes;
}

// ---------------------------------------------------------------------------------------
// torch.save's data.pkl for a nested state dict, opcode for opcode as CPython's C pickler
// writes it for torch 1.13 (protocol 2): every container, string and global is memoized
// (BINPUT), a global or one of the constant strings 'storage' / 'cpu' seen before is
// fetched back (BINGET), dicts and lists go out in batches of 1000 (one element: SETITEM /
// APPEND). Objects are re-encoded with pickle::Encoder, which uses no memo, so their bytes
// can be spliced in without renumbering.
class StateDictPickler {
 public:
  StateDictPickler() {
    op(0x80);
    op(2);
  }

  // `storage_class` empty: a dtype without a legacy storage (torch 2.x's _rebuild_tensor_v3).
  void tensor(std::string_view storage_class, DType dtype, const metadata::Shape& sizes, std::string_view key) {
    const bool v3 = storage_class.empty();
    const auto numel = metadata::numel(sizes);
    global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    op('(');
    // The persistent id ('storage', <storage class>, key, 'cpu', numel), then BINPERSID.
    op('(');
    constant("storage", storage_);
    // torch 2.x's own torch.save names torch.storage.UntypedStorage; its weights_only
    // torch.load (the default since 2.6) refuses the torch.UntypedStorage alias.
    if (v3) global("torch.storage", "UntypedStorage");
    else global("torch", storage_class);
    text(key);
    constant("cpu", cpu_);
    count(v3 ? mul_or_throw(numel, dtype_itemsize(dtype), "storage bytes") : numel);
    op('t');
    put();
    op('Q');
    integer(std::int64_t{0});  // storage_offset
    int_tuple(sizes);
    int_tuple(contiguous_strides(sizes));
    op(0x89);  // requires_grad = False
    global("collections", "OrderedDict");
    op(')');
    op('R');
    put();
    if (v3) global("torch", dtype_name(dtype));
    op('t');
    put();
    op('R');
    put();
  }

  void none() { op('N'); }

  // Opens a dict (`count` entries follow as key(), value, ...) or a list (`count` values).
  void begin_dict() {
    op('}');
    put();
  }
  void begin_list() {
    op(']');
    put();
  }
  void key(std::string_view name) { text(name); }

  // Batching of `count` elements around `element(i)`, as CPython's batch_dict_exact and
  // batch_list_exact do it (including the empty trailing batch for a dict of exactly
  // 1000·k items).
  void dict_items(std::size_t count, const std::function<void(std::size_t)>& element) {
    if (count == 0) return;
    if (count == 1) {
      element(0);
      op('s');
      return;
    }
    std::size_t next = 0, batch = 0;
    do {
      batch = 0;
      op('(');
      while (next < count) {
        element(next++);
        if (++batch == kBatch) break;
      }
      op('u');
    } while (batch == kBatch);
  }
  void list_items(std::size_t count, const std::function<void(std::size_t)>& element) {
    if (count == 0) return;
    if (count == 1) {
      element(0);
      op('a');
      return;
    }
    std::size_t next = 0;
    do {
      std::size_t batch = 0;
      op('(');
      while (next < count) {
        element(next++);
        if (++batch == kBatch) break;
      }
      op('e');
    } while (next < count);
  }

  // A decoded BYTE_IO value.
  void object(const pickle::Document& doc) {
    pickle::Encoder encoder(2);
    encoder.value(doc, doc.root());
    const auto bytes = encoder.finish();  // PROTO 2 ... STOP
    out_.insert(out_.end(), bytes.begin() + 2, bytes.end() - 1);
  }

  std::vector<std::byte> finish() {
    op('.');
    return std::move(out_);
  }

 private:
  static constexpr std::size_t kBatch = 1000;

  static metadata::Shape contiguous_strides(const metadata::Shape& sizes) {
    metadata::Shape strides(sizes.size());
    std::int64_t stride = 1;
    for (std::size_t i = sizes.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= std::max<std::int64_t>(sizes[i], 1);
    }
    return strides;
  }

  void op(std::uint8_t code) { out_.push_back(std::byte{code}); }
  void raw(std::string_view bytes) { out_.insert(out_.end(), as_bytes(bytes).begin(), as_bytes(bytes).end()); }
  void le(std::uint64_t value, int width) {
    for (int i = 0; i < width; ++i) out_.push_back(static_cast<std::byte>(value >> (8 * i)));
  }
  void put() {
    const auto id = memo_++;
    if (id < 256) {
      op('q');
      le(id, 1);
    } else {
      op('r');
      le(id, 4);
    }
  }
  void get(std::uint32_t id) {
    if (id < 256) {
      op('h');
      le(id, 1);
    } else {
      op('j');
      le(id, 4);
    }
  }
  void global(std::string_view module, std::string_view name) {
    std::string id = std::string(module) + '\n' + std::string(name);
    if (auto it = globals_.find(id); it != globals_.end()) return get(it->second);
    globals_.emplace(std::move(id), memo_);
    op('c');
    raw(module);
    op('\n');
    raw(name);
    op('\n');
    put();
  }
  void text(std::string_view utf8) {
    if (utf8.size() > 0xFFFFFFFFu) throw Error(Errc::out_of_range, "string longer than 4 GiB");
    op('X');
    le(utf8.size(), 4);
    raw(utf8);
    put();
  }
  // A string that is the same Python object every time torch pickles it (a code constant).
  void constant(std::string_view utf8, std::optional<std::uint32_t>& memo) {
    if (memo) return get(*memo);
    memo = memo_;
    text(utf8);
  }
  void count(std::uint64_t value) {
    if (value > static_cast<std::uint64_t>(INT64_MAX)) throw Error(Errc::out_of_range, "storage size past 2^63");
    integer(static_cast<std::int64_t>(value));
  }
  void integer(std::int64_t value) {
    if (value >= 0 && value < 256) {
      op('K');
      le(static_cast<std::uint64_t>(value), 1);
    } else if (value >= 0 && value < 65536) {
      op('M');
      le(static_cast<std::uint64_t>(value), 2);
    } else if (value >= INT32_MIN && value <= INT32_MAX) {
      op('J');
      le(static_cast<std::uint64_t>(value), 4);
    } else {
      int width = 8;  // LONG1, shortest two's complement (Python's encode_long)
      while (width > 1) {
        const std::int64_t top = value >> (8 * (width - 1) - 1);
        if (top != 0 && top != -1) break;
        --width;
      }
      op(0x8a);
      le(static_cast<std::uint64_t>(width), 1);
      le(static_cast<std::uint64_t>(value), width);
    }
  }
  void int_tuple(const metadata::Shape& values) {
    if (values.empty()) return op(')');  // EMPTY_TUPLE is not memoized
    if (values.size() > 3) op('(');
    for (const auto v : values) integer(v);
    op(values.size() > 3 ? std::uint8_t{'t'} : static_cast<std::uint8_t>(0x85 + values.size() - 1));
    put();
  }

  std::vector<std::byte> out_;
  std::uint32_t memo_ = 0;
  std::unordered_map<std::string, std::uint32_t> globals_;
  std::optional<std::uint32_t> storage_, cpu_;
};

// torch 1.13's storage class for a dtype; "" for dtypes torch 2.x saves with
// _rebuild_tensor_v3 and an UntypedStorage; nullopt when torch.save cannot hold it here.
std::optional<std::string_view> storage_class(DType dtype) {
  switch (dtype) {
    case DType::float32: return "FloatStorage";
    case DType::float64: return "DoubleStorage";
    case DType::float16: return "HalfStorage";
    case DType::bfloat16: return "BFloat16Storage";
    case DType::int8: return "CharStorage";
    case DType::uint8: return "ByteStorage";
    case DType::int16: return "ShortStorage";
    case DType::int32: return "IntStorage";
    case DType::int64: return "LongStorage";
    case DType::boolean: return "BoolStorage";
    case DType::complex64: return "ComplexFloatStorage";
    case DType::complex128: return "ComplexDoubleStorage";
    case DType::complex32:
    case DType::uint16:
    case DType::uint32:
    case DType::uint64:
    case DType::float8_e4m3fn:
    case DType::float8_e5m2:
    case DType::float8_e4m3fnuz:
    case DType::float8_e5m2fnuz:
    case DType::float8_e8m0fnu: return "";
    default: return std::nullopt;  // quantized: _rebuild_qtensor needs quantizer parameters
  }
}

bool has_persistent_id(const pickle::Document& doc) {
  for (std::size_t i = 0; i < doc.size(); ++i)
    if (doc.at(static_cast<pickle::NodeId>(i)).kind == pickle::NodeKind::persistent) return true;
  return false;
}

// safetensors' dtype code; nullopt when the format has none.
std::optional<std::string_view> safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::float64: return "F64";
    case DType::float32: return "F32";
    case DType::float16: return "F16";
    case DType::bfloat16: return "BF16";
    case DType::int64: return "I64";
    case DType::int32: return "I32";
    case DType::int16: return "I16";
    case DType::int8: return "I8";
    case DType::uint64: return "U64";
    case DType::uint32: return "U32";
    case DType::uint16: return "U16";
    case DType::uint8: return "U8";
    case DType::boolean: return "BOOL";
    case DType::float8_e4m3fn: return "F8_E4M3";
    case DType::float8_e5m2: return "F8_E5M2";
    default: return std::nullopt;
  }
}

}  // namespace

ConvertReport convert_to_torch_save(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                    const LoadOptions& options, const ConvertProgress& progress) {
  const auto md = inspect(checkpoint_dir);
  // Everything data.pkl needs comes from metadata and the (small) objects: check and
  // encode it all before the output file exists.
  for (const auto& item : md.items) {
    if (!is_selected(options, item.fqn)) continue;
    if (item.is_tensor() && !storage_class(item.tensor().properties.dtype))
      fail_for_key(Errc::unimplemented, item.fqn,
                   "torch.save output cannot hold " + std::string(dtype_name(item.tensor().properties.dtype)) +
                       " tensors");
  }
  Selection selection = select_items(checkpoint_dir, md, options);
  std::unordered_map<std::string, const pickle::Document*> objects;
  for (const auto& [fqn, doc] : selection.objects) {
    if (has_persistent_id(doc))
      fail_for_key(Errc::unimplemented, fqn, "object holds tensors; converting such objects is not supported");
    objects.emplace(fqn, &doc);
  }
  const auto tree = planning::unflatten(md, selection.fqns);

  // Storage keys "0", "1", ... in pickling order, as torch.save numbers them.
  std::unordered_map<std::string, std::string> storage_keys;
  StateDictPickler pickler;
  std::function<void(const planning::NestedNode&)> emit = [&](const planning::NestedNode& node) {
    switch (node.kind) {
      case planning::NestedNode::Kind::none: return pickler.none();
      case planning::NestedNode::Kind::leaf: {
        const auto* item = md.find_item(node.fqn);
        if (!item) fail_for_key(Errc::internal, node.fqn, "unflatten produced an unknown key");
        if (!item->is_tensor()) {
          const auto it = objects.find(node.fqn);
          if (it == objects.end()) fail_for_key(Errc::internal, node.fqn, "object was not loaded");
          return pickler.object(*it->second);
        }
        const auto& t = item->tensor();
        auto key = std::to_string(storage_keys.size());
        pickler.tensor(*storage_class(t.properties.dtype), t.properties.dtype, t.size, key);
        storage_keys.emplace(node.fqn, std::move(key));
        return;
      }
      case planning::NestedNode::Kind::dict:
        pickler.begin_dict();
        return pickler.dict_items(node.children.size(), [&](std::size_t i) {
          pickler.key(node.keys[i]);
          emit(node.children[i]);
        });
      case planning::NestedNode::Kind::list:
        pickler.begin_list();
        return pickler.list_items(node.children.size(), [&](std::size_t i) { emit(node.children[i]); });
      default: throw Error(Errc::internal, "unknown nested node kind");
    }
  };
  emit(tree);
  const auto data_pkl = pickler.finish();

  TempOutput file(out);
  zip::ArchiveWriter writer([&](std::span<const std::byte> bytes) { file.write(bytes); }, "archive");
  writer.add_record("data.pkl", data_pkl);
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::span<const std::byte> data) {
                                  writer.begin_record("data/" + storage_keys.at(fqn), data.size());
                                  writer.write(data);
                                  writer.end_record();
                                });
  writer.add_record("version", as_bytes("3\n"));
  writer.finish();
  file.commit();
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

ConvertReport convert_to_safetensors(const std::filesystem::path& checkpoint_dir, const std::filesystem::path& out,
                                     const LoadOptions& options, const ConvertProgress& progress) {
  const auto md = inspect(checkpoint_dir);
  for (const auto& item : md.items) {
    if (!is_selected(options, item.fqn)) continue;
    if (item.is_tensor() && !safetensors_dtype(item.tensor().properties.dtype))
      fail_for_key(Errc::unimplemented, item.fqn,
                   "safetensors has no dtype for " + std::string(dtype_name(item.tensor().properties.dtype)) +
                       " tensors");
    if (item.is_tensor() && item.fqn == "__metadata__")
      fail_for_key(Errc::unimplemented, item.fqn, "a tensor cannot be named __metadata__ in safetensors");
    if (!item.is_tensor() && item.fqn == "format")
      fail_for_key(Errc::unimplemented, item.fqn, "object key 'format' collides with safetensors' \"format\": \"pt\"");
  }
  Selection selection = select_items(checkpoint_dir, md, options);
  std::map<std::string, std::string> metadata_strings;  // sorted by key
  for (const auto& [fqn, doc] : selection.objects) {
    try {
      metadata_strings.emplace(fqn, record::object_to_json(doc, doc.root()));
    } catch (Error& e) {
      e.for_key(fqn);
      throw;
    }
  }

  // The header is known from metadata alone: tensors sorted by key, packed back to back.
  std::vector<const metadata::ItemMetadata*> sorted = selection.tensors;
  std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) { return a->fqn < b->fqn; });
  std::unordered_map<std::string, std::uint64_t> data_offset;
  json::JsonWriter w;
  w.begin_object().key("__metadata__").begin_object().key("format").value("pt");
  for (const auto& [fqn, text] : metadata_strings) w.key(fqn).value(text);
  w.end_object();
  std::uint64_t total = 0;
  for (const auto* item : sorted) {
    const auto& t = item->tensor();
    const auto size = tensor_bytes(*item);
    const auto end = add_or_throw(total, size, "safetensors data size");
    w.key(item->fqn).begin_object().key("dtype").value(*safetensors_dtype(t.properties.dtype));
    w.key("shape").int_array(t.size);
    w.key("data_offsets").begin_array().value(total).value(end).end_array().end_object();
    data_offset.emplace(item->fqn, total);
    total = end;
  }
  w.end_object();
  std::string header = w.take();
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::uint64_t data_start = 8 + header.size();

  TempOutput file(out);
  std::byte length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  file.write(length);
  file.write(as_bytes(header));
  ConvertReport report;
  report.bytes = stream_tensors(checkpoint_dir, md, options, selection, progress,
                                [&](const std::string& fqn, std::span<const std::byte> data) {
                                  file.write_at(data, data_start + data_offset.at(fqn));
                                });
  file.commit(data_start + total);
  report.tensors = selection.tensors.size();
  report.objects = selection.objects.size();
  return report;
}

}  // namespace dcp::checkpoint
