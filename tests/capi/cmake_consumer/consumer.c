/* Reads every tensor of a checkpoint through libdcp and compares its bytes with EXPECTED/<K>.bin
 * (the tensor's row-major bytes as torch holds them; K is the key in hex); for a 2-d tensor with
 * EXPECTED/<K>.f64 (its values as float64, row-major) also reads a box of it as float64,
 * column-major, and compares that. Prints "ok: N tensors" or the first mismatch. */
#include <dcp/dcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char* slurp(const char* path, long* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* data = malloc(*size ? (size_t)*size : 1);
  if (fread(data, 1, (size_t)*size, f) != (size_t)*size) { free(data); data = NULL; }
  fclose(f);
  return data;
}

#define CHECK(call)                                                                     \
  do {                                                                                  \
    dcp_status s_ = (call);                                                             \
    if (s_ != DCP_OK) {                                                                 \
      fprintf(stderr, "%s: %s: %s\n", #call, dcp_status_name(s_), dcp_last_error(ckpt)); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  dcp_checkpoint* ckpt = NULL;
  dcp_open_options options = {sizeof options, 2, 1};
  CHECK(dcp_open(argv[1], &options, &ckpt));
  size_t count = 0, tensors = 0;
  CHECK(dcp_entry_count(ckpt, &count));
  for (size_t i = 0; i < count; ++i) {
    dcp_entry e;
    CHECK(dcp_entry_at(ckpt, i, &e));
    if (e.kind != DCP_KIND_TENSOR) continue;
    char name[2048] = "", path[4096];
    long size = 0;
    for (size_t k = 0; k < e.key_size && k < 1000; ++k) sprintf(name + 2 * k, "%02x", (unsigned char)e.key[k]);
    snprintf(path, sizeof path, "%s/%s.bin", argv[2], name);
    unsigned char* expected = slurp(path, &size);
    if (!expected || (uint64_t)size != e.bytes) {
      fprintf(stderr, "%s: missing or of another size than %llu\n", path, (unsigned long long)e.bytes);
      return 1;
    }
    unsigned char* got = malloc(e.bytes ? e.bytes : 1);
    dcp_box box = {e.ndim, NULL, NULL, NULL, e.dtype, got, e.bytes};
    CHECK(dcp_read_tensor(ckpt, e.key, e.key_size, &box));
    if (memcmp(got, expected, e.bytes) != 0) {
      fprintf(stderr, "tensor '%s': bytes differ from torch's\n", e.key);
      return 1;
    }
    free(got);
    free(expected);
    ++tensors;
    snprintf(path, sizeof path, "%s/%s.f64", argv[2], name);
    double* rows = (double*)slurp(path, &size);
    if (rows && e.ndim == 2 && e.shape[0] > 1 && e.shape[1] > 1) {
      /* The box [1, rows) x [0, cols) as float64, column-major (strides 1, rows - 1). */
      int64_t offsets[2] = {1, 0}, lengths[2] = {e.shape[0] - 1, e.shape[1]}, strides[2] = {1, e.shape[0] - 1};
      size_t n = (size_t)(lengths[0] * lengths[1]);
      double* cols = malloc(n * sizeof(double));
      dcp_box part = {2, offsets, lengths, strides, DCP_FLOAT64, cols, n * sizeof(double)};
      CHECK(dcp_read_tensor(ckpt, e.key, e.key_size, &part));
      for (int64_t r = 0; r < lengths[0]; ++r)
        for (int64_t c = 0; c < lengths[1]; ++c)
          if (cols[c * lengths[0] + r] != rows[(r + 1) * e.shape[1] + c]) {
            fprintf(stderr, "tensor '%s': element [%lld, %lld] of the float64 box differs\n", e.key,
                    (long long)(r + 1), (long long)c);
            return 1;
          }
      free(cols);
    }
    free(rows);
  }
  CHECK(dcp_close(ckpt));
  printf("ok: %zu tensors\n", tensors);
  return 0;
}
