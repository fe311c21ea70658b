/*
 * Helpers shared by radixgen's CPU kernels: bfloat16 <-> float32 conversion (round to nearest even, NaN kept a
 * NaN) and a 16-lane e^x.
 *
 * exp16 is a polynomial (Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor of e^r; relative
 * error below 2e-7 on [-87, 88], saturating outside), vectorized by hand: no -ffast-math, whose startup code
 * would change the whole process's denormal handling.
 */
#ifndef RADIXGEN_CPU_COMMON_H
#define RADIXGEN_CPU_COMMON_H

#include <immintrin.h>
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

#endif
