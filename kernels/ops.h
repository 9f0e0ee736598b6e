// ops.h - the one interface the model (worker/) calls for tensor work.
//
// A backend is a table of function pointers. kernels/cpu implements it with
// OpenBLAS + OpenMP; a CUDA backend (kernels/cuda) fills the same table with
// device pointers, so worker/ never changes when a backend is added.
// All tensors are fp32, row-major, contiguous unless a stride is given.
// Shapes: B batch, T time, C channels, NH heads, V vocab, N = rows (often B*T).
// Backward functions ACCUMULATE (+=) into parameter gradients and into
// activation gradients, as llm.c does (gelu_backward and crossentropy_backward
// set instead, so they can work in place); callers zero what they reuse.
#pragma once
#include <stddef.h>

typedef struct Ops {
    const char* name;

    // ---- memory on the backend's device
    void* (*alloc)(size_t bytes);                  // zero-filled
    void (*free)(void* p);
    void (*to_device)(void* dst, const void* src, size_t bytes);
    void (*to_host)(void* dst, const void* src, size_t bytes);
    void (*zero)(void* p, size_t bytes);

    // ---- token + position embedding
    // out (B,T,C) = wte[inp[b,t]] + wpe[t]
    void (*encoder_forward)(float* out, const int* inp, const float* wte, const float* wpe,
                            int B, int T, int C);
    void (*encoder_backward)(float* dwte, float* dwpe, const float* dout, const int* inp,
                             int B, int T, int C);
    // out (R,C) = wte[tok[r]] + wpe[pos[r]]   (generation: rows at any position)
    void (*encoder_rows)(float* out, const int* tok, const int* pos, const float* wte,
                         const float* wpe, int R, int C);
    // Vocab-parallel embedding (tensor parallelism): this rank holds rows
    // [v0, v0+Vl) of wte only. out (R,C) = (v0 <= tok[r] < v0+Vl ? wte[tok[r]-v0] : 0)
    // + (wpe ? wpe[pos[r]] : 0); the caller all-reduces out over the ranks.
    void (*encoder_shard_forward)(float* out, const int* tok, const int* pos, const float* wte,
                                  const float* wpe, int v0, int Vl, int R, int C);
    // dwte[tok[r]-v0] += dout[r] for the rows this rank holds; dwpe[pos[r]] += dout[r]
    // (dwpe may be NULL). Summation order per row of dwte/dwpe is r ascending, as
    // encoder_backward's.
    void (*encoder_shard_backward)(float* dwte, float* dwpe, const float* dout, const int* tok,
                                   const int* pos, int v0, int Vl, int R, int C);

    // ---- LayerNorm over the last dim. inp,out (N,C); mean,rstd (N)
    void (*layernorm_forward)(float* out, float* mean, float* rstd, const float* inp,
                              const float* w, const float* b, int N, int C);
    void (*layernorm_backward)(float* dinp, float* dw, float* db, const float* dout,
                               const float* inp, const float* w, const float* mean,
                               const float* rstd, int N, int C);

    // ---- out (N,OC) = inp (N,C) @ w(OC,C)^T + bias(OC); bias may be NULL
    void (*matmul_forward)(float* out, const float* inp, const float* w, const float* bias,
                           int N, int C, int OC);
    // dinp (N,C) += dout @ w ; dw (OC,C) += dout^T @ inp ; dbias (OC) += sum_n dout
    // dinp or dbias may be NULL (not needed)
    void (*matmul_backward)(float* dinp, float* dw, float* dbias, const float* dout,
                            const float* inp, const float* w, int N, int C, int OC);

    // ---- causal multi-head self-attention
    // qkv (B,T,3C) -> out (B,T,C); att (B,NH,T,T) keeps the softmax probabilities
    void (*attention_forward)(float* out, float* att, const float* qkv, int B, int T, int C,
                              int NH);
    // dqkv (B,T,3C) += ...; scratch (B,NH,T,T) is overwritten
    void (*attention_backward)(float* dqkv, float* scratch, const float* dout, const float* qkv,
                               const float* att, int B, int T, int C, int NH);
    // KV cache. kcache,vcache (S,maxT,C) for one layer; row r belongs to sequence
    // seq[r] at position pos[r]. store: copy K,V of each row of qkv (R,3C) into the cache.
    void (*kv_store)(float* kcache, float* vcache, const float* qkv, const int* seq,
                     const int* pos, int R, int maxT, int C);
    // out (R,C): each row's query attends to cache[seq[r]][0..pos[r]]
    void (*attention_rows)(float* out, const float* qkv, const float* kcache,
                           const float* vcache, const int* seq, const int* pos, int R,
                           int maxT, int C, int NH);

    // ---- GELU, tanh approximation (GPT-2)
    void (*gelu_forward)(float* out, const float* inp, size_t n);
    // dinp = dout * gelu'(inp)  (sets, does not accumulate; dinp may alias dout)
    void (*gelu_backward)(float* dinp, const float* inp, const float* dout, size_t n);

    // ---- residual: out = a + b ; backward: da += dout, db += dout
    void (*residual_forward)(float* out, const float* a, const float* b, size_t n);
    void (*residual_backward)(float* da, float* db, const float* dout, size_t n);

    // ---- fused softmax + cross-entropy over V classes
    // losses (N) = -log softmax(logits[n])[targets[n]]; rows with targets[n] < 0 get 0
    void (*crossentropy_forward)(float* losses, const float* logits, const int* targets,
                                 int N, int V);
    // dlogits (N,V) = (softmax(logits) - onehot(target)) * dlosses[n]; may alias logits
    // (then the logits are overwritten by their gradient). Rows with dlosses[n]==0 -> 0.
    // losses are the forward's: logsumexp = loss + logit[target], so no second pass.
    void (*crossentropy_backward)(float* dlogits, const float* logits, const float* losses,
                                  const float* dlosses, const int* targets, int N, int V);
    // Vocab-parallel cross-entropy (Megatron-LM). This rank holds the logits of
    // vocab ids [v0, v0+Vl), stored (N,Vp) with Vp >= Vl (columns >= Vl are
    // padding: never a token, ignored). stats (N,3) = [max over the Vl real
    // columns (-inf if Vl == 0), sum exp(logit - max), logit of targets[n] if this
    // rank holds it else 0]; rows with targets[n] < 0 get [0, 0, 0]. The caller
    // combines the ranks' stats into each row's logsumexp (lse) and loss.
    void (*crossentropy_shard_stats)(float* stats, const float* logits, const int* targets,
                                     int v0, int Vl, int N, int Vp);
    // dlogits (N,Vp) = (exp(logit - lse[n]) - onehot(targets[n] - v0)) * dlosses[n] on
    // the real columns, 0 on padding and on rows with dlosses[n]==0 or targets[n] < 0;
    // may alias logits.
    void (*crossentropy_shard_backward)(float* dlogits, const float* logits, const float* lse,
                                        const float* dlosses, const int* targets, int v0, int Vl,
                                        int N, int Vp);

    // ---- optimizer
    double (*sum_squares)(const float* x, size_t n);
    void (*scale)(float* x, float s, size_t n);
    // AdamW (decoupled weight decay, bias-corrected moments) on grad * grad_scale
    // (grad_scale applies global-norm clipping in the same pass); t is the 1-based step
    void (*adamw_update)(float* param, const float* grad, float* m, float* v, size_t n,
                         float lr, float beta1, float beta2, float eps, float weight_decay,
                         float grad_scale, int t);
} Ops;

const Ops* ops_cpu(void);
// Sets the number of threads (OpenMP and BLAS); n <= 0 leaves the default.
void ops_cpu_set_threads(int n);
int ops_cpu_threads(void);

// The CUDA backend (kernels/cuda) on this rank's GPU: the launcher's local
// rank modulo the visible devices. NULL, after printing "no CUDA device:
// <reason>" on stderr, where there is no usable GPU or rlhfd was built
// without CUDA. Pointers are device pointers; att/scratch of the attention
// ops are not used (see kernels/cuda/attention.cu).
const Ops* ops_cuda(void);
// Why ops_cuda() returned NULL ("" if it did not).
const char* ops_cuda_error(void);
// Matmul precision of the CUDA backend: 0 = exact fp32 (default), 1 = bf16
// inputs with fp32 accumulation (tensor cores); everything else stays fp32.
void ops_cuda_set_bf16(int on);
// The CUDA device index ops_cuda() selected; -1 before it or without a GPU.
int ops_cuda_device(void);
