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

/* The lane sums of v[0..8) plus b[0..8) into out[0..8): v is transposed by shuffles and added
 * lane-wise (log2(LANES) rounds), so eight row sums cost a few vector operations instead of
 * eight horizontal sums. */
static inline void SUF(reduce_rows)(const SUF(vec) v[8], const REAL *restrict b, REAL *restrict out) {
#if LANES == 8
    SUF(vec) p[4], r[2], s, bv;
    for (int k = 0; k < 4; ++k) /* p[k] = (v[2k] lanes 0+1, v[2k+1] lanes 0+1, v[2k] 2+3, ...) */
        p[k] = SHUFFLE(v[2 * k], v[2 * k + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               SHUFFLE(v[2 * k], v[2 * k + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int k = 0; k < 2; ++k) /* r[k] lanes: rows 4k..4k+3 over lanes 0-3, then over lanes 4-7 */
        r[k] = SHUFFLE(p[2 * k], p[2 * k + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               SHUFFLE(p[2 * k], p[2 * k + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    s = SHUFFLE(r[0], r[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUFFLE(r[0], r[1], 4, 5, 6, 7, 12, 13, 14, 15);
    memcpy(&bv, b, 32);
    s += bv;
    memcpy(out, &s, 32);
#else /* LANES == 4 */
    for (int half = 0; half < 2; ++half) {
        const SUF(vec) *u = v + 4 * half;
        SUF(vec) p0 = SHUFFLE(u[0], u[1], 0, 4, 2, 6) + SHUFFLE(u[0], u[1], 1, 5, 3, 7);
        SUF(vec) p1 = SHUFFLE(u[2], u[3], 0, 4, 2, 6) + SHUFFLE(u[2], u[3], 1, 5, 3, 7);
        SUF(vec) s = SHUFFLE(p0, p1, 0, 1, 4, 5) + SHUFFLE(p0, p1, 2, 3, 6, 7), bv;
        memcpy(&bv, b + 4 * half, 32);
        s += bv;
        memcpy(out + 4 * half, &s, 32);
    }
#endif
}

/* The element-wise cell for n neurons: gate g of neuron k at gx[g*n + k] (gate-major);
 * h, c: the neurons' state (c only for the LSTM), updated in place. */
static void SUF(pointwise)(int cell, const REAL *restrict gx, const REAL *restrict gh, int n, REAL *restrict h,
                           REAL *restrict c) {
    if (cell == CELL_RNN) {
        for (int k = 0; k < n; ++k) h[k] = SUF(tanh_)(gx[k] + gh[k]);
    } else if (cell == CELL_GRU) {
        for (int k = 0; k < n; ++k) {
            const REAL r = SUF(sigmoid)(gx[k] + gh[k]);
            const REAL z = SUF(sigmoid)(gx[n + k] + gh[n + k]);
            const REAL nn = SUF(tanh_)(gx[2 * n + k] + r * gh[2 * n + k]);
            h[k] = (ONE - z) * nn + z * h[k];
        }
    } else {
        for (int k = 0; k < n; ++k) {
            const REAL i = SUF(sigmoid)(gx[k] + gh[k]);
            const REAL f = SUF(sigmoid)(gx[n + k] + gh[n + k]);
            const REAL g = SUF(tanh_)(gx[2 * n + k] + gh[2 * n + k]);
            const REAL o = SUF(sigmoid)(gx[3 * n + k] + gh[3 * n + k]);
            c[k] = f * c[k] + i * g;
            h[k] = o * SUF(tanh_)(c[k]);
        }
    }
}

/* The element-wise cell for a batch: rows r < n of gx and gh ((n, G*D) gate-major, row
 * strides gx_ld and gh_ld), state s (n, K, D) contiguous -> out (n, K, D). One call replaces
 * the ~10 element-wise tensor operations of cells.pointwise (and their temporaries) in the
 * batched fast paths. */
void SUF(pointwise_rows)(int cell, const REAL *gx, int64_t gx_ld, const REAL *gh, int64_t gh_ld, int64_t n, int d,
                         const REAL *s, REAL *out) {
    const int k = parts(cell);
    for (int64_t r = 0; r < n; ++r) {
        REAL *h = out + (size_t)r * k * d;
        memcpy(h, s + (size_t)r * k * d, sizeof(REAL) * (size_t)k * d);
        SUF(pointwise)(cell, gx + (size_t)r * gx_ld, gh + (size_t)r * gh_ld, d, h, h + d);
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

/* SA-RNN's products for one neuron: the G rows of W_ih (x, cp long) and then the G rows of
 * W_hh (h, dp long) from its packed block `w` (see sa_run), with the packed bias `b` (8):
 * out[q] = b_ih + W_ih[q] x and out[4 + q] = b_hh + W_hh[q] h for q < G, zeros elsewhere.
 * One vector accumulator per row (two for the longer h rows), added lane-wise at the end by
 * a transposition (reduce_rows) instead of one horizontal sum per row: the rows' sums come
 * out as one or two vectors. cp and dp are multiples of the lanes, so there is no remainder
 * loop. Always inlined with a constant `g`. */
static inline __attribute__((always_inline)) void SUF(sa_neuron)(int g, const REAL *restrict w, int cp, int dp,
                                                                const REAL *restrict x, const REAL *restrict h,
                                                                const REAL *restrict b, REAL *restrict out) {
    SUF(vec) acc[8] = {{0}}, odd[4] = {{0}}, xv, wv;
    for (int i = 0; i < cp; i += LANES) {
        memcpy(&xv, x + i, 32);
        for (int q = 0; q < g; ++q) memcpy(&wv, w + (size_t)q * cp + i, 32), acc[q] += wv * xv;
    }
    w += (size_t)g * cp;
    int i = 0;
    for (; i + 2 * LANES <= dp; i += 2 * LANES) { /* two accumulators per row: 2G independent sums */
        memcpy(&xv, h + i, 32);
        for (int q = 0; q < g; ++q) memcpy(&wv, w + (size_t)q * dp + i, 32), acc[4 + q] += wv * xv;
        memcpy(&xv, h + i + LANES, 32);
        for (int q = 0; q < g; ++q) memcpy(&wv, w + (size_t)q * dp + i + LANES, 32), odd[q] += wv * xv;
    }
    for (; i < dp; i += LANES) {
        memcpy(&xv, h + i, 32);
        for (int q = 0; q < g; ++q) memcpy(&wv, w + (size_t)q * dp + i, 32), acc[4 + q] += wv * xv;
    }
    for (int q = 0; q < 4; ++q) acc[4 + q] += odd[q];
    SUF(reduce_rows)(acc, b, out);
}

static void SUF(sa_neuron_g)(int g, const REAL *w, int cp, int dp, const REAL *x, const REAL *h, const REAL *b,
                             REAL *out) {
    if (g == 4) SUF(sa_neuron)(4, w, cp, dp, x, h, b, out);
    else if (g == 3) SUF(sa_neuron)(3, w, cp, dp, x, h, b, out);
    else SUF(sa_neuron)(1, w, cp, dp, x, h, b, out);
}

/* SA-RNN's active neurons active[j0..j1) (j1 - j0 <= SA_CHUNK) for one step: their products
 * (sa_neuron) into a chunk-local gate-major buffer, then the element-wise cell over a whole
 * chunk of SA_CHUNK lanes (the unused ones zero), writing the new h and c to hk[j], ck[j].
 * Every chunk runs the same code whichever thread takes it, so results never depend on the
 * thread count, and the gates never leave the core that computed them. */
static void SUF(sa_chunk)(const Net *net, const REAL *rows, const REAL *bias, int cp, int dp, const REAL *xp,
                          const REAL *hp, const REAL *c, const int *active, int j0, int j1, REAL *hk, REAL *ck) {
    const int g = gates(net->cell), lstm = net->cell == CELL_LSTM;
    const size_t block = (size_t)g * (cp + dp);
    REAL gx[4 * SA_CHUNK] = {0}, gh[4 * SA_CHUNK] = {0}, hc[SA_CHUNK] = {0}, cc[SA_CHUNK] = {0};
    REAL r[SA_CHUNK][8]; /* neuron-major sums, transposed below (a strided store per sum would scatter) */
    for (int j = j0; j < j1; ++j) {
        const int i = active[j], k = j - j0;
        SUF(sa_neuron_g)(g, rows + i * block, cp, dp, xp, hp, bias + (size_t)8 * i, r[k]);
        hc[k] = hp[i];
        cc[k] = lstm ? c[i] : 0;
    }
    for (int q = 0; q < g; ++q)
        for (int k = 0; k < j1 - j0; ++k) gx[q * SA_CHUNK + k] = r[k][q], gh[q * SA_CHUNK + k] = r[k][4 + q];
    SUF(pointwise)(net->cell, gx, gh, SA_CHUNK, hc, cc);
    memcpy(hk + j0, hc, sizeof(REAL) * (size_t)(j1 - j0));
    if (lstm) memcpy(ck + j0, cc, sizeof(REAL) * (size_t)(j1 - j0));
}

/* SA-RNN over `steps` steps of one layer: x (T, C); gate_x (T, D) = W_i x_t + b; diag (D)
 * the diagonal of W_u; state (K, D) in place. ũ = hardσ(diag ⊙ h + gate_x) (clamp((αz+1)/2));
 * only the neurons with ũ > threshold are computed. `rows` holds the layer's weights packed
 * neuron-major (native.py's sa_packed): neuron i's block is its G rows of W_ih, each
 * zero-padded to cp = C rounded up to SA_PAD, then its G rows of W_hh padded to dp, so an active
 * neuron's weights are one contiguous read; `bias` (D, 8): b_ih of its G gates at 0..G-1 and
 * b_hh at 4..4+G-1, zeros elsewhere. Work is split over threads by chunks of SA_CHUNK active
 * neurons. Writes out (T, D), the binary mask (T, D) and Σ_i ũ (T). Returns 0, or -1 if out of memory. */
int SUF(sa_run)(const Net *net, int layer, const REAL *x, int64_t steps, const REAL *gate_x, const REAL *diag,
                double slope, double threshold, const REAL *rows, const REAL *bias, REAL *state, REAL *out,
                REAL *mask, REAL *lik) {
    const int D = net->hidden, g = gates(net->cell), in = layer == 0 ? net->input_size : D;
    const int cp = sa_padded(in), dp = sa_padded(D), lstm = net->cell == CELL_LSTM;
    /* x_t and h copied into zero-padded buffers (the products read cp and dp entries); hk and
     * ck (the chunks' new h and c) start on a cache line, so no two threads write one line */
    const size_t line = 64 / sizeof(REAL), dk = ((size_t)D + line - 1) / line * line;
    REAL *buf = calloc((size_t)cp + dp + 2 * dk + line, sizeof(REAL));
    int *active = malloc(sizeof(int) * (size_t)D);
    if (!buf || !active) {
        free(buf);
        free(active);
        return -1;
    }
    REAL *xp = buf, *hp = xp + cp, *hk = (REAL *)(((uintptr_t)(hp + dp) + 63) & ~(uintptr_t)63), *ck = hk + dk;
    REAL *h = state, *c = state + D;
    const REAL a = (REAL)slope, thr = (REAL)threshold;
    Tuner local, *tu = tuner_of(net, &local);
    for (int64_t t = 0; t < steps; ++t) {
        const REAL *gxt = gate_x + (size_t)t * D;
        REAL *mt = mask + (size_t)t * D, sum = 0;
        int n = 0;
        for (int i = 0; i < D; ++i) {
            REAL l = (a * (diag[i] * h[i] + gxt[i]) + 1) / 2;
            l = l < 0 ? 0 : l > 1 ? 1 : l;
            sum += l;
            mt[i] = l > thr ? 1 : 0;
            if (l > thr) active[n++] = i;
        }
        lik[t] = sum;
        memcpy(xp, x + (size_t)t * in, sizeof(REAL) * (size_t)in);
        memcpy(hp, h, sizeof(REAL) * (size_t)D); /* every product reads the old h */
        const int chunks = (n + SA_CHUNK - 1) / SA_CHUNK;
        const long work = chunks > 1 ? (long)n * g * (in + D) : 0;
        double start;
        const int use = region_threads(tu, net->threads, work, &start);
        (void)use; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
        for (int chunk = 0; chunk < chunks; ++chunk) {
            const int j0 = chunk * SA_CHUNK, j1 = j0 + SA_CHUNK < n ? j0 + SA_CHUNK : n;
            SUF(sa_chunk)(net, rows, bias, cp, dp, xp, hp, c, active, j0, j1, hk, ck);
        }
        for (int j = 0; j < n; ++j) {
            h[active[j]] = hk[j];
            if (lstm) c[active[j]] = ck[j];
        }
        region_done(tu, net->threads, work, start); /* timed with the reads of the threads' results */
        memcpy(out + (size_t)t * D, h, sizeof(REAL) * D);
    }
    free(buf);
    free(active);
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
