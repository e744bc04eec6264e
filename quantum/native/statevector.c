/* Fused statevector kernels for the JAX simulator's native path (quantum/native/kernel.py).
 *
 * Why: XLA:CPU runs each stage of a circuit as a separate pass over the whole batch, at the rate its matmul
 * reaches for 32-wide blocks (~24 GFLOP/s here). This file runs every factor of the circuit on one example's
 * state while it sits in the L1/L2 cache, with a register-blocked microkernel, one example per thread at a time.
 *
 * States are split planes: psi[B][2][2^n] (real, imaginary), cirq's big-endian qubit order. A factor is
 *   kind 0: a real d x d matrix on the middle axis of the plane viewed as [hi][d][lo] (both planes alike);
 *   kind 1: a complex d x d matrix (real part, then imaginary part) on that axis;
 *   kind 2: a diagonal phase: cos table then sin table, 2^n each.
 * Each factor's data sits at `off[f]` floats into the shared buffer (src 0, one for the batch) or into the
 * example's row of the batched buffer (src 1, row length `row`).
 */
#include <stdlib.h>
#include <string.h>

typedef struct {
    int kind, hi, d, lo, src;
    long off;
} factor_t;

/* C = beta * C + alpha * op(A) B for row-major B [k x n] (ldb), C [m x n] (ldc), n a multiple of 16; op(A) is
 * A [m x k] (lda), or with TRANS_A the transpose of A [k x m] (lda). An 8 x 16 block of C stays in registers
 * while k runs: eight independent accumulator rows keep both FMA pipes busy (four leave half of them idle). */
#define GEMM_KERNEL(NAME, TRANS_A)                                                                              \
    static void NAME(int m, int n, int k, const float *restrict A, long lda, const float *restrict B, long ldb,  \
                     float *restrict C, long ldc, float alpha, int beta) {                                      \
        int i = 0;                                                                                              \
        for (; i + 8 <= m; i += 8)                                                                              \
            for (int j0 = 0; j0 < n; j0 += 16) {                                                                \
                float a0[16] = {0}, a1[16] = {0}, a2[16] = {0}, a3[16] = {0};                                   \
                float a4[16] = {0}, a5[16] = {0}, a6[16] = {0}, a7[16] = {0};                                   \
                for (int p = 0; p < k; p++) {                                                                   \
                    const float *b = B + p * ldb + j0;                                                          \
                    const float *c = TRANS_A ? A + p * lda + i : A + i * lda + p;                               \
                    const long step = TRANS_A ? 1 : lda;                                                        \
                    const float c0 = c[0], c1 = c[step], c2 = c[2 * step], c3 = c[3 * step];                    \
                    const float c4 = c[4 * step], c5 = c[5 * step], c6 = c[6 * step], c7 = c[7 * step];         \
                    for (int t = 0; t < 16; t++) {                                                              \
                        a0[t] += c0 * b[t]; a1[t] += c1 * b[t]; a2[t] += c2 * b[t]; a3[t] += c3 * b[t];         \
                        a4[t] += c4 * b[t]; a5[t] += c5 * b[t]; a6[t] += c6 * b[t]; a7[t] += c7 * b[t];         \
                    }                                                                                           \
                }                                                                                               \
                float *accs[8] = {a0, a1, a2, a3, a4, a5, a6, a7};                                              \
                for (int r = 0; r < 8; r++) {                                                                   \
                    float *o = C + (i + r) * ldc + j0;                                                          \
                    for (int t = 0; t < 16; t++) o[t] = (beta ? o[t] : 0.0f) + alpha * accs[r][t];              \
                }                                                                                               \
            }                                                                                                   \
        for (; i < m; i++)                                                                                      \
            for (int j0 = 0; j0 < n; j0 += 16) {                                                                \
                float a0[16] = {0};                                                                             \
                for (int p = 0; p < k; p++) {                                                                   \
                    const float c0 = TRANS_A ? A[p * lda + i] : A[i * lda + p];                                 \
                    for (int t = 0; t < 16; t++) a0[t] += c0 * B[p * ldb + j0 + t];                             \
                }                                                                                               \
                float *o0 = C + i * ldc + j0;                                                                   \
                for (int t = 0; t < 16; t++) o0[t] = (beta ? o0[t] : 0.0f) + alpha * a0[t];                     \
            }                                                                                                   \
    }
GEMM_KERNEL(gemm16_nn, 0)
GEMM_KERNEL(gemm16_tn, 1)

/* C = beta * C + alpha * op(A) B for any n (scalar loops when n is not a multiple of 16). */
static void gemm(int trans_a, int m, int n, int k, const float *A, long lda, const float *B, long ldb, float *C,
                 long ldc, float alpha, int beta) {
    if (n % 16 == 0) {
        (trans_a ? gemm16_tn : gemm16_nn)(m, n, k, A, lda, B, ldb, C, ldc, alpha, beta);
        return;
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) s += (trans_a ? A[p * lda + i] : A[i * lda + p]) * B[p * ldb + j];
            C[i * ldc + j] = (beta ? C[i * ldc + j] : 0.0f) + alpha * s;
        }
}

/* y[h][i][l] = sum_k A[i][k] x[h][k][l] (+ y when acc), times alpha; At is A transposed. */
static void apply_real(const float *restrict A, const float *restrict At, int hi, int d, int lo,
                       const float *restrict x, float *restrict y, float alpha, int acc) {
    const long plane = (long)d * lo;
    if (lo >= 16 || lo == 1) {
        if (lo == 1) {
            gemm(0, hi, d, d, x, d, At, d, y, d, alpha, acc); /* Y [hi x d] = X At */
        } else {
            for (int h = 0; h < hi; h++) gemm(0, d, lo, d, A, d, x + h * plane, lo, y + h * plane, lo, alpha, acc);
        }
        return;
    }
    /* A short trailing axis: each (h, l) is a strided row vector. */
    for (int h = 0; h < hi; h++)
        for (int l = 0; l < lo; l++)
            for (int i = 0; i < d; i++) {
                float s = 0.0f;
                for (int k = 0; k < d; k++) s += At[(long)k * d + i] * x[h * plane + (long)k * lo + l];
                float *out = y + h * plane + (long)i * lo + l;
                *out = (acc ? *out : 0.0f) + alpha * s;
            }
}

/* G[i][k] += alpha * sum_{h,l} u[h][i][l] v[h][k][l]; scratch holds d * lo floats. */
static void outer_acc(const float *restrict u, const float *restrict v, int hi, int d, int lo, float alpha,
                      float *restrict G, float *restrict scratch) {
    const long plane = (long)d * lo;
    if (lo == 1) {
        gemm(1, d, d, hi, u, d, v, d, G, d, alpha, 1); /* G += U^T V with U, V [hi x d] */
        return;
    }
    for (int h = 0; h < hi; h++) {
        /* G += U_h V_h^T with U_h, V_h [d x lo]. */
        const float *vh = v + h * plane;
        for (int k = 0; k < d; k++)
            for (int l = 0; l < lo; l++) scratch[(long)l * d + k] = vh[(long)k * lo + l];
        gemm(0, d, d, lo, u + h * plane, lo, scratch, d, G, d, alpha, 1);
    }
}

static void transpose(const float *restrict m, int d, float *restrict mt) {
    for (int i = 0; i < d; i++)
        for (int k = 0; k < d; k++) mt[(long)k * d + i] = m[(long)i * d + k];
}

/* One factor (or its adjoint) on one example's planes re/im. m is the factor's data; mt the same layout with
 * every matrix transposed (unused for a phase); tmp holds 2 * 2^n floats. */
static void apply_factor(const factor_t *f, const float *m, const float *mt, int adjoint, float *re, float *im,
                         float *tmp, long dim) {
    if (f->kind == 2) {
        const float *c = m, *s = m + dim;
        const float sign = adjoint ? -1.0f : 1.0f;
        for (long j = 0; j < dim; j++) {
            const float r = re[j], q = im[j], sj = sign * s[j];
            re[j] = r * c[j] - q * sj;
            im[j] = r * sj + q * c[j];
        }
        return;
    }
    const int d = f->d;
    const long dd = (long)d * d;
    /* A = M (forward) or M^dagger = Mr^T - i Mi^T (adjoint): swap the matrix and its transpose. */
    const float *ar = adjoint ? mt : m, *art = adjoint ? m : mt;
    float *yre = tmp, *yim = tmp + dim;
    if (f->kind == 0) {
        apply_real(ar, art, f->hi, d, f->lo, re, yre, 1.0f, 0);
        apply_real(ar, art, f->hi, d, f->lo, im, yim, 1.0f, 0);
    } else {
        const float *ai = ar + dd, *ait = art + dd;
        const float s = adjoint ? -1.0f : 1.0f;
        apply_real(ar, art, f->hi, d, f->lo, re, yre, 1.0f, 0);
        apply_real(ai, ait, f->hi, d, f->lo, im, yre, -s, 1);
        apply_real(ar, art, f->hi, d, f->lo, im, yim, 1.0f, 0);
        apply_real(ai, ait, f->hi, d, f->lo, re, yim, s, 1);
    }
    memcpy(re, yre, dim * sizeof(float));
    memcpy(im, yim, dim * sizeof(float));
}

/* mt <- every matrix of the factor's data transposed (a complex factor's two parts apart). */
static void transpose_factor(const factor_t *f, const float *m, float *mt) {
    if (f->kind == 2) return;
    const long dd = (long)f->d * f->d;
    for (int p = 0; p < (f->kind == 1 ? 2 : 1); p++) transpose(m + p * dd, f->d, mt + p * dd);
}

/* The data of factor f for example b, and its transposes (shared: precomputed; batched: into scratch). */
static const float *factor_data(const factor_t *f, long b, const float *shared, const float *shared_t,
                                const float *batched, long row, const float **mt, float *scratch) {
    if (!f->src) {
        *mt = shared_t + f->off;
        return shared + f->off;
    }
    const float *m = batched + b * row + f->off;
    transpose_factor(f, m, scratch);
    *mt = scratch;
    return m;
}

static float *shared_transposes(int nf, const factor_t *fs, const float *shared, long shared_size) {
    float *t = malloc(sizeof(float) * (shared_size > 0 ? shared_size : 1));
    if (!t) return NULL;
    for (int f = 0; f < nf; f++)
        if (!fs[f].src) transpose_factor(&fs[f], shared + fs[f].off, t + fs[f].off);
    return t;
}

static long max_d(const factor_t *fs, int nf) {
    long d = 1;
    for (int f = 0; f < nf; f++)
        if (fs[f].kind != 2 && fs[f].d > d) d = fs[f].d;
    return d;
}

/* psi[B][2][2^n] <- the factors applied in order. */
int qtha_forward(float *psi, long batch, int n, int nf, const factor_t *fs, const float *shared, const float *batched,
                 long row, long shared_size) {
    const long dim = 1L << n;
    const long md = max_d(fs, nf);
    float *shared_t = shared_transposes(nf, fs, shared, shared_size);
    int failed = shared_t == NULL;
#pragma omp parallel
    {
        float *tmp = malloc(sizeof(float) * 2 * dim), *scratch = malloc(sizeof(float) * 2 * md * md);
        if (!tmp || !scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (long b = 0; b < batch; b++) {
            if (failed) continue;
            float *re = psi + b * 2 * dim, *im = re + dim;
            for (int f = 0; f < nf; f++) {
                const float *mt;
                const float *m = factor_data(&fs[f], b, shared, shared_t, batched, row, &mt, scratch);
                apply_factor(&fs[f], m, mt, 0, re, im, tmp, dim);
            }
        }
        free(tmp);
        free(scratch);
    }
    free(shared_t);
    return failed ? -1 : 0;
}

/* The adjoint method, factor by factor from the last: psi (final state) is uncomputed to the state before the
 * first factor and lam (dL/dpsi at the end) carried back to before it; each factor's data cotangent is
 * accumulated into dshared (summed over the batch) or into the example's row of dbatched. For a complex matrix
 * the cotangent is (dL/dMr, dL/dMi); for a phase (dL/dcos, dL/dsin). */
int qtha_backward(float *psi, float *lam, long batch, int n, int nf, const factor_t *fs, const float *shared,
                  const float *batched, long row, long shared_size, float *dshared, float *dbatched) {
    const long dim = 1L << n;
    const long md = max_d(fs, nf);
    float *shared_t = shared_transposes(nf, fs, shared, shared_size);
    int failed = shared_t == NULL;
#pragma omp parallel
    {
        float *tmp = malloc(sizeof(float) * 2 * dim), *scratch = malloc(sizeof(float) * 2 * md * md);
        float *vt = malloc(sizeof(float) * dim); /* d * lo and d * hi are at most 2^n */
        float *acc = calloc(shared_size > 0 ? shared_size : 1, sizeof(float));
        if (!tmp || !scratch || !vt || !acc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (long b = 0; b < batch; b++) {
            if (failed) continue;
            float *re = psi + b * 2 * dim, *im = re + dim;
            float *lre = lam + b * 2 * dim, *lim = lre + dim;
            for (int f = nf - 1; f >= 0; f--) {
                const factor_t *ft = &fs[f];
                const float *mt;
                const float *m = factor_data(ft, b, shared, shared_t, batched, row, &mt, scratch);
                float *g = (ft->src ? dbatched + b * row : acc) + ft->off;
                apply_factor(ft, m, mt, 1, re, im, tmp, dim); /* the state before this factor */
                if (ft->kind == 2) {
                    float *gc = g, *gs = g + dim;
                    for (long j = 0; j < dim; j++) {
                        gc[j] += lre[j] * re[j] + lim[j] * im[j];
                        gs[j] += lim[j] * re[j] - lre[j] * im[j];
                    }
                } else {
                    const long dd = (long)ft->d * ft->d;
                    outer_acc(lre, re, ft->hi, ft->d, ft->lo, 1.0f, g, vt);
                    outer_acc(lim, im, ft->hi, ft->d, ft->lo, 1.0f, g, vt);
                    if (ft->kind == 1) {
                        outer_acc(lim, re, ft->hi, ft->d, ft->lo, 1.0f, g + dd, vt);
                        outer_acc(lre, im, ft->hi, ft->d, ft->lo, -1.0f, g + dd, vt);
                    }
                }
                apply_factor(ft, m, mt, 1, lre, lim, tmp, dim); /* the adjoint before this factor */
            }
        }
#pragma omp critical
        if (acc)
            for (long j = 0; j < shared_size; j++) dshared[j] += acc[j];
        free(tmp);
        free(scratch);
        free(vt);
        free(acc);
    }
    free(shared_t);
    return failed ? -1 : 0;
}
