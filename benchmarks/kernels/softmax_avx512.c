/* Row-wise unnormalised softmax, hand-vectorised for AVX-512: for each row, m = max, row = exp(row - m) in place,
 * lsum[i] = sum of the row. A measuring aid for benchmarks/profile_attention_bound.py (a cheap exact exp pass,
 * hand-vectorised, to time next to the attention matmuls); not part of the package.
 * exp(x) = 2^n * p(f), x*log2(e) = n + f, |f| <= 1/2, p a degree-6 polynomial of 2^f (the script prints the
 * softmax's largest difference to torch's). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

void softmax_unnorm(float *s, int64_t rows, int64_t len, int64_t ld, float *lsum) {
    const __m512 log2e = _mm512_set1_ps(1.4426950408889634f), lo = _mm512_set1_ps(-126.0f);
    const __m512 c6 = _mm512_set1_ps(1.5353362e-4f), c5 = _mm512_set1_ps(1.3398874e-3f),
                 c4 = _mm512_set1_ps(9.6181291e-3f), c3 = _mm512_set1_ps(5.5503348e-2f),
                 c2 = _mm512_set1_ps(2.4022648e-1f), c1 = _mm512_set1_ps(6.9314718e-1f), c0 = _mm512_set1_ps(1.0f);
    const int64_t nv = len / 16, rem = len % 16;
    const __mmask16 tail = (__mmask16)((1u << rem) - 1u);
    for (int64_t i = 0; i < rows; i++) {
        float *row = s + i * ld;
        __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
        int64_t j = 0;
        for (; j + 4 <= nv; j += 4) {
            m0 = _mm512_max_ps(m0, _mm512_loadu_ps(row + 16 * j));
            m1 = _mm512_max_ps(m1, _mm512_loadu_ps(row + 16 * j + 16));
            m2 = _mm512_max_ps(m2, _mm512_loadu_ps(row + 16 * j + 32));
            m3 = _mm512_max_ps(m3, _mm512_loadu_ps(row + 16 * j + 48));
        }
        for (; j < nv; j++) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(row + 16 * j));
        if (rem) m1 = _mm512_mask_max_ps(m1, tail, m1, _mm512_maskz_loadu_ps(tail, row + 16 * nv));
        const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
        const __m512 mm = _mm512_set1_ps(m * 1.4426950408889634f);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        for (j = 0; j < nv + (rem ? 1 : 0); j++) {
            const __mmask16 k = j < nv ? (__mmask16)0xFFFF : tail;
            __m512 x = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(k, row + 16 * j), log2e, mm);
            x = _mm512_max_ps(x, lo);
            const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 f = _mm512_sub_ps(x, n);
            __m512 p = _mm512_fmadd_ps(c6, f, c5);
            p = _mm512_fmadd_ps(p, f, c4);
            p = _mm512_fmadd_ps(p, f, c3);
            p = _mm512_fmadd_ps(p, f, c2);
            p = _mm512_fmadd_ps(p, f, c1);
            p = _mm512_fmadd_ps(p, f, c0);
            p = _mm512_scalef_ps(p, n);
            _mm512_mask_storeu_ps(row + 16 * j, k, p);
            if (j & 1)
                a1 = _mm512_mask_add_ps(a1, k, a1, p);
            else
                a0 = _mm512_mask_add_ps(a0, k, a0, p);
        }
        lsum[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
}
