// SHA-256 (FIPS 180-4) whose chaining value can be read out at a block boundary and resumed from, so an
// image's chunks can each be checked on arrival against the chain that produces the image's own digest:
// every byte is hashed once, not once per chunk and again for the whole. Blocks go through the SHA
// extensions (SHA-NI) when the CPU has them, else through portable C.
#ifndef CSHA256_H
#define CSHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t length; // bytes hashed so far
    uint8_t buf[64];
    uint32_t used; // bytes waiting in buf
} csha256_ctx;

void csha256_init(csha256_ctx *c);
// Continues a hash whose first `length` bytes (a multiple of 64) left chaining value `state`
// (the eight words big-endian, as a digest is written). Returns -1 if `length` is not a multiple of 64.
int csha256_resume(csha256_ctx *c, const uint8_t state[32], uint64_t length);
void csha256_update(csha256_ctx *c, const void *data, size_t len);
// The chaining value so far; -1 unless the bytes hashed are a whole number of blocks.
int csha256_state(const csha256_ctx *c, uint8_t out[32]);
// Pads, and writes the digest. The context is spent.
void csha256_final(csha256_ctx *c, uint8_t out[32]);
// 1 when blocks go through the SHA extensions.
int csha256_uses_sha_extensions(void);
// Tests: 1 sends every block through the portable code, so both paths are checked on one machine.
void csha256_force_portable(int on);
#endif
