// ops_cpu.c - the CPU backend's table for kernels/ops.h.
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
    .sum_squares = sum_squares_cpu,
    .scale = scale_cpu,
    .adamw_update = adamw_update_cpu,
};

const Ops* ops_cpu(void) { return &CPU_OPS; }
