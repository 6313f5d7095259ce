/* xoshiro256** (Blackman & Vigna), seeded through splitmix64. State is explicit: two models or
 * two ranks never share a stream by accident. */
#include "bnlab/core.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void bl_rng_seed(bl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t bl_rng_u64(bl_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double bl_rng_uniform(bl_rng *r) { return (double)(bl_rng_u64(r) >> 11) * 0x1.0p-53; }

double bl_rng_normal(bl_rng *r)
{
    double u1 = 1.0 - bl_rng_uniform(r), u2 = bl_rng_uniform(r); /* u1 in (0,1] */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t bl_rng_below(bl_rng *r, uint32_t n)
{
    /* Lemire's multiply-shift with rejection: unbiased for any n > 0. */
    uint64_t m = (uint64_t)(uint32_t)(bl_rng_u64(r) >> 32) * n;
    uint32_t lo = (uint32_t)m;
    if (lo < n) {
        uint32_t t = (uint32_t)(-n) % n;
        while (lo < t) {
            m = (uint64_t)(uint32_t)(bl_rng_u64(r) >> 32) * n;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

void bl_rng_shuffle(bl_rng *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)bl_rng_below(r, (uint32_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

uint64_t bl_rng_mix(uint64_t a, uint64_t b)
{
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
