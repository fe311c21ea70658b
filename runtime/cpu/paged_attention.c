/*
 * Paged attention on the CPU over radixgen's token-granular KV pool, for decode rows and short extends.
 *
 * Every query token t attends to the first kv_lens[t] positions of its request, whose KV slots are
 * req_to_token[rows[t], 0 .. kv_lens[t]-1]. A decode step is one query token per request (kv_len = seq_len);
 * a short extend (a speculative verify over K+1 positions, a small prefill chunk) is one query token per new
 * position with the causal offset (kv_len = prefix_len + j + 1). The new tokens' K/V are already in the pool.
 *
 * Algorithm: one work item per (query token, KV head) holds the G = Hq / Hkv query heads that share the KV
 * head (grouped-query attention, Ainslie et al. 2023), so each K/V row is read once for all of them; the keys
 * are visited in blocks of BLOCK positions with the online softmax of FlashAttention (Dao et al. 2022;
 * Milakov & Gimelshein 2018): running max m, running sum l, accumulator rescaled by exp(m_old - m_new).
 * K/V rows are read straight from the pool (no dense copy, no padding), 16 lanes at a time (AVX-512).
 *
 * Layouts (contiguous but for q's rows):
 *   q               [T, Hq, D]           float32 or bfloat16 (the pool's dtype); rows q_stride elements apart
 *   out             [T, Hq, D]           q's dtype
 *   k_pool, v_pool  [S, Hkv, D]          one layer's pool storage
 *   req_to_token    [R, rt_stride]       int32 slot of each (request row, position)
 *   rows, kv_lens   [T]                  int64
 * D is at most 256 (a tail of D % 16 lanes is masked); accumulation is in float32; bfloat16 outputs are rounded to nearest even.
 *
 * exp is cpu_common.h's vectorized polynomial (the softmax only takes it on [-87, 0]).
 */
#include <stdint.h>

#include "cpu_common.h"

#define BLOCK 32
#define MAX_NV 16 /* D / 16 */
#define MAX_G 16  /* query heads per KV head */
#define NEG_BIG (-3.0e38f)

/* 16 lanes (those set in mask; the others read as 0) of a float32 or bfloat16 array, as float32 */
static inline __m512 load16(const void *base, int64_t off, int bf16, __mmask16 mask) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)base + off);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(mask, (const float *)base + off);
}

static inline void store16(void *base, int64_t off, __m512 v, int bf16, __mmask16 mask) {
    if (bf16) {
        /* round to nearest even: add 0x7FFF + lsb, keep the high half */
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        _mm256_mask_storeu_epi16((uint16_t *)base + off, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
    } else {
        _mm512_mask_storeu_ps((float *)base + off, mask, v);
    }
}

/* One (query token, KV head) item; always inlined into the entry so NV and bf16 are constants there. */
static inline __attribute__((always_inline)) void item(const int bf16, const int D, const int G, const void *q,
                                                       const void *k_pool, const void *v_pool,
                                                       const int32_t *slots, int64_t len, int h, int hkv,
                                                       int64_t qbase, int64_t obase, float scale, void *out) {
    const int NV = (D + 15) / 16;
    const __mmask16 tail = (D % 16) ? (__mmask16)((1u << (D % 16)) - 1u) : (__mmask16)0xFFFF;
#define MASK(v) ((v) == NV - 1 ? tail : (__mmask16)0xFFFF)
    __m512 qv[MAX_G * MAX_NV], acc[MAX_G * MAX_NV];
    float m[MAX_G], l[MAX_G];
    float s[MAX_G][BLOCK] __attribute__((aligned(64)));
    for (int g = 0; g < G; ++g) {
        m[g] = NEG_BIG;
        l[g] = 0.0f;
        for (int v = 0; v < NV; ++v) {
            qv[g * NV + v] = _mm512_mul_ps(load16(q, qbase + (int64_t)g * D + v * 16, bf16, MASK(v)), _mm512_set1_ps(scale));
            acc[g * NV + v] = _mm512_setzero_ps();
        }
    }
    for (int64_t j0 = 0; j0 < len; j0 += BLOCK) {
        const int n = (int)(len - j0 < BLOCK ? len - j0 : BLOCK);
        for (int jj = 0; jj < n; ++jj) {
            const int64_t base = ((int64_t)slots[j0 + jj] * hkv + h) * D;
            if (jj + 4 < n) _mm_prefetch((const char *)k_pool + ((int64_t)slots[j0 + jj + 4] * hkv + h) * D *
                                         (bf16 ? 2 : 4), _MM_HINT_T0);
            __m512 kr[MAX_NV];
            for (int v = 0; v < NV; ++v) kr[v] = load16(k_pool, base + v * 16, bf16, MASK(v));
            for (int g = 0; g < G; ++g) {
                __m512 d = _mm512_mul_ps(qv[g * NV], kr[0]);
                for (int v = 1; v < NV; ++v) d = _mm512_fmadd_ps(qv[g * NV + v], kr[v], d);
                s[g][jj] = _mm512_reduce_add_ps(d);
            }
        }
        for (int g = 0; g < G; ++g) {
            float bm = m[g];
            for (int jj = 0; jj < n; ++jj) bm = s[g][jj] > bm ? s[g][jj] : bm;
            const float alpha = _mm512_cvtss_f32(exp16(_mm512_set1_ps(m[g] - bm)));
            __m512 sum = _mm512_setzero_ps();
            for (int jj = 0; jj < n; jj += 16) {
                const __mmask16 mask = (n - jj) >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - jj)) - 1u);
                __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, &s[g][jj]), _mm512_set1_ps(bm)));
                p = _mm512_maskz_mov_ps(mask, p);
                _mm512_mask_storeu_ps(&s[g][jj], mask, p);
                sum = _mm512_add_ps(sum, p);
            }
            l[g] = l[g] * alpha + _mm512_reduce_add_ps(sum);
            m[g] = bm;
            const __m512 a = _mm512_set1_ps(alpha);
            for (int v = 0; v < NV; ++v) acc[g * NV + v] = _mm512_mul_ps(acc[g * NV + v], a);
        }
        for (int jj = 0; jj < n; ++jj) {
            const int64_t base = ((int64_t)slots[j0 + jj] * hkv + h) * D;
            if (jj + 4 < n) _mm_prefetch((const char *)v_pool + ((int64_t)slots[j0 + jj + 4] * hkv + h) * D *
                                         (bf16 ? 2 : 4), _MM_HINT_T0);
            __m512 vr[MAX_NV];
            for (int v = 0; v < NV; ++v) vr[v] = load16(v_pool, base + v * 16, bf16, MASK(v));
            for (int g = 0; g < G; ++g) {
                const __m512 p = _mm512_set1_ps(s[g][jj]);
                for (int v = 0; v < NV; ++v) acc[g * NV + v] = _mm512_fmadd_ps(p, vr[v], acc[g * NV + v]);
            }
        }
    }
    for (int g = 0; g < G; ++g) {
        const __m512 inv = _mm512_set1_ps(l[g] > 0.0f ? 1.0f / l[g] : 0.0f);
        for (int v = 0; v < NV; ++v) store16(out, obase + (int64_t)g * D + v * 16, _mm512_mul_ps(acc[g * NV + v], inv), bf16,
                                 MASK(v));
#undef MASK
    }
}

#define ITEM(BF, DC, GC) item(BF, DC, GC, q, k_pool, v_pool, slots, len, h, hkv, qbase, obase, scale, out)
#define BY_G(BF, DC)                                                                                        \
    switch (g_count) {                                                                                      \
    case 1: ITEM(BF, DC, 1); break;                                                                         \
    case 2: ITEM(BF, DC, 2); break;                                                                         \
    case 4: ITEM(BF, DC, 4); break;                                                                         \
    case 8: ITEM(BF, DC, 8); break;                                                                         \
    default: ITEM(BF, DC, g_count); break;                                                                  \
    }
#define BY_D(BF)                                                                                            \
    switch (D) {                                                                                            \
    case 64: BY_G(BF, 64); break;                                                                           \
    case 128: BY_G(BF, 128); break;                                                                         \
    default: BY_G(BF, D); break;                                                                            \
    }

/*
 * dtype 0: float32 q/pool/out; 1: bfloat16. Requires 1 <= D <= 256 (the caller checks). Work items are
 * (query token, KV head, chunk of at most MAX_G of its query heads). min_parallel_work: below this many
 * (positions x KV heads) in the whole call the items run on the calling thread (an OpenMP fork costs more
 * than a short decode row).
 */
void radixgen_paged_attention(int dtype, const void *q, int64_t q_stride, const void *k_pool, const void *v_pool,
                              const int32_t *req_to_token, int64_t rt_stride, const int64_t *rows,
                              const int64_t *kv_lens, void *out, int64_t num_tokens, int hq, int hkv, int D,
                              float scale, int64_t min_parallel_work) {
    const int G = hq / hkv;
    const int chunks = (G + MAX_G - 1) / MAX_G;
    int64_t work = 0;
    for (int64_t t = 0; t < num_tokens; ++t) work += kv_lens[t];
    work *= hkv;
    const int64_t items = num_tokens * hkv * chunks;
#pragma omp parallel for schedule(dynamic, 1) if (work >= min_parallel_work && items > 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t t = it / ((int64_t)hkv * chunks);
        const int h = (int)(it / chunks % hkv), c = (int)(it % chunks);
        const int g_count = G - c * MAX_G < MAX_G ? G - c * MAX_G : MAX_G;
        const int64_t len = kv_lens[t];
        const int32_t *slots = req_to_token + rows[t] * rt_stride;
        const int64_t head = (int64_t)h * G + (int64_t)c * MAX_G; /* its first query head */
        const int64_t qbase = t * q_stride + head * D, obase = (t * hq + head) * D;
        if (dtype == 0) {
            BY_D(0)
        } else {
            BY_D(1)
        }
    }
}
