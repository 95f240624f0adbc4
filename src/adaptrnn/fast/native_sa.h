/* SA-RNN's batch-1 loop (sa_run) and its kernels, written once for REAL = float / double and
 * included by native.c after native_loops.h (whose vector type, element-wise cell and threads
 * tuner it uses). The layer's weights come packed neuron-major (native.py's sa_packed). */

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
