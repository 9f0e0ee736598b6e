// cpu.h - the CPU backend's functions (OpenBLAS + OpenMP). Semantics and
// shapes are documented once, in kernels/ops.h; ops_cpu() returns the table.
#pragma once
#include <stddef.h>

// Below this many elements of work a loop runs on one thread: waking the
// OpenMP team costs more than it saves (and much more on a busy machine).
#define PAR_MIN_WORK ((size_t)1 << 15)

void* cpu_alloc(size_t bytes);
void cpu_free(void* p);
void cpu_copy(void* dst, const void* src, size_t bytes);
void cpu_zero(void* p, size_t bytes);

void encoder_forward_cpu(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C);
void encoder_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C);
void encoder_rows_cpu(float* out, const int* tok, const int* pos, const float* wte, const float* wpe, int R, int C);
void encoder_shard_forward_cpu(float* out, const int* tok, const int* pos, const float* wte, const float* wpe,
                               int v0, int Vl, int R, int C);
void encoder_shard_backward_cpu(float* dwte, float* dwpe, const float* dout, const int* tok, const int* pos,
                                int v0, int Vl, int R, int C);
void layernorm_forward_cpu(float* out, float* mean, float* rstd, const float* inp, const float* w,
                           const float* b, int N, int C);
void layernorm_backward_cpu(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                            const float* w, const float* mean, const float* rstd, int N, int C);
void matmul_forward_cpu(float* out, const float* inp, const float* w, const float* bias, int N, int C, int OC);
void matmul_backward_cpu(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                         const float* w, int N, int C, int OC);
void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
void attention_backward_cpu(float* dqkv, float* scratch, const float* dout, const float* qkv,
                            const float* att, int B, int T, int C, int NH);
void kv_store_cpu(float* kcache, float* vcache, const float* qkv, const int* seq, const int* pos, int R,
                  int maxT, int C);
void attention_rows_cpu(float* out, const float* qkv, const float* kcache, const float* vcache,
                        const int* seq, const int* pos, int R, int maxT, int C, int NH);
void gelu_forward_cpu(float* out, const float* inp, size_t n);
void gelu_backward_cpu(float* dinp, const float* inp, const float* dout, size_t n);
void residual_forward_cpu(float* out, const float* a, const float* b, size_t n);
void residual_backward_cpu(float* da, float* db, const float* dout, size_t n);
void crossentropy_forward_cpu(float* losses, const float* logits, const int* targets, int N, int V);
void crossentropy_backward_cpu(float* dlogits, const float* logits, const float* losses, const float* dlosses,
                               const int* targets, int N, int V);
void crossentropy_shard_stats_cpu(float* stats, const float* logits, const int* targets, int v0, int Vl, int N,
                                  int Vp);
void crossentropy_shard_backward_cpu(float* dlogits, const float* logits, const float* lse, const float* dlosses,
                                     const int* targets, int v0, int Vl, int N, int Vp);
double sum_squares_cpu(const float* x, size_t n);
void scale_cpu(float* x, float s, size_t n);
void adamw_update_cpu(float* param, const float* grad, float* m, float* v, size_t n, float lr, float beta1,
                      float beta2, float eps, float weight_decay, float grad_scale, int t);
