/* Batch-1 inference loops of every method, whole sequences in C (float32 and float64).
 *
 * Built by `pip install` as an optional extension (setup.py) and loaded with ctypes by
 * adaptrnn/fast/native.py; it uses no Python or torch headers. From Python a batch-1 step
 * costs ~25-35 small tensor operations (~60-100 us); here a step costs its products and its
 * element-wise cell, so work left out (skipped steps, d_t blocks, idle neurons, ponder
 * steps not taken) is time saved in proportion.
 *
 * The loops are written once in native_loops.h (SA-RNN's in native_sa.h, the batched ones that
 * call torch's BLAS in native_batch.h and native_batch_neurons.h) and included twice:
 * with REAL = float (suffix _f32; exp is a Cephes-style polynomial, relative error ~2e-7, so the
 * element-wise loops vectorise without -ffast-math) and REAL = double (suffix _f64; libm's exp),
 * the latter so that tests can compare with the reference to float64 precision.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { CELL_RNN = 0, CELL_GRU = 1, CELL_LSTM = 2 };

/* A module's weights; REAL pointers given as void so one layout serves both precisions. */
typedef struct {
    int32_t cell, layers, input_size, hidden;
    const void *const *w_ih_t; /* per layer (C_l, G*D): transposed, for the axpy products */
    const void *const *w_hh_t; /* per layer (D, G*D) */
    const void *const *b_ih;   /* per layer (G*D) or NULL */
    const void *const *b_hh;
    const void *gate_w;        /* (D) Skip RNN's W_p, ACT's W_h, or NULL */
    double gate_b;             /* b_p / b_h */
    int32_t threads;           /* threads for one step's products (torch.get_num_threads(), set per call) */
    void *tuner;               /* the net's Tuner (below), kept between calls, or NULL for one per call */
} Net;

/* Below this many multiply-adds a step's products stay on one thread: a fork/join costs
 * ~1-3 us even with the threads spinning, about what 20-40 K multiply-adds take on one core. */
#define PARALLEL_MIN 32768

/* Whether threads pay is decided by timing: a fork/join is cheap on idle cores but a thread
 * that waits for a busy core stalls every step (a loaded machine). Each cycle
 * times PROBE parallel regions run serially and PROBE run on the threads, compares time per
 * multiply-add, and runs the next `period` regions the faster way; while serial wins the
 * period doubles (up to PERIOD_MAX), so the probes' cost fades. A threaded probe 2x slower
 * than the serial ones ends the probing at once (on a loaded machine one costs milliseconds). Results do not depend on the
 * choice (the split never changes a sum's order). A net's tuner lives in its Net between loop
 * calls, so the probes' cost fades over calls too (concurrent calls on one net may mix their
 * timings: only the choice is affected). A NULL tuner (one stack step) uses the threads. */
enum { PROBE = 4, PERIOD_MIN = 64, PERIOD_MAX = 32768 };
/* The threaded probes start with one untimed region: after a serial stretch the pool's threads
 * sleep, and waking them (tens of us) made the first threaded probe look 2x slower than serial,
 * which ended the cycle for serial and doubled the period, so a net that gained from threads
 * (ACT at batch 1, T = 1000, 5 ponder steps: 42 ms on two threads, 71 ms serial) stayed serial. */
enum { THREADED = PROBE + 1, PROBES_END = 2 * PROBE + 1 };
typedef struct {
    int threads, step, period, best;
    double ns[2], work[2]; /* serial, threaded: time and multiply-adds of this cycle's probes */
} Tuner;

static Tuner tuner_new(int threads) { return (Tuner){threads, 0, PERIOD_MIN, 1, {0, 0}, {0, 0}}; }

int native_tuner_size(void) { return (int)sizeof(Tuner); }

/* The net's tuner (restarted when the thread count changed), or `local` if the net has none. */
static Tuner *tuner_of(const Net *net, Tuner *local) {
    Tuner *tu = net->tuner ? (Tuner *)net->tuner : local;
    if (tu == local || tu->threads != net->threads) *tu = tuner_new(net->threads);
    return tu;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e9 * (double)t.tv_sec + (double)t.tv_nsec;
}

/* The threads for a region of `work` multiply-adds; *start is set when the region is timed. */
static int region_threads(const Tuner *tu, int threads, long work, double *start) {
    *start = -1;
    if (threads <= 1 || work < PARALLEL_MIN) return 1;
    if (!tu) return threads;
    if (tu->step >= PROBES_END) return tu->best;
    if (tu->step != PROBE) *start = now_ns(); /* step PROBE wakes the threads, untimed */
    return tu->step < PROBE ? 1 : threads;
}

static void region_done(Tuner *tu, int threads, long work, double start) {
    if (!tu || threads <= 1 || work < PARALLEL_MIN) return;
    if (start >= 0) {
        const int k = tu->step >= PROBE;
        tu->ns[k] += now_ns() - start, tu->work[k] += (double)work;
    }
    ++tu->step;
    if (tu->step > THREADED && tu->step < PROBES_END && tu->ns[1] * tu->work[0] > 2 * tu->ns[0] * tu->work[1])
        tu->step = PROBES_END; /* threads already 2x slower: no more threaded probes this cycle */
    if (tu->step == PROBES_END) {
        const int wins = tu->ns[1] * tu->work[0] < tu->ns[0] * tu->work[1]; /* threaded ns/MAC is lower */
        tu->best = wins ? tu->threads : 1;
        tu->period = wins ? PERIOD_MIN : (2 * tu->period > PERIOD_MAX ? PERIOD_MAX : 2 * tu->period);
        tu->ns[0] = tu->ns[1] = tu->work[0] = tu->work[1] = 0;
    } else if (tu->step >= PROBES_END + tu->period) {
        tu->step = 0;
    }
}

/* 1 if built with OpenMP (the loops use net->threads), 0 if serial (the flag was unavailable). */
int native_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int gates(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }
static inline int parts(int cell) { return cell == CELL_LSTM ? 2 : 1; }
/* The threads for an OpenMP pass over `rows` rows of `width` elements: the caller's count, or 1
 * where the pass is too small to pay for waking a second thread. */
static inline int pass_threads(const Net *net, int64_t rows, int width) {
    return net->threads > 1 && rows * width >= PARALLEL_MIN / 8 ? net->threads : 1;
}

/* Neurons per block of the element-wise cell: one 64-byte vector of floats, two of doubles. */
enum { PW = 16 };

static inline float exp_f32(float x) {
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

static inline double exp_f64(double x) { return exp(x); }

/* SA-RNN's packed rows are zero-padded to a multiple of SA_PAD entries (a multiple of the
 * vector lanes of both precisions), so that its dot products need no remainder loop. */
enum { SA_PAD = 8 };
/* SA-RNN's active neurons are computed (and split over threads) in chunks of SA_CHUNK. */
enum { SA_CHUNK = 16 };
int native_sa_pad(void) { return SA_PAD; }
static inline int sa_padded(int n) { return (n + SA_PAD - 1) / SA_PAD * SA_PAD; }

/* __builtin_shufflevector (Clang, GCC >= 12) or GCC's older __builtin_shuffle with a mask
 * vector of the same lanes (MASK, defined with REAL below). */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (MASK){__VA_ARGS__})
#endif

#define REAL float
#define SUF(name) name##_f32
#define EXP exp_f32
#define ONE 1.0f
#define LANES 8 /* REALs in a 32-byte vector */
#define MASK MASK32
typedef int32_t MASK32 __attribute__((vector_size(32)));
#include "native_loops.h"
#include "native_sa.h"
#include "native_batch.h"
#include "native_batch_neurons.h"
#undef REAL
#undef SUF
#undef EXP
#undef ONE
#undef LANES
#undef MASK

#define REAL double
#define SUF(name) name##_f64
#define EXP exp_f64
#define ONE 1.0
#define LANES 4
#define MASK MASK64
typedef int64_t MASK64 __attribute__((vector_size(32)));
#include "native_loops.h"
#include "native_sa.h"
#include "native_batch.h"
#include "native_batch_neurons.h"
