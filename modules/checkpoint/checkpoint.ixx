// dcp.checkpoint — the facade: what a user of dcpp calls.
//
// `inspect` reads a checkpoint's `.metadata` without running a pickle, checks it against
// itself and against the data files' sizes, and returns the typed model. Later steps add
// load, verify, convert and save here; the CLI (tools/dcpp) is a thin layer over it.
// Imports every module below it.
module;
#include <filesystem>
export module dcp.checkpoint;
import dcp.error;
import dcp.metadata;
import dcp.storage;

export namespace dcp::checkpoint {

/// Reads, decodes and cross-checks `checkpoint_dir/.metadata`: chunks inside their tensors
/// and not overlapping, one storage entry per chunk, every data file present and every byte
/// range inside it. Throws dcp::Error naming the file, key and byte offset.
metadata::Metadata inspect(const std::filesystem::path& checkpoint_dir);

}  // namespace dcp::checkpoint
