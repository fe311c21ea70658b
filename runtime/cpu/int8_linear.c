/*
 * int8 products of the fused layer loop (llama_layers.c) and of int8 LM heads, for float32 activations x [T, K]
 * and int8 weights stored row-major W [N, Kp] (K zero-padded to Kp) with one scale per output row:
 *
 * - radixgen_linear_int8: weight-only int8 (int8wo): each weight converted to float32 and multiplied with the
 *   bfloat16-rounded activations, as aten's _weight_int8pack_mm does on the module path;
 * - radixgen_linear_w8a8: int8 x int8 (w8a8_int8): the activations quantized per token, the products summed in
 *   int32 by AVX-512 VNNI's vpdpbusd (64 multiply-adds per instruction, against 16 for a float32 FMA) — the
 *   arithmetic of llama.cpp's CPU Q8_0 dot products.
 *
 * Both add their result to y instead of storing it when accumulate (a residual add in float32).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "cpu_common.h"

/*
 * int8 weight-only projection (torchao's per-row symmetric int8, as radixgen.runtime.models.linear's
 * Int8WeightOnlyLinear stores it: w int8 [N, Kp] with K zero-padded to Kp = a multiple of 16, scale bfloat16 [N]):
 * y [T, N] = round_bf16(sum_k bf16(x[t, k]) w[n, k] * scale[n]), what aten's _weight_int8pack_mm computes on the
 * module path, then added to y when accumulate (a residual add in float32). xb: T * Kp float32 scratch.
 * Weights of the rows after the current ones are prefetched while these compute: on the 220M config's 16 layers
 * (189 MB of int8, 2 threads) that took one token from 14 to 7 ms, 2.0x aten's time (bench_cpu_kernels.py).
 */
void radixgen_linear_int8(const float *x, int64_t T, int K, const int8_t *w, const uint16_t *scale, int N,
                          int accumulate, float *y, float *xb) {
    const int Kp = (K + 15) & ~15;
    for (int64_t t = 0; t < T; ++t)
        for (int k = 0; k < Kp; ++k) xb[t * Kp + k] = k < K ? bf16_to_f32(f32_to_bf16(x[t * K + k])) : 0.0f;
    if (T <= 4) { /* 4 rows at a time: independent FMA chains (one row's chain is latency-bound) */
#pragma omp parallel for schedule(static) if ((int64_t)N * Kp * T >= 65536)
        for (int n0 = 0; n0 < N; n0 += 4) {
            const int rn = N - n0 < 4 ? N - n0 : 4;
            __m512 acc[4][4];
            for (int r = 0; r < 4; ++r)
                for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_ps();
            for (int k0 = 0; k0 < Kp; k0 += 16) {
                if ((k0 & 63) == 0 && n0 + 8 <= N) /* the next 4 rows' weights, while these compute */
                    for (int r = 0; r < 4; ++r)
                        _mm_prefetch((const char *)(w + (int64_t)(n0 + 4 + r) * Kp + k0), _MM_HINT_T0);
                __m512 xv[4];
                for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(xb + t * Kp + k0);
                for (int r = 0; r < rn; ++r) {
                    const __m128i raw = _mm_loadu_si128((const __m128i *)(w + (int64_t)(n0 + r) * Kp + k0));
                    const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
                    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
                }
            }
            for (int r = 0; r < rn; ++r) {
                const float s = bf16_to_f32(scale[n0 + r]);
                for (int t = 0; t < T; ++t) {
                    const float v = bf16_to_f32(f32_to_bf16(_mm512_reduce_add_ps(acc[r][t]) * s));
                    float *out = y + t * N + n0 + r;
                    *out = accumulate ? *out + v : v;
                }
            }
        }
        return;
    }
#pragma omp parallel for schedule(static) if ((int64_t)N * Kp * T >= 65536)
    for (int n = 0; n < N; ++n) {
        const int8_t *wr = w + (int64_t)n * Kp;
        const float s = bf16_to_f32(scale[n]);
        for (int64_t t0 = 0; t0 < T; t0 += 16) {
            const int tn = T - t0 < 16 ? (int)(T - t0) : 16;
            __m512 acc[16];
            for (int t = 0; t < tn; ++t) acc[t] = _mm512_setzero_ps();
            for (int k0 = 0; k0 < Kp; k0 += 16) {
                if (t0 == 0 && (k0 & 63) == 0 && n + 2 < N) /* a later row's weights, while this one computes */
                    _mm_prefetch((const char *)(wr + 2 * (int64_t)Kp + k0), _MM_HINT_T0);
                const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(wr + k0))));
                for (int t = 0; t < tn; ++t)
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xb + (t0 + t) * Kp + k0), acc[t]);
            }
            for (int t = 0; t < tn; ++t) {
                const float v = bf16_to_f32(f32_to_bf16(_mm512_reduce_add_ps(acc[t]) * s));
                float *out = y + (t0 + t) * N + n;
                *out = accumulate ? *out + v : v;
            }
        }
    }
}

/*
 * acc + the products of unsigned bytes a with signed bytes b, summed in int32 groups of four: vpdpbusd where the
 * CPU has AVX512-VNNI (-march=native defines __AVX512VNNI__); else the same sums from AVX512-BW's 16-bit
 * multiply-adds (widened first: u8 x s8 pairs would saturate vpmaddubsw's int16), grouped differently — the
 * callers only use the total over all lanes.
 */
static inline __m512i dot_u8s8(__m512i acc, __m512i a, __m512i b) {
#ifdef __AVX512VNNI__
    return _mm512_dpbusd_epi32(acc, a, b);
#else
    const __m512i alo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(a));
    const __m512i ahi = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(a, 1));
    const __m512i blo = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(b));
    const __m512i bhi = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(b, 1));
    return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(alo, blo), _mm512_madd_epi16(ahi, bhi)));
#endif
}

/*
 * Per-token symmetric int8 quantization of x [T, K] float32, as radixgen.runtime.models.linear.quantize_per_token
 * computes it: xs[t] = max(max_k |x[t, k]|, 1e-10) / 127, q = round_half_even(x / xs[t]) in [-127, 127] — stored
 * offset by 128 as unsigned bytes xq [T, Kp] (vpdpbusd's unsigned operand; the padding holds q = 0).
 */
static void quantize_rows_u8(const float *x, int64_t T, int K, int Kp, uint8_t *xq, float *xs) {
    for (int64_t t = 0; t < T; ++t) {
        const float *xr = x + t * K;
        __m512 amax = _mm512_setzero_ps();
        for (int k0 = 0; k0 < K; k0 += 16) {
            const __mmask16 m = K - k0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k0)) - 1);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, xr + k0)));
        }
        const float s = fmaxf(_mm512_reduce_max_ps(amax), 1e-10f) / 127.0f;
        xs[t] = s;
        const __m512 sv = _mm512_set1_ps(s);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), offset = _mm512_set1_epi32(128);
        for (int k0 = 0; k0 < Kp; k0 += 16) {
            const int left = K - k0;
            const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            const __m512i q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_maskz_loadu_ps(m, xr + k0), sv)); /* nearest-even */
            const __m512i u = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(q, lo), hi), offset);
            _mm_storeu_si128((__m128i *)(xq + t * Kp + k0), _mm512_cvtepi32_epi8(u));
        }
    }
}

/*
 * The int32 sums [rn][rt] of rn <= 8 weight rows w (stride Kp) with rt <= 4 quantized token rows xq (stride Kp),
 * rn * rt <= 16, all of K (Kp a multiple of 64); with prefetch, the next pn weight rows are fetched while these
 * compute. Inlined with constant sizes for full tiles, so the accumulators live in registers.
 */
static inline __attribute__((always_inline)) void w8a8_tile(const uint8_t *xq, int rt, int Kp, const int8_t *w,
                                                             int rn, int pn, int32_t sums[8][4]) {
    __m512i acc[8][4];
    for (int r = 0; r < 8; ++r)
        for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_setzero_si512();
    for (int k0 = 0; k0 < Kp; k0 += 64) {
        for (int r = 0; r < pn; ++r) _mm_prefetch((const char *)(w + (int64_t)(rn + r) * Kp + k0), _MM_HINT_T0);
        __m512i xv[4];
        for (int t = 0; t < rt; ++t) xv[t] = _mm512_loadu_si512(xq + (int64_t)t * Kp + k0);
        for (int r = 0; r < rn; ++r) {
            const __m512i wv = _mm512_loadu_si512(w + (int64_t)r * Kp + k0);
            for (int t = 0; t < rt; ++t) acc[r][t] = dot_u8s8(acc[r][t], xv[t], wv);
        }
    }
    for (int r = 0; r < rn; ++r)
        for (int t = 0; t < rt; ++t) sums[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
}

/*
 * int8 x int8 projection (w8a8_int8, as radixgen.runtime.models.linear's W8A8Int8Linear stores it: w int8 [N, Kp]
 * with Kp = K rounded up to 64, scale float32 [N], comp int32 [N] = 128 x each row's sum):
 * y [T, N] = float(sum_k q[t, k] w[n, k]) * (xs[t] * scale[n]), the module path's torch._int_mm result to the
 * bit. Tiles of 4 weight rows x 4 token rows (8 x T at T <= 2: more weight streams in flight): each 64-byte
 * weight vector is read once per 4 tokens and reused from L1 for the rest; the first token tile of a weight tile
 * prefetches the next one. Scratch: xq T * Kp bytes, xs T float32.
 *
 * With argmax (int64 [T], not accumulating, T <= ARGMAX_MAX_ROWS) each row's argmax over y is taken while the
 * values are still in registers (argmax_part, cpu_common.h: torch.max's index) and 1 is returned (0: argmax
 * untouched). As the LM head of greedy decoding this spares the sampler a read of the
 * whole logits row, which arrives evicted from L2 by the head's own weights (radixgen.runtime.cpu.llama_layers:
 * logits_int8).
 */
int radixgen_linear_w8a8(const float *x, int64_t T, int K, const int8_t *w, const float *scale, const int32_t *comp,
                         int N, int accumulate, float *y, uint8_t *xq, float *xs, int64_t *argmax) {
    const int Kp = (K + 63) & ~63;
    const int nb = T <= 2 ? 8 : 4, tb = T <= 2 ? (int)T : 4;
    const int track = argmax != 0 && !accumulate && T <= ARGMAX_MAX_ROWS && omp_get_max_threads() <= ARGMAX_MAX_THREADS;
    argmax_part parts[ARGMAX_MAX_THREADS]; /* one per thread */
    int threads = 1;
    quantize_rows_u8(x, T, K, Kp, xq, xs);
#pragma omp parallel if ((int64_t)N * Kp * T >= 65536)
    {
        argmax_part mine;
        argmax_part_init(&mine);
#pragma omp single nowait
        threads = omp_get_num_threads();
#pragma omp for schedule(static)
        for (int n0 = 0; n0 < N; n0 += nb) {
            const int rn = N - n0 < nb ? N - n0 : nb;
            const int8_t *wr = w + (int64_t)n0 * Kp;
            for (int64_t t0 = 0; t0 < T; t0 += tb) {
                const int tn = T - t0 < tb ? (int)(T - t0) : tb;
                const int pn = t0 == 0 && n0 + 2 * nb <= N ? nb : 0;
                int32_t sums[8][4];
                const uint8_t *xt = xq + t0 * Kp;
                if (rn == 4 && tn == 4 && pn)
                    w8a8_tile(xt, 4, Kp, wr, 4, 4, sums);
                else if (rn == 4 && tn == 4)
                    w8a8_tile(xt, 4, Kp, wr, 4, 0, sums);
                else if (rn == 8 && tn == 1 && pn)
                    w8a8_tile(xt, 1, Kp, wr, 8, 8, sums);
                else if (rn == 8 && tn == 2 && pn)
                    w8a8_tile(xt, 2, Kp, wr, 8, 8, sums);
                else
                    w8a8_tile(xt, tn, Kp, wr, rn, pn, sums);
                for (int r = 0; r < rn; ++r)
                    for (int t = 0; t < tn; ++t) {
                        const int n = n0 + r;
                        const float v = (float)(sums[r][t] - comp[n]) * (xs[t0 + t] * scale[n]);
                        float *out = y + (t0 + t) * N + n;
                        *out = accumulate ? *out + v : v;
                        if (track) argmax_part_add(&mine, t0 + t, v, n);
                    }
            }
        }
        if (track) parts[omp_get_thread_num()] = mine;
    }
    if (!track) return 0;
    argmax_merge(parts, threads, T, argmax);
    return 1;
}
