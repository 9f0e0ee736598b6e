#include "npy.h"
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "common/check.h"

void npy_save(const char* dir, const char* name, const char* descr, const void* data, size_t elem_size,
              const int* shape, int ndim) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    char shape_str[256] = "";
    size_t count = 1, len = 0;
    for (int i = 0; i < ndim; i++) {
        len += (size_t)snprintf(shape_str + len, sizeof shape_str - len, "%d,%s", shape[i],
                                (i + 1 < ndim) ? " " : "");
        count *= (size_t)shape[i];
    }
    if (ndim > 1) shape_str[len - 1] = '\0'; // "(3, 11)" but "(5,)" for 1-D
    char header[512];
    int hlen = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                        descr, shape_str);
    size_t total = 10 + (size_t)hlen + 1; // magic(6) version(2) hlen(2) dict '\n'
    size_t padded = (total + 63) / 64 * 64;
    memset(header + hlen, ' ', padded - total);
    header[hlen + (padded - total)] = '\n';
    uint16_t header_len = (uint16_t)(padded - 10);

    FILE* f = fopen(path, "wb");
    if (f == NULL) fatalf("%s: cannot open for writing: %s", path, strerror(errno));
    unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(header_len & 0xff),
                                  (unsigned char)(header_len >> 8)};
    if (fwrite(preamble, 1, 10, f) != 10 || fwrite(header, 1, padded - 10, f) != padded - 10 ||
        (count && fwrite(data, elem_size, count, f) != count) || fclose(f) != 0)
        fatalf("%s: write failed: %s", path, strerror(errno));
}
