// ops_cpu.c - the CPU backend's table for kernels/ops.h.
#include <stdio.h>
#include "kernels/ops.h"
#include "kernels/cpu/cpu.h"

static const Ops CPU_OPS = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .zero = cpu_zero,
    .encoder_forward = encoder_forward_cpu,
    .encoder_backward = encoder_backward_cpu,
    .encoder_rows = encoder_rows_cpu,
    .encoder_shard_forward = encoder_shard_forward_cpu,
    .encoder_shard_backward = encoder_shard_backward_cpu,
    .layernorm_forward = layernorm_forward_cpu,
    .layernorm_backward = layernorm_backward_cpu,
    .matmul_forward = matmul_forward_cpu,
    .matmul_backward = matmul_backward_cpu,
    .attention_forward = attention_forward_cpu,
    .attention_backward = attention_backward_cpu,
    .kv_store = kv_store_cpu,
    .attention_rows = attention_rows_cpu,
    .gelu_forward = gelu_forward_cpu,
    .gelu_backward = gelu_backward_cpu,
    .residual_forward = residual_forward_cpu,
    .residual_backward = residual_backward_cpu,
    .crossentropy_forward = crossentropy_forward_cpu,
    .crossentropy_backward = crossentropy_backward_cpu,
    .crossentropy_shard_stats = crossentropy_shard_stats_cpu,
    .crossentropy_shard_backward = crossentropy_shard_backward_cpu,
    .sum_squares = sum_squares_cpu,
    .scale = scale_cpu,
    .adamw_update = adamw_update_cpu,
};

const Ops* ops_cpu(void) { return &CPU_OPS; }

// ---- CUDA: see kernels/cuda (built where a toolkit is found); without it, none.
#ifndef RLHFD_HAVE_CUDA
static const char NO_CUDA[] = "rlhfd was built without the CUDA backend (no CUDA toolkit found, or -DRLHFD_CUDA=OFF)";
const Ops* ops_cuda(void) {
    fprintf(stderr, "rlhfd: no CUDA device: %s\n", NO_CUDA);
    return NULL;
}
const char* ops_cuda_error(void) { return NO_CUDA; }
void ops_cuda_set_bf16(int on) { (void)on; }
int ops_cuda_device(void) { return -1; }
#endif
