#version 450
// Sum of the input's little-endian 32-bit words, modulo 2^64, per 4 KiB block.
// A trailing partial word is zero-padded. out[b] = (low 32 bits, high 32 bits);
// the runtime adds the blocks with wrapping 64-bit arithmetic. Carries are
// kept by hand so the shader needs no shaderInt64.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 1) writeonly buffer Output {
    uvec2 sum[];
} dst;

void main() {
    uint block = gl_GlobalInvocationID.x;
    uint n = block_len(block);
    if (n == 0u) {
        return;
    }
    uint w = block * BLOCK_WORDS;
    uint words = (n + 3u) / 4u;
    uint lo = 0u;
    uint hi = 0u;
    for (uint i = 0u; i < words; i++) {
        uint carry;
        lo = uaddCarry(lo, masked_word(w + i), carry);
        hi += carry;
    }
    dst.sum[block] = uvec2(lo, hi);
}
