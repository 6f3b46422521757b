// dcp.record — what is inside one DCP item: a torch.save archive.
//
// Every tensor chunk and every Python object that DCP saves is a complete torch.save zip
// archive at `[offset, offset + length)` of a data file. `locate_tensor` finds, with a few
// small bounded reads, the raw storage bytes of a tensor item and what its `data.pkl` says
// about them (dtype, storage offset, sizes, strides), so the loader can read exactly the
// bytes it needs straight into destination memory. `parse_object` decodes a BYTE_IO item
// into a pickle value tree with an allow-list of plain Python types (nothing is executed), and
// `find_storages` checks and finds the storages of the tensors such a value holds (torch 1.13
// saves every non-tensor value of a state dict as one object, tensors inside included);
// `object_to_json` renders such values. `StateDictPickler` writes torch.save's data.pkl for
// `dcpp convert`; `write_tensor_archive` and `write_object_archive` write whole item archives
// as torch 1.13's or 2.x's torch.save does, for the save path. Untrusted input: every byte of
// the item.
// Imports: dcp.error, dcp.pickle, dcp.zip, dcp.metadata, dcp.json.
module;
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
export module dcp.record;
import dcp.error;
import dcp.pickle;
import dcp.zip;
import dcp.metadata;

export namespace dcp::record {

/// What a tensor's data.pkl says (torch._utils._rebuild_tensor_v2 / _v3 arguments).
struct TensorRecord {
  DType dtype = DType::float32;
  std::string storage_key;            ///< names the record "data/<key>"
  std::uint64_t storage_numel = 0;    ///< elements of the storage
  std::uint64_t storage_offset = 0;   ///< elements
  metadata::Shape sizes;
  metadata::Shape strides;            ///< elements; never negative
  bool requires_grad = false;
};

/// A tensor item resolved to raw bytes.
struct TensorLocation {
  TensorRecord record;
  std::uint64_t data_offset = 0;  ///< archive offset of the storage's first byte
  std::uint64_t data_size = 0;    ///< bytes of the storage record
  std::uint32_t crc32 = 0;        ///< from the central directory (0 = not recorded)
};

/// Reads `out.size()` bytes at archive offset `offset` (the caller bounds it to the item).
using ReadAt = std::function<void(std::uint64_t offset, std::span<std::byte> out)>;

/// Finds the tensor in an archive of `archive_size` bytes: end records, central directory,
/// data.pkl and the storage record's local header, reading through `read_at` (a head and a
/// tail read for typical items). Checks every bound, that the storage holds numel × itemsize
/// bytes, that the strided view lies inside the storage, and that a `byteorder` record, if
/// any, says little-endian. Offsets in errors are archive offsets.
TensorLocation locate_tensor(std::uint64_t archive_size, const ReadAt& read_at);

/// True when node `id` rebuilds a tensor (_rebuild_tensor_v2/_v3, or _rebuild_parameter).
bool is_tensor_rebuild(const pickle::Document& doc, pickle::NodeId id);
/// What the tensor rebuild at node `id` says (a parameter's requires_grad included). Throws
/// data_loss for malformed arguments, unimplemented for conj/neg flags and storage classes
/// without a dtype, with the node's offset.
TensorRecord tensor_record(const pickle::Document& doc, pickle::NodeId id);
/// Throws data_loss (no offset: the caller knows where) unless the storage record's
/// `storage_bytes` are exactly storage_numel × itemsize.
void check_storage_size(const TensorRecord& record, std::uint64_t storage_bytes);
/// Throws data_loss (no offset) unless the strided view lies inside the storage.
void check_view(const TensorRecord& record);

/// Checks a located tensor against the chunk that .metadata promised.
void check_against_chunk(const TensorLocation& location, DType dtype, const metadata::Shape& sizes);

/// Globals a BYTE_IO object may name: plain containers and scalars as torch.save writes them
/// (OrderedDict, set, frozenset, bytes via _codecs.encode, complex, slice), torch.Size,
/// torch.device, dtypes, and tensor rebuilds with their storages.
const pickle::AllowList& object_allow_list();

/// A torch.save archive in memory, decoded: its records and data.pkl's value tree.
struct TorchSave {
  zip::Archive archive;
  pickle::Document document;
};

/// Parses a torch.save zip archive (`bytes`, the whole of it): its records, a `byteorder`
/// record if any (must say little), and data.pkl decoded with object_allow_list and
/// persistent ids. Node and error offsets are offsets in `bytes`. Throws unimplemented for
/// the legacy non-zip format and big-endian data, data_loss for anything malformed.
TorchSave parse_torch_save(std::span<const std::byte> bytes);

/// Decodes a BYTE_IO item (the whole archive in memory) into a value tree (parse_torch_save's
/// document). Node offsets and error offsets are archive offsets.
pickle::Document parse_object(std::span<const std::byte> archive);

/// Storage bytes by key: the records data/<key> of a torch.save archive, which the persistent
/// ids ('storage', class, key, location, numel) of a value's tensors name.
using StorageMap = std::unordered_map<std::string, std::span<const std::byte>>;

/// The storages that the tensors of the value at node `id` view, each a subspan of `bytes`
/// (the archive `saved` was parsed from) and checked once: the record exists, holds
/// numel × itemsize bytes and matches its CRC-32; every tensor's view lies inside its storage;
/// no two tensors view one storage with different dtypes or sizes. Visits each node once, at
/// most `max_nodes` of them (resource_exhausted past that), and adds their number to
/// `*visited` if given. Throws data_loss with the offset in `bytes`, unimplemented for a
/// storage outside a tensor and for tensors dcpp cannot read.
StorageMap find_storages(const TorchSave& saved, std::span<const std::byte> bytes, pickle::NodeId id,
                         std::uint64_t max_nodes = UINT64_MAX, std::uint64_t* visited = nullptr);

/// Renders a decoded object as JSON (tuples and sets as arrays, bytes as latin-1 text, dict
/// keys as strings). Throws unimplemented for values JSON cannot hold (tensors, calls of
/// other globals, a value that contains itself) naming them, and resource_exhausted when the
/// text would pass 16 bytes per byte of the object's data.pkl plus 1 MiB (JSON writes a
/// value the pickle shares by memo out again at each reference).
std::string object_to_json(const pickle::Document& doc, pickle::NodeId id);

/// torch.save's data.pkl for a nested state dict, opcode for opcode as CPython's C pickler
/// writes it for torch 1.13 (protocol 2): every container, string and global is memoized
/// (BINPUT), a global or one of the constant strings 'storage' / 'cpu' seen before is fetched
/// back (BINGET), dicts and lists go out in batches of 1000 (one element: SETITEM / APPEND).
/// Objects are re-encoded with pickle::Encoder::value in the same memo numbering, keeping
/// their sharing. The caller composes: begin_dict(), dict_items(n, [&](i) { key(k); value }).
class StateDictPickler {
 public:
  StateDictPickler();
  /// A full contiguous CPU tensor whose storage is record "data/<key>" (_rebuild_tensor_v2
  /// with the legacy storage class, or _v3 with an UntypedStorage as the dtype table says).
  /// Throws unimplemented for quantized dtypes.
  void tensor(DType dtype, const metadata::Shape& sizes, std::string_view key);
  void none();
  void begin_dict();
  void begin_list();
  void key(std::string_view name);
  /// `element(i)` writes entry i (key() and its value, or a list value).
  void dict_items(std::size_t count, const std::function<void(std::size_t)>& element);
  void list_items(std::size_t count, const std::function<void(std::size_t)>& element);
  /// A decoded BYTE_IO value (its root).
  void object(const pickle::Document& doc);
  /// Node `id` of a decoded value.
  void object(const pickle::Document& doc, pickle::NodeId id);
  /// Node `id` of a decoded value whose tensors view storages: each persistent id is written
  /// as tensor() writes one, with the key `storage_key(key the document names)` returns.
  /// Throws invalid_argument for a persistent id that is not a storage's.
  void object(const pickle::Document& doc, pickle::NodeId id,
              const std::function<std::string(std::string_view key)>& storage_key);
  /// Appends STOP and returns data.pkl.
  std::vector<std::byte> finish();

 private:
  void global(std::string_view module, std::string_view name);
  void text(std::string_view utf8);
  // A string that is the same Python object every time torch pickles it (a code constant).
  void constant(std::string_view utf8, std::optional<std::uint32_t>& memo);
  void int_tuple(const metadata::Shape& values);
  // ('storage', <class>, key, location, numel), memoized as CPython memoizes it.
  void storage_id(std::string_view module, std::string_view cls, std::string_view key, std::string_view location,
                  std::int64_t numel);

  pickle::Encoder e_;
  std::unordered_map<std::string, std::uint32_t> globals_;
  std::optional<std::uint32_t> storage_, cpu_;
};

/// Which torch.save an item archive copies: 1.13's records (data.pkl, data/<key>, version) or
/// 2.x's (data.pkl, .format_version, .storage_alignment, byteorder, data/<key>, version,
/// .data/serialization_id). Both torch versions load both.
enum class ArchiveStyle : std::uint8_t { torch_1_13, torch_2x };

/// Receives storage bytes in order.
using StorageSink = std::function<void(std::span<const std::byte>)>;

/// Records of at least kLargeRecordBytes start on a kLargeRecordAlignment boundary of their file
/// (torch.save's 64 is a divisor of it, and readers find a record by its local header): the
/// writer can then send their bytes to the disk directly (storage::OutputFile).
inline constexpr std::uint64_t kLargeRecordBytes = std::uint64_t{1} << 20;
inline constexpr std::uint64_t kLargeRecordAlignment = 4096;

/// Writes, through `sink`, the torch.save archive DCP stores for one tensor item: a
/// contiguous CPU tensor of `dtype` and `sizes` over storage "0", whose
/// byte_size(sizes, dtype) bytes `write_storage` passes to the StorageSink it is given, in
/// order and in any number of pieces (a wrong total throws invalid_argument). `file_offset` is
/// where the archive starts in its file. Returns the archive's length. Throws unimplemented
/// for quantized dtypes.
std::uint64_t write_tensor_archive(const std::function<void(std::span<const std::byte>)>& sink, ArchiveStyle style,
                                   DType dtype, const metadata::Shape& sizes,
                                   const std::function<void(const StorageSink&)>& write_storage,
                                   std::uint64_t file_offset = 0);

/// What a savable object is made of (check_object_savable).
struct ObjectExtent {
  std::uint64_t nodes = 0;         ///< distinct values
  std::uint64_t pickle_bytes = 0;  ///< its data.pkl is at most this long (object_archive's encoding)
};
/// Walks the value at node `id` (each node once, O(the value), not O(the document)): throws
/// unimplemented when it holds a storage (a tensor), for callers that keep tensors out of
/// objects (unless `with_storages`: then its pickle is measured, storages aside), and
/// resource_exhausted when it has more than `max_nodes` nodes.
ObjectExtent check_object_savable(const pickle::Document& doc, pickle::NodeId id, std::uint64_t max_nodes = UINT64_MAX,
                                  bool with_storages = false);

/// Bytes an item archive adds to its payload, at most: zip headers and central directory,
/// the records torch writes (1.13's or 2.x's), alignment padding, and for a tensor its data.pkl
/// (the payload is the storage's bytes: a chunk of `dims` dims of `dtype`); for an object the
/// payload is its data.pkl (ObjectExtent::pickle_bytes). Measured on the writer itself, once.
std::uint64_t tensor_archive_overhead(ArchiveStyle style, DType dtype, std::size_t dims);
std::uint64_t object_archive_overhead(ArchiveStyle style);

/// Writes, through `sink`, the archive torch.save(value) writes for node `id` of `doc` (a
/// BYTE_IO item): data.pkl, its storages renumbered "0", "1", ... in pickling order as
/// torch.save numbers them, then each storage's bytes (`storages`, by the key `doc` names it
/// with) as record data/<new key>, in torch.save's sorted key order. Returns the archive's
/// length. Throws invalid_argument (naming the key) when `storages` lacks a storage the value
/// names or holds other than numel × itemsize bytes for it, unimplemented for a storage class
/// without a dtype, resource_exhausted past the encoder's budget.
std::uint64_t write_object_archive(const std::function<void(std::span<const std::byte>)>& sink, ArchiveStyle style,
                                   const pickle::Document& doc, pickle::NodeId id, const StorageMap& storages = {});

/// write_object_archive into memory.
std::vector<std::byte> object_archive(const pickle::Document& doc, pickle::NodeId id, ArchiveStyle style,
                                      const StorageMap& storages = {});

}  // namespace dcp::record

namespace dcp::record {
// Not exported: shared by the implementation units.

/// Globals a tensor record's data.pkl may name: the tensor rebuilds, storages (untyped and
/// each dtype's legacy class), dtypes, OrderedDict. object_allow_list() is this and more.
const pickle::AllowList& tensor_allow_list();

/// Calls `tensor` for each tensor that the value at node `id` holds (each node visited once, at
/// most `max_nodes`; a storage outside a tensor is unimplemented), after checking it: a dtype
/// dcpp reads, at most kMaxRank dims, its view inside its storage, and every view of one
/// storage key with one dtype and one size. `first_view` is true for the first tensor of each
/// storage key. Errors carry the offset of the tensor's node. Returns the nodes visited.
std::uint64_t for_each_object_tensor(const pickle::Document& doc, pickle::NodeId id, std::uint64_t max_nodes,
                                     const std::function<void(pickle::NodeId, const TensorRecord&, bool first_view)>& tensor);
}  // namespace dcp::record
