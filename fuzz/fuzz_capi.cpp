// libFuzzer target: the C API's argument checking (include/dcp/dcp.h). Each input is a script
// of calls on a small checkpoint saved at start-up: any key bytes, dims, boxes, strides, dtypes,
// ranks and buffer capacities (never larger than the buffer really is: that lie no function can
// see), null pointers and handles that are not open. Every call must return a known status,
// with a message exactly when it failed, and never read or write outside the buffers.
#include <dcp/dcp.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include <unistd.h>

namespace {

dcp_checkpoint* checkpoint = nullptr;
std::string directory;

struct Input {
  const std::uint8_t* data;
  std::size_t size;
  std::uint8_t byte() {
    if (size == 0) return 0;
    --size;
    return *data++;
  }
  std::int64_t small() { return static_cast<std::int8_t>(byte()) % 12; }  // -11 .. 11
};

void check(dcp_status status, const dcp_checkpoint* handle) {
  const bool known = (status >= DCP_OK && status <= DCP_RESOURCE_EXHAUSTED) || status == DCP_BAD_HANDLE;
  const char* message = dcp_last_error(status == DCP_BAD_HANDLE ? nullptr : handle);
  if (!known || message == nullptr || (status == DCP_OK) != (message[0] == '\0')) std::abort();
}

dcp_checkpoint* handle_of(Input& in) {
  switch (in.byte() % 8) {
    case 0: return nullptr;
    case 1: return reinterpret_cast<dcp_checkpoint*>(&directory);  // not a handle
    default: return checkpoint;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  directory = (std::filesystem::temp_directory_path() / ("dcp-fuzz-capi-" + std::to_string(getpid()))).string();
  static float w[6][5];
  static std::int64_t ids[7];
  static std::uint16_t half[3];
  for (int i = 0; i < 30; ++i) w[i / 5][i % 5] = static_cast<float>(i) - 7.5f;
  for (int i = 0; i < 7; ++i) ids[i] = i * 1000 - 3;
  const std::int64_t w_shape[] = {6, 5}, ids_shape[] = {7}, half_shape[] = {3};
  const dcp_save_item items[] = {
      {"w", 1, DCP_FLOAT32, 2, w_shape, nullptr, w, sizeof w},
      {"ids", 3, DCP_INT64, 1, ids_shape, nullptr, ids, sizeof ids},
      {"h", 1, DCP_FLOAT16, 1, half_shape, nullptr, half, sizeof half},
      {"s", 1, DCP_FLOAT32, 0, nullptr, nullptr, w, 4},
  };
  const dcp_save_options options{sizeof(dcp_save_options), 1, 0, 1};
  if (dcp_save(directory.c_str(), items, 4, &options) != DCP_OK || dcp_open(directory.c_str(), nullptr, &checkpoint) != DCP_OK)
    std::abort();
  // The two directories carry this process's id: nothing else writes there.
  std::atexit([] {
    std::error_code ignored;
    std::filesystem::remove_all(directory, ignored);
    std::filesystem::remove_all(directory + "-save", ignored);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in{data, size};
  // Each key in 8 bytes, so that any key_size below 8 stays inside it.
  static const char keys[7][8] = {"w", "ids", "h", "s", "", "nope", "w\0x"};
  alignas(16) std::byte buffer[512];
  while (in.size > 0) {
    dcp_checkpoint* h = handle_of(in);
    const char* key = keys[in.byte() % 7];
    const std::size_t key_size = in.byte() % 2 ? std::strlen(key) : in.byte() % 8;
    const std::size_t ndim = in.byte() % 4;
    std::int64_t offsets[3], lengths[3], strides[3];
    for (std::size_t d = 0; d < 3; ++d) {
      offsets[d] = in.small();
      lengths[d] = in.small();
      strides[d] = in.small();
    }
    const int dtype = static_cast<int>(in.byte() % 30) - 2;
    const std::uint64_t capacity = in.byte() * 2u;  // at most 510 of the buffer's 512 bytes
    const std::uint8_t flags = in.byte();
    void* memory = flags & 8 ? nullptr : buffer;
    switch (in.byte() % 6) {
      case 0: {
        const dcp_box box{ndim, flags & 1 ? offsets : nullptr, flags & 2 ? lengths : nullptr,
                          flags & 4 ? strides : nullptr, dtype, memory, memory ? capacity : 0};
        check(dcp_read_tensor(h, key, key_size, flags & 16 ? nullptr : &box), h);
        break;
      }
      case 1: {
        const dcp_load_item items[2] = {{key, key_size, dtype, memory, memory ? capacity / 2 : 0},
                                        {"ids", 3, DCP_INT64, memory ? buffer + 256 : nullptr, memory ? 250u : 0u}};
        check(dcp_load(h, items, flags % 3, static_cast<int>(in.small()), static_cast<int>(in.small())), h);
        break;
      }
      case 2: {
        char* json = nullptr;
        std::size_t json_size = 0;
        check(dcp_read_object_json(h, key, key_size, flags & 1 ? nullptr : &json, &json_size), h);
        dcp_free(json);
        break;
      }
      case 3: {
        dcp_entry entry;
        check(dcp_entry_at(h, static_cast<std::size_t>(in.small()), flags & 1 ? nullptr : &entry), h);
        std::size_t index = 0;
        check(dcp_find(h, key, key_size, flags & 2 ? nullptr : &index), h);
        break;
      }
      case 4: {
        // Saving into the same directory, never over the checkpoint the handle reads.
        const dcp_save_item item{key, key_size, dtype, ndim, lengths,
                                 flags & 4 ? strides : nullptr, memory, memory ? capacity : 0};
        const dcp_save_item items[2] = {item, item};  // twice: one key twice
        const dcp_save_options options{sizeof(dcp_save_options), 1, flags & 1, 1};
        check(dcp_save((directory + "-save").c_str(), flags & 2 ? nullptr : items, flags & 16 ? 2 : 1, &options), nullptr);
        break;
      }
      default: {
        std::size_t count = 0;
        check(dcp_entry_count(h, flags & 1 ? nullptr : &count), h);
        if (h == checkpoint && count != 0 && count != 4) std::abort();
      }
    }
  }
  return 0;
}
