/* Time of the batched element-wise cell (pointwise_rows_f32 of src/adaptrnn/fast/native.c) on
 * (n, d) = (256, 110), 2,000 calls, microseconds per call, for the three cells. Built against a
 * native library compiled with the flags under test, e.g. (from the repository root):
 *
 *   gcc -O3 -fwrapv -fno-math-errno -march=native -fopenmp -shared -fPIC \
 *       src/adaptrnn/fast/native.c -o /tmp/n.so -lm
 *   gcc -O2 benchmarks/pointwise_rows.c /tmp/n.so -o /tmp/pw -Wl,-rpath,/tmp && /tmp/pw
 *
 * (benchmarks/results/pointwise_rows.txt: Python's -fwrapv against -fno-wrapv, before and after
 * the 16-lane blocks.) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void pointwise_rows_f32(int cell, const float *gx, int64_t gx_ld, const float *gh, int64_t gh_ld, int64_t n, int d,
                        const float *s, float *out);

int main(void) {
    enum { N = 256, D = 110, CALLS = 2000 };
    float *gx = malloc(sizeof(float) * N * 4 * D), *gh = malloc(sizeof(float) * N * 4 * D);
    float *s = malloc(sizeof(float) * N * 2 * D), *out = malloc(sizeof(float) * N * 2 * D);
    for (int i = 0; i < N * 4 * D; ++i) gx[i] = (float)(i % 7) * 0.1f - 0.3f, gh[i] = (float)(i % 5) * 0.1f;
    for (int i = 0; i < N * 2 * D; ++i) s[i] = 0.1f;
    const char *names[] = {"rnn", "gru", "lstm"};
    for (int cell = 0; cell < 3; ++cell) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int it = 0; it < CALLS; ++it) pointwise_rows_f32(cell, gx, 4 * D, gh, 4 * D, N, D, s, out);
        clock_gettime(CLOCK_MONOTONIC, &b);
        const double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
        printf("%-4s %7.1f us per call\n", names[cell], ns / CALLS / 1e3);
    }
    free(gx), free(gh), free(s), free(out);
    return 0;
}
