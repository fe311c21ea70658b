/*
 * The element-wise parts of a Llama decoder layer on the CPU, one call each instead of 5-10 torch ops: at
 * decode batch sizes each torch op costs microseconds of dispatch for nanoseconds of arithmetic. The same fused
 * ops as vLLM's and SGLang's CPU/GPU kernels: rms_norm, fused_add_rms_norm, rotary embedding in place,
 * silu_and_mul.
 *
 * dtype 0: float32, 1: bfloat16 for every activation tensor of a call; weights and the cos/sin cache as noted.
 * Arithmetic is float32. The bfloat16 paths round where transformers' bfloat16 ops round (after each op that
 * returns a bfloat16 tensor), so results equal the torch path's to within float32 summation order.
 * Rows are independent: every call runs rows in parallel (OpenMP, torch's runtime) when there are at least
 * PARALLEL_ROWS of them.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_common.h"

#define PARALLEL_ROWS 16

static inline float ld(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* store, rounding to the tensor's dtype; returns the value as stored (what a later read sees) */
static inline float st(void *p, int64_t i, float v, int bf16) {
    if (bf16) {
        uint16_t b = f32_to_bf16(v);
        ((uint16_t *)p)[i] = b;
        return bf16_to_f32(b);
    }
    ((float *)p)[i] = v;
    return v;
}

static inline float round_to(float v, int bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(v)) : v; }

/*
 * RMSNorm (Zhang & Sennrich 2019) of rows x [T, H] (row stride sx elements) into out [T, H] (contiguous):
 * out = w * round(x / sqrt(mean(x^2) + eps)), w [H] of the activation dtype. With residual [T, H] (contiguous,
 * updated in place) the row is first x + residual, rounded to the dtype and stored back into residual (vLLM's
 * fused_add_rms_norm: the residual stream carries the sum to the next layer).
 */
void radixgen_rms_norm(int dtype, const void *x, int64_t sx, void *residual, const void *w, void *out, int64_t T,
                       int64_t H, float eps) {
    const int bf16 = dtype == 1;
#pragma omp parallel for if (T >= PARALLEL_ROWS)
    for (int64_t t = 0; t < T; ++t) {
        float sum = 0.0f;
        if (residual != 0) {
            for (int64_t i = 0; i < H; ++i) {
                float v = ld(x, t * sx + i, bf16) + ld(residual, t * H + i, bf16);
                v = st(residual, t * H + i, v, bf16);
                sum += v * v;
            }
        } else {
            for (int64_t i = 0; i < H; ++i) {
                float v = ld(x, t * sx + i, bf16);
                sum += v * v;
            }
        }
        const void *src = residual != 0 ? residual : x;
        const int64_t stride = residual != 0 ? H : sx;
        const float inv = 1.0f / sqrtf(sum / (float)H + eps);
        for (int64_t i = 0; i < H; ++i) {
            float v = round_to(ld(src, t * stride + i, bf16) * inv, bf16);
            st(out, t * H + i, ld(w, i, bf16) * v, bf16);
        }
    }
}

/*
 * Rotary position embedding (Su et al. 2021), rotate-half layout, in place on the q and k heads of each row of
 * qkv [T, (Hq + 2 Hkv) * D] (row stride sqkv; q heads first, then k, then v, which is left alone).
 * cos_sin [max_pos, D] float32 holds cos in its first half and sin in its second; positions [T] int64.
 * out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin; in bfloat16 cos/sin are rounded first and each product
 * x1 cos, x2 cos is rounded before the second term is added (torch's mul then addcmul_).
 */
void radixgen_rotary_inplace(int dtype, void *qkv, int64_t sqkv, const int64_t *positions, const float *cos_sin,
                             int64_t T, int hq, int hkv, int D) {
    const int bf16 = dtype == 1, half = D / 2, heads = hq + hkv;
#pragma omp parallel for if (T >= PARALLEL_ROWS)
    for (int64_t t = 0; t < T; ++t) {
        const float *cs = cos_sin + positions[t] * D;
        for (int h = 0; h < heads; ++h) {
            const int64_t base = t * sqkv + (int64_t)h * D;
            for (int i = 0; i < half; ++i) {
                const float c = round_to(cs[i], bf16), s = round_to(cs[half + i], bf16);
                const float x1 = ld(qkv, base + i, bf16), x2 = ld(qkv, base + half + i, bf16);
                st(qkv, base + i, round_to(x1 * c, bf16) - x2 * s, bf16);
                st(qkv, base + half + i, round_to(x2 * c, bf16) + x1 * s, bf16);
            }
        }
    }
}

/*
 * SwiGLU activation (Shazeer 2020): out [T, I] = silu(gate) * up with gate_up [T, 2I] (row stride sgu; gate in
 * the first half). bfloat16 rounds silu(gate) before the product (torch's F.silu then mul_).
 */
void radixgen_silu_and_mul(int dtype, const void *gate_up, int64_t sgu, void *out, int64_t T, int64_t I) {
    const int bf16 = dtype == 1;
#pragma omp parallel for if (T >= PARALLEL_ROWS)
    for (int64_t t = 0; t < T; ++t) {
        const int64_t g0 = t * sgu, o0 = t * I;
        int64_t i = 0;
        if (!bf16) {
            const float *gu = (const float *)gate_up;
            float *o = (float *)out;
            for (; i + 16 <= I; i += 16) {
                __m512 g = _mm512_loadu_ps(gu + g0 + i), u = _mm512_loadu_ps(gu + g0 + I + i);
                const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)); /* e^-g */
                const __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
                _mm512_storeu_ps(o + o0 + i, _mm512_mul_ps(s, u));
            }
        }
        for (; i < I; ++i) {
            const float g = ld(gate_up, g0 + i, bf16), u = ld(gate_up, g0 + I + i, bf16);
            const float s = round_to(g / (1.0f + expf(-g)), bf16);
            st(out, o0 + i, s * u, bf16);
        }
    }
}

/*
 * Greedy sampling's argmax: out[t] = the index of the largest value of row t of x [T, V] float32 (rows contiguous),
 * the first one on ties, as torch.max(dim=-1).indices; a row holding NaN gives its first NaN's index (torch's
 * max propagates NaN). One vectorized pass for the maximum, a second up to its first occurrence: 7 us against
 * torch.max's 18 us for a [1, 32000] row called on its own on this project's CPU (runtime/sampler.py: argmax_rows).
 */
void radixgen_argmax_rows(const float *x, int64_t T, int64_t V, int64_t *out) {
#pragma omp parallel for if (T >= PARALLEL_ROWS)
    for (int64_t t = 0; t < T; ++t) {
        argmax_part part;
        argmax_part_init(&part);
        argmax_part_add_span(&part, 0, x + t * V, 0, (int32_t)V);
        argmax_merge(&part, 1, 1, out + t);
    }
}
