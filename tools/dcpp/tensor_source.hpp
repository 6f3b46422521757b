// What `dcpp diff` and `dcpp inspect --stats` read from a path, whatever it holds: a checkpoint
// dcp.storage reads (DCP directory, Hugging Face directory, per-rank safetensors files, one
// .safetensors file) through checkpoint::for_each_tensor's byte-range reads, or a torch.save
// file (.pt/.pth) through checkpoint::import_torch_save's read-only mapping. Tensors come out
// whole and row-major in bounded batches; objects as their JSON text. And the one conversion
// both commands use: elements of any dtype dcp.storage converts, as float64.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>
import dcp.error;
import dcp.dtype;
import dcp.metadata;
import dcp.checkpoint;

namespace dcpp_cli {

/// One key of a source, in the source's order.
struct SourceEntry {
  std::string key;
  bool tensor = false;
  dcp::DType dtype = dcp::DType::float32;
  dcp::metadata::Shape shape;
  std::uint64_t bytes = 0;  ///< a tensor's dense bytes (0 for an object)
};

class TensorSource {
 public:
  /// Opens `path` (a .pt/.pth file is imported, anything else read as a checkpoint), reading
  /// its metadata only; `options` are how a checkpoint is read (threads, backend).
  TensorSource(const std::filesystem::path& path, const dcp::checkpoint::LoadOptions& options);
  ~TensorSource();
  const std::vector<SourceEntry>& entries() const noexcept { return entries_; }
  const SourceEntry* find(std::string_view key) const;
  /// Loads the tensors `keys` (all in this source) whole and row-major, calling `consume` for
  /// each (in the source's order) from this thread.
  void read(const std::vector<std::string>& keys,
            const std::function<void(const std::string& key, dcp::checkpoint::TensorBuffer tensor)>& consume) const;
  /// The object `key` as JSON text, or the error that says why it has none.
  dcp::Result<std::string> object_json(const std::string& key) const;

 private:
  std::filesystem::path path_;
  dcp::checkpoint::LoadOptions options_;
  std::optional<dcp::metadata::ValidatedMetadata> metadata_;   // a checkpoint
  std::unique_ptr<dcp::checkpoint::ImportedStateDict> imported_;  // a torch.save file
  std::vector<SourceEntry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;
  mutable std::optional<std::map<std::string, dcp::Result<std::string>, std::less<>>> objects_;  // loaded on first use
};

/// Splits `keys` (tensors of `source`) into batches of at most `batch_bytes` of tensor data
/// each (a larger tensor alone), in order.
std::vector<std::vector<std::string>> batches_of(const TensorSource& source, const std::vector<std::string>& keys,
                                                 std::uint64_t batch_bytes);

/// Whether values of `dtype` can be seen as float64 (bool, integer and floating dtypes).
bool has_float64_values(dcp::DType dtype) noexcept;
/// Elements [first, first + out.size()) of row-major `bytes` of `dtype` as float64 (dcp.storage's
/// conversion, torch's copy_ semantics). Needs has_float64_values(dtype).
void to_float64(std::span<const std::byte> bytes, dcp::DType dtype, std::uint64_t first, std::span<double> out);

/// Runs task(i) for i in [0, count) on up to `threads` threads (0: the machine's, at most 8) and
/// waits; the first exception any task throws is rethrown here once all have stopped.
void parallel_for(std::size_t count, int threads, const std::function<void(std::size_t)>& task);

}  // namespace dcpp_cli
