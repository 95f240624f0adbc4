/* Batched loops with the products in the BLAS that torch itself links: its Fortran ?gemm_,
 * found and probed by adaptrnn/fast/native_batch.py and passed in as `gemm`. Included twice by
 * native.c after native_loops.h (REAL = float, double); VCRNN's and SA-RNN's loops are in
 * native_batch_neurons.h.
 *
 * From Python a batched step is a few tensor operations plus ~30-60 us of bookkeeping; at
 * (B, D) = (256, 110) that bookkeeping and the one-step calls' setup cost as much as the step's
 * element-wise work. Here a step is its two products (BLAS, torch's threads) and one pass of
 * the element-wise cell over the rows (OpenMP). */

#define W(p, l) ((const REAL *)(p)[l])
#define WB(p, l) ((p) ? (const REAL *)(p)[l] : NULL)

typedef void (*SUF(gemm_t))(const char *, const char *, const int *, const int *, const int *, const REAL *,
                             const REAL *, const int *, const REAL *, const int *, const REAL *, REAL *, const int *);

/* c = beta c + a w, all row-major: c (rows, cols) row stride ldc, a (rows, inner) row stride
 * lda, w (inner, cols) row stride ldw. Column-major BLAS computes the transpose, cᵀ = wᵀ aᵀ. */
static void SUF(matmul)(void *gemm, int rows, int cols, int inner, const REAL *a, int lda, const REAL *w, int ldw,
                        REAL beta, REAL *c, int ldc) {
    const REAL one = 1;
    ((SUF(gemm_t))gemm)("N", "N", &cols, &rows, &inner, &one, w, &ldw, a, &lda, &beta, c, &ldc);
}

/* 1 if `gemm` computes a small strided product as a plain loop does (to rounding): guards
 * against a BLAS with another integer width or calling convention than this file assumes. */
int SUF(gemm_probe)(void *gemm) {
    enum { R = 3, N = 2, K = 4, LDA = 5 };
    REAL a[R * LDA], w[K * N], c[R * N], want[R * N];
    for (int i = 0; i < R * LDA; ++i) a[i] = (REAL)(i % 7) - 3;
    for (int i = 0; i < K * N; ++i) w[i] = (REAL)(i % 5) * (REAL)0.5 - 1;
    for (int i = 0; i < R * N; ++i) c[i] = want[i] = (REAL)i;
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < N; ++j)
            for (int k = 0; k < K; ++k) want[r * N + j] += a[r * LDA + k] * w[k * N + j];
    SUF(matmul)(gemm, R, N, K, a, LDA, w, N, 1, c, N);
    for (int i = 0; i < R * N; ++i)
        if (fabs((double)(c[i] - want[i])) > 1e-4 * (1 + fabs((double)want[i]))) return 0;
    return 1;
}

/* The products' starting values, the biases of the columns taken, in every row: gate q of
 * neuron i (column q n + i of the g n) is the weights' column q D + idx[i] (idx NULL: i).
 * gx gets b_ih + extra (+ b_hh unless `apart`, the GRU, where gh gets b_hh); biases and extra
 * may be NULL. Row 0 is filled, then copied (on `threads` threads). */
static void SUF(bias_rows)(const REAL *b_ih, const REAL *b_hh, const REAL *extra, int D, int g, const int *idx,
                           int n, int64_t batch, int apart, int threads, REAL *gx, REAL *gh) {
    const int width = g * n;
    for (int q = 0; q < g; ++q)
        for (int i = 0; i < n; ++i) {
            const int col = q * D + (idx ? idx[i] : i);
            const REAL bx = (b_ih ? b_ih[col] : 0) + (extra ? extra[col] : 0), bh = b_hh ? b_hh[col] : 0;
            gx[q * n + i] = apart ? bx : bx + bh;
            if (apart) gh[q * n + i] = bh;
        }
    (void)threads; /* unused in a build without OpenMP */
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t r = 1; r < batch; ++r) {
        memcpy(gx + (size_t)r * width, gx, sizeof(REAL) * width);
        if (apart) memcpy(gh + (size_t)r * width, gh, sizeof(REAL) * width);
    }
}

/* One step of the stack for `batch` rows, in place. x: (batch, I) row stride x_ld; state
 * (L, batch, K, D) contiguous; scratch: 2 * batch * G * D; extra: (G * D) added to layer 0's
 * input bias (ACT's first-step flag) or NULL. RNN and LSTM sum both products into one
 * pre-activation; the GRU keeps W_hn h apart (its candidate reads r ⊙ (W_hn h + b_hn)). */
static void SUF(batch_stack_step)(const Net *net, void *gemm, const REAL *x, int x_ld, int batch, REAL *state,
                                  REAL *scratch, const REAL *extra) {
    const int d = net->hidden, k = parts(net->cell), n = gates(net->cell) * d, apart = net->cell == CELL_GRU;
    REAL *gx = scratch, *gh = scratch + (size_t)batch * n;
    for (int layer = 0; layer < net->layers; ++layer) {
        REAL *s = state + (size_t)layer * batch * k * d;
        const REAL *in = layer == 0 ? x : s - (size_t)batch * k * d; /* the layer below, already stepped */
        const int in_size = layer == 0 ? net->input_size : d, in_ld = layer == 0 ? x_ld : k * d;
        const REAL *b_ih = WB(net->b_ih, layer), *b_hh = WB(net->b_hh, layer);
        const int use = pass_threads(net, batch, d);
        SUF(bias_rows)(b_ih, b_hh, layer == 0 ? extra : NULL, d, gates(net->cell), NULL, d, batch, apart, use, gx, gh);
        SUF(matmul)(gemm, batch, n, in_size, in, in_ld, W(net->w_ih_t, layer), n, 1, gx, n);
        SUF(matmul)(gemm, batch, n, d, s, k * d, W(net->w_hh_t, layer), n, 1, apart ? gh : gx, n);
#pragma omp parallel for schedule(static) num_threads(use) if (use > 1)
        for (int r = 0; r < batch; ++r) {
            REAL *h = s + (size_t)r * k * d;
            SUF(pointwise)(net->cell, gx + (size_t)r * n, apart ? gh + (size_t)r * n : NULL, d, h, h + d);
        }
    }
}

/* One step of the stack for n rows, in place (x: (n, I) contiguous; state (L, n, K, D)
 * contiguous), and each row's gate value σ(gate_w · s + gate_b) from the top layer's last part
 * into gate (n) (Skip RNN's Δũ, eq. 4). Returns 0, or -1 if the work space could not be allocated. */
int SUF(batch_step)(const Net *net, void *gemm, const REAL *x, int64_t n, REAL *state, REAL *gate) {
    const int d = net->hidden, k = parts(net->cell);
    REAL *scratch = malloc(sizeof(REAL) * 2 * (size_t)n * gates(net->cell) * d);
    if (!scratch) return -1;
    SUF(batch_stack_step)(net, gemm, x, net->input_size, (int)n, state, scratch, NULL);
    free(scratch);
    const REAL *top = state + (size_t)(net->layers - 1) * n * k * d + (size_t)(k - 1) * d;
    for (int64_t r = 0; r < n; ++r) gate[r] = SUF(gate)(net, top + (size_t)r * k * d);
    return 0;
}

/* Skip RNN's batched inference in rounds, whole in C (fast/skip.py's _run_batch for a tensor
 * input, the same policy). Each round takes the earliest due step t; if more than half of the
 * live rows are due at t only those step, else every live row steps at its own next update
 * (rows are independent), in one batched step. A round of every row at one step is a dense
 * step of the whole batch, so "windows" need no special case here.
 *   x (T, B, I) contiguous; ends (B): valid lengths; next_t (B): each row's next update step,
 *   INFINITY for none (updated); state (L, B, K, D) stepped in place; out (T, B, D): the top h
 *   at every step, a row's last update held until its next (and before its first, the
 *   initial top h); events (capacity B*T): step, row and Δũ of every update, each row's in
 *   time order.
 * Returns the number of events, or -1 if the work space could not be allocated. */
int64_t SUF(skip_rounds)(const Net *net, void *gemm, const REAL *x, int64_t seq_len, int64_t batch, const int64_t *ends,
                         double *next_t, double threshold, REAL *state, REAL *out, int64_t *ev_steps, int64_t *ev_rows,
                         REAL *ev_deltas) {
    const int d = net->hidden, k = parts(net->cell), in = net->input_size, layers = net->layers;
    const size_t row = (size_t)k * d; /* one row's state in one layer */
    REAL *xs = malloc(sizeof(REAL) * (size_t)batch * in), *st = malloc(sizeof(REAL) * layers * batch * row);
    REAL *scratch = malloc(sizeof(REAL) * 2 * (size_t)batch * gates(net->cell) * d);
    int64_t *rows = malloc(sizeof(int64_t) * batch), *filled = calloc(batch, sizeof(int64_t));
    int64_t events = -1;
    if (!xs || !st || !scratch || !rows || !filled) goto done;
    events = 0;
    for (;;) {
        double first = INFINITY;
        int64_t live = 0, due = 0, n = 0;
        for (int64_t r = 0; r < batch; ++r)
            if (next_t[r] < INFINITY) ++live, first = next_t[r] < first ? next_t[r] : first;
        if (!live) break;
        for (int64_t r = 0; r < batch; ++r) due += next_t[r] == first;
        const int only_due = 2 * due > live;
        for (int64_t r = 0; r < batch; ++r)
            if (only_due ? next_t[r] == first : next_t[r] < INFINITY) rows[n++] = r;
        int same_step = 1; /* every picked row at step `first` */
        for (int64_t j = 0; j < n; ++j) {
            const int64_t r = rows[j], step = (int64_t)next_t[r];
            const REAL *top = state + ((size_t)(layers - 1) * batch + r) * row;
            for (int64_t t = filled[r]; t < step; ++t) memcpy(out + ((size_t)t * batch + r) * d, top, sizeof(REAL) * d);
            same_step &= step == (int64_t)first;
        }
        REAL *stepped = state; /* every row at one step: in place, x read where it lies */
        if (n == batch && same_step) {
            SUF(batch_stack_step)(net, gemm, x + (size_t)first * batch * in, in, (int)n, state, scratch, NULL);
        } else {
            for (int64_t j = 0; j < n; ++j) {
                const int64_t r = rows[j], step = (int64_t)next_t[r];
                memcpy(xs + (size_t)j * in, x + ((size_t)step * batch + r) * in, sizeof(REAL) * in);
                for (int l = 0; l < layers; ++l)
                    memcpy(st + ((size_t)l * n + j) * row, state + ((size_t)l * batch + r) * row, sizeof(REAL) * row);
            }
            SUF(batch_stack_step)(net, gemm, xs, in, (int)n, st, scratch, NULL);
            stepped = st;
        }
        for (int64_t j = 0; j < n; ++j) {
            const int64_t r = rows[j], step = (int64_t)next_t[r], at = stepped == state ? r : j;
            if (stepped != state)
                for (int l = 0; l < layers; ++l)
                    memcpy(state + ((size_t)l * batch + r) * row, st + ((size_t)l * n + j) * row, sizeof(REAL) * row);
            const REAL *top = stepped + ((size_t)(layers - 1) * n + at) * row;
            memcpy(out + ((size_t)step * batch + r) * d, top, sizeof(REAL) * d);
            filled[r] = step + 1;
            const REAL delta = SUF(gate)(net, top + (size_t)(k - 1) * d); /* Δũ, eq. 4 */
            ev_steps[events] = step, ev_rows[events] = r, ev_deltas[events] = delta, ++events;
            /* eq. 6: the next update after floor(threshold / Δũ) skipped steps */
            double next = threshold < 1 && delta > 0 ? (double)step + 1 + floor(threshold / (double)delta) : INFINITY;
            next_t[r] = next >= (double)ends[r] ? INFINITY : next;
        }
    }
    for (int64_t r = 0; r < batch; ++r) { /* the last update held to the end */
        const REAL *top = state + ((size_t)(layers - 1) * batch + r) * row;
        for (int64_t t = filled[r]; t < seq_len; ++t) memcpy(out + ((size_t)t * batch + r) * d, top, sizeof(REAL) * d);
    }
done:
    free(xs), free(st), free(scratch), free(rows), free(filled);
    return events;
}

/* ACT for a batch (fast/act.py's ponder, the same steps): at each input step the valid rows
 * ponder, the first ponder step with the flag's weights in layer 0's input bias, until
 * Σ h_n ≥ threshold or n = max_steps (h_n = σ(W_h · top h + b_h)); rows that halt leave the
 * computation (the running rows are compacted after each ponder step) and their new state is
 * the mean field Σ p_n s_n (p_n = h_n, the remainder R = 1 - Σ h at the halting step).
 *   x (T, B, I) contiguous; valid (T, B) or NULL (an invalid step: not pondered, N = R = 0);
 *   flag (G * D); state (L, B, K, D) stepped in place; out (T, B, D), ponders and remainders
 *   (T, B) written. Returns 0, or -1 if the work space could not be allocated. */
int SUF(act_batch_run)(const Net *net, void *gemm, const REAL *x, int64_t steps, int64_t batch, const uint8_t *valid,
                       const REAL *flag, int64_t max_steps, double threshold, REAL *state, REAL *out, REAL *ponders,
                       REAL *remainders) {
    const int d = net->hidden, k = parts(net->cell), in = net->input_size, layers = net->layers;
    const size_t row = (size_t)k * d, rows_all = (size_t)layers * batch * row;
    REAL *cur = malloc(sizeof(REAL) * rows_all), *mean = malloc(sizeof(REAL) * rows_all);
    REAL *xs = malloc(sizeof(REAL) * (size_t)batch * in), *cum = malloc(sizeof(REAL) * batch);
    REAL *scratch = malloc(sizeof(REAL) * 2 * (size_t)batch * gates(net->cell) * d);
    int64_t *place = malloc(sizeof(int64_t) * batch), *rows = malloc(sizeof(int64_t) * batch);
    int64_t *rows_kept = malloc(sizeof(int64_t) * batch);
    const REAL thr = (REAL)threshold;
    int status = -1;
    if (!cur || !mean || !xs || !cum || !scratch || !place || !rows || !rows_kept) goto done;
    for (int64_t t = 0; t < steps; ++t) {
        int64_t n = 0;
        for (int64_t r = 0; r < batch; ++r)
            if (!valid || valid[(size_t)t * batch + r]) rows[n++] = r;
        for (int64_t r = 0; r < batch; ++r) ponders[(size_t)t * batch + r] = remainders[(size_t)t * batch + r] = 0;
        /* the running rows, compact: layer l of running row j at cur[(l n + j) row] */
        for (int64_t j = 0; j < n; ++j) {
            memcpy(xs + (size_t)j * in, x + ((size_t)t * batch + rows[j]) * in, sizeof(REAL) * in);
            for (int l = 0; l < layers; ++l)
                memcpy(cur + ((size_t)l * n + j) * row, state + ((size_t)l * batch + rows[j]) * row, sizeof(REAL) * row);
            cum[j] = 0, place[j] = rows[j];
        }
        for (int64_t step = 1, live = n; step <= max_steps && live; ++step) {
            SUF(batch_stack_step)(net, gemm, xs, in, (int)live, cur, scratch, step == 1 ? flag : NULL);
            int64_t kept = 0;
            for (int64_t j = 0; j < live; ++j) {
                const int64_t r = place[j];
                const REAL hp = SUF(gate)(net, cur + ((size_t)(layers - 1) * live + j) * row);
                const int stop = cum[j] + hp >= thr || step == max_steps;
                const REAL p = stop ? 1 - cum[j] : hp;
                for (int l = 0; l < layers; ++l) {
                    REAL *m = mean + ((size_t)l * batch + r) * row;
                    const REAL *s = cur + ((size_t)l * live + j) * row;
                    for (size_t i = 0; i < row; ++i) m[i] = step == 1 ? p * s[i] : m[i] + p * s[i];
                }
                if (stop) {
                    ponders[(size_t)t * batch + r] = (REAL)step, remainders[(size_t)t * batch + r] = 1 - cum[j];
                    continue;
                }
                /* still running: moves to place `kept` (kept <= j) */
                cum[kept] = cum[j] + hp, place[kept] = r, rows_kept[kept] = j;
                memmove(xs + (size_t)kept * in, xs + (size_t)j * in, sizeof(REAL) * in);
                ++kept;
            }
            if (kept < live) /* the survivors' states, layer-major with stride kept: each moves down */
                for (int l = 0; l < layers; ++l)
                    for (int64_t q = 0; q < kept; ++q)
                        memmove(cur + ((size_t)l * kept + q) * row, cur + ((size_t)l * live + rows_kept[q]) * row,
                                sizeof(REAL) * row);
            live = kept;
        }
        for (int64_t j = 0; j < n; ++j) {
            const int64_t r = rows[j];
            for (int l = 0; l < layers; ++l)
                memcpy(state + ((size_t)l * batch + r) * row, mean + ((size_t)l * batch + r) * row, sizeof(REAL) * row);
        }
        for (int64_t r = 0; r < batch; ++r)
            memcpy(out + ((size_t)t * batch + r) * d, state + ((size_t)(layers - 1) * batch + r) * row, sizeof(REAL) * d);
    }
    status = 0;
done:
    free(cur), free(mean), free(xs), free(cum), free(scratch), free(place), free(rows), free(rows_kept);
    return status;
}

#undef W
#undef WB
