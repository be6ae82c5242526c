#version 450
// vk-load's own shader: the sum of a tensor's little-endian 32-bit words,
// modulo 2^64, in partial sums. Each of the dispatch's invocations adds
// every (global size)-th word of the bound window, carrying by hand (no
// shaderInt64 needed), and writes its (low, high) pair; the application
// adds the pairs with wrapping 64-bit arithmetic. `bytes` is the window's
// length: a trailing partial word counts with its missing bytes as zero.
layout(local_size_x = 256) in;

layout(std430, binding = 0) readonly buffer Tensor {
    uint w[];
} src;

layout(std430, binding = 1) writeonly buffer Partials {
    uvec2 p[];
} dst;

layout(push_constant) uniform Push {
    uint bytes;
} pc;

void main() {
    uint id = gl_GlobalInvocationID.x;
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    uint words = (pc.bytes + 3u) / 4u;
    uint tail = pc.bytes % 4u;
    uint lo = 0u;
    uint hi = 0u;
    for (uint i = id; i < words; i += stride) {
        uint v = src.w[i];
        if (i == words - 1u && tail != 0u) {
            v &= (1u << (8u * tail)) - 1u;
        }
        uint carry;
        lo = uaddCarry(lo, v, carry);
        hi += carry;
    }
    dst.p[id] = uvec2(lo, hi);
}
