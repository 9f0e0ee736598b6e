// npy.h - the .npy writer the C test drivers use to hand tensors to the
// PyTorch reference scripts (numpy.load reads them).
#pragma once
#include <stddef.h>

// Writes DIR/NAME.npy (format 1.0: magic, header length, a Python dict
// literal padded to a 64-byte boundary, raw little-endian data). descr is
// numpy's type string ("<f4", "<i4"); shape has ndim >= 1 dims. Fatal on I/O errors.
void npy_save(const char* dir, const char* name, const char* descr, const void* data, size_t elem_size,
              const int* shape, int ndim);
