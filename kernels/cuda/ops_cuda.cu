// ops_cuda.cu - the CUDA backend's table for kernels/ops.h, and the getters
// the rest of rlhfd (plain C) calls.
#include <stdio.h>
#include <string.h>
#include "kernels/cuda/cuda.h"

static const Ops CUDA_OPS = {
    .name = "cuda",
    .alloc = cuda_alloc,
    .free = cuda_free,
    .to_device = cuda_to_device,
    .to_host = cuda_to_host,
    .zero = cuda_zero,
    .encoder_forward = encoder_forward_cuda,
    .encoder_backward = encoder_backward_cuda,
    .encoder_rows = encoder_rows_cuda,
    .encoder_shard_forward = encoder_shard_forward_cuda,
    .encoder_shard_backward = encoder_shard_backward_cuda,
    .layernorm_forward = layernorm_forward_cuda,
    .layernorm_backward = layernorm_backward_cuda,
    .matmul_forward = matmul_forward_cuda,
    .matmul_backward = matmul_backward_cuda,
    .attention_forward = attention_forward_cuda,
    .attention_backward = attention_backward_cuda,
    .kv_store = kv_store_cuda,
    .attention_rows = attention_rows_cuda,
    .gelu_forward = gelu_forward_cuda,
    .gelu_backward = gelu_backward_cuda,
    .residual_forward = residual_forward_cuda,
    .residual_backward = residual_backward_cuda,
    .crossentropy_forward = crossentropy_forward_cuda,
    .crossentropy_backward = crossentropy_backward_cuda,
    .crossentropy_shard_stats = crossentropy_shard_stats_cuda,
    .crossentropy_shard_backward = crossentropy_shard_backward_cuda,
    .sum_squares = sum_squares_cuda,
    .scale = scale_cuda,
    .adamw_update = adamw_update_cuda,
};

static int g_state = 0; // 0 not tried, 1 ready, -1 unavailable
static char g_error[256] = "";

// Every entry of kernels/ops.h must be filled: an op added to the interface
// but not here would otherwise be a NULL call deep inside a run.
static void check_table(void) {
    const void* const* p = (const void* const*)&CUDA_OPS;
    for (size_t i = 1; i < sizeof(Ops) / sizeof(void*); i++) // [0] is the name
        if (!p[i]) fatalf("the CUDA backend lacks entry %zu of kernels/ops.h's Ops table", i);
}

extern "C" const Ops* ops_cuda(void) {
    if (g_state == 0) {
        check_table();
        g_state = cuda_context_init(g_error, sizeof g_error) ? 1 : -1;
        if (g_state < 0) fprintf(stderr, "rlhfd: no CUDA device: %s\n", g_error);
    }
    return g_state > 0 ? &CUDA_OPS : NULL;
}

extern "C" const char* ops_cuda_error(void) {
    ops_cuda();
    return g_error;
}

extern "C" void ops_cuda_set_bf16(int on) { cuda_set_bf16(on); }

extern "C" int ops_cuda_device(void) { return cuda_device_index(); }
