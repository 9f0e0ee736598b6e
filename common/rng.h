// rng.h - small, fast, reproducible random numbers (xoshiro256** seeded by
// splitmix64). State is explicit: every stream that must be reproducible on
// its own (a sequence being sampled, a data loader) owns one Rng.
#pragma once
#include <stdint.h>

typedef struct { uint64_t s[4]; } Rng;

void rng_seed(Rng* r, uint64_t seed);
uint64_t rng_u64(Rng* r);
// uniform in [0, 1) with 24 random bits (exactly representable as float)
float rng_float(Rng* r);
// uniform integer in [0, n)
uint64_t rng_below(Rng* r, uint64_t n);
// standard normal (Box-Muller)
float rng_normal(Rng* r);
