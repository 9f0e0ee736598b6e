// safetensors.c - see safetensors.h for the format.
#define _GNU_SOURCE // strerrorname_np
#include "safetensors.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

// The reference implementation refuses headers above 100 MB; so do we.
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct {
    const char* name;
    StDtype dtype;
    size_t size;
} DtypeInfo;

static const DtypeInfo DTYPES[] = {
    {"F32", ST_F32, 4},   {"F16", ST_F16, 2},    {"BF16", ST_BF16, 2}, {"F64", ST_OTHER, 8},
    {"I64", ST_OTHER, 8}, {"I32", ST_OTHER, 4},  {"I16", ST_OTHER, 2}, {"I8", ST_OTHER, 1},
    {"U64", ST_OTHER, 8}, {"U32", ST_OTHER, 4},  {"U16", ST_OTHER, 2}, {"U8", ST_OTHER, 1},
    {"BOOL", ST_OTHER, 1}, {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1},
};
#define NUM_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

char* st_shape_str(char* buf, size_t n, const int64_t* shape, int ndim) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

int st_sniff(const char* path) {
    FILE* fp = fopen(path, "rb");
    if (!fp) return 0;
    uint8_t head[9];
    size_t got = fread(head, 1, sizeof head, fp);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fclose(fp);
    if (got < 9 || size < 0) return 0;
    uint64_t n;
    memcpy(&n, head, 8);
    return n >= 2 && n <= ST_MAX_HEADER && n <= (uint64_t)size - 8 && head[8] == '{';
}

// Reads a JSON integer in [0, 2^53) (jansson gives json_int_t = long long).
static int get_size(json_t* v, uint64_t* out) {
    if (!json_is_integer(v)) return 0;
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > ((json_int_t)1 << 53)) return 0;
    *out = (uint64_t)x;
    return 1;
}

// Parses one header entry into t; fatal naming the file and tensor.
static void parse_entry(StTensor* t, const char* path, const char* name, json_t* entry,
                        uint64_t data_size, const uint8_t* data) {
    t->name = name;
    if (!json_is_object(entry)) fatalf("%s: tensor '%s': header entry is not an object", path, name);
    json_t* dtype = json_object_get(entry, "dtype");
    json_t* shape = json_object_get(entry, "shape");
    json_t* offsets = json_object_get(entry, "data_offsets");
    if (!json_is_string(dtype)) fatalf("%s: tensor '%s': missing or non-string \"dtype\"", path, name);
    if (!json_is_array(shape)) fatalf("%s: tensor '%s': missing or non-array \"shape\"", path, name);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        fatalf("%s: tensor '%s': \"data_offsets\" must be an array [begin, end]", path, name);

    const DtypeInfo* info = NULL;
    for (int i = 0; i < NUM_DTYPES; i++)
        if (!strcmp(json_string_value(dtype), DTYPES[i].name)) info = &DTYPES[i];
    if (!info) fatalf("%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(dtype));
    t->dtype = info->dtype;
    t->dtype_name = info->name;

    if (json_array_size(shape) > ST_MAX_DIMS)
        fatalf("%s: tensor '%s': %zu dimensions (at most %d supported)", path, name,
               json_array_size(shape), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t dim;
        if (!get_size(json_array_get(shape, (size_t)d), &dim))
            fatalf("%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, d);
        t->shape[d] = (int64_t)dim;
        if (__builtin_mul_overflow(numel, (size_t)dim, &numel))
            fatalf("%s: tensor '%s': shape overflows", path, name);
    }
    t->numel = numel;

    uint64_t begin, end;
    if (!get_size(json_array_get(offsets, 0), &begin) || !get_size(json_array_get(offsets, 1), &end))
        fatalf("%s: tensor '%s': data_offsets must be non-negative integers", path, name);
    if (begin > end) fatalf("%s: tensor '%s': data_offsets [%llu, %llu] are reversed", path, name,
                            (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        fatalf("%s: tensor '%s': data_offsets [%llu, %llu] run past the data section (%llu bytes; "
               "file truncated?)", path, name, (unsigned long long)begin, (unsigned long long)end,
               (unsigned long long)data_size);
    size_t nbytes;
    if (__builtin_mul_overflow(numel, info->size, &nbytes) || nbytes != end - begin) {
        char sb[128];
        fatalf("%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s %s needs %zu",
               path, name, (unsigned long long)begin, (unsigned long long)end,
               (unsigned long long)(end - begin), info->name,
               st_shape_str(sb, sizeof sb, t->shape, t->ndim), numel * info->size);
    }
    t->data = data + begin;
    t->nbytes = nbytes;
}

static int cmp_by_offset(const void* a, const void* b) {
    const StTensor* x = *(const StTensor* const*)a;
    const StTensor* y = *(const StTensor* const*)b;
    return x->data < y->data ? -1 : x->data > y->data ? 1 : 0;
}

void st_open(StFile* f, const char* path) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY);
    if (fd < 0) fatalf("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatalf("%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatalf("%s: not a regular file", path);
    size_t size = (size_t)st.st_size;
    if (size < 8) fatalf("%s: not a safetensors file: %zu bytes, shorter than the 8-byte header length",
                         path, size);
    void* map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) fatalf("%s: cannot map: %s", path, strerror(errno));
    f->path = strdup(path);
    f->map = map;
    f->file_size = size;
    const uint8_t* bytes = map;

    uint64_t header_len;
    memcpy(&header_len, bytes, 8);
    if (header_len > size - 8)
        fatalf("%s: bad safetensors header: header length %llu exceeds the file size %zu "
               "(truncated or not a safetensors file)", path, (unsigned long long)header_len, size);
    if (header_len > ST_MAX_HEADER)
        fatalf("%s: bad safetensors header: header length %llu is too large", path,
               (unsigned long long)header_len);
    json_error_t jerr;
    f->header = json_loadb((const char*)bytes + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->header)
        fatalf("%s: bad safetensors header: invalid JSON at byte %d: %s", path, jerr.position,
               jerr.text);
    if (!json_is_object(f->header)) fatalf("%s: bad safetensors header: not a JSON object", path);

    const uint8_t* data = bytes + 8 + header_len;
    uint64_t data_size = size - 8 - header_len;
    size_t n = json_object_size(f->header);
    f->tensors = callocCheck(n ? n : 1, sizeof(StTensor));
    const char* key;
    json_t* value;
    json_object_foreach(f->header, key, value) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(value)) fatalf("%s: bad safetensors header: __metadata__ is not an object", path);
            const char* mk;
            json_t* mv;
            json_object_foreach(value, mk, mv) {
                if (!json_is_string(mv))
                    fatalf("%s: bad safetensors header: __metadata__ value of '%s' is not a string", path, mk);
            }
            f->metadata = value;
            continue;
        }
        parse_entry(&f->tensors[f->num_tensors++], path, key, value, data_size, data);
    }

    // No two tensors may share bytes.
    StTensor** order = mallocCheck((size_t)(f->num_tensors ? f->num_tensors : 1) * sizeof(StTensor*));
    for (int i = 0; i < f->num_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->num_tensors, sizeof(StTensor*), cmp_by_offset);
    const StTensor* prev = NULL;
    for (int i = 0; i < f->num_tensors; i++) {
        const StTensor* t = order[i];
        if (t->nbytes == 0) continue;
        if (prev && t->data < prev->data + prev->nbytes) {
            free(order);
            fatalf("%s: tensor '%s': data_offsets overlap those of tensor '%s'", path, t->name, prev->name);
        }
        prev = t;
    }
    free(order);
}

void st_close(StFile* f) {
    if (f->map) munmap(f->map, f->file_size);
    json_decref(f->header);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const StTensor* st_find(const StFile* f, const char* name) {
    for (int i = 0; i < f->num_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

const char* st_meta(const StFile* f, const char* key) {
    if (!f->metadata) return NULL;
    return json_string_value(json_object_get(f->metadata, key));
}

// IEEE half -> float, exact (every half is representable as a float).
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {                 // inf / nan
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {             // normal
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {            // +-0
        bits = sign;
    } else {                           // subnormal: normalise
        int e = -1;
        do { mant <<= 1; e++; } while (!(mant & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13);
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

void st_read_f32(const StFile* f, const StTensor* t, float* dst) {
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, t->data, t->nbytes);
        return;
    case ST_F16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            dst[i] = half_to_float(h);
        }
        return;
    case ST_BF16:
        for (size_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            uint32_t bits = (uint32_t)h << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return;
    case ST_OTHER:
        break;
    }
    fatalf("%s: tensor '%s': dtype %s cannot be read as float (F32, F16, BF16 supported)", f->path,
           t->name, t->dtype_name);
}

// "PATH: what: strerror (ENAME)" into err; the errno name makes ENOSPC,
// EFBIG and EACCES easy to tell apart in a log.
static int write_error(char* err, size_t errlen, const char* path, const char* what, int e) {
    const char* name = strerrorname_np(e);
    snprintf(err, errlen, "%s: %s: %s (%s)", path, what, strerror(e), name ? name : "?");
    return -1;
}

int st_write_try(const char* path, const StWriteTensor* tensors, int n, json_t* metadata, char* err,
                 size_t errlen) {
    json_t* header = json_object();
    if (metadata) json_object_set(header, "__metadata__", metadata);
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const StWriteTensor* t = &tensors[i];
        assertCheck(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        json_t* shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            json_array_append_new(shape, json_integer(t->shape[d]));
            numel *= (uint64_t)t->shape[d];
        }
        json_t* entry = json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape,
                                  "data_offsets", (json_int_t)offset,
                                  (json_int_t)(offset + numel * 4));
        assertCheck(entry != NULL);
        if (json_object_get(header, t->name)) {
            json_decref(entry);
            json_decref(header);
            snprintf(err, errlen, "%s: duplicate tensor name '%s'", path, t->name);
            return -1;
        }
        json_object_set_new(header, t->name, entry);
        offset += numel * 4;
    }
    char* text = json_dumps(header, JSON_COMPACT);
    assertCheck(text != NULL);
    json_decref(header);
    // Pad the header with spaces to a multiple of 8 so the data stays aligned.
    size_t text_len = strlen(text);
    size_t padded = (text_len + 7) & ~(size_t)7;
    uint64_t header_len = padded;

    FILE* fp = fopen(path, "wb");
    if (!fp) {
        free(text);
        return write_error(err, errlen, path, "cannot create", errno);
    }
    // fwrite buffers: a full disk may only show at a later fwrite or at fflush.
    int ok = fwrite(&header_len, 1, 8, fp) == 8 && fwrite(text, 1, text_len, fp) == text_len &&
             fwrite("        ", 1, padded - text_len, fp) == padded - text_len;
    free(text);
    for (int i = 0; ok && i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= (size_t)tensors[i].shape[d];
        if (numel && fwrite(tensors[i].data, 4, numel, fp) != numel) ok = 0;
    }
    if (ok && (fflush(fp) != 0 || fsync(fileno(fp)) != 0)) ok = 0;
    int e = errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) return write_error(err, errlen, path, "write failed", e ? e : EIO);
    return 0;
}

void st_write(const char* path, const StWriteTensor* tensors, int n, json_t* metadata) {
    char err[1024];
    if (st_write_try(path, tensors, n, metadata, err, sizeof err) != 0) fatalf("%s", err);
}
