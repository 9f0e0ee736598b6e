// safetensors.h - reader and writer for the safetensors file format.
//
// Layout: u64 little-endian header length N, N bytes of JSON header
//   {"NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// then the data section; offsets are relative to its start.
// The reader maps the file and validates everything before anyone touches a
// tensor (header length vs file size, dtype, shape, offsets vs dtype*shape,
// offsets inside the data section, no overlap): any problem is a one-line
// fatal error naming the file and the tensor. Tensors of any common dtype are
// accepted in the header; st_read_f32 converts F32/F16/BF16 to f32.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F32, ST_F16, ST_BF16, ST_OTHER } StDtype;

typedef struct {
    const char* name;           // points into the parsed header
    StDtype dtype;
    const char* dtype_name;     // as written in the file ("F32", "I64", ...)
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    const uint8_t* data;        // into the mapping; not aligned
    size_t nbytes;
} StTensor;

typedef struct {
    char* path;
    void* map;                  // whole file, read-only
    size_t file_size;
    json_t* header;             // parsed JSON header
    json_t* metadata;           // borrowed from header; NULL when absent
    int num_tensors;
    StTensor* tensors;          // in header order
} StFile;

// Returns 1 if the file at path starts like a safetensors file (plausible
// header length followed by '{'); 0 otherwise. Never fatal.
int st_sniff(const char* path);
// Maps and validates path; fatal (naming file and tensor) on any problem.
void st_open(StFile* f, const char* path);
void st_close(StFile* f);
// Tensor by name, NULL if absent.
const StTensor* st_find(const StFile* f, const char* name);
// Metadata value by key, NULL if absent.
const char* st_meta(const StFile* f, const char* key);
// Copies t into dst (t->numel floats), converting F16/BF16; fatal for other dtypes.
void st_read_f32(const StFile* f, const StTensor* t, float* dst);
// Formats a shape as "[2, 3]" into buf (returns buf).
char* st_shape_str(char* buf, size_t n, const int64_t* shape, int ndim);

// ---- writer (F32 only)
typedef struct {
    const char* name;
    const float* data;          // host memory, numel floats
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} StWriteTensor;

// Writes tensors (in the given order) to path and fsyncs it. metadata may be
// NULL; otherwise an object of string values. Fatal (naming path) on I/O errors.
void st_write(const char* path, const StWriteTensor* tensors, int n, json_t* metadata);
// st_write without exiting: 0, or -1 with "PATH: what: reason (ENAME)" in err
// (e.g. ENOSPC, EFBIG, EACCES); a partial file may remain at path.
int st_write_try(const char* path, const StWriteTensor* tensors, int n, json_t* metadata, char* err,
                 size_t errlen);
