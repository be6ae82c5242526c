#version 450
// Per-block statistics of a tensor's elements, read where the runtime put
// the file's bytes (on the direct path: the file's own pages).
//
// Each invocation reduces BLOCK consecutive elements, in order, in float32:
//   out[b] = (sum, sum of |x|, min, max, non-finite count, finite count)
// over the finite elements of block b. The CPU reference (src/reduce.rs)
// does exactly the same operations in the same order, so on an IEEE device
// the results are equal bit for bit.
layout(local_size_x = 64) in;

#define BLOCK 1024u
#define DTYPE_F32 0u
#define DTYPE_F16 1u
#define DTYPE_BF16 2u

layout(push_constant) uniform Params {
    uint first_byte; // where element 0 is in the buffer (any alignment)
    uint count;      // elements in this piece
    uint dtype;
} p;

layout(std430, binding = 0) readonly buffer Data {
    uint words[];
} src;

struct Stats {
    float sum;
    float abs_sum;
    float min_v;
    float max_v;
    uint nonfinite;
    uint finite;
    uint pad0;
    uint pad1;
};

layout(std430, binding = 1) writeonly buffer Out {
    Stats stats[];
} dst;

// The 16 or 32 bits at byte `b` of the buffer, at any alignment (a file
// may place a tensor at any byte). The next word is read only when the
// value reaches into it, so nothing past the buffer is touched.
uint load16(uint b) {
    uint shift = (b % 4u) * 8u;
    uint v = src.words[b / 4u] >> shift;
    if (shift > 16u) {
        v |= src.words[b / 4u + 1u] << (32u - shift);
    }
    return v & 0xffffu;
}

uint load32(uint b) {
    uint shift = (b % 4u) * 8u;
    uint v = src.words[b / 4u];
    if (shift != 0u) {
        v = (v >> shift) | (src.words[b / 4u + 1u] << (32u - shift));
    }
    return v;
}

float element(uint i) {
    if (p.dtype == DTYPE_F32) {
        return uintBitsToFloat(load32(p.first_byte + i * 4u));
    }
    uint h = load16(p.first_byte + i * 2u);
    if (p.dtype == DTYPE_F16) {
        return unpackHalf2x16(h).x;
    }
    return uintBitsToFloat(h << 16);
}

void main() {
    uint b = gl_GlobalInvocationID.x;
    uint start = b * BLOCK;
    if (start >= p.count) {
        return;
    }
    uint end = min(start + BLOCK, p.count);
    float s = 0.0;
    float a = 0.0;
    float lo = uintBitsToFloat(0x7f800000u);  // +inf
    float hi = uintBitsToFloat(0xff800000u);  // -inf
    uint nonfinite = 0u;
    for (uint i = start; i < end; i++) {
        float x = element(i);
        if (isnan(x) || isinf(x)) {
            nonfinite++;
            continue;
        }
        s += x;
        a += abs(x);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    dst.stats[b] = Stats(s, a, lo, hi, nonfinite, (end - start) - nonfinite, 0u, 0u);
}
