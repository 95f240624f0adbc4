/* Batch-1 Skip RNN inference in one native loop (float32, contiguous arrays).
 *
 * Loaded by adaptrnn/fast/native.py, which compiles this file on first use and falls back
 * to the PyTorch path when no compiler is available. From Python every update costs
 * ~25 small tensor operations (~60-100 us at batch 1); here an update costs its two
 * matrix-vector products and the element-wise cell, so skipped steps save time in proportion.
 *
 * Weights are given transposed (C, G*D) so that a product is a sequence of contiguous
 * axpy's, which the compiler vectorises without reassociating sums. exp is a Cephes-style
 * polynomial (relative error ~2e-7) so that the element-wise loops vectorise too.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { CELL_RNN = 0, CELL_GRU = 1, CELL_LSTM = 2 };

typedef struct {
    int32_t cell, layers, input_size, hidden;
    const float *const *w_ih_t; /* per layer (C_l, G*D) */
    const float *const *w_hh_t; /* per layer (D, G*D) */
    const float *const *b_ih;   /* per layer (G*D) or NULL */
    const float *const *b_hh;
    const float *gate_w;        /* (D) Skip RNN's W_p */
    float gate_b;               /* b_p */
} Net;

static inline int gates(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }
static inline int parts(int cell) { return cell == CELL_LSTM ? 2 : 1; }

static inline float exp_f(float x) {
    /* Written without library calls or branches (ternaries, magic-number rounding, a union
     * bit cast) so that loops calling it vectorise without -ffast-math. */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return e * scale.f;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

static inline float tanh_f(float x) {
    const float t = exp_f(-2.0f * fabsf(x));
    return copysignf((1.0f - t) / (1.0f + t), x);
}

/* y = b + x W (W given transposed, (in, n)); b may be NULL. Outputs are computed in blocks
 * of BLOCK kept in registers over the whole sum, so y is written once and W read once. */
#define BLOCK 128
static void affine(const float *restrict x, int in, const float *restrict w_t, const float *restrict b, int n,
                   float *restrict y) {
    int k0 = 0;
    for (; k0 + BLOCK <= n; k0 += BLOCK) {
        float acc[BLOCK];
        for (int i = 0; i < BLOCK; ++i) acc[i] = b ? b[k0 + i] : 0.0f;
        for (int j = 0; j < in; ++j) {
            const float xj = x[j];
            const float *restrict w = w_t + (size_t)j * n + k0;
            for (int i = 0; i < BLOCK; ++i) acc[i] += xj * w[i];
        }
        memcpy(y + k0, acc, sizeof acc);
    }
    for (int k = k0; k < n; ++k) y[k] = b ? b[k] : 0.0f;
    for (int j = 0; j < in && k0 < n; ++j) {
        const float xj = x[j];
        const float *restrict w = w_t + (size_t)j * n;
        for (int k = k0; k < n; ++k) y[k] += xj * w[k];
    }
}

/* One layer in place: s holds h (D) then, for the LSTM, c (D). Same arithmetic as cells.pointwise. */
static void layer_step(const Net *net, int layer, const float *x, float *s, float *restrict gx, float *restrict gh) {
    const int d = net->hidden, cell = net->cell, g = gates(cell);
    const int in = layer == 0 ? net->input_size : d;
    affine(x, in, net->w_ih_t[layer], net->b_ih ? net->b_ih[layer] : NULL, g * d, gx);
    affine(s, d, net->w_hh_t[layer], net->b_hh ? net->b_hh[layer] : NULL, g * d, gh);
    float *restrict h = s, *restrict c = s + d; /* h and c do not overlap */
    if (cell == CELL_RNN) {
        for (int k = 0; k < d; ++k) h[k] = tanh_f(gx[k] + gh[k]);
    } else if (cell == CELL_GRU) {
        for (int k = 0; k < d; ++k) {
            const float r = sigmoid_f(gx[k] + gh[k]);
            const float z = sigmoid_f(gx[d + k] + gh[d + k]);
            const float n = tanh_f(gx[2 * d + k] + r * gh[2 * d + k]);
            h[k] = (1.0f - z) * n + z * h[k];
        }
    } else {
        for (int k = 0; k < d; ++k) {
            const float i = sigmoid_f(gx[k] + gh[k]);
            const float f = sigmoid_f(gx[d + k] + gh[d + k]);
            const float gg = tanh_f(gx[2 * d + k] + gh[2 * d + k]);
            const float o = sigmoid_f(gx[3 * d + k] + gh[3 * d + k]);
            c[k] = f * c[k] + i * gg;
            h[k] = o * tanh_f(c[k]);
        }
    }
}

/* One step of the whole stack for one sequence. state: (L, K, D); scratch: 2*G*D floats. */
void stack_step(const Net *net, const float *x, float *state, float *scratch) {
    const int d = net->hidden, k = parts(net->cell), g = gates(net->cell);
    for (int layer = 0; layer < net->layers; ++layer) {
        const float *in = layer == 0 ? x : state + (size_t)(layer - 1) * k * d;
        layer_step(net, layer, in, state + (size_t)layer * k * d, scratch, scratch + (size_t)g * d);
    }
}

/* Δũ = σ(W_p s + b_p) (eq. 4) from the top layer's c (LSTM) or h. */
float update_increment(const Net *net, const float *state) {
    const int d = net->hidden, k = parts(net->cell);
    const float *top = state + (size_t)(net->layers - 1) * k * d + (size_t)(k - 1) * d;
    float z = 0.0f;
    for (int i = 0; i < d; ++i) z += top[i] * net->gate_w[i];
    return sigmoid_f(z + net->gate_b);
}

/* The jump-ahead loop over x (T, I) from step `first` to `end` (exclusive).
 * After an update with increment Δũ the next is floor(threshold / Δũ) + 1 steps later (eq. 6).
 * Writes each update's step, new top-layer h (D) and Δũ; returns the number of updates. */
int64_t skip_run(const Net *net, const float *x, int64_t first, int64_t end, double threshold, float *state,
                 float *scratch, int64_t *steps, float *hidden, float *deltas) {
    const int d = net->hidden, k = parts(net->cell);
    const float *top_h = state + (size_t)(net->layers - 1) * k * d;
    int64_t count = 0;
    double t = (double)first;
    while (t < (double)end) {
        const int64_t step = (int64_t)t;
        stack_step(net, x + (size_t)step * net->input_size, state, scratch);
        const float delta = update_increment(net, state);
        steps[count] = step;
        memcpy(hidden + (size_t)count * d, top_h, (size_t)d * sizeof *hidden);
        deltas[count] = delta;
        ++count;
        const double skip = (threshold < 1.0 && delta > 0.0f) ? floor(threshold / (double)delta) : INFINITY;
        t = (double)step + 1.0 + skip;
    }
    return count;
}
