// memory.c - CPU backend memory: host memory, 64-byte aligned, zero-filled.
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <cblas.h>
#include "common/check.h"
#include "kernels/cpu/cpu.h"

void* cpu_alloc(size_t bytes) {
    void* p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
        fatalf("out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded);
    return p;
}
void cpu_free(void* p) { free(p); }
void cpu_copy(void* dst, const void* src, size_t bytes) { memcpy(dst, src, bytes); }

// Zeroing large buffers is memory-bound: split it over the threads.
void cpu_zero(void* p, size_t bytes) {
    if (bytes < (1u << 20)) { memset(p, 0, bytes); return; }
    char* c = (char*)p;
    #pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t chunk = (bytes + nt - 1) / nt;
        size_t begin = chunk * id;
        if (begin < bytes) memset(c + begin, 0, begin + chunk > bytes ? bytes - begin : chunk);
    }
}

void ops_cpu_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}
int ops_cpu_threads(void) { return omp_get_max_threads(); }
