// make_hostile: writes the hostile checkpoints of tests/pickle/hostile.hpp, for measuring
// dcpp's time and memory on them (`/usr/bin/time -v dcpp inspect DIR`).
//   make_hostile none BYTES DIR            .metadata = BYTES NONE opcodes
//   make_hostile empty_list BYTES DIR      .metadata = BYTES EMPTY_LIST opcodes
//   make_hostile shared_chunk REFS RANK DIR [STORAGE_REFS]  one chunk referenced REFS times,
//                                          torch.Size of RANK dims, one storage entry STORAGE_REFS times
//   make_hostile dag LEVELS DIR [cycle]    BYTE_IO item 'obj': a DAG of LEVELS shared lists
//   make_hostile tuple_cycle DIR           BYTE_IO item 'obj': T = (L,), L = [T]
//   make_hostile huge_object GIB DIR       BYTE_IO item 'obj' declared GIB GiB long (sparse file)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "hostile.hpp"

namespace {
void write_metadata(const std::filesystem::path& dir, const std::vector<std::byte>& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / ".metadata", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  std::ofstream(dir / "__0_0.distcp", std::ios::binary | std::ios::trunc).write("\0\0\0\0", 4);
}
std::size_t number(const char* text) { return static_cast<std::size_t>(std::strtoull(text, nullptr, 10)); }
}  // namespace

int main(int argc, char** argv) {
  const std::string_view kind = argc > 1 ? argv[1] : "";
  if ((kind == "none" || kind == "empty_list") && argc == 4) {
    const auto n = number(argv[2]);
    write_metadata(argv[3], kind == "none" ? dcp_hostile::none_flood(n) : dcp_hostile::empty_list_flood(n));
  } else if (kind == "shared_chunk" && (argc == 5 || argc == 6)) {
    write_metadata(argv[4], dcp_hostile::shared_chunk_metadata(number(argv[2]), number(argv[3]), nullptr,
                                                               argc == 6 ? number(argv[5]) : 1));
  } else if (kind == "dag" && (argc == 4 || argc == 5)) {
    const auto pkl = dcp_hostile::dag_list_pickle(number(argv[2]), argc == 5 && std::string_view(argv[4]) == "cycle");
    dcp_hostile::write_object_checkpoint(argv[3], "obj", dcp_hostile::torch_save_archive(pkl));
  } else if (kind == "tuple_cycle" && argc == 3) {
    dcp_hostile::write_object_checkpoint(argv[2], "obj", dcp_hostile::torch_save_archive(dcp_hostile::tuple_cycle_pickle()));
  } else if (kind == "huge_object" && argc == 4) {
    const auto pkl = dcp_hostile::dag_list_pickle(1);
    const auto archive = dcp_hostile::torch_save_archive(pkl);
    const std::uint64_t size = std::uint64_t{number(argv[2])} << 30;
    dcp_hostile::write_object_checkpoint(argv[3], "obj", archive, size, size);
  } else {
    std::fprintf(stderr, "usage: see the comment at the top of tests/pickle/make_hostile.cpp\n");
    return 2;
  }
  return 0;
}
