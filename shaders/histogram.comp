#version 450
// 256-bin byte histogram. Each workgroup counts into shared memory and adds
// its bins to the output once. The runtime zeroes the output before each
// dispatch and accumulates chunks in 64-bit counters (a chunk is far below
// 2^32 bytes, so the 32-bit bins cannot wrap).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 1) buffer Output {
    uint bins[256];
} dst;

shared uint local_bins[256];

void main() {
    uint lid = gl_LocalInvocationID.x;
    for (uint i = lid; i < 256u; i += gl_WorkGroupSize.x) {
        local_bins[i] = 0u;
    }
    barrier();

    uint block = gl_GlobalInvocationID.x;
    uint n = block_len(block);
    uint w = block * BLOCK_WORDS;
    uint full_words = n / 4u;
    for (uint i = 0u; i < full_words; i++) {
        uint v = src.words[w + i];
        atomicAdd(local_bins[v & 0xffu], 1u);
        atomicAdd(local_bins[(v >> 8) & 0xffu], 1u);
        atomicAdd(local_bins[(v >> 16) & 0xffu], 1u);
        atomicAdd(local_bins[v >> 24], 1u);
    }
    uint rest = n & 3u;
    if (rest != 0u) {
        uint v = src.words[w + full_words];
        for (uint i = 0u; i < rest; i++) {
            atomicAdd(local_bins[(v >> (i * 8u)) & 0xffu], 1u);
        }
    }
    barrier();

    for (uint i = lid; i < 256u; i += gl_WorkGroupSize.x) {
        uint c = local_bins[i];
        if (c != 0u) {
            atomicAdd(dst.bins[i], c);
        }
    }
}
