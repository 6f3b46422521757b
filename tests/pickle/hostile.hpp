// Hostile inputs for the budget tests, written byte by byte here rather than with
// dcp.pickle's Encoder, so the inputs do not depend on the code under test. Used by
// tests/pickle/test_budgets.cpp, tests/metadata/test_metadata_budgets.cpp,
// tests/convert/test_convert_hostile.cpp and by `make_hostile` (files for measuring dcpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace dcp_hostile {

/// PROTO 2, `count` NONE opcodes, STOP.
std::vector<std::byte> none_flood(std::size_t count);
/// PROTO 2, `count` EMPTY_LIST opcodes, STOP.
std::vector<std::byte> empty_list_flood(std::size_t count);

/// Where shared_chunk_metadata put things, for asserting error offsets.
struct SharedChunkLayout {
  std::size_t tensor_size = 0;      ///< REDUCE that makes the tensor's torch.Size
  std::size_t chunk = 0;            ///< NEWOBJ that makes the shared chunk
  std::size_t chunk_offsets = 0;    ///< REDUCE that makes its offsets torch.Size
  std::size_t first_reference = 0;  ///< offset of the first BINGET of the shared chunk
  std::size_t index = 0;            ///< NEWOBJ that makes the shared MetadataIndex
};

/// A torch 2.x `.metadata` with one tensor 'w' (float32) whose `chunks` list holds one
/// ChunkStorageMetadata object `refs` times (first in full, then memo BINGETs), its offsets
/// and sizes torch.Size objects of `rank` dims, also shared by memo with the tensor's size
/// and the MetadataIndex offset; `storage_refs` storage_data entries, all the same
/// MetadataIndex and _StorageInfo objects (`__0_0.distcp`, 4 bytes) by memo.
std::vector<std::byte> shared_chunk_metadata(std::size_t refs, std::size_t rank,
                                             SharedChunkLayout* layout = nullptr, std::size_t storage_refs = 1);

/// A torch.save data.pkl (protocol 2) holding L_levels where L_0 = [] and
/// L_k = [L_{k-1}, L_{k-1}] (the second and later references are memo BINGETs): a DAG of
/// `levels`+1 lists that expands to 2^levels leaves as a tree. With `cycle`, the top list
/// also contains itself (appended after creation, as Python pickles `l.append(l)`).
std::vector<std::byte> dag_list_pickle(std::size_t levels, bool cycle = false);

/// A data.pkl whose root is a tuple T = (L,) with L = [T]: a cycle whose only shared node is
/// the tuple (Python writes it with POP_MARK/GET; a walker that memoizes only shared nodes
/// loops).
std::vector<std::byte> tuple_cycle_pickle();

/// A torch.save zip archive ("archive/data.pkl", "archive/version") around `data_pkl`.
std::vector<std::byte> torch_save_archive(std::span<const std::byte> data_pkl);

/// Writes a torch 2.x checkpoint directory with one BYTE_IO item `fqn` whose bytes are
/// `item` in `__0_0.distcp` at offset 0. `declared_length` (default item.size()) is what
/// `.metadata` says; `file_size` (default item.size()) extends the data file, sparse.
void write_object_checkpoint(const std::filesystem::path& dir, std::string_view fqn, std::span<const std::byte> item,
                             std::optional<std::uint64_t> declared_length = std::nullopt,
                             std::optional<std::uint64_t> file_size = std::nullopt);

}  // namespace dcp_hostile
