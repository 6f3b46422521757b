// libdcp's C API (include/dcp/dcp.h) over the core modules. Each entry point is noexcept and
// runs its work inside `guarded`, which turns any exception (bad_alloc included) into a status
// and the handle's per-thread message: nothing C++ crosses the boundary. Handles live in a
// registry of shared_ptrs, so an unknown or closed handle is refused without being touched, and
// a call in flight keeps its handle alive through a concurrent dcp_close. Each read opens its
// own storage reader, so calls on one handle share nothing mutable but the error table.
#include "dcp/dcp.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>
import dcp.error;
import dcp.dtype;
import dcp.metadata;
import dcp.planning;
import dcp.record;
import dcp.storage;
import dcp.checkpoint;

namespace {

using dcp::DType;
using dcp::Errc;
using dcp::Error;
namespace md = dcp::metadata;
namespace planning = dcp::planning;

// The C enums carry dcp::Errc's and dcp::DType's values: the header is C and cannot import
// them, so the compiler holds the two spellings together.
static_assert(DCP_INVALID_ARGUMENT == int(Errc::invalid_argument) && DCP_NOT_FOUND == int(Errc::not_found) &&
              DCP_DATA_LOSS == int(Errc::data_loss) && DCP_OUT_OF_RANGE == int(Errc::out_of_range) &&
              DCP_FAILED_PRECONDITION == int(Errc::failed_precondition) &&
              DCP_UNIMPLEMENTED == int(Errc::unimplemented) && DCP_IO == int(Errc::io) &&
              DCP_CANCELLED == int(Errc::cancelled) && DCP_PERMISSION_DENIED == int(Errc::permission_denied) &&
              DCP_INTERNAL == int(Errc::internal) && DCP_RESOURCE_EXHAUSTED == int(Errc::resource_exhausted));
static_assert(DCP_FLOAT32 == int(DType::float32) && DCP_FLOAT64 == int(DType::float64) &&
              DCP_FLOAT16 == int(DType::float16) && DCP_BFLOAT16 == int(DType::bfloat16) &&
              DCP_INT8 == int(DType::int8) && DCP_UINT8 == int(DType::uint8) && DCP_INT16 == int(DType::int16) &&
              DCP_INT32 == int(DType::int32) && DCP_INT64 == int(DType::int64) && DCP_BOOL == int(DType::boolean) &&
              DCP_COMPLEX64 == int(DType::complex64) && DCP_COMPLEX128 == int(DType::complex128) &&
              DCP_COMPLEX32 == int(DType::complex32) && DCP_UINT16 == int(DType::uint16) &&
              DCP_UINT32 == int(DType::uint32) && DCP_UINT64 == int(DType::uint64) &&
              DCP_FLOAT8_E4M3FN == int(DType::float8_e4m3fn) && DCP_FLOAT8_E5M2 == int(DType::float8_e5m2) &&
              DCP_FLOAT8_E4M3FNUZ == int(DType::float8_e4m3fnuz) &&
              DCP_FLOAT8_E5M2FNUZ == int(DType::float8_e5m2fnuz) &&
              DCP_FLOAT8_E8M0FNU == int(DType::float8_e8m0fnu) && DCP_QINT8 == int(DType::qint8) &&
              DCP_QUINT8 == int(DType::quint8) && DCP_QINT32 == int(DType::qint32) &&
              DCP_QUINT4X2 == int(DType::quint4x2) && DCP_QUINT2X4 == int(DType::quint2x4));

// What a handle knows of one entry, in the form dcp_entry hands out.
struct Entry {
  std::string key;
  bool tensor = false;
  DType dtype = DType::float32;
  md::Shape shape;
  std::uint64_t bytes = 0;
};

}  // namespace

struct dcp_checkpoint {
  std::filesystem::path path;
  dcp::storage::ReadOptions read;
  std::optional<md::ValidatedMetadata> metadata;
  std::vector<Entry> entries;
  std::unordered_map<std::string_view, std::size_t> index;
  std::mutex errors_mutex;
  std::unordered_map<std::thread::id, std::string> errors;  // each thread's last message
};

namespace {

std::mutex registry_mutex;
std::unordered_map<const dcp_checkpoint*, std::shared_ptr<dcp_checkpoint>>& registry() {
  static auto* handles = new std::unordered_map<const dcp_checkpoint*, std::shared_ptr<dcp_checkpoint>>;
  return *handles;  // never destroyed: a call from another thread during exit still finds it
}

std::shared_ptr<dcp_checkpoint> find_handle(const dcp_checkpoint* handle) noexcept {
  if (!handle) return nullptr;
  std::lock_guard lock(registry_mutex);
  const auto it = registry().find(handle);
  return it == registry().end() ? nullptr : it->second;
}

thread_local std::string thread_error;  // calls without a handle, and calls on a bad one

void set_error(dcp_checkpoint* handle, std::string_view message) noexcept {
  try {
    if (!handle) {
      thread_error.assign(message);
      return;
    }
    std::lock_guard lock(handle->errors_mutex);
    handle->errors[std::this_thread::get_id()].assign(message);
  } catch (...) {
    // No memory for the message: the status still says what happened.
  }
}

// Runs `fn`, turning whatever it throws into a status and this thread's message on `handle`
// (null: the thread's own slot).
template <class Fn>
dcp_status guarded(dcp_checkpoint* handle, Fn&& fn) noexcept {
  try {
    fn();
    set_error(handle, "");
    return DCP_OK;
  } catch (...) {
    const Error e = dcp::current_exception_as_error();
    set_error(handle, e.what());
    return static_cast<dcp_status>(e.code());
  }
}

// `guarded` on a live handle; DCP_BAD_HANDLE (the message in the thread's own slot) otherwise.
template <class Fn>
dcp_status on_handle(dcp_checkpoint* handle, Fn&& fn) noexcept {
  const auto held = find_handle(handle);
  if (!held) {
    set_error(nullptr, handle ? "not an open dcp_checkpoint (closed, or never opened)" : "the dcp_checkpoint is NULL");
    return DCP_BAD_HANDLE;
  }
  return guarded(held.get(), [&] { fn(*held); });
}

[[noreturn]] void fail(Errc code, std::string message) { throw Error(code, std::move(message)); }

void require(bool ok, std::string_view what) {
  if (!ok) fail(Errc::invalid_argument, std::string(what));
}

DType dtype_of(int value) {
  if (value < 0 || static_cast<std::size_t>(value) >= dcp::dtype_table().size())
    fail(Errc::invalid_argument, "dtype " + std::to_string(value) + " is not a dcp_dtype");
  return static_cast<DType>(value);
}

std::string key_of(const char* key, std::size_t size) {
  require(key != nullptr, "key is NULL");
  return std::string(key, size);
}

const Entry& find_entry(const dcp_checkpoint& c, const std::string& key) {
  const auto it = c.index.find(key);
  if (it == c.index.end()) fail(Errc::not_found, "no key '" + dcp::escape_text(key) + "' in the checkpoint");
  return c.entries[it->second];
}

const Entry& find_tensor(const dcp_checkpoint& c, const std::string& key) {
  const Entry& entry = find_entry(c, key);
  if (!entry.tensor) fail(Errc::failed_precondition, "key '" + dcp::escape_text(key) + "' is an object, not a tensor");
  return entry;
}

md::Shape shape_of(const std::int64_t* values, std::size_t ndim, std::string_view what) {
  require(ndim == 0 || values != nullptr, std::string(what) + " is NULL");
  md::Shape shape(values, values + ndim);
  for (const auto v : shape)
    if (v < 0) fail(Errc::invalid_argument, std::string(what) + " holds a negative value " + std::to_string(v));
  return shape;
}

// Checks that the elements `lengths` with element `strides` reach lie inside `capacity` bytes at
// `data` (nothing when the box is empty), and, for memory dcpp writes (`written`), that no two
// of them share memory: the reads fill it from several threads.
void check_memory(const md::Shape& lengths, const md::Shape& strides, DType dtype, const void* data,
                  std::uint64_t capacity, bool written) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> dims;  // (stride, length) of dims longer than 1
  for (std::size_t d = 0; d < lengths.size(); ++d) {
    if (lengths[d] == 0) return;
    if (lengths[d] > 1) dims.emplace_back(static_cast<std::uint64_t>(strides[d]), static_cast<std::uint64_t>(lengths[d]));
  }
  std::sort(dims.begin(), dims.end());
  std::uint64_t last = 0;  // element offset of the box's last element
  for (const auto& [stride, length] : dims) {
    // Each dim must step past everything the smaller strides reach: then no element repeats.
    if (written && stride <= last)
      fail(Errc::invalid_argument, "strides make elements share memory (stride " + std::to_string(stride) + ")");
    last = dcp::add_or_throw(last, dcp::mul_or_throw(length - 1, stride, "strides"), "strides");
  }
  const std::uint64_t needed = dcp::mul_or_throw(last + 1, dcp::dtype_itemsize(dtype), "strides");
  require(data != nullptr, "data is NULL");
  if (needed > capacity)
    fail(Errc::out_of_range, "the box reaches byte " + std::to_string(needed) + " of a buffer of " +
                                 std::to_string(capacity) + " bytes");
}

md::Shape row_major(const md::Shape& sizes) {
  return planning::contiguous_slice(nullptr, DType::uint8, sizes).strides;
}

void check_conversion(const Entry& entry, DType to) {
  if (entry.dtype != to && !dcp::storage::can_convert(entry.dtype, to))
    fail(Errc::failed_precondition, "tensor '" + dcp::escape_text(entry.key) + "' is " +
                                         std::string(dcp::dtype_name(entry.dtype)) + ", which dcpp does not convert to " +
                                         std::string(dcp::dtype_name(to)));
}

// One planned load of `destination` through dcpp's planner and a reader of the handle's own.
void load(const dcp_checkpoint& c, planning::Destination& destination, bool convert) {
  planning::DefaultLoadPlanner planner({.allow_partial_load = false, .allow_dtype_conversion = convert});
  const auto reader = dcp::storage::open_reader(c.path, c.read);
  (void)dcp::checkpoint::load(destination, *reader, planner, *c.metadata);
}

void open(const char* path, const dcp_open_options* options, dcp_checkpoint** out) {
  require(path != nullptr, "path is NULL");
  auto handle = std::make_shared<dcp_checkpoint>();
  handle->path = path;
  if (options) {
    require(options->struct_size >= sizeof(dcp_open_options), "dcp_open_options.struct_size is too small");
    require(options->threads >= 0 && options->threads <= 1024, "threads must be 0 to 1024");
    handle->read.threads = options->threads;
    handle->read.verify_crc = options->verify_crc != 0;
  }
  handle->metadata = dcp::storage::open_reader(handle->path, handle->read)->read_metadata();
  for (const auto& item : (*handle->metadata)->items) {
    Entry entry;
    entry.key = item.fqn;
    if (item.is_tensor()) {
      entry.tensor = true;
      entry.dtype = item.tensor().properties.dtype;
      entry.shape = item.tensor().size;
      entry.bytes = md::byte_size(entry.shape, entry.dtype);
    } else if (const auto* s = (*handle->metadata)->find_storage(item.fqn, nullptr)) {
      entry.bytes = s->length;
    }
    handle->entries.push_back(std::move(entry));
  }
  for (std::size_t i = 0; i < handle->entries.size(); ++i) handle->index.emplace(handle->entries[i].key, i);
  std::lock_guard lock(registry_mutex);
  registry().emplace(handle.get(), handle);
  *out = handle.get();
}

}  // namespace

extern "C" {

const char* dcp_version(void) { return "0.1.0"; }

const char* dcp_status_name(int status) {
  if (status == DCP_OK) return "ok";
  if (status == DCP_BAD_HANDLE) return "bad_handle";
  if (status < DCP_INVALID_ARGUMENT || status > DCP_RESOURCE_EXHAUSTED) return "unknown";
  return dcp::errc_name(static_cast<Errc>(status)).data();  // names are string literals
}

const char* dcp_dtype_name(int dtype) {
  if (dtype < 0 || static_cast<std::size_t>(dtype) >= dcp::dtype_table().size()) return nullptr;
  return dcp::dtype_name(static_cast<DType>(dtype)).data();
}

size_t dcp_dtype_itemsize(int dtype) {
  if (dtype < 0 || static_cast<std::size_t>(dtype) >= dcp::dtype_table().size()) return 0;
  return dcp::dtype_itemsize(static_cast<DType>(dtype));
}

const char* dcp_last_error(const dcp_checkpoint* checkpoint) {
  const auto held = find_handle(checkpoint);
  if (!held) return thread_error.c_str();
  try {
    std::lock_guard lock(held->errors_mutex);
    const auto it = held->errors.find(std::this_thread::get_id());
    return it == held->errors.end() ? "" : it->second.c_str();  // the node outlives the lock
  } catch (...) {
    return "";
  }
}

dcp_status dcp_open(const char* path, const dcp_open_options* options, dcp_checkpoint** out) {
  if (out) *out = nullptr;
  return guarded(nullptr, [&] {
    require(out != nullptr, "out is NULL");
    open(path, options, out);
  });
}

dcp_status dcp_close(dcp_checkpoint* checkpoint) {
  if (!checkpoint) {
    set_error(nullptr, "");
    return DCP_OK;
  }
  std::shared_ptr<dcp_checkpoint> held;  // released outside the lock
  {
    std::lock_guard lock(registry_mutex);
    const auto it = registry().find(checkpoint);
    if (it != registry().end()) {
      held = std::move(it->second);
      registry().erase(it);
    }
  }
  set_error(nullptr, held ? "" : "not an open dcp_checkpoint (closed, or never opened)");
  return held ? DCP_OK : DCP_BAD_HANDLE;
}

dcp_status dcp_entry_count(dcp_checkpoint* checkpoint, size_t* count) {
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(count != nullptr, "count is NULL");
    *count = c.entries.size();
  });
}

dcp_status dcp_entry_at(dcp_checkpoint* checkpoint, size_t index, dcp_entry* entry) {
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(entry != nullptr, "entry is NULL");
    if (index >= c.entries.size())
      fail(Errc::out_of_range, "entry " + std::to_string(index) + " of " + std::to_string(c.entries.size()));
    const Entry& e = c.entries[index];
    *entry = dcp_entry{.key = e.key.c_str(), .key_size = e.key.size(),
                       .kind = e.tensor ? DCP_KIND_TENSOR : DCP_KIND_OBJECT, .dtype = static_cast<dcp_dtype>(e.dtype),
                       .ndim = e.shape.size(), .shape = e.shape.data(), .bytes = e.bytes};
  });
}

dcp_status dcp_find(dcp_checkpoint* checkpoint, const char* key, size_t key_size, size_t* index) {
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(index != nullptr, "index is NULL");
    const auto it = c.index.find(key_of(key, key_size));
    if (it == c.index.end()) fail(Errc::not_found, "no key '" + dcp::escape_text(std::string_view(key, key_size)) + "'");
    *index = it->second;
  });
}

dcp_status dcp_read_tensor(dcp_checkpoint* checkpoint, const char* key, size_t key_size, const dcp_box* box) {
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(box != nullptr, "box is NULL");
    const Entry& entry = find_tensor(c, key_of(key, key_size));
    const DType dtype = dtype_of(box->dtype);
    check_conversion(entry, dtype);
    if (box->ndim != entry.shape.size())
      fail(Errc::invalid_argument, "the box has " + std::to_string(box->ndim) + " dims, tensor '" +
                                       dcp::escape_text(entry.key) + "' " + std::to_string(entry.shape.size()));
    const md::Shape offsets = box->offsets ? shape_of(box->offsets, box->ndim, "offsets") : md::Shape(box->ndim, 0);
    const md::Shape lengths = box->lengths ? shape_of(box->lengths, box->ndim, "lengths") : entry.shape;
    for (std::size_t d = 0; d < box->ndim; ++d)
      if (offsets[d] > entry.shape[d] || lengths[d] > entry.shape[d] - offsets[d])
        fail(Errc::out_of_range, "dim " + std::to_string(d) + ": [" + std::to_string(offsets[d]) + ", +" +
                                     std::to_string(lengths[d]) + ") is outside size " + std::to_string(entry.shape[d]) +
                                     " of tensor '" + dcp::escape_text(entry.key) + "'");
    const md::Shape strides = box->strides ? shape_of(box->strides, box->ndim, "strides") : row_major(lengths);
    check_memory(lengths, strides, dtype, box->data, box->capacity, true);
    if (md::numel(lengths) == 0) return;
    planning::Destination destination;
    planning::TensorSlice memory{static_cast<std::byte*>(box->data), dtype, lengths, strides};
    destination.add_tensor(entry.key, {.global_size = entry.shape, .dtype = dtype,
                                       .chunks = {{.offsets = offsets, .sizes = lengths, .memory = memory}}});
    load(c, destination, dtype != entry.dtype);
  });
}

dcp_status dcp_load(dcp_checkpoint* checkpoint, const dcp_load_item* items, size_t count, int rank, int world_size) {
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(items != nullptr || count == 0, "items is NULL");
    require(world_size >= 1 && rank >= 0 && rank < world_size,
            "rank " + std::to_string(rank) + " of world size " + std::to_string(world_size) + " is not a rank");
    planning::Destination destination;
    bool convert = false;
    for (std::size_t i = 0; i < count; ++i) {
      const dcp_load_item& item = items[i];
      const Entry& entry = find_tensor(c, key_of(item.key, item.key_size));
      const DType dtype = dtype_of(item.dtype);
      check_conversion(entry, dtype);
      convert |= dtype != entry.dtype;
      auto chunks = planning::row_chunks(entry.shape, dtype, rank, world_size, static_cast<std::byte*>(item.data));
      std::uint64_t bytes = 0;
      for (const auto& chunk : chunks) bytes += md::byte_size(chunk.sizes, dtype);
      if (bytes > 0) require(item.data != nullptr, "data of '" + dcp::escape_text(entry.key) + "' is NULL");
      if (bytes > item.capacity)
        fail(Errc::out_of_range, "rank " + std::to_string(rank) + "'s share of '" + dcp::escape_text(entry.key) +
                                     "' takes " + std::to_string(bytes) + " bytes, the buffer holds " +
                                     std::to_string(item.capacity));
      destination.add_tensor(entry.key, {.global_size = entry.shape, .dtype = dtype, .chunks = std::move(chunks)});
    }
    if (destination.size() > 0) load(c, destination, convert);
  });
}

dcp_status dcp_read_object_json(dcp_checkpoint* checkpoint, const char* key, size_t key_size, char** json,
                                size_t* size) {
  if (json) *json = nullptr;
  return on_handle(checkpoint, [&](dcp_checkpoint& c) {
    require(json != nullptr && size != nullptr, "json or size is NULL");
    const Entry& entry = find_entry(c, key_of(key, key_size));
    if (entry.tensor) fail(Errc::failed_precondition, "key '" + dcp::escape_text(entry.key) + "' is a tensor, not an object");
    dcp::checkpoint::LoadOptions options;
    options.read = c.read;
    options.select = [&](std::string_view fqn) { return fqn == entry.key; };
    const auto objects = dcp::checkpoint::load_objects(c.path, *c.metadata, options);
    const auto& document = objects.at(0).second;
    std::string text;
    try {
      text = dcp::record::object_to_json(document, document.root());
    } catch (Error& e) {
      e.for_key(entry.key);
      throw;
    }
    char* out = static_cast<char*>(std::malloc(text.size() + 1));
    if (!out) throw std::bad_alloc();
    std::memcpy(out, text.c_str(), text.size() + 1);
    *json = out;
    *size = text.size();
  });
}

void dcp_free(void* memory) { std::free(memory); }

dcp_status dcp_save(const char* directory, const dcp_save_item* items, size_t count, const dcp_save_options* options) {
  return guarded(nullptr, [&] {
    require(directory != nullptr && *directory != '\0', "directory is NULL or empty");
    require(items != nullptr || count == 0, "items is NULL");
    dcp::storage::WriteOptions write;
    if (options) {
      require(options->struct_size >= sizeof(dcp_save_options), "dcp_save_options.struct_size is too small");
      write.overwrite = options->overwrite != 0;
      write.sync_files = options->no_sync == 0;
      if (options->torch_1_13) write.format = md::Flavor::torch_1_13;
    }
    std::vector<planning::StateDict> state_dicts(1);
    for (std::size_t i = 0; i < count; ++i) {
      const dcp_save_item& item = items[i];
      std::string key = key_of(item.key, item.key_size);
      require(!key.empty(), "item " + std::to_string(i) + " has an empty key");
      const DType dtype = dtype_of(item.dtype);
      const md::Shape shape = shape_of(item.shape, item.ndim, "shape of '" + dcp::escape_text(key) + "'");
      const md::Shape strides = item.strides ? shape_of(item.strides, item.ndim, "strides") : row_major(shape);
      check_memory(shape, strides, dtype, item.data, item.capacity, false);
      // The save reads through `data` only (SaveChunk: "never writes through memory.data").
      planning::TensorSlice memory{static_cast<std::byte*>(const_cast<void*>(item.data)), dtype, shape, strides};
      state_dicts[0].add_tensor({std::move(key)}, memory);
    }
    (void)dcp::checkpoint::save_ranks(std::span<const planning::StateDict>(state_dicts), directory, write);
  });
}

}  // extern "C"
