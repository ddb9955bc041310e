/* Gaussian noise N(0, std^2) in float32, fast on a CPU (noisynets.core.fast_normal).

   Bits: xoshiro128+ (Blackman and Vigna, "Scrambled linear pseudorandom number generators",
   2021), LANES generators side by side, one per SIMD lane, each advanced by

       result = s0 + s3
       t = s1 << 9;  s2 ^= s0;  s3 ^= s1;  s1 ^= s2;  s0 ^= s3;  s2 ^= t;  s3 = rotl(s3, 11)

   The top 24 bits of a result make a uniform (xoshiro128+ is the authors' generator for
   floating point: its weak low bits are dropped).

   Normals: Box-Muller. A chunk of 2 CHUNK normals takes 2 CHUNK uniforms, u1 (the first
   CHUNK, in (0, 1]) and u2 (the next CHUNK, in [0, 1)):

       r = std sqrt(-2 ln u1),   z[j] = r cos(2 pi u2),   z[CHUNK + j] = r sin(2 pi u2)

   The loops run in SIMD (glibc's vector logf, cosf, sinf); a draw is whole chunks, the last
   one cut to length, so every number goes through the same instructions whatever the draw's
   length, and a state and a length fix the numbers exactly. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 8
#define CHUNK 128

typedef uint32_t lanes_t __attribute__((vector_size(4 * LANES)));

/* 2 CHUNK outputs of the LANES generators whose words are state[0..3] (LANES each). */
static void uniform_bits(uint32_t *state, uint32_t *restrict bits) {
    lanes_t s0, s1, s2, s3;
    memcpy(&s0, state, sizeof s0);
    memcpy(&s1, state + LANES, sizeof s1);
    memcpy(&s2, state + 2 * LANES, sizeof s2);
    memcpy(&s3, state + 3 * LANES, sizeof s3);
    for (int i = 0; i < 2 * CHUNK; i += LANES) {
        lanes_t result = s0 + s3;
        memcpy(bits + i, &result, sizeof result);
        lanes_t t = s1 << 9;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = (s3 << 11) | (s3 >> 21);
    }
    memcpy(state, &s0, sizeof s0);
    memcpy(state + LANES, &s1, sizeof s1);
    memcpy(state + 2 * LANES, &s2, sizeof s2);
    memcpy(state + 3 * LANES, &s3, sizeof s3);
}

static void box_muller(const uint32_t *restrict bits, float std, float *restrict z) {
    float r[CHUNK], angle[CHUNK];
#pragma omp simd
    for (int j = 0; j < CHUNK; j++) {
        float u1 = (float)(int32_t)((bits[j] >> 8) + 1) * 0x1p-24f;
        float u2 = (float)(int32_t)(bits[CHUNK + j] >> 8) * 0x1p-24f;
        r[j] = std * sqrtf(-2.0f * logf(u1));
        angle[j] = 6.28318530717958647692f * u2;
    }
    /* cos and sin in loops of their own: together gcc makes them one scalar sincosf call */
#pragma omp simd
    for (int j = 0; j < CHUNK; j++)
        z[j] = r[j] * cosf(angle[j]);
#pragma omp simd
    for (int j = 0; j < CHUNK; j++)
        z[CHUNK + j] = r[j] * sinf(angle[j]);
}

/* n normals N(0, std^2) into out; the state (4 LANES words) advances by ceil(n / 2 CHUNK)
   chunks. */
void normal_fill(uint32_t *state, float *out, int64_t n, float std) {
    uint32_t bits[2 * CHUNK];
    int64_t i = 0;
    for (; i + 2 * CHUNK <= n; i += 2 * CHUNK) {
        uniform_bits(state, bits);
        box_muller(bits, std, out + i);
    }
    if (i < n) {
        float last[2 * CHUNK];
        uniform_bits(state, bits);
        box_muller(bits, std, last);
        memcpy(out + i, last, (size_t)(n - i) * sizeof(float));
    }
}

int normal_lanes(void) { return LANES; }
int normal_chunk(void) { return 2 * CHUNK; }
