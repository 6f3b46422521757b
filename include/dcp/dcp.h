/* dcp.h — dcpp's C API (C11): read PyTorch Distributed Checkpoints and the other layouts dcpp
 * reads (DCP written by torch 1.13 or 2.x, Hugging Face safetensors directories, torch's
 * per-rank safetensors files, one .safetensors file) and write DCP checkpoints, from any
 * language or build system. Link with `pkg-config --cflags --libs dcp`.
 *
 * Status. Every function that can fail returns a dcp_status: DCP_OK (0) or the reason. The
 * one-line message of the failure (naming file, key and byte offset where known) is
 * dcp_last_error(handle) for calls on a handle, dcp_last_error(NULL) for calls without one
 * (dcp_open, dcp_save). No C++ exception ever leaves a function of this header; running out of
 * memory is DCP_RESOURCE_EXHAUSTED. Every argument is checked: a null pointer, an unknown or
 * closed handle, a key the checkpoint lacks, a box outside the tensor, a buffer too small for
 * what is asked are each an error status, never undefined behaviour (except a pointer to
 * memory that is not as large as the caller says, which no function can check).
 *
 * Ownership. A dcp_checkpoint is created by dcp_open and freed by dcp_close; strings and
 * shapes handed out by dcp_entry_at stay valid until dcp_close of their handle. Memory that
 * dcp_read_object_json returns is the caller's, freed with dcp_free. Caller buffers are only
 * used during the call.
 *
 * Threads. Every function may be called from any thread. Calls on one handle may overlap
 * (each read plans and reads on its own; dcpp reads with a thread pool inside each call).
 * Messages are kept per handle and per calling thread: dcp_last_error(handle) is the message of
 * this thread's last call on that handle ("" when it succeeded), valid until this thread's next
 * call on it; dcp_last_error(NULL) the same for calls without a handle, and for calls given a
 * handle that is not open. dcp_close frees a handle once no call holds it (a call in flight on
 * another thread finishes safely); a handle passed after dcp_close is DCP_BAD_HANDLE as long as
 * no later dcp_open reused its address, so do not use a closed handle on purpose.
 */
#ifndef DCP_DCP_H
#define DCP_DCP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Statuses: dcpp's error codes (dcp::Errc) with the same values, and DCP_BAD_HANDLE. */
typedef enum dcp_status {
  DCP_OK = 0,
  DCP_INVALID_ARGUMENT = 1,     /* a malformed request: null pointer, bad dtype, rank ... */
  DCP_NOT_FOUND = 2,            /* a file or key that must exist does not */
  DCP_DATA_LOSS = 3,            /* the checkpoint is corrupt or truncated */
  DCP_OUT_OF_RANGE = 4,         /* a box, index or size past a limit or an end */
  DCP_FAILED_PRECONDITION = 5,  /* the request contradicts the checkpoint (shape, dtype, kind) */
  DCP_UNIMPLEMENTED = 6,        /* a valid variant dcpp does not support */
  DCP_IO = 7,                   /* the operating system refused a read or write */
  DCP_CANCELLED = 8,
  DCP_PERMISSION_DENIED = 9,    /* a pickle names a global outside the allow-list */
  DCP_INTERNAL = 10,            /* a bug in dcpp */
  DCP_RESOURCE_EXHAUSTED = 11,  /* a budget or the machine's memory ran out */
  DCP_BAD_HANDLE = 100          /* a null, unknown or closed dcp_checkpoint */
} dcp_status;

/* Element types, with the values of dcpp's dtype table (dcp_dtype_name gives torch's name). */
typedef enum dcp_dtype {
  DCP_FLOAT32 = 0, DCP_FLOAT64, DCP_FLOAT16, DCP_BFLOAT16, DCP_INT8, DCP_UINT8, DCP_INT16,
  DCP_INT32, DCP_INT64, DCP_BOOL, DCP_COMPLEX64, DCP_COMPLEX128, DCP_COMPLEX32, DCP_UINT16,
  DCP_UINT32, DCP_UINT64, DCP_FLOAT8_E4M3FN, DCP_FLOAT8_E5M2, DCP_FLOAT8_E4M3FNUZ,
  DCP_FLOAT8_E5M2FNUZ, DCP_FLOAT8_E8M0FNU, DCP_QINT8, DCP_QUINT8, DCP_QINT32, DCP_QUINT4X2,
  DCP_QUINT2X4
} dcp_dtype;

typedef enum dcp_kind { DCP_KIND_TENSOR = 0, DCP_KIND_OBJECT = 1 } dcp_kind;

/* An open checkpoint (opaque). */
typedef struct dcp_checkpoint dcp_checkpoint;

/* "0.1.0". */
const char* dcp_version(void);
/* The status's stable lowercase name ("data_loss"); "unknown" for other values. */
const char* dcp_status_name(int status);
/* torch's name of a dtype ("float32", "bool"); NULL for a value that is none. */
const char* dcp_dtype_name(int dtype);
/* Bytes per element; 0 for a value that is no dtype. */
size_t dcp_dtype_itemsize(int dtype);

/* The message of this thread's last call on `checkpoint` (NULL, or a handle that is not open:
 * its last call without a live handle); "" when that call succeeded. Never NULL. */
const char* dcp_last_error(const dcp_checkpoint* checkpoint);

/* How dcp_open reads. Zero-initialise, set struct_size = sizeof(dcp_open_options), then any
 * field; a NULL options pointer means all defaults. */
typedef struct dcp_open_options {
  size_t struct_size;
  int threads;     /* storage worker threads; 0: up to 8 */
  int verify_crc;  /* nonzero: check each torch.save record's CRC-32 as it is read */
} dcp_open_options;

/* Opens the checkpoint at `path` (a directory or a .safetensors file), reading and checking its
 * metadata against the data files. On success *out is a new handle; on failure *out is NULL
 * and dcp_last_error(NULL) says why. */
dcp_status dcp_open(const char* path, const dcp_open_options* options, dcp_checkpoint** out);
/* Frees the handle (NULL is allowed). DCP_BAD_HANDLE for an unknown or already closed one. Its
 * message, the handle being gone, is dcp_last_error(NULL). */
dcp_status dcp_close(dcp_checkpoint* checkpoint);

/* One entry of the checkpoint. `key`, `shape` point into the handle (valid until dcp_close). */
typedef struct dcp_entry {
  const char* key;       /* the flat key (fqn), NUL-terminated (a key holding NUL is cut there) */
  size_t key_size;       /* its length in bytes, NULs included */
  dcp_kind kind;
  dcp_dtype dtype;       /* tensors only */
  size_t ndim;           /* tensors only */
  const int64_t* shape;  /* ndim sizes (tensors only) */
  uint64_t bytes;        /* a tensor's dense size in bytes; an object's stored size */
} dcp_entry;

dcp_status dcp_entry_count(dcp_checkpoint* checkpoint, size_t* count);
/* Entry `index` (0 <= index < count) in the checkpoint's order. */
dcp_status dcp_entry_at(dcp_checkpoint* checkpoint, size_t index, dcp_entry* entry);
/* The index of the entry named `key` (key_size bytes), DCP_NOT_FOUND when there is none. */
dcp_status dcp_find(dcp_checkpoint* checkpoint, const char* key, size_t key_size, size_t* index);

/* Where dcp_read_tensor puts a box of a tensor. `offsets` and `lengths` (ndim each, NULL: the
 * whole tensor) are the box in the tensor's index space; the box is written to `data` with
 * element `strides` (ndim non-negative values, NULL: row-major over `lengths`) as `dtype`
 * (converted as torch's copy_ does between bool, integer and floating dtypes; other dtypes
 * only as themselves). `capacity` is the size of `data` in bytes: every element the box and
 * strides reach must lie inside it, and no two of them may share memory (DCP_INVALID_ARGUMENT). */
typedef struct dcp_box {
  size_t ndim;
  const int64_t* offsets;
  const int64_t* lengths;
  const int64_t* strides;
  int dtype;  /* a dcp_dtype (an int: any value a caller stores is checked) */
  void* data;
  uint64_t capacity;
} dcp_box;

/* Reads the box `box` of tensor `key` (key_size bytes) by byte ranges, through dcpp's planner
 * and storage reads. */
dcp_status dcp_read_tensor(dcp_checkpoint* checkpoint, const char* key, size_t key_size, const dcp_box* box);

/* A tensor to load in dcp_load: this rank's share (rows split over `world_size` ranks as
 * torch.chunk along dim 0 does; all of it when world_size is 1) as `dtype`, row-major in
 * `data` of `capacity` bytes (at least the share's size). */
typedef struct dcp_load_item {
  const char* key;
  size_t key_size;
  int dtype;  /* a dcp_dtype */
  void* data;
  uint64_t capacity;
} dcp_load_item;

/* Loads `count` tensors in one planned load (one plan, reads batched and run in parallel),
 * each rank's share of rows for `rank` of `world_size` (0 <= rank < world_size). Keys may not
 * repeat. Nothing is half-done silently: on failure the buffers' contents are unspecified. */
dcp_status dcp_load(dcp_checkpoint* checkpoint, const dcp_load_item* items, size_t count, int rank, int world_size);

/* The object `key` (key_size bytes) as JSON text (tuples and sets as arrays, bytes as latin-1
 * text): *json (NUL-terminated, freed with dcp_free) and its length *size. DCP_UNIMPLEMENTED
 * for a value JSON cannot hold (a tensor inside it), DCP_FAILED_PRECONDITION for a tensor key. */
dcp_status dcp_read_object_json(dcp_checkpoint* checkpoint, const char* key, size_t key_size, char** json,
                                size_t* size);
/* Frees what dcp_read_object_json returned (NULL is allowed). */
void dcp_free(void* memory);

/* A tensor to save: `ndim` sizes in `shape`, element `strides` (NULL: row-major), `dtype`,
 * and its memory `data` of `capacity` bytes (every element the shape and strides reach must
 * lie inside it). */
typedef struct dcp_save_item {
  const char* key;
  size_t key_size;
  int dtype;  /* a dcp_dtype */
  size_t ndim;
  const int64_t* shape;
  const int64_t* strides;
  const void* data;
  uint64_t capacity;
} dcp_save_item;

typedef struct dcp_save_options {
  size_t struct_size;  /* sizeof(dcp_save_options) */
  int overwrite;       /* nonzero: replace a checkpoint already in the directory */
  int torch_1_13;      /* nonzero: torch 1.13's layout; else torch 2.x's */
  int no_sync;         /* nonzero: skip fsync (tests and benchmarks only) */
} dcp_save_options;

/* Saves `count` tensors as a DCP checkpoint in `directory` (created if missing), as one rank:
 * data files first, `.metadata` published last by an atomic rename, so the directory holds the
 * old checkpoint or the new one, never a mix; files in it that are not the replaced
 * checkpoint's are never touched. Failures: dcp_last_error(NULL). */
dcp_status dcp_save(const char* directory, const dcp_save_item* items, size_t count, const dcp_save_options* options);

#ifdef __cplusplus
}
#endif

#endif /* DCP_DCP_H */
