/*
 * Helpers shared by radixgen's CPU kernels: bfloat16 <-> float32 conversion (round to nearest even, NaN kept a
 * NaN), a 16-lane e^x, and an LM head's argmax taken in passing.
 *
 * exp16 is a polynomial (Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor of e^r; relative
 * error below 2e-7 on [-87, 88], saturating outside), vectorized by hand: no -ffast-math, whose startup code
 * would change the whole process's denormal handling.
 */
#ifndef RADIXGEN_CPU_COMMON_H
#define RADIXGEN_CPU_COMMON_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

static inline float bf16_to_f32(uint16_t b) {
    union { uint32_t u; float f; } x;
    x.u = (uint32_t)b << 16;
    return x.f;
}

static inline uint16_t f32_to_bf16(float f) {
    union { uint32_t u; float f; } x;
    x.f = f;
    if ((x.u & 0x7F800000u) == 0x7F800000u && (x.u & 0x007FFFFFu)) return (uint16_t)((x.u >> 16) | 0x40u); /* NaN */
    return (uint16_t)((x.u + 0x7FFFu + ((x.u >> 16) & 1u)) >> 16);
}

static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x); /* ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(0.001388888889f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.008333333333f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.04166666667f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.1666666667f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/*
 * An LM head's argmax in passing (greedy decoding's token while the logits are computed, so the sampler need not
 * read the logits back): each thread folds the values it writes into its own argmax_part, and argmax_merge
 * combines the parts with torch.max(dim=-1)'s rules — the largest value's first index, a row's first NaN if it
 * holds one, 0 for a row of -inf. At most ARGMAX_MAX_ROWS token rows and ARGMAX_MAX_THREADS parts.
 */
enum { ARGMAX_MAX_ROWS = 16, ARGMAX_MAX_THREADS = 64 };

typedef struct {
    float best[ARGMAX_MAX_ROWS];
    int32_t idx[ARGMAX_MAX_ROWS], nan[ARGMAX_MAX_ROWS]; /* the best value's and the first NaN's index; -1: none */
} argmax_part;

static inline void argmax_part_init(argmax_part *p) {
    for (int t = 0; t < ARGMAX_MAX_ROWS; ++t) p->best[t] = -INFINITY, p->idx[t] = p->nan[t] = -1;
}

/* value v at column n of row t; a part's columns may come in any order */
static inline void argmax_part_add(argmax_part *p, int64_t t, float v, int32_t n) {
    if (v > p->best[t] || (v == p->best[t] && p->idx[t] >= 0 && n < p->idx[t]))
        p->best[t] = v, p->idx[t] = n;
    else if (v != v && (p->nan[t] < 0 || n < p->nan[t]))
        p->nan[t] = n;
}

/*
 * The values v [len] at columns n0 .. n0 + len - 1 of row t: one vectorized pass for their maximum (and any NaN),
 * a second for its first occurrence only where it changes the part. A span holding a NaN records its first NaN
 * only (the row's answer is then a NaN's index whatever its values).
 */
static inline void argmax_part_add_span(argmax_part *p, int64_t t, const float *v, int32_t n0, int32_t len) {
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (int32_t i = 0; i < len; i += 16) {
        const __mmask16 m = len - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - i)) - 1);
        const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, v + i);
        nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
        vmax = _mm512_max_ps(vmax, x); /* a NaN lane loses its maximum; the NaN decides the row anyway */
    }
    if (nan) {
        for (int32_t j = 0; j < len; ++j)
            if (v[j] != v[j]) {
                argmax_part_add(p, t, v[j], n0 + j);
                return;
            }
    }
    const float top = _mm512_reduce_max_ps(vmax);
    if (!(top > p->best[t] || (top == p->best[t] && p->idx[t] >= 0 && n0 < p->idx[t]))) return;
    const __m512 b = _mm512_set1_ps(top);
    for (int32_t i = 0; i < len; i += 16) {
        const __mmask16 m = len - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (len - i)) - 1);
        const __mmask16 eq = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, v + i), b, _CMP_EQ_OQ);
        if (eq) {
            p->best[t] = top, p->idx[t] = n0 + i + __builtin_ctz((unsigned)eq);
            return;
        }
    }
}

/* out int64 [T] = each row's argmax over the columns the parts saw */
static inline void argmax_merge(const argmax_part *parts, int num_parts, int64_t T, int64_t *out) {
    for (int64_t t = 0; t < T; ++t) {
        int32_t first_nan = -1, idx = -1;
        float top = -INFINITY;
        for (int h = 0; h < num_parts; ++h) {
            const int32_t nan = parts[h].nan[t], i = parts[h].idx[t];
            if (nan >= 0 && (first_nan < 0 || nan < first_nan)) first_nan = nan;
            if (i >= 0 && (parts[h].best[t] > top || (parts[h].best[t] == top && i < idx))) top = parts[h].best[t], idx = i;
        }
        /* all -inf: no value beat the start, and the first index is torch's answer */
        out[t] = first_nan >= 0 ? first_nan : idx >= 0 ? idx : 0;
    }
}

#endif
