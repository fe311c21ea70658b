/*
 * All decoder layers of a float32 Llama-family model for one decode step (or a short extend) in one call.
 *
 * At decode batch sizes a layer's arithmetic is four GEMVs over its weights plus microseconds of element-wise
 * work, but driving it from Python costs tens of torch/ctypes calls per layer, and each call between two weight
 * streams runs with cold caches: on this project's 2-core CPU that overhead was ~2 ms of a 6 ms step for
 * bench-llama-40m. This loop runs the same layer (llama.cpp's approach: the whole graph in native code) with the
 * kernels of fused_ops.c and paged_attention.c and the GEMMs in MKL's sgemm (the library torch itself calls for
 * float32 mm on the CPU; the caller passes its address), each projection's weight stored column-major as
 * radixgen.runtime.models.linear.DenseLinear keeps it, so the GEMM is MKL's non-transposed one.
 *
 * Per layer, for T tokens (rows of hidden [T, H], updated in place):
 *   x = rms_norm(hidden);  qkv = x Wqkv^T (+ bias);  RoPE on q, k in place;  k, v -> KV pool at out_loc;
 *   attn = paged_attention(q);  hidden += attn Wo^T;  x = rms_norm(hidden);  gu = x Wgu^T;
 *   act = silu(gate) * up;  hidden += act Wdown^T
 * (the residual adds are the GEMMs' beta = 1). Equal to the module path up to float32 summation order.
 */
#include <stdint.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                         const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                         const float *beta, float *c, const int *ldc);

void radixgen_rms_norm(int dtype, const void *x, int64_t sx, void *residual, const void *w, void *out, int64_t T,
                       int64_t H, float eps);
void radixgen_rotary_inplace(int dtype, void *qkv, int64_t sqkv, const int64_t *positions, const float *cos_sin,
                             int64_t T, int hq, int hkv, int D);
void radixgen_silu_and_mul(int dtype, const void *gate_up, int64_t sgu, void *out, int64_t T, int64_t I);
void radixgen_paged_attention(int dtype, const void *q, int64_t q_stride, const void *k_pool, const void *v_pool,
                              const int32_t *req_to_token, int64_t rt_stride, const int64_t *rows,
                              const int64_t *kv_lens, void *out, int64_t num_tokens, int hq, int hkv, int D,
                              float scale, int64_t min_parallel_work);

/* y [T, N] (row-major) = x [T, K] W^T + beta * y, W^T stored row-major [K, N] (W column-major) */
static void linear(sgemm_fn gemm, const float *x, int64_t T, int K, const float *wt, int N, float beta, float *y) {
    const char no = 'N';
    const int m = N, n = (int)T, k = K;
    const float alpha = 1.0f;
    /* column-major view: y^T [N, T] = W [N, K] x^T [K, T] */
    gemm(&no, &no, &m, &n, &k, &alpha, wt, &m, x, &k, &beta, y, &m);
}

/* the weights of one layer, as addresses: LAYER_FIELDS int64 per layer, in this order (0 = no bias) */
enum { W_INPUT_NORM, W_QKV, B_QKV, W_O, W_POST_NORM, W_GATE_UP, W_DOWN, LAYER_FIELDS };

/*
 * sgemm: MKL's Fortran sgemm. weights [num_layers, LAYER_FIELDS]; k_pools / v_pools [num_layers] addresses of
 * each layer's pool storage [S, hkv, D] float32. hidden [T, H] float32, updated in place. positions / out_loc [T]
 * int64; req_to_token / rows / kv_lens as in paged_attention. work: T * (H + 2 Q + 2 KV + 3 I) floats, with
 * Q = hq D, KV = hkv D.
 */
void radixgen_llama_layers(void *sgemm, int num_layers, const int64_t *weights, const int64_t *k_pools,
                           const int64_t *v_pools, float *hidden, int64_t T, int H, int hq, int hkv, int D, int I,
                           float eps, const int64_t *positions, const float *cos_sin, const int64_t *out_loc,
                           const int32_t *req_to_token, int64_t rt_stride, const int64_t *rows,
                           const int64_t *kv_lens, float scale, int64_t min_parallel_work, float *work) {
    sgemm_fn gemm = (sgemm_fn)sgemm;
    const int Q = hq * D, KV = hkv * D, QKV = Q + 2 * KV;
    float *x = work, *qkv = x + T * H, *attn = qkv + T * QKV, *gu = attn + T * Q, *act = gu + T * 2 * I;
    for (int l = 0; l < num_layers; ++l) {
        const int64_t *w = weights + (int64_t)l * LAYER_FIELDS;
        float *k_pool = (float *)(intptr_t)k_pools[l], *v_pool = (float *)(intptr_t)v_pools[l];
        radixgen_rms_norm(0, hidden, H, 0, (const float *)(intptr_t)w[W_INPUT_NORM], x, T, H, eps);
        linear(gemm, x, T, H, (const float *)(intptr_t)w[W_QKV], QKV, 0.0f, qkv);
        if (w[B_QKV] != 0) {
            const float *b = (const float *)(intptr_t)w[B_QKV];
            for (int64_t t = 0; t < T; ++t)
                for (int i = 0; i < QKV; ++i) qkv[t * QKV + i] += b[i];
        }
        radixgen_rotary_inplace(0, qkv, QKV, positions, cos_sin, T, hq, hkv, D);
        for (int64_t t = 0; t < T; ++t) {
            memcpy(k_pool + out_loc[t] * KV, qkv + t * QKV + Q, sizeof(float) * (size_t)KV);
            memcpy(v_pool + out_loc[t] * KV, qkv + t * QKV + Q + KV, sizeof(float) * (size_t)KV);
        }
        radixgen_paged_attention(0, qkv, QKV, k_pool, v_pool, req_to_token, rt_stride, rows, kv_lens, attn, T, hq,
                                 hkv, D, scale, min_parallel_work);
        linear(gemm, attn, T, Q, (const float *)(intptr_t)w[W_O], H, 1.0f, hidden);
        radixgen_rms_norm(0, hidden, H, 0, (const float *)(intptr_t)w[W_POST_NORM], x, T, H, eps);
        linear(gemm, x, T, H, (const float *)(intptr_t)w[W_GATE_UP], 2 * I, 0.0f, gu);
        radixgen_silu_and_mul(0, gu, 2 * I, act, T, I);
        linear(gemm, act, T, I, (const float *)(intptr_t)w[W_DOWN], H, 1.0f, hidden);
    }
}
