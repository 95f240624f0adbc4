/* The batch-1 loops, written once for REAL = float / double (included twice by native.c,
 * which defines REAL, SUF(name), EXP and ONE). Arithmetic follows adaptrnn.cells.pointwise
 * and each method's reference loop; sums run in another order than the reference's BLAS. */

#define W(p, l) ((const REAL *)(p)[l])
#define WB(p, l) ((p) ? (const REAL *)(p)[l] : NULL)

static inline REAL SUF(sigmoid)(REAL x) { return ONE / (ONE + EXP(-x)); }

static inline REAL SUF(tanh_)(REAL x) {
    const REAL t = EXP(-2 * (x < 0 ? -x : x));
    const REAL y = (ONE - t) / (ONE + t);
    return x < 0 ? -y : y;
}

/* y[0..n) = b + x W for the first n columns of W given transposed with row length ld (in, ld);
 * b may be NULL. Outputs are accumulated in blocks of BLOCK kept in registers over the whole
 * sum, so y is written once and W read once; the inner loops are contiguous axpy's. The work
 * items are the full blocks then the tail (columns past the last full block): `affine_item`
 * runs item `it` of `nb` full blocks. Every output is summed over j in order by the same code
 * whichever thread runs its item, so a split over threads gives identical results. */
#define BLOCK 128
static void SUF(affine_item)(const REAL *restrict x, int in, const REAL *restrict w_t, int ld,
                             const REAL *restrict b, int n, int it, int nb, REAL *restrict y) {
    if (it < nb) {
        const int k0 = it * BLOCK;
        REAL acc[BLOCK];
        for (int i = 0; i < BLOCK; ++i) acc[i] = b ? b[k0 + i] : 0;
        for (int j = 0; j < in; ++j) {
            const REAL xj = x[j];
            const REAL *restrict w = w_t + (size_t)j * ld + k0;
            for (int i = 0; i < BLOCK; ++i) acc[i] += xj * w[i];
        }
        memcpy(y + k0, acc, sizeof acc);
        return;
    }
    const int k0 = nb * BLOCK;
    for (int k = k0; k < n; ++k) y[k] = b ? b[k] : 0;
    for (int j = 0; j < in && k0 < n; ++j) {
        const REAL xj = x[j];
        const REAL *restrict w = w_t + (size_t)j * ld;
        for (int k = k0; k < n; ++k) y[k] += xj * w[k];
    }
}

static inline int SUF(affine_items)(int n) { return n / BLOCK + (n % BLOCK != 0); }

/* Two independent products y1 = b1 + x1 W1 and y2 = b2 + x2 W2 with n outputs each (a layer's
 * input and hidden projections), their items interleaved over the threads that region_threads
 * gives (one fork/join); x2 may be NULL for one product. */
static void SUF(affine2)(const REAL *x1, int in1, const REAL *w1, const REAL *b1, REAL *y1, const REAL *x2, int in2,
                         const REAL *w2, const REAL *b2, REAL *y2, int ld, int n, int threads, Tuner *tu) {
    const int nb = n / BLOCK, items = SUF(affine_items)(n), total = x2 ? 2 * items : items;
    const long work = total > 1 ? (long)n * (in1 + (x2 ? in2 : 0)) : 0;
    double start;
    const int use = region_threads(tu, threads, work, &start);
    (void)use; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
    for (int it = 0; it < total; ++it) {
        if (x2 && it % 2) SUF(affine_item)(x2, in2, w2, ld, b2, n, it / 2, nb, y2);
        else SUF(affine_item)(x1, in1, w1, ld, b1, n, x2 ? it / 2 : it, nb, y1);
    }
    region_done(tu, threads, work, start);
}

static void SUF(affine)(const REAL *x, int in, const REAL *w_t, int ld, const REAL *b, int n, REAL *y) {
    const int nb = n / BLOCK, items = SUF(affine_items)(n);
    for (int it = 0; it < items; ++it) SUF(affine_item)(x, in, w_t, ld, b, n, it, nb, y);
}

/* Σ a_i b_i in four 32-byte vector accumulators (GCC / Clang vector extensions; unaligned
 * loads through memcpy), so the sum vectorises the same way under any compiler flags. */
typedef REAL SUF(vec) __attribute__((vector_size(32)));
static REAL SUF(dot)(const REAL *restrict a, const REAL *restrict b, int n) {
    enum { L = 32 / sizeof(REAL) };
    SUF(vec) s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, x, y;
    int i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
        memcpy(&x, a + i, 32), memcpy(&y, b + i, 32), s0 += x * y;
        memcpy(&x, a + i + L, 32), memcpy(&y, b + i + L, 32), s1 += x * y;
        memcpy(&x, a + i + 2 * L, 32), memcpy(&y, b + i + 2 * L, 32), s2 += x * y;
        memcpy(&x, a + i + 3 * L, 32), memcpy(&y, b + i + 3 * L, 32), s3 += x * y;
    }
    for (; i + L <= n; i += L) memcpy(&x, a + i, 32), memcpy(&y, b + i, 32), s0 += x * y;
    s0 = (s0 + s1) + (s2 + s3);
    REAL s = 0;
    for (int k = 0; k < L; ++k) s += s0[k];
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* RNN and LSTM on PW neurons, pre-activation of gate g of neuron k: PRE(g * stride + k). */
#define CELL_LANES_TANH_LSTM(PRE)                                                                  \
    if (cell == CELL_RNN) {                                                                        \
        for (int k = 0; k < PW; ++k) h[k] = SUF(tanh_)(PRE(k));                                    \
    } else {                                                                                       \
        for (int k = 0; k < PW; ++k) {                                                             \
            const REAL i = SUF(sigmoid)(PRE(k));                                                   \
            const REAL f = SUF(sigmoid)(PRE(stride + k));                                          \
            const REAL g = SUF(tanh_)(PRE(2 * stride + k));                                        \
            const REAL o = SUF(sigmoid)(PRE(3 * stride + k));                                      \
            c[k] = f * c[k] + i * g;                                                               \
            h[k] = o * SUF(tanh_)(c[k]);                                                           \
        }                                                                                          \
    }
#define APART(i) (gx[i] + gh[i])
#define SUMMED(i) (gx[i])

/* The element-wise cell on PW neurons: gate g of neuron j at gx[g*stride + j] (gate-major);
 * h, c: their state (c only for the LSTM), updated in place. gh NULL (RNN, LSTM): gx holds
 * the summed pre-activations. A fixed trip count, so each statement is whole vectors with no
 * remainder loop; the two forms are separate loops (a test of gh inside one stopped GCC
 * from vectorising it). */
static inline void SUF(cell_lanes)(int cell, const REAL *restrict gx, const REAL *restrict gh, int stride,
                                   REAL *restrict h, REAL *restrict c) {
    if (!gh) {
        CELL_LANES_TANH_LSTM(SUMMED)
    } else if (cell == CELL_GRU) {
        for (int k = 0; k < PW; ++k) {
            const REAL r = SUF(sigmoid)(gx[k] + gh[k]);
            const REAL z = SUF(sigmoid)(gx[stride + k] + gh[stride + k]);
            const REAL nn = SUF(tanh_)(gx[2 * stride + k] + r * gh[2 * stride + k]);
            h[k] = (ONE - z) * nn + z * h[k];
        }
    } else {
        CELL_LANES_TANH_LSTM(APART)
    }
}
#undef CELL_LANES_TANH_LSTM
#undef APART
#undef SUMMED

/* The element-wise cell for n neurons: gate g of neuron k at gx[g*n + k] (gate-major);
 * h, c: the neurons' state (c only for the LSTM), updated in place. In blocks of PW; the
 * last n % PW neurons go through a zero-padded copy, so that they too run as whole vectors
 * (a scalar remainder of 14 neurons took as long as the 96 before it, at n = 110). */
static void SUF(pointwise)(int cell, const REAL *restrict gx, const REAL *restrict gh, int n, REAL *restrict h,
                           REAL *restrict c) {
    if (cell != CELL_LSTM) c = NULL; /* callers may pass the address past h */
    int k = 0;
    for (; k + PW <= n; k += PW) SUF(cell_lanes)(cell, gx + k, gh ? gh + k : NULL, n, h + k, c ? c + k : NULL);
    const int rest = n - k;
    if (!rest) return;
    const int g = gates(cell);
    REAL bx[4 * PW] = {0}, bh[4 * PW] = {0}, hh[PW] = {0}, cc[PW] = {0};
    for (int j = 0; j < g; ++j) {
        memcpy(bx + j * PW, gx + (size_t)j * n + k, sizeof(REAL) * rest);
        if (gh) memcpy(bh + j * PW, gh + (size_t)j * n + k, sizeof(REAL) * rest);
    }
    memcpy(hh, h + k, sizeof(REAL) * rest);
    if (c) memcpy(cc, c + k, sizeof(REAL) * rest);
    SUF(cell_lanes)(cell, bx, gh ? bh : NULL, PW, hh, cc);
    memcpy(h + k, hh, sizeof(REAL) * rest);
    if (c) memcpy(c + k, cc, sizeof(REAL) * rest);
}

/* The element-wise cell for a batch: rows r < n of gx and gh ((n, G*D) gate-major, row
 * strides gx_ld and gh_ld; gh NULL: gx summed, RNN and LSTM), state s (n, K, D) contiguous ->
 * out (n, K, D). One call replaces
 * the ~10 element-wise tensor operations of cells.pointwise (and their temporaries) in the
 * batched fast paths. */
void SUF(pointwise_rows)(int cell, const REAL *gx, int64_t gx_ld, const REAL *gh, int64_t gh_ld, int64_t n, int d,
                         const REAL *s, REAL *out) {
    const int k = parts(cell);
    for (int64_t r = 0; r < n; ++r) {
        REAL *h = out + (size_t)r * k * d;
        memcpy(h, s + (size_t)r * k * d, sizeof(REAL) * (size_t)k * d);
        SUF(pointwise)(cell, gx + (size_t)r * gx_ld, gh ? gh + (size_t)r * gh_ld : NULL, d, h, h + d);
    }
}

/* One step of the whole stack for one sequence. gx0: layer 0's input projection (G*D) or
 * NULL to compute it from x; state: (L, K, D); scratch: 2*G*D. Each layer's input and hidden
 * products share one parallel region (net->threads threads, as `tu` decides). */
static void SUF(stack_given)(const Net *net, const REAL *x, const REAL *gx0, REAL *state, REAL *scratch, Tuner *tu) {
    const int d = net->hidden, k = parts(net->cell), g = gates(net->cell);
    REAL *gx = scratch, *gh = scratch + (size_t)g * d;
    for (int layer = 0; layer < net->layers; ++layer) {
        REAL *s = state + (size_t)layer * k * d;
        const REAL *w_hh = W(net->w_hh_t, layer), *b_hh = WB(net->b_hh, layer);
        if (layer == 0 && gx0) {
            SUF(affine2)(s, d, w_hh, b_hh, gh, NULL, 0, NULL, NULL, NULL, g * d, g * d, net->threads, tu);
            SUF(pointwise)(net->cell, gx0, gh, d, s, s + d);
            continue;
        }
        const REAL *in = layer == 0 ? x : state + (size_t)(layer - 1) * k * d;
        const int in_size = layer == 0 ? net->input_size : d;
        SUF(affine2)(in, in_size, W(net->w_ih_t, layer), WB(net->b_ih, layer), gx, s, d, w_hh, b_hh, gh, g * d, g * d,
                     net->threads, tu);
        SUF(pointwise)(net->cell, gx, gh, d, s, s + d);
    }
}

void SUF(stack_step)(const Net *net, const REAL *x, REAL *state, REAL *scratch) {
    SUF(stack_given)(net, x, NULL, state, scratch, NULL);
}

/* σ(gate_w · v + gate_b): Skip RNN's Δũ (eq. 4) or ACT's halting unit. */
static REAL SUF(gate)(const Net *net, const REAL *v) {
    return SUF(sigmoid)(SUF(dot)(v, (const REAL *)net->gate_w, net->hidden) + (REAL)net->gate_b);
}

/* Δũ of Skip RNN from the top layer's c (LSTM) or h. */
double SUF(update_increment)(const Net *net, const REAL *state) {
    const int d = net->hidden, k = parts(net->cell);
    return SUF(gate)(net, state + (size_t)(net->layers - 1) * k * d + (size_t)(k - 1) * d);
}

/* Skip RNN: the jump-ahead loop over x (T, I) from step `first` to `end` (exclusive).
 * After an update with increment Δũ the next is floor(threshold / Δũ) + 1 steps later (eq. 6).
 * Writes each update's step, new top-layer h (D) and Δũ; returns the number of updates. */
int64_t SUF(skip_run)(const Net *net, const REAL *x, int64_t first, int64_t end, double threshold, REAL *state,
                      REAL *scratch, int64_t *steps, REAL *hidden, REAL *deltas) {
    const int d = net->hidden, k = parts(net->cell);
    const REAL *top_h = state + (size_t)(net->layers - 1) * k * d;
    int64_t count = 0;
    double t = (double)first;
    Tuner local, *tu = tuner_of(net, &local);
    while (t < (double)end) {
        const int64_t step = (int64_t)t;
        SUF(stack_given)(net, x + (size_t)step * net->input_size, NULL, state, scratch, tu);
        const REAL delta = (REAL)SUF(update_increment)(net, state);
        steps[count] = step;
        memcpy(hidden + (size_t)count * d, top_h, (size_t)d * sizeof *hidden);
        deltas[count] = delta;
        ++count;
        const double skip = (threshold < 1.0 && delta > 0) ? floor(threshold / (double)delta) : INFINITY;
        t = (double)step + 1.0 + skip;
    }
    return count;
}

/* VCRNN (hard) over `steps` steps of one layer: x (T, C); x_score[t] = v·x_t; u (D) the
 * scheduler's h weights; state (K, D) in place. m_t = σ(u·h + x_score + b) (times `scale`,
 * capped at 1), d_t = ceil(m_t D) in 1..D, and only the upper-left blocks are computed: the
 * G column blocks [g D, g D + d) of W_ih^T and the first d rows of those of W_hh^T.
 * Writes out (T, D), m (T) and d (T). Returns 0, or -1 if out of memory. */
int SUF(vc_run)(const Net *net, int layer, const REAL *x, int64_t steps, const REAL *x_score, const REAL *u,
                double bias, double scale, REAL *state, REAL *out, REAL *ms, int64_t *ds) {
    const int D = net->hidden, g = gates(net->cell), in = layer == 0 ? net->input_size : D;
    const REAL *w_ih = W(net->w_ih_t, layer), *w_hh = W(net->w_hh_t, layer);
    const REAL *b_ih = WB(net->b_ih, layer), *b_hh = WB(net->b_hh, layer);
    REAL *buf = malloc(sizeof(REAL) * 2 * (size_t)g * D);
    if (!buf) return -1;
    REAL *gx = buf, *gh = buf + (size_t)g * D, *h = state, *c = state + D;
    Tuner local, *tu = tuner_of(net, &local);
    for (int64_t t = 0; t < steps; ++t) {
        REAL m = SUF(sigmoid)(SUF(dot)(h, u, D) + x_score[t] + (REAL)bias);
        if (scale != 1.0) {
            m = m * (REAL)scale;
            m = m > 1 ? 1 : m;
        }
        int64_t d = (int64_t)ceil((double)(m * (REAL)D));
        d = d < 1 ? 1 : d > D ? D : d;
        const int n = (int)d;
        const REAL *xt = x + (size_t)t * in;
        const long work = (long)g * n * (in + n);
        double start;
        const int use = region_threads(tu, net->threads, work, &start);
        (void)use; /* unused in a build without OpenMP */
        /* 2G products (gate q's input block, then its hidden block), whole products per thread */
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
        for (int p = 0; p < 2 * g; ++p) {
            const int q = p / 2;
            if (p % 2 == 0)
                SUF(affine)(xt, in, w_ih + (size_t)q * D, g * D, b_ih ? b_ih + (size_t)q * D : NULL, n, gx + (size_t)q * n);
            else
                SUF(affine)(h, n, w_hh + (size_t)q * D, g * D, b_hh ? b_hh + (size_t)q * D : NULL, n, gh + (size_t)q * n);
        }
        region_done(tu, net->threads, work, start);
        SUF(pointwise)(net->cell, gx, gh, n, h, c);
        memcpy(out + (size_t)t * D, h, sizeof(REAL) * D);
        ms[t] = m;
        ds[t] = d;
    }
    free(buf);
    return 0;
}

/* ACT over `steps` steps: gx0 (T, G*D) layer 0's input projection; flag (G*D) added at the
 * first ponder step; state (L, K, D) in place. Each step ponders until Σ h_n ≥ threshold or
 * n = max_steps (h_n = σ(W_h · top h + b_h)); the new state is the mean field Σ p_n s_n with
 * p_n = h_n before the halting step and the remainder R = 1 - Σ h at it. Writes out (T, D),
 * N(t) and R(t). Returns 0, or -1 if out of memory. */
int SUF(act_run)(const Net *net, const REAL *gx0, int64_t steps, const REAL *flag, int64_t max_steps,
                 double threshold, REAL *state, REAL *out, REAL *ponders, REAL *remainders) {
    const int D = net->hidden, g = gates(net->cell), k = parts(net->cell);
    const size_t size = (size_t)net->layers * k * D;
    REAL *buf = malloc(sizeof(REAL) * (2 * size + 3 * (size_t)g * D));
    if (!buf) return -1;
    REAL *s = buf, *mean = buf + size, *first = mean + size, *scratch = first + (size_t)g * D;
    const REAL *top_h = s + (size_t)(net->layers - 1) * k * D;
    const REAL thr = (REAL)threshold;
    Tuner local, *tu = tuner_of(net, &local);
    for (int64_t t = 0; t < steps; ++t) {
        const REAL *gxt = gx0 + (size_t)t * g * D;
        for (int i = 0; i < g * D; ++i) first[i] = gxt[i] + flag[i];
        memcpy(s, state, sizeof(REAL) * size);
        memset(mean, 0, sizeof(REAL) * size);
        REAL cum = 0;
        for (int64_t n = 1; n <= max_steps; ++n) {
            SUF(stack_given)(net, NULL, n == 1 ? first : gxt, s, scratch, tu);
            const REAL hp = SUF(gate)(net, top_h);
            const int stop = cum + hp >= thr || n == max_steps;
            const REAL p = stop ? 1 - cum : hp;
            for (size_t i = 0; i < size; ++i) mean[i] += p * s[i];
            if (stop) {
                ponders[t] = (REAL)n;
                remainders[t] = 1 - cum;
                break;
            }
            cum = cum + hp;
        }
        memcpy(state, mean, sizeof(REAL) * size);
        memcpy(out + (size_t)t * D, state + (size_t)(net->layers - 1) * k * D, sizeof(REAL) * D);
    }
    free(buf);
    return 0;
}

#undef W
#undef WB
