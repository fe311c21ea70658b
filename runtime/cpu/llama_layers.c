/*
 * All decoder layers of a float32 or bfloat16 Llama-family model for one decode step (or a short extend) in
 * one call.
 *
 * At decode batch sizes a layer's arithmetic is four GEMVs over its weights plus microseconds of element-wise
 * work, but driving it from Python costs tens of torch/ctypes calls per layer, and each call between two weight
 * streams runs with cold caches: on this project's 2-core CPU that overhead was ~2 ms of a 6 ms step for
 * bench-llama-40m. This loop runs the same layer (llama.cpp's approach: the whole graph in native code) with the
 * kernels of fused_ops.c and paged_attention.c, and the GEMMs: float32 through the loop's own kernel over
 * row-major weights at decode sizes (linear_rows_f32; MKL's sgemm above ROWS_GEMM_MAX_T rows), bfloat16 through MKL's
 * cblas_gemm_bf16bf16f32 over row-major weights (at M = 1 1.7x oneDNN's prepacked GEMM here: bench_cpu_kernels.py).
 * MKL is the library torch itself calls on the CPU; the caller passes the function's address.
 *
 * For T tokens: hidden [T, H] = the embedding rows of input_ids; per layer
 *   x = rms_norm(hidden);  qkv = x Wqkv^T (+ bias);  RoPE on q, k in place;  k, v -> KV pool at out_loc;
 *   attn = paged_attention(q);  hidden += attn Wo^T;  x = rms_norm(hidden);  gu = x Wgu^T;
 *   act = silu(gate) * up;  hidden += act Wdown^T
 * (the residual adds are the GEMMs' beta = 1); then out = rms_norm(hidden) with the final norm. The embedding
 * lookup and the final norm run here too: as torch calls after a forward that streamed the weights through the
 * caches they took tens of microseconds of a ~1.3 ms int8 step. Equal to the module path up to float32
 * summation order.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "cpu_common.h"

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
void radixgen_linear_int8(const float *x, int64_t T, int K, const int8_t *w, const uint16_t *scale, int N,
                          int accumulate, float *y, float *xb);
int radixgen_linear_w8a8(const float *x, int64_t T, int K, const int8_t *w, const float *scale, const int32_t *comp,
                         int N, int accumulate, float *y, uint8_t *xq, float *xs, int64_t *argmax);

/*
 * Float32 products over row-major weights W [N, K] (as checkpoints store them): y [T, N] = x [T, K] W^T, or
 * y += x W^T when accumulate (a residual add).
 *
 * At decode sizes (T <= ROWS_GEMM_MAX_T) the loop's own kernel: register tiles of 4 weight rows x 4 token rows
 * (8 x T at T <= 2: more weight streams in flight), each weight row read from memory once and reused from L1 for every
 * token row, 16-lane FMA chains reduced once at the end of K (masked loads for a K tail). Weight rows are handed
 * out in blocks of ROWS_PER_TASK to the threads dynamically, so a thread that another process preempts does not
 * hold up the others' share (llama.cpp hands out its matmul chunks the same way). Measured against MKL's sgemm on
 * column-major weights (what the loop called before) over the 16 layers of the 220M config (weights from DRAM, 2
 * threads), MKL takes 1.0 / 1.7 / 1.5 / 1.2 / 1.2x the loop's time at T = 1 / 4 / 8 / 16 / 32
 * (benchmarks/bench_cpu_kernels.py). The first token tile of each weight tile prefetches the next weight tile, so
 * its DRAM reads overlap the compute instead of stalling each tile's first pass.
 * Larger T (long extends through the module path do not come here) goes to MKL's sgemm with W transposed.
 */
enum { ROWS_GEMM_MAX_T = 32, ROWS_PER_TASK = 64 };

/*
 * y [rt, N-strided] (+)= x [rt, K] w [rn, K]^T for rt <= tb token rows and rn <= nb weight rows (nb * tb <= 16
 * accumulators); inlined with constant sizes for full tiles, so the loops unroll into registers.
 */
static inline __attribute__((always_inline)) void rows_tile(const float *x, int rt, int K, const float *w, int rn,
                                                            float *y, int64_t N, int accumulate, int nb, int tb,
                                                            const float *next) {
    __m512 acc[8][4];
    for (int r = 0; r < nb; ++r)
        for (int t = 0; t < tb; ++t) acc[r][t] = _mm512_setzero_ps();
    const int Kf = K & ~15;
    for (int k = 0; k < Kf; k += 16) {
        if (next != 0) /* the next tile's weight rows, while this one computes (DRAM latency off the critical path) */
            for (int r = 0; r < nb; ++r) _mm_prefetch((const char *)(next + (int64_t)r * K + k), _MM_HINT_T0);
        __m512 xv[4];
        for (int t = 0; t < tb && t < rt; ++t) xv[t] = _mm512_loadu_ps(x + (int64_t)t * K + k);
        for (int r = 0; r < nb && r < rn; ++r) {
            const __m512 wv = _mm512_loadu_ps(w + (int64_t)r * K + k);
            for (int t = 0; t < tb && t < rt; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (Kf < K) { /* K tail: masked loads read zeros past the row */
        const __mmask16 m = (__mmask16)((1u << (K - Kf)) - 1);
        __m512 xv[4];
        for (int t = 0; t < tb && t < rt; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + (int64_t)t * K + Kf);
        for (int r = 0; r < nb && r < rn; ++r) {
            const __m512 wv = _mm512_maskz_loadu_ps(m, w + (int64_t)r * K + Kf);
            for (int t = 0; t < tb && t < rt; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < tb && t < rt; ++t)
        for (int r = 0; r < nb && r < rn; ++r) {
            const float v = _mm512_reduce_add_ps(acc[r][t]);
            float *out = y + (int64_t)t * N + r;
            *out = accumulate ? *out + v : v;
        }
}

/* parts (or 0): one argmax_part per thread, each folding in the values its tasks wrote (an LM head's argmax) */
static void linear_rows_f32(const float *x, int64_t T, int K, const float *w, int64_t N, int accumulate, float *y,
                            argmax_part *parts) {
    const int nb = T <= 2 ? 8 : 4, tb = T <= 2 ? (int)T : 4;
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(dynamic, 1) if (N * K * T >= 65536)
    for (int64_t b = 0; b < tasks; ++b) {
        const int64_t end = (b + 1) * ROWS_PER_TASK < N ? (b + 1) * ROWS_PER_TASK : N;
        for (int64_t n = b * ROWS_PER_TASK; n < end; n += nb) {
            const int rn = end - n < nb ? (int)(end - n) : nb;
            for (int64_t t0 = 0; t0 < T; t0 += tb) {
                const int rt = T - t0 < tb ? (int)(T - t0) : tb;
                const float *xt = x + t0 * K, *wn = w + n * K;
                /* several token tiles: the first one prefetches the next weight tile (the later ones hit L1) */
                const float *next = t0 == 0 && n + 2 * nb <= end ? wn + nb * K : 0;
                float *yt = y + t0 * N + n;
                if (T == 1 && rn == 8)
                    rows_tile(xt, 1, K, wn, 8, yt, N, accumulate, 8, 1, next);
                else if (T == 2 && rn == 8)
                    rows_tile(xt, 2, K, wn, 8, yt, N, accumulate, 8, 2, next);
                else if (rn == 4 && rt == 4)
                    rows_tile(xt, 4, K, wn, 4, yt, N, accumulate, 4, 4, next);
                else
                    rows_tile(xt, rt, K, wn, rn, yt, N, accumulate, nb, tb, 0);
            }
        }
        if (parts != 0) /* the task's values, still in L1 */
            for (int64_t t = 0; t < T; ++t)
                argmax_part_add_span(parts + omp_get_thread_num(), t, y + t * N + b * ROWS_PER_TASK,
                                     (int32_t)(b * ROWS_PER_TASK), (int32_t)(end - b * ROWS_PER_TASK));
    }
}

static void linear(sgemm_fn gemm, const float *x, int64_t T, int K, const float *w, int N, int accumulate, float *y) {
    if (T <= ROWS_GEMM_MAX_T) {
        linear_rows_f32(x, T, K, w, N, accumulate, y, 0);
        return;
    }
    const char tr = 'T', no = 'N';
    const int m = N, n = (int)T, k = K;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    /* column-major view: y^T [N, T] = (W as column-major [K, N])^T x^T [K, T] */
    gemm(&tr, &no, &m, &n, &k, &alpha, w, &k, x, &k, &beta, y, &m);
}

/* MKL's cblas_gemm_bf16bf16f32: C (float32) = alpha op(A) op(B) + beta C, bfloat16 A and B */
typedef void (*gemm_bf16_fn)(int layout, int transa, int transb, int m, int n, int k, float alpha, const uint16_t *a,
                             int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc);
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };

#ifdef __AVX512BF16__
enum { BF16_ROWS_MAX_T = 4, BF16_GEMM_MIN_T = 9 };

/* y [1..4 rows, N-strided] = x [T, K] w [8, K]^T in bfloat16 pairs (vdpbf16ps: 32 products per instruction, summed
   in float32), K tail masked; the next 8 weight rows (next, or 0) are prefetched meanwhile */
static inline __attribute__((always_inline)) void rows_tile_bf16(const uint16_t *x, int T, int K, const uint16_t *w,
                                                                 int rn, float *y, int64_t N, const uint16_t *next) {
    __m512 acc[8][BF16_ROWS_MAX_T];
    for (int r = 0; r < 8; ++r)
        for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 32) {
        const __mmask32 m = K - k >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (K - k)) - 1);
        if (next != 0)
            for (int r = 0; r < 8; ++r) _mm_prefetch((const char *)(next + (int64_t)r * K + k), _MM_HINT_T0);
        __m512bh xv[BF16_ROWS_MAX_T];
        for (int t = 0; t < T; ++t) xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(m, x + (int64_t)t * K + k);
        for (int r = 0; r < rn; ++r) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + (int64_t)r * K + k);
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
    for (int t = 0; t < T; ++t)
        for (int r = 0; r < rn; ++r) y[(int64_t)t * N + r] = _mm512_reduce_add_ps(acc[r][t]);
}

/* the loop's bfloat16 product at T < BF16_GEMM_MIN_T: 8-row weight tiles handed out dynamically, each read
   once for tiles of up to BF16_ROWS_MAX_T token rows (reused from L1 after the first), the next weight tile
   prefetched during the first */
static void linear_rows_bf16(const uint16_t *x, int64_t T, int K, const uint16_t *w, int N, float *y) {
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
#pragma omp parallel for schedule(dynamic, 1) if ((int64_t)N * K * T >= 65536)
    for (int64_t b = 0; b < tasks; ++b) {
        const int end = (b + 1) * ROWS_PER_TASK < N ? (int)((b + 1) * ROWS_PER_TASK) : N;
        for (int n = (int)(b * ROWS_PER_TASK); n < end; n += 8) {
            const int rn = end - n < 8 ? end - n : 8;
            const uint16_t *wn = w + (int64_t)n * K;
            for (int64_t t0 = 0; t0 < T; t0 += BF16_ROWS_MAX_T) {
                const int rt = T - t0 < BF16_ROWS_MAX_T ? (int)(T - t0) : BF16_ROWS_MAX_T;
                const uint16_t *xt = x + t0 * K, *next = t0 == 0 && n + 16 <= end ? wn + 8 * (int64_t)K : 0;
                float *yn = y + t0 * N + n;
                switch (rn == 8 ? rt : 0) { /* full tiles with constant sizes: accumulators in registers */
                case 1: rows_tile_bf16(xt, 1, K, wn, 8, yn, N, next); break;
                case 2: rows_tile_bf16(xt, 2, K, wn, 8, yn, N, next); break;
                case 3: rows_tile_bf16(xt, 3, K, wn, 8, yn, N, next); break;
                case 4: rows_tile_bf16(xt, 4, K, wn, 8, yn, N, next); break;
                default: rows_tile_bf16(xt, rt, K, wn, rn, yn, N, 0);
                }
            }
        }
    }
}
#endif

/*
 * y [T, N] float32 = x [T, K] W^T, x and W (row-major [N, K], as checkpoints store it) bfloat16: the loop's own
 * kernel at T < BF16_GEMM_MIN_T, else MKL. Over the 220M config's 16 layers (378 MB, 2 threads) MKL takes 1.1 /
 * 2.4 / 1.9 / 1.2x the kernel's time at 1 / 2 / 4 / 8 rows; from ~12 rows on MKL is as fast or faster
 * (bench_cpu_kernels.py).
 */
static void linear_bf16(gemm_bf16_fn gemm, const uint16_t *x, int64_t T, int K, const uint16_t *w, int N, float *y) {
#ifdef __AVX512BF16__
    if (T < BF16_GEMM_MIN_T) {
        linear_rows_bf16(x, T, K, w, N, y);
        return;
    }
#endif
    gemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, (int)T, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
}

/* dst [T, N] bfloat16 = round(src + bias): F.linear's one rounding of product plus bias (bias may be 0) */
static void round_rows(const float *src, const uint16_t *bias, uint16_t *dst, int64_t T, int N) {
    for (int64_t t = 0; t < T; ++t)
        for (int i = 0; i < N; ++i)
            dst[t * N + i] = f32_to_bf16(src[t * N + i] + (bias != 0 ? bf16_to_f32(bias[i]) : 0.0f));
}

/* hidden [T, H] bfloat16 += round(y): the residual add of a bfloat16 model (both terms bfloat16, sum rounded) */
static void add_rounded(uint16_t *hidden, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        hidden[i] = f32_to_bf16(bf16_to_f32(hidden[i]) + bf16_to_f32(f32_to_bf16(y[i])));
}

/*
 * The weights of one layer, as addresses: LAYER_FIELDS int64 per layer, in this order (0 = no bias; the S_*
 * fields are int8 projections' scales — bfloat16 for int8wo, float32 for w8a8 — and the C_* fields w8a8's
 * compensations, 0 where unused).
 */
enum {
    W_INPUT_NORM, W_QKV, B_QKV, W_O, W_POST_NORM, W_GATE_UP, W_DOWN, S_QKV, S_O, S_GATE_UP, S_DOWN,
    C_QKV, C_O, C_GATE_UP, C_DOWN, LAYER_FIELDS
};

/* the projections' storage: the model dtype, int8 weight-only (int8wo) or int8 x int8 (w8a8_int8) */
enum { WEIGHTS_FLOAT, WEIGHTS_INT8WO, WEIGHTS_W8A8 };

/*
 * An int8 projection of a float32 model, y [T, N] (+)= x [T, K] W^T, for W at address wq with its scale (and,
 * for w8a8, compensation) addresses. scratch: T * (K + 16) float32 (int8wo's rounded input, or w8a8's token
 * scales then, 64-byte aligned, its quantized input).
 */
static void linear_q8(int weights, int64_t wq, int64_t scale, int64_t comp, const float *x, int64_t T, int K, int N,
                      int accumulate, float *y, float *scratch) {
    const int8_t *w = (const int8_t *)(intptr_t)wq;
    if (weights == WEIGHTS_W8A8) {
        uint8_t *xq = (uint8_t *)(((uintptr_t)(scratch + T) + 63) & ~(uintptr_t)63);
        radixgen_linear_w8a8(x, T, K, w, (const float *)(intptr_t)scale, (const int32_t *)(intptr_t)comp, N,
                             accumulate, y, xq, scratch, 0);
    } else {
        radixgen_linear_int8(x, T, K, w, (const uint16_t *)(intptr_t)scale, N, accumulate, y, scratch);
    }
}

/*
 * dtype 0 (float32): gemm is MKL's Fortran sgemm (used above ROWS_GEMM_MAX_T rows) and the projections are
 * stored row-major [out, in], or, with weights WEIGHTS_INT8WO / WEIGHTS_W8A8, int8 (int8_linear.c; gemm unused; the
 * S_* scales and C_* compensations set). dtype 1 (bfloat16): gemm is MKL's cblas_gemm_bf16bf16f32 and the
 * projections row-major [out, in]; products are rounded to bfloat16 where transformers' bfloat16 F.linear rounds
 * them, residual sums likewise.
 * input_ids [T] int64 index embed [vocab, H] of the dtype; out [T, H] of the dtype receives the final-normed
 * hidden states (final_norm [H]). weights [num_layers, LAYER_FIELDS]; k_pools / v_pools [num_layers] addresses of
 * each layer's pool storage [S, hkv, D] of the dtype. positions / out_loc [T] int64; req_to_token / rows /
 * kv_lens as in paged_attention. work: at least T * (2 H + 2 Q + 2 KV + 3 I) float32 for float32; for bfloat16
 * as many bfloat16, then 64 bytes of alignment, then T * max(Q + 2 KV, 2 I, H) float32 (Q = hq D, KV = hkv D).
 * Returns 0, or -1 (nothing computed) for an input id outside [0, vocab).
 */
int radixgen_llama_layers(int dtype, int weights_kind, void *gemm, int num_layers, const int64_t *weights,
                          const int64_t *k_pools, const int64_t *v_pools, const int64_t *input_ids, const void *embed,
                          int64_t vocab, const void *final_norm, void *out, int64_t T, int H, int hq, int hkv, int D,
                          int I, float eps, const int64_t *positions, const float *cos_sin, const int64_t *out_loc,
                          const int32_t *req_to_token, int64_t rt_stride, const int64_t *rows,
                          const int64_t *kv_lens, float scale, int64_t min_parallel_work, void *work) {
    const int Q = hq * D, KV = hkv * D, QKV = Q + 2 * KV;
    const int bf16 = dtype == 1;
    const size_t item = bf16 ? 2 : 4;
    char *hidden = (char *)work, *x = hidden + item * T * H, *qkv = x + item * T * H, *attn = qkv + item * T * QKV;
    char *gu = attn + item * T * Q, *act = gu + item * T * 2 * I;
    float *y = (float *)(((uintptr_t)(act + item * T * I) + 63) & ~(uintptr_t)63); /* bf16: products' float32 */
    float *xb = y; /* int8 weights (float32 activations): linear_q8's scratch */
    for (int64_t t = 0; t < T; ++t)
        if (input_ids[t] < 0 || input_ids[t] >= vocab) return -1;
    for (int64_t t = 0; t < T; ++t)
        memcpy(hidden + item * t * H, (const char *)embed + item * input_ids[t] * H, item * (size_t)H);
    for (int l = 0; l < num_layers; ++l) {
        const int64_t *w = weights + (int64_t)l * LAYER_FIELDS;
        char *k_pool = (char *)(intptr_t)k_pools[l], *v_pool = (char *)(intptr_t)v_pools[l];
        const void *w_qkv = (const void *)(intptr_t)w[W_QKV], *b_qkv = (const void *)(intptr_t)w[B_QKV];
        radixgen_rms_norm(dtype, hidden, H, 0, (const void *)(intptr_t)w[W_INPUT_NORM], x, T, H, eps);
        if (bf16) {
            linear_bf16((gemm_bf16_fn)gemm, (const uint16_t *)x, T, H, w_qkv, QKV, y);
            round_rows(y, b_qkv, (uint16_t *)qkv, T, QKV);
        } else if (weights_kind != WEIGHTS_FLOAT) {
            linear_q8(weights_kind, w[W_QKV], w[S_QKV], w[C_QKV], (const float *)x, T, H, QKV, 0, (float *)qkv, xb);
            if (b_qkv != 0)
                for (int64_t t = 0; t < T; ++t)
                    for (int i = 0; i < QKV; ++i) ((float *)qkv)[t * QKV + i] += ((const float *)b_qkv)[i];
        } else {
            linear((sgemm_fn)gemm, (const float *)x, T, H, w_qkv, QKV, 0, (float *)qkv);
            if (b_qkv != 0)
                for (int64_t t = 0; t < T; ++t)
                    for (int i = 0; i < QKV; ++i) ((float *)qkv)[t * QKV + i] += ((const float *)b_qkv)[i];
        }
        radixgen_rotary_inplace(dtype, qkv, QKV, positions, cos_sin, T, hq, hkv, D);
        for (int64_t t = 0; t < T; ++t) {
            memcpy(k_pool + item * out_loc[t] * KV, qkv + item * (t * QKV + Q), item * (size_t)KV);
            memcpy(v_pool + item * out_loc[t] * KV, qkv + item * (t * QKV + Q + KV), item * (size_t)KV);
        }
        radixgen_paged_attention(dtype, qkv, QKV, k_pool, v_pool, req_to_token, rt_stride, rows, kv_lens, attn, T,
                                 hq, hkv, D, scale, min_parallel_work);
        const void *w_o = (const void *)(intptr_t)w[W_O], *w_gu = (const void *)(intptr_t)w[W_GATE_UP];
        const void *w_down = (const void *)(intptr_t)w[W_DOWN], *post = (const void *)(intptr_t)w[W_POST_NORM];
        if (bf16) {
            linear_bf16((gemm_bf16_fn)gemm, (const uint16_t *)attn, T, Q, w_o, H, y);
            add_rounded((uint16_t *)hidden, y, T * H);
            radixgen_rms_norm(dtype, hidden, H, 0, post, x, T, H, eps);
            linear_bf16((gemm_bf16_fn)gemm, (const uint16_t *)x, T, H, w_gu, 2 * I, y);
            round_rows(y, 0, (uint16_t *)gu, T, 2 * I);
            radixgen_silu_and_mul(dtype, gu, 2 * I, act, T, I);
            linear_bf16((gemm_bf16_fn)gemm, (const uint16_t *)act, T, I, w_down, H, y);
            add_rounded((uint16_t *)hidden, y, T * H);
        } else if (weights_kind != WEIGHTS_FLOAT) {
            linear_q8(weights_kind, w[W_O], w[S_O], w[C_O], (const float *)attn, T, Q, H, 1, (float *)hidden, xb);
            radixgen_rms_norm(dtype, hidden, H, 0, post, x, T, H, eps);
            linear_q8(weights_kind, w[W_GATE_UP], w[S_GATE_UP], w[C_GATE_UP], (const float *)x, T, H, 2 * I, 0,
                      (float *)gu, xb);
            radixgen_silu_and_mul(dtype, gu, 2 * I, act, T, I);
            linear_q8(weights_kind, w[W_DOWN], w[S_DOWN], w[C_DOWN], (const float *)act, T, I, H, 1, (float *)hidden,
                      xb);
        } else {
            linear((sgemm_fn)gemm, (const float *)attn, T, Q, w_o, H, 1, (float *)hidden);
            radixgen_rms_norm(dtype, hidden, H, 0, post, x, T, H, eps);
            linear((sgemm_fn)gemm, (const float *)x, T, H, w_gu, 2 * I, 0, (float *)gu);
            radixgen_silu_and_mul(dtype, gu, 2 * I, act, T, I);
            linear((sgemm_fn)gemm, (const float *)act, T, I, w_down, H, 1, (float *)hidden);
        }
    }
    radixgen_rms_norm(dtype, hidden, H, 0, final_norm, out, T, H, eps);
    return 0;
}

/*
 * y [T, N] float32 = round_bf16(x [T, K] W^T) for bfloat16 x and row-major W [N, K]: a bfloat16 LM head as
 * transformers computes it (bfloat16 logits, then upcast), through linear_bf16 (gemm: MKL's
 * cblas_gemm_bf16bf16f32 above the loop's own kernel's rows). With argmax (int64 [T], or 0) at T <=
 * ARGMAX_MAX_ROWS each row's argmax over the rounded logits is taken right after they are rounded (torch.max's
 * index, argmax_part) and 1 is returned; else 0 (argmax untouched).
 */
int radixgen_linear_bf16(void *gemm, const uint16_t *x, int64_t T, int K, const uint16_t *w, int N, float *y,
                         int64_t *argmax) {
    const int track = argmax != 0 && T <= ARGMAX_MAX_ROWS;
    argmax_part part;
    argmax_part_init(&part);
    linear_bf16((gemm_bf16_fn)gemm, x, T, K, w, N, y);
    for (int64_t i = 0; i < T * N; ++i) y[i] = bf16_to_f32(f32_to_bf16(y[i]));
    if (!track) return 0;
    for (int64_t t = 0; t < T; ++t) argmax_part_add_span(&part, t, y + t * N, 0, N);
    argmax_merge(&part, 1, T, argmax);
    return 1;
}

/*
 * y [T, N] float32 = x [T, K] W^T for float32 x and row-major W [N, K], T <= ROWS_GEMM_MAX_T: a float32 LM head.
 * With argmax (int64 [T], or 0) at T <= ARGMAX_MAX_ROWS each row's argmax is taken from every task's values while
 * they are in L1 (torch.max's index, argmax_part) and 1 is returned; else 0 (argmax untouched).
 */
int radixgen_linear_rows_f32(const float *x, int64_t T, int K, const float *w, int64_t N, float *y, int64_t *argmax) {
    const int threads = omp_get_max_threads();
    const int track = argmax != 0 && T <= ARGMAX_MAX_ROWS && threads <= ARGMAX_MAX_THREADS;
    argmax_part parts[ARGMAX_MAX_THREADS];
    for (int h = 0; track && h < threads; ++h) argmax_part_init(&parts[h]);
    linear_rows_f32(x, T, K, w, N, 0, y, track ? parts : 0);
    if (!track) return 0;
    argmax_merge(parts, threads, T, argmax);
    return 1;
}
