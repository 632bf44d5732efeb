/* The reference app's native Llama forward pass: weights kept compressed, activations and accumulation float32.
 *
 * Built once per machine by pipeline/guest/native_build.py (gcc -O3 -march=native -ffp-contract=off -fopenmp),
 * loaded with ctypes by pipeline/guest/qkernel.py. No Python C-API: one .so serves every Python version.
 *
 * WHY this file exists: the numpy engine dequantised every weight to float32 at load, so each token read ~540 MB
 * (memory-bound on the wrong format) and prefilled token by token. llama.cpp reads the 98 MB GGUF per token but
 * quantises activations to 8 bits inside its dot products (its greedy answers equal a float run on 4/12 prompts).
 * Here each weight is expanded to exactly the float32 value the numpy engine's dequantisation gives
 * (Q4_1: fl(fl(d*q)+m); Q8_0: fl(q*d); w8/w4/w3 codes: fl(code*scale); F16: exact) and multiplied with float32
 * activations: the same products as the float reference, summed in a different (fixed) order.
 *
 * Determinism contract (tests check it bit for bit):
 *  - every output element (row r of token t) is accumulated by ONE thread in ONE fixed order: two 16-lane
 *    accumulators over 32-element blocks (lanes 0-15 / 16-31 of each block), fused multiply-add per lane, then a
 *    fixed reduction tree. The order does not depend on the number of tokens in the call (batched prefill gives the
 *    logits and KV values of token-by-token prefill) nor on the number of threads (work is split by rows/heads);
 *  - the AVX-512 path and the portable path compute the same lane-wise operations (fmaf per lane), so they agree
 *    bit for bit too; -ffp-contract=off keeps the compiler from fusing anything else.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define QK_ABI 1

enum { F_F32 = 0, F_F16 = 1, F_Q4_1 = 2, F_Q8_0 = 3, F_I8 = 4, F_I4 = 5 };

typedef struct {
    int32_t fmt, rows, cols, pad;
    int64_t row_bytes;       /* bytes from one row to the next */
    const uint8_t *data;
    const float *scale;      /* one per row (F_I8, F_I4), else NULL */
    const float *bias;       /* one per row or NULL */
} qk_mat;

typedef struct {
    const float *ln1, *ln2;
    qk_mat wq, wk, wv, wo, wg, wu, wd;
} qk_layer;

typedef struct {
    int32_t n_layers, hidden, inter, n_heads, n_kv, head_dim, vocab, max_pos, act_bits, n_threads;
    float eps, attn_scale;
    const float *norm, *cos, *sin; /* cos/sin: (max_pos, head_dim/2), the numpy engine's own tables */
    qk_mat embed, lm_head;
    const qk_layer *layers;
} qk_model;

int qk_abi(void) { return QK_ABI; }

int qk_simd(void) {
#if defined(__AVX512F__)
    return 512;
#else
    return 0;
#endif
}

int qk_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------------------------------ scalar helpers */
static inline float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h); /* exact, like the bit manipulation below */
#endif
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* the fixed reduction of the two 16-lane accumulators: v = lo + hi, then halves added 16 -> 8 -> 4 -> 2 -> 1 */
static float reduce32(const float *lo, const float *hi) {
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = lo[i] + hi[i];
    for (int w = 8; w >= 1; w >>= 1)
        for (int i = 0; i < w; i++) v[i] = v[i] + v[i + w];
    return v[0];
}

/* ---------------------------------------------------------------- weight expansion (portable, 32 per block) */
/* w[0..31] = the float32 weights of block b of row r, in the order the prepared input uses */
static void expand_block(const qk_mat *W, int r, int b, float *w) {
    const uint8_t *row = W->data + (int64_t)r * W->row_bytes;
    switch (W->fmt) {
    case F_F32:
        memcpy(w, row + (int64_t)b * 128, 128);
        break;
    case F_F16:
        for (int i = 0; i < 32; i++) w[i] = f16_to_f32(rd16(row + (int64_t)b * 64 + 2 * i));
        break;
    case F_Q4_1: {
        const uint8_t *blk = row + (int64_t)b * 20;
        float d = f16_to_f32(rd16(blk)), m = f16_to_f32(rd16(blk + 2));
        for (int i = 0; i < 16; i++) {
            float lo = d * (float)(blk[4 + i] & 0x0f), hi = d * (float)(blk[4 + i] >> 4);
            w[i] = lo + m;
            w[16 + i] = hi + m;
        }
        break;
    }
    case F_Q8_0: {
        const uint8_t *blk = row + (int64_t)b * 34;
        float d = f16_to_f32(rd16(blk));
        for (int i = 0; i < 32; i++) w[i] = (float)(int8_t)blk[2 + i] * d;
        break;
    }
    case F_I8: {
        float s = W->scale[r];
        for (int i = 0; i < 32; i++) w[i] = (float)(int8_t)row[(int64_t)b * 32 + i] * s;
        break;
    }
    case F_I4: { /* even columns in the low nibbles (lanes 0-15), odd in the high ones: input is deinterleaved */
        float s = W->scale[r];
        for (int i = 0; i < 16; i++) {
            uint8_t q = row[(int64_t)b * 16 + i];
            w[i] = (float)((int)(q & 0x0f) - 8) * s;
            w[16 + i] = (float)((int)(q >> 4) - 8) * s;
        }
        break;
    }
    }
}

/* Y[t*ldy + r] = W[r] . X[t*ldx ..] (+ bias) for rows [r0, r1), tokens [0, n). Portable version. */
static void mm_rows_generic(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy, int r0, int r1) {
    int nb = W->cols / 32;
    float w[32];
    float *acc = malloc(sizeof(float) * 32 * (size_t)n);
    for (int r = r0; r < r1; r++) {
        memset(acc, 0, sizeof(float) * 32 * (size_t)n);
        for (int b = 0; b < nb; b++) {
            expand_block(W, r, b, w);
            for (int t = 0; t < n; t++) {
                const float *x = X + (int64_t)t * ldx + b * 32;
                float *a = acc + 32 * t;
                for (int i = 0; i < 32; i++) a[i] = fmaf(w[i], x[i], a[i]);
            }
        }
        for (int t = 0; t < n; t++) {
            float y = reduce32(acc + 32 * t, acc + 32 * t + 16);
            Y[(int64_t)t * ldy + r] = W->bias ? y + W->bias[r] : y;
        }
    }
    free(acc);
}

#if defined(__AVX512F__)
static inline float hsum_avx(__m512 lo, __m512 hi) {
    float a[16], b[16];
    _mm512_storeu_ps(a, lo);
    _mm512_storeu_ps(b, hi);
    return reduce32(a, b);
}

/* The AVX-512 twins of mm_rows_generic: the same per-lane fmas in the same order, one function per format so
 * the block decode is inlined with no branch; 4 tokens (8 accumulators) per pass over a row's blocks in prefill,
 * 2 rows at once for a single token (4 independent fma chains hide the fma latency). */
#define LX(p) _mm512_loadu_ps(p)
#define DEF_MM(NAME, BLOCK)                                                                            \
    static void NAME(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy, int r0, int r1) {     \
        const int nb = W->cols / 32;                                                                           \
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);              \
        (void)iota;                                                                                            \
        int r = r0;                                                                                            \
        if (n == 1) {                                                                                          \
            for (; r + 2 <= r1; r += 2) {                                                                      \
                const uint8_t *rowA = W->data + (int64_t)r * W->row_bytes, *rowB = rowA + W->row_bytes;        \
                const float sA = W->scale ? W->scale[r] : 0.0f, sB = W->scale ? W->scale[r + 1] : 0.0f;        \
                __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;                                    \
                const __m512 vsA = _mm512_set1_ps(sA), vsB = _mm512_set1_ps(sB);                               \
                (void)vsA; (void)vsB;                                                                          \
                for (int b = 0; b < nb; b++) {                                                                 \
                    const __m512 xl = LX(X + b * 32), xh = LX(X + b * 32 + 16);                                \
                    {                                                                                          \
                        const uint8_t *row = rowA; const float s = sA; const __m512 vs = vsA; (void)s; (void)vs; \
                        __m512 wlo, whi; BLOCK;                                                                \
                        a0 = _mm512_fmadd_ps(wlo, xl, a0); b0 = _mm512_fmadd_ps(whi, xh, b0);                  \
                    }                                                                                          \
                    {                                                                                          \
                        const uint8_t *row = rowB; const float s = sB; const __m512 vs = vsB; (void)s; (void)vs; \
                        __m512 wlo, whi; BLOCK;                                                                \
                        a1 = _mm512_fmadd_ps(wlo, xl, a1); b1 = _mm512_fmadd_ps(whi, xh, b1);                  \
                    }                                                                                          \
                }                                                                                              \
                float y0 = hsum_avx(a0, b0), y1 = hsum_avx(a1, b1);                                            \
                Y[r] = W->bias ? y0 + W->bias[r] : y0;                                                         \
                Y[r + 1] = W->bias ? y1 + W->bias[r + 1] : y1;                                                 \
            }                                                                                                  \
        }                                                                                                      \
        for (; r < r1; r++) {                                                                                  \
            const uint8_t *row = W->data + (int64_t)r * W->row_bytes;                                          \
            const float s = W->scale ? W->scale[r] : 0.0f;                                                     \
            const __m512 vs = _mm512_set1_ps(s);                                                               \
            (void)vs;                                                                                          \
            int t0 = 0;                                                                                        \
            for (; t0 + 4 <= n; t0 += 4) {                                                                     \
                __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0; \
                const float *x0 = X + (int64_t)t0 * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;       \
                for (int b = 0; b < nb; b++) {                                                                 \
                    __m512 wlo, whi; BLOCK;                                                                    \
                    const int o = b * 32;                                                                      \
                    a0 = _mm512_fmadd_ps(wlo, LX(x0 + o), a0); b0 = _mm512_fmadd_ps(whi, LX(x0 + o + 16), b0); \
                    a1 = _mm512_fmadd_ps(wlo, LX(x1 + o), a1); b1 = _mm512_fmadd_ps(whi, LX(x1 + o + 16), b1); \
                    a2 = _mm512_fmadd_ps(wlo, LX(x2 + o), a2); b2 = _mm512_fmadd_ps(whi, LX(x2 + o + 16), b2); \
                    a3 = _mm512_fmadd_ps(wlo, LX(x3 + o), a3); b3 = _mm512_fmadd_ps(whi, LX(x3 + o + 16), b3); \
                }                                                                                              \
                float y[4] = {hsum_avx(a0, b0), hsum_avx(a1, b1), hsum_avx(a2, b2), hsum_avx(a3, b3)};         \
                for (int j = 0; j < 4; j++) Y[(int64_t)(t0 + j) * ldy + r] = W->bias ? y[j] + W->bias[r] : y[j]; \
            }                                                                                                  \
            for (; t0 < n; t0++) {                                                                             \
                __m512 a0 = _mm512_setzero_ps(), b0 = a0;                                                      \
                const float *x0 = X + (int64_t)t0 * ldx;                                                       \
                for (int b = 0; b < nb; b++) {                                                                 \
                    __m512 wlo, whi; BLOCK;                                                                    \
                    a0 = _mm512_fmadd_ps(wlo, LX(x0 + b * 32), a0);                                            \
                    b0 = _mm512_fmadd_ps(whi, LX(x0 + b * 32 + 16), b0);                                       \
                }                                                                                              \
                float y = hsum_avx(a0, b0);                                                                    \
                Y[(int64_t)t0 * ldy + r] = W->bias ? y + W->bias[r] : y;                                       \
            }                                                                                                  \
        }                                                                                                      \
    }

DEF_MM(mm_f32,
       wlo = LX((const float *)(row + (int64_t)b * 128)); whi = LX((const float *)(row + (int64_t)b * 128 + 64)))
DEF_MM(mm_f16,
       wlo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + (int64_t)b * 64)));
       whi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + (int64_t)b * 64 + 32))))
DEF_MM(mm_q41,
       const uint8_t *blk = row + (int64_t)b * 20;
       const __m512 tab = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(f16_to_f32(rd16(blk))), iota),
                                        _mm512_set1_ps(f16_to_f32(rd16(blk + 2)))); /* fl(fl(d*q)+m) */
       const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 4)));
       wlo = _mm512_permutexvar_ps(q, tab); /* vpermps reads index bits 3:0: the low nibble */
       whi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), tab))
DEF_MM(mm_q80,
       const uint8_t *blk = row + (int64_t)b * 34;
       const __m512 d = _mm512_set1_ps(f16_to_f32(rd16(blk)));
       wlo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)))), d);
       whi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18)))), d))
DEF_MM(mm_i8,
       wlo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
           _mm_loadu_si128((const __m128i *)(row + (int64_t)b * 32)))), vs);
       whi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
           _mm_loadu_si128((const __m128i *)(row + (int64_t)b * 32 + 16)))), vs))
DEF_MM(mm_i4,
       const __m512 t4 = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(8.0f)), vs); /* fl((q-8)*s) */
       const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (int64_t)b * 16)));
       wlo = _mm512_permutexvar_ps(q, t4);
       whi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), t4))

static void mm_rows_avx512(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy, int r0, int r1) {
    switch (W->fmt) {
    case F_F32: mm_f32(W, X, n, ldx, Y, ldy, r0, r1); break;
    case F_F16: mm_f16(W, X, n, ldx, Y, ldy, r0, r1); break;
    case F_Q4_1: mm_q41(W, X, n, ldx, Y, ldy, r0, r1); break;
    case F_Q8_0: mm_q80(W, X, n, ldx, Y, ldy, r0, r1); break;
    case F_I8: mm_i8(W, X, n, ldx, Y, ldy, r0, r1); break;
    default: mm_i4(W, X, n, ldx, Y, ldy, r0, r1); break;
    }
}
#endif

static int force_generic = 0;
void qk_set_generic(int on) { force_generic = on; }

static void mm_rows(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy, int r0, int r1) {
#if defined(__AVX512F__)
    if (!force_generic) {
        mm_rows_avx512(W, X, n, ldx, Y, ldy, r0, r1);
        return;
    }
#endif
    mm_rows_generic(W, X, n, ldx, Y, ldy, r0, r1);
}

/* The input as the weight format reads it: F_I4 rows pair column 2i (low nibble) with 2i+1 (high nibble), so
 * each 32-block of x is deinterleaved to [x0 x2 .. x30 | x1 x3 .. x31]; every other format reads x as it is. */
static const float *prepare(const qk_mat *W, const float *X, int n, int ld, float *buf) {
    if (W->fmt != F_I4) return X;
    for (int t = 0; t < n; t++)
        for (int b = 0; b < W->cols / 32; b++)
            for (int i = 0; i < 16; i++) {
                buf[(int64_t)t * ld + b * 32 + i] = X[(int64_t)t * ld + b * 32 + 2 * i];
                buf[(int64_t)t * ld + b * 32 + 16 + i] = X[(int64_t)t * ld + b * 32 + 2 * i + 1];
            }
    return buf;
}

#define ROW_CHUNK 16

/* rows [0, rows) in chunks of `chunk`, split statically over the threads (each row: one thread, fixed order);
 * nowait: the caller places the one barrier a phase needs */
static void par_mm(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy) {
    const int chunks = (W->rows + ROW_CHUNK - 1) / ROW_CHUNK;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
    for (int c = 0; c < chunks; c++) {
        int r0 = c * ROW_CHUNK, r1 = r0 + ROW_CHUNK < W->rows ? r0 + ROW_CHUNK : W->rows;
        mm_rows(W, X, n, ldx, Y, ldy, r0, r1);
    }
}

static inline void barrier(void) {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

/* ------------------------------------------------------------------------------------------ elementwise */
/* y = w * (x / sqrt(sum(x*x)/n + eps)), the sum in a fixed 16-lane order */
static void rmsnorm(const float *x, const float *w, float *y, int n, float eps) {
    float acc[16] = {0}, zero[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] = fmaf(x[i + l], x[i + l], acc[l]);
    float ss = reduce32(acc, zero);
    for (; i < n; i++) ss = fmaf(x[i], x[i], ss);
    float r = sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) y[i] = w[i] * (x[i] / r);
}

/* MobileQuant's A8 as the numpy engine emulates it: one symmetric scale max|x|/qmax per token vector */
static void fake_quant(float *x, int n, int bits) {
    float qmax = (float)((1 << (bits - 1)) - 1), amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    if (amax == 0.0f) return;
    float s = amax / qmax;
    for (int i = 0; i < n; i++) {
        float q = rintf(x[i] / s);
        q = q < -qmax ? -qmax : (q > qmax ? qmax : q);
        x[i] = q * s;
    }
}

static void embed_row(const qk_mat *E, int tok, float *out) {
    float w[32];
    for (int b = 0; b < E->cols / 32; b++) {
        expand_block(E, tok, b, w);
        if (E->fmt == F_I4) /* expand_block gives [even | odd] columns: back to column order */
            for (int i = 0; i < 16; i++) { out[b * 32 + 2 * i] = w[i]; out[b * 32 + 2 * i + 1] = w[16 + i]; }
        else
            memcpy(out + b * 32, w, sizeof w);
    }
}

static float dot_fixed(const float *a, const float *b, int n) {
    float acc[16] = {0}, zero[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    float s = reduce32(acc, zero);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

/* ------------------------------------------------------------------------------------------ forward */
static void rope(float *p, const float *cs, const float *sn, int half) {
    for (int i = 0; i < half; i++) {
        float a = p[i], b = p[i + half];
        p[i] = a * cs[i] - b * sn[i];
        p[i + half] = b * cs[i] + a * sn[i];
    }
}

/* the input a matmul reads: `X` itself, or a thread-private copy when it must be fake-quantised (A8) or
 * deinterleaved (F_I4) first; `quant` says whether this input is an A8 point (decoder linear inputs) */
static const float *input_for(const qk_mat *W, const float *X, int n, int ld, int bits, float *tmp, float *buf) {
    if (bits) {
        memcpy(tmp, X, sizeof(float) * (size_t)n * ld);
        for (int t = 0; t < n; t++) fake_quant(tmp + (int64_t)t * ld, ld, bits);
        X = tmp;
    }
    return prepare(W, X, n, ld, buf);
}

/* Run tokens[0..n) at positions pos0..pos0+n-1 (contiguous, < max_pos), writing their K/V into the caches
 * (layout (layers, n_kv, max_pos, head_dim)); logits of the LAST token into `logits` (vocab floats).
 * Returns 0, or a negative code for bad arguments / allocation failure.
 *
 * Threads: five barriers per layer (after q/k/v, attention, o, gate/up, down). The residual stream, the norms and
 * the A8/deinterleave copies are computed by every thread into its own buffers (identical values, no barrier);
 * k rows are computed a head at a time so the thread that computed a head ropes it and writes the cache. */
int qk_forward(const qk_model *M, int n, const int32_t *tokens, int32_t pos0, float *kc, float *vc, float *logits) {
    const int H = M->hidden, I = M->inter, nh = M->n_heads, nkv = M->n_kv, hd = M->head_dim, half = hd / 2;
    const int qd = nh * hd, kvd = nkv * hd, grp = nh / nkv, T = pos0 + n, bits = M->act_bits;
    if (n <= 0 || pos0 < 0 || T > M->max_pos) return -1;
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= M->vocab) return -2;
    int wide = H > qd ? H : qd;
    wide = wide > I ? wide : I;
    const int threads = M->n_threads > 0 ? M->n_threads : 1;
    const size_t priv = (size_t)n * H + 3 * (size_t)n * wide + (size_t)T + hd; /* x, xn, tmp, xp, scores, qh */
    float *shared = malloc(sizeof(float) * ((size_t)n * (qd + 2 * kvd + qd + H + 2 * (size_t)I)));
    float *privs = malloc(sizeof(float) * priv * threads);
    if (!shared || !privs) { free(shared); free(privs); return -3; }
    float *q = shared, *kb = q + (size_t)n * qd, *vb = kb + (size_t)n * kvd, *att = vb + (size_t)n * kvd;
    float *o = att + (size_t)n * qd, *g = o + (size_t)n * H, *u = g + (size_t)n * I;

#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        float *x = privs + priv * (size_t)omp_get_thread_num();
#else
        float *x = privs;
#endif
        float *xn = x + (size_t)n * H, *tmp = xn + (size_t)n * wide, *xp = tmp + (size_t)n * wide;
        float *scores = xp + (size_t)n * wide, *qh = scores + T;
        for (int t = 0; t < n; t++) embed_row(&M->embed, tokens[t], x + (int64_t)t * H);
        for (int l = 0; l < M->n_layers; l++) {
            const qk_layer *L = &M->layers[l];
            float *K = kc + (int64_t)l * nkv * M->max_pos * hd, *V = vc + (int64_t)l * nkv * M->max_pos * hd;
            for (int t = 0; t < n; t++) rmsnorm(x + (int64_t)t * H, L->ln1, xn + (int64_t)t * H, H, M->eps);
            const float *in = input_for(&L->wq, xn, n, H, bits, tmp, xp);
            par_mm(&L->wq, in, n, H, q, qd);
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
            for (int h = 0; h < 2 * nkv; h++) { /* k heads then v heads: rope k, both into the cache */
                const int kv = h % nkv, isv = h >= nkv;
                float *buf = isv ? vb : kb;
                mm_rows(isv ? &L->wv : &L->wk, in, n, H, buf, kvd, kv * hd, kv * hd + hd);
                for (int t = 0; t < n; t++) {
                    float *p = buf + (int64_t)t * kvd + kv * hd;
                    if (!isv) rope(p, M->cos + (int64_t)(pos0 + t) * half, M->sin + (int64_t)(pos0 + t) * half, half);
                    memcpy((isv ? V : K) + ((int64_t)kv * M->max_pos + pos0 + t) * hd, p, sizeof(float) * hd);
                }
            }
            barrier();
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
            for (int th = 0; th < n * nh; th++) { /* one (token, head) pair: causal over positions 0..pos */
                const int t = th / nh, h = th % nh, kv = h / grp, len = pos0 + t + 1;
                memcpy(qh, q + (int64_t)t * qd + h * hd, sizeof(float) * hd);
                rope(qh, M->cos + (int64_t)(pos0 + t) * half, M->sin + (int64_t)(pos0 + t) * half, half);
                const float *Kh = K + (int64_t)kv * M->max_pos * hd, *Vh = V + (int64_t)kv * M->max_pos * hd;
                float mx = -INFINITY, sum = 0.0f;
                for (int j = 0; j < len; j++) {
                    scores[j] = dot_fixed(qh, Kh + (int64_t)j * hd, hd) * M->attn_scale;
                    mx = scores[j] > mx ? scores[j] : mx;
                }
                for (int j = 0; j < len; j++) { scores[j] = expf(scores[j] - mx); sum += scores[j]; }
                for (int j = 0; j < len; j++) scores[j] = scores[j] / sum;
                float *out = att + (int64_t)t * qd + h * hd;
                for (int i = 0; i < hd; i++) out[i] = 0.0f;
                for (int j = 0; j < len; j++) {
                    const float pj = scores[j], *vr = Vh + (int64_t)j * hd;
                    for (int i = 0; i < hd; i++) out[i] = fmaf(pj, vr[i], out[i]);
                }
            }
            barrier();
            in = input_for(&L->wo, att, n, qd, bits, tmp, xp);
            par_mm(&L->wo, in, n, qd, o, H);
            barrier();
            for (int t = 0; t < n; t++) {
                float *xt = x + (int64_t)t * H, *ot = o + (int64_t)t * H;
                for (int i = 0; i < H; i++) xt[i] = xt[i] + ot[i];
                rmsnorm(xt, L->ln2, xn + (int64_t)t * H, H, M->eps);
            }
            in = input_for(&L->wg, xn, n, H, bits, tmp, xp);
            {
                const int chunks = (I + ROW_CHUNK - 1) / ROW_CHUNK;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
                for (int c = 0; c < chunks; c++) { /* gate and up rows of a chunk, then silu(g) * u on them */
                    int r0 = c * ROW_CHUNK, r1 = r0 + ROW_CHUNK < I ? r0 + ROW_CHUNK : I;
                    mm_rows(&L->wg, in, n, H, g, I, r0, r1);
                    mm_rows(&L->wu, in, n, H, u, I, r0, r1);
                    for (int t = 0; t < n; t++)
                        for (int i = r0; i < r1; i++) { /* silu as the numpy engine: a * (0.5 + 0.5 tanh(a/2)) */
                            float a = g[(int64_t)t * I + i];
                            g[(int64_t)t * I + i] = a * (0.5f + 0.5f * tanhf(0.5f * a)) * u[(int64_t)t * I + i];
                        }
                }
            }
            barrier();
            in = input_for(&L->wd, g, n, I, bits, tmp, xp);
            par_mm(&L->wd, in, n, I, o, H);
            barrier();
            for (int t = 0; t < n; t++)
                for (int i = 0; i < H; i++) x[(int64_t)t * H + i] = x[(int64_t)t * H + i] + o[(int64_t)t * H + i];
        }
        /* final norm and lm_head of the last token only (the app samples from it alone) */
        rmsnorm(x + (int64_t)(n - 1) * H, M->norm, xn, H, M->eps);
        par_mm(&M->lm_head, prepare(&M->lm_head, xn, 1, H, xp), 1, H, logits, M->vocab);
    }
    free(shared);
    free(privs);
    return 0;
}

/* One matmul Y = X W^T (n tokens) on `threads` threads: what qk_forward does per weight, exposed for tests and
 * benchmarks (the same rows/order, so the same bits). X is read in column order whatever the format. */
int qk_matmul(const qk_mat *W, const float *X, int n, int ldx, float *Y, int ldy, int threads) {
    float *buf = W->fmt == F_I4 ? malloc(sizeof(float) * (size_t)n * ldx) : NULL;
    if (W->fmt == F_I4 && !buf) return -3;
    const float *in = prepare(W, X, n, ldx, buf);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
#endif
    par_mm(W, in, n, ldx, Y, ldy);
    free(buf);
    return 0;
}
