/* The batched loops that compute part of each step's neurons: VCRNN's leading d_t and SA-RNN's
 * active ones, with the products in torch's BLAS (matmul in native_batch.h, included before
 * this file by native.c, for REAL = float and double). */

#define W(p, l) ((const REAL *)(p)[l])
#define WB(p, l) ((p) ? (const REAL *)(p)[l] : NULL)

/* Each row's h from a state (B, K, D) into out (B, D): a step's output. */
static void SUF(rows_h)(const REAL *state, int64_t batch, int k, int d, REAL *out) {
    for (int64_t r = 0; r < batch; ++r) memcpy(out + (size_t)r * d, state + (size_t)r * k * d, sizeof(REAL) * d);
}

/* VCRNN's hard-mode loop over one layer for a batch (fast/vc.py's _steps, the same steps): each
 * step takes every row's m_t and d_t (as vc_run), then computes the upper-left blocks up to
 * top = max_r d_r for every row, packed contiguous, in 2 products through BLAS (RNN and LSTM:
 * summed into one pre-activation). A row with
 * d_r < top reads h masked to its first d_r dimensions and keeps the dimensions past d_r.
 *   x (T, B, C), x_score (T, B) contiguous; valid (T, B) or NULL (an invalid step: d = 0, the
 *   state kept); u (D): the scheduler's weight on h; state (B, K, D) stepped in place;
 *   out (T, B, D), ms (T, B), ds (T, B) written.
 * Returns 0, or -1 if the work space could not be allocated. */
int SUF(vc_batch_run)(const Net *net, void *gemm, int layer, const REAL *x, int64_t steps, int64_t batch,
                      const REAL *x_score, const uint8_t *valid, const REAL *u, double bias, double scale, REAL *state,
                      REAL *out, REAL *ms, int64_t *ds) {
    const int D = net->hidden, g = gates(net->cell), k = parts(net->cell), in = layer == 0 ? net->input_size : D;
    const int apart = net->cell == CELL_GRU, nb = (int)batch;
    const REAL *w_ih = W(net->w_ih_t, layer), *w_hh = W(net->w_hh_t, layer);
    const REAL *b_ih = WB(net->b_ih, layer), *b_hh = WB(net->b_hh, layer);
    REAL *gx = malloc(sizeof(REAL) * 2 * (size_t)batch * g * D), *hm = malloc(sizeof(REAL) * (size_t)batch * D);
    REAL *kept = malloc(sizeof(REAL) * 2 * (size_t)batch * D); /* a partial row's block, computed aside */
    REAL *pack = malloc(sizeof(REAL) * (size_t)(in + D) * g * D); /* the blocks of W_ih^T, W_hh^T for top */
    int64_t *dims = malloc(sizeof(int64_t) * batch);
    int status = -1, packed = 0;
    if (!gx || !hm || !kept || !pack || !dims) goto done;
    REAL *gh = gx + (size_t)batch * g * D;
    for (int64_t t = 0; t < steps; ++t) {
        const int every = pass_threads(net, batch, D);
        (void)every; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(every) if (every > 1)
        for (int64_t r = 0; r < batch; ++r) { /* the scheduler (eq. of vc_run) */
            const REAL *h = state + (size_t)r * k * D;
            REAL m = SUF(sigmoid)(SUF(dot)(h, u, D) + x_score[(size_t)t * batch + r] + (REAL)bias);
            if (scale != 1.0) {
                m = m * (REAL)scale;
                m = m > 1 ? 1 : m;
            }
            int64_t d = (int64_t)ceil((double)(m * (REAL)D));
            d = d < 1 ? 1 : d > D ? D : d;
            if (valid && !valid[(size_t)t * batch + r]) d = 0;
            dims[r] = d, ms[(size_t)t * batch + r] = m, ds[(size_t)t * batch + r] = d;
        }
        int64_t top = 0;
        for (int64_t r = 0; r < batch; ++r) top = dims[r] > top ? dims[r] : top;
        const int n = (int)top, width = g * n; /* gate q of the blocks at columns [q n, q n + n) */
        if (n) {
            const int use = pass_threads(net, batch, n);
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
            for (int64_t r = 0; r < batch; ++r) { /* h masked to each row's d */
                const REAL *h = state + (size_t)r * k * D;
                for (int j = 0; j < n; ++j) hm[(size_t)r * n + j] = j < dims[r] ? h[j] : 0;
            }
            SUF(bias_rows)(b_ih, b_hh, NULL, D, g, NULL, n, batch, apart, use, gx, gh);
            const REAL *xt = x + (size_t)t * batch * in, *pih = w_ih, *phh = w_hh;
            if (n < D) { /* the blocks packed contiguous (again only when top changed): one product each */
                if (n != packed)
                    for (int j = 0; j < in + n; ++j) {
                        const REAL *src = j < in ? w_ih + (size_t)j * g * D : w_hh + (size_t)(j - in) * g * D;
                        REAL *dst = pack + (size_t)j * width;
                        for (int q = 0; q < g; ++q) memcpy(dst + q * n, src + q * D, sizeof(REAL) * n);
                    }
                packed = n, pih = pack, phh = pack + (size_t)in * width;
            }
            const int ld = n < D ? width : g * D;
            SUF(matmul)(gemm, nb, width, in, xt, in, pih, ld, 1, gx, width);
            SUF(matmul)(gemm, nb, width, n, hm, n, phh, ld, 1, apart ? gh : gx, width);
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
            for (int64_t r = 0; r < batch; ++r) {
                REAL *h = state + (size_t)r * k * D, *c = h + D;
                const REAL *rx = gx + (size_t)r * width, *rh = apart ? gh + (size_t)r * width : NULL;
                if (dims[r] == n) {
                    SUF(pointwise)(net->cell, rx, rh, n, h, c);
                } else if (dims[r]) { /* its first d dimensions of the block */
                    REAL *th = kept + (size_t)r * 2 * D, *tc = th + D;
                    memcpy(th, h, sizeof(REAL) * n);
                    if (k == 2) memcpy(tc, c, sizeof(REAL) * n);
                    SUF(pointwise)(net->cell, rx, rh, n, th, tc);
                    memcpy(h, th, sizeof(REAL) * dims[r]);
                    if (k == 2) memcpy(c, tc, sizeof(REAL) * dims[r]);
                }
                memcpy(out + ((size_t)t * batch + r) * D, h, sizeof(REAL) * D);
            }
        } else {
            SUF(rows_h)(state, batch, k, D, out + (size_t)t * batch * D);
        }
    }
    status = 0;
done:
    free(gx), free(hm), free(kept), free(pack), free(dims);
    return status;
}

/* Σ a_i in one 32-byte vector accumulator, so that the sum vectorises without -ffast-math. */
static REAL SUF(total)(const REAL *a, int n) {
    enum { L = 32 / sizeof(REAL) };
    SUF(vec) acc = {0}, x;
    int i = 0;
    for (; i + L <= n; i += L) memcpy(&x, a + i, 32), acc += x;
    REAL sum = 0;
    for (int j = 0; j < L; ++j) sum += acc[j];
    for (; i < n; ++i) sum += a[i];
    return sum;
}

/* SA-RNN's element-wise step for every row, from the products gx (gh: the GRU's W_hn h apart)
 * of the n neurons in `active`: a row whose every neuron updates (active_rows[r] = D) steps in place;
 * any other takes its active neurons' state aside and writes back those its own u (mask row)
 * keeps. Each row's new h goes to out (B, D). */
static void SUF(sa_rows)(const Net *net, int64_t batch, int n, const int *active, const REAL *active_rows,
                         const REAL *mask, const REAL *gx, const REAL *gh, REAL *aside, REAL *state, REAL *out) {
    const int D = net->hidden, k = parts(net->cell), width = gates(net->cell) * n;
    const int use = pass_threads(net, batch, n + D); /* the rows' cells, and their h copied out */
    (void)use; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
    for (int64_t r = 0; r < batch; ++r) {
        REAL *h = state + (size_t)r * k * D, *c = h + D;
        const REAL *rx = gx + (size_t)r * width, *rh = gh ? gh + (size_t)r * width : NULL;
        if (active_rows[r] == D) {
            SUF(pointwise)(net->cell, rx, rh, n, h, c);
        } else if (active_rows[r] != 0) {
            REAL *th = aside + (size_t)r * 2 * D, *tc = th + D;
            const REAL *u = mask + (size_t)r * D;
            for (int i = 0; i < n; ++i) th[i] = h[active[i]], tc[i] = k == 2 ? c[active[i]] : 0;
            SUF(pointwise)(net->cell, rx, rh, n, th, tc);
            for (int i = 0; i < n; ++i)
                if (u[active[i]] != 0) {
                    h[active[i]] = th[i];
                    if (k == 2) c[active[i]] = tc[i];
                }
        }
        memcpy(out + (size_t)r * D, h, sizeof(REAL) * D);
    }
}

/* SA-RNN's loop over one layer for a batch (fast/sa.py's _steps, the same steps): each step
 * takes every row's ũ_t = clamp(c_t + a ⊙ h_{t-1}, 0, 1) and u = 1[ũ > threshold], gathers the
 * G weight columns of the neurons active in some row (the union; again only when it changed),
 * computes their gates for every row in 2 products through BLAS (RNN and LSTM: summed), and
 * writes the new state of a neuron only in the rows where it is active.
 *   x (T, B, C); gate_w (C, D), gate_b (D): c_t = x_t gate_w + gate_b, the gate's input term
 *   with the hard sigmoid folded in (computed a step at a time: no (T, B, D) temporary);
 *   gate_a (D): a; valid (T, B) or NULL (an invalid step: no neuron active); state (B, K, D)
 *   stepped in place; out (T, B, D), masks (T, B, D; zero at invalid steps), likelihoods (T, B,
 *   Σ_i ũ) and actives (T, B, Σ_i u) written.
 * Returns 0, or -1 if the work space could not be allocated. */
int SUF(sa_batch_run)(const Net *net, void *gemm, int layer, const REAL *x, int64_t steps, int64_t batch,
                      const REAL *gate_w, const REAL *gate_b, const REAL *gate_a, const uint8_t *valid,
                      double threshold, REAL *state, REAL *out, REAL *masks, REAL *likelihoods, REAL *actives) {
    const int D = net->hidden, g = gates(net->cell), k = parts(net->cell), in = layer == 0 ? net->input_size : D;
    const int apart = net->cell == CELL_GRU, nb = (int)batch;
    const REAL *w_ih = W(net->w_ih_t, layer), *w_hh = W(net->w_hh_t, layer), thr = (REAL)threshold;
    const REAL *b_ih = WB(net->b_ih, layer), *b_hh = WB(net->b_hh, layer);
    REAL *pw = malloc(sizeof(REAL) * (size_t)(in + D) * g * D); /* the active columns of W_ih^T, W_hh^T */
    REAL *gx = malloc(sizeof(REAL) * 2 * (size_t)batch * g * D), *hc = malloc(sizeof(REAL) * 2 * (size_t)batch * D);
    REAL *cg = malloc(sizeof(REAL) * (size_t)batch * D), *any = malloc(sizeof(REAL) * D);
    int *active = malloc(sizeof(int) * 2 * D), *cols = active + D;
    int status = -1, gathered = 0; /* pw holds the columns of the `gathered` neurons in cols */
    if (!pw || !gx || !hc || !cg || !any || !active) goto done;
    REAL *gh = gx + (size_t)batch * g * D;
    for (int64_t t = 0; t < steps; ++t) {
        REAL *mask = masks + (size_t)t * batch * D;
        const REAL *xt = x + (size_t)t * batch * in;
        for (int64_t r = 0; r < batch; ++r) memcpy(cg + (size_t)r * D, gate_b, sizeof(REAL) * D);
        SUF(matmul)(gemm, nb, D, in, xt, in, gate_w, D, 1, cg, D);
        const int use = pass_threads(net, batch, D);
        (void)use; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
        for (int64_t r = 0; r < batch; ++r) { /* ũ (over c_t in cg) and u, with no branch */
            const REAL *h = state + (size_t)r * k * D, on = !valid || valid[(size_t)t * batch + r];
            REAL *p = cg + (size_t)r * D, *u = mask + (size_t)r * D;
            for (int j = 0; j < D; ++j) {
                REAL v = p[j] + gate_a[j] * h[j];
                p[j] = v = v < 0 ? 0 : v > 1 ? 1 : v;
                u[j] = v > thr ? on : 0;
            }
            likelihoods[(size_t)t * batch + r] = SUF(total)(p, D), actives[(size_t)t * batch + r] = SUF(total)(u, D);
        }
        memset(any, 0, sizeof(REAL) * D); /* the union of the rows' active neurons */
        for (int64_t r = 0; r < batch; ++r)
            for (int j = 0; j < D; ++j) any[j] = any[j] > mask[(size_t)r * D + j] ? any[j] : mask[(size_t)r * D + j];
        int n = 0;
        for (int j = 0; j < D; ++j)
            if (any[j] != 0) active[n++] = j;
        if (n) {
            const int width = g * n; /* gate q of active neuron i at column q n + i */
            if (n < D && (n != gathered || memcmp(cols, active, sizeof(int) * n))) { /* gathered row by row */
                for (int j = 0; j < in + D; ++j) {
                    const REAL *src = j < in ? w_ih + (size_t)j * g * D : w_hh + (size_t)(j - in) * g * D;
                    REAL *dst = pw + (size_t)j * width;
                    for (int q = 0; q < g; ++q)
                        for (int i = 0; i < n; ++i) dst[q * n + i] = src[q * D + active[i]];
                }
                gathered = n, memcpy(cols, active, sizeof(int) * n);
            }
            const int ld = n < D ? width : g * D; /* n = D: the weights as they are */
            const REAL *pih = n < D ? pw : w_ih, *phh = n < D ? pw + (size_t)in * width : w_hh;
            SUF(bias_rows)(b_ih, b_hh, NULL, D, g, active, n, batch, apart, use, gx, gh);
            SUF(matmul)(gemm, nb, width, in, xt, in, pih, ld, 1, gx, width);
            SUF(matmul)(gemm, nb, width, D, state, k * D, phh, ld, 1, apart ? gh : gx, width);
            SUF(sa_rows)(net, batch, n, active, actives + (size_t)t * batch, mask, gx, apart ? gh : NULL, hc, state, out + (size_t)t * batch * D);
        } else {
            SUF(rows_h)(state, batch, k, D, out + (size_t)t * batch * D);
        }
    }
    status = 0;
done:
    free(pw), free(gx), free(hc), free(cg), free(any), free(active);
    return status;
}

#undef W
#undef WB
