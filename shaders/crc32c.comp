#version 450
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of each 4 KiB block.
// out[b] = the raw CRC register after feeding block b into a zero register;
// the runtime combines the blocks into the standard CRC-32C of the stream
// (init 0xFFFFFFFF, final xor 0xFFFFFFFF) with GF(2) shift operators.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(std430, binding = 1) writeonly buffer Output {
    uint crc[];
} dst;

// Slicing-by-4 tables: t[k * 256 + i]. Table 0 is the byte-wise table.
layout(std430, binding = 2) readonly buffer Tables {
    uint t[];
} tab;

void main() {
    uint block = gl_GlobalInvocationID.x;
    uint n = block_len(block);
    if (n == 0u) {
        return;
    }
    uint w = block * BLOCK_WORDS;
    uint full_words = n / 4u;
    uint crc = 0u;
    for (uint i = 0u; i < full_words; i++) {
        crc ^= src.words[w + i];
        crc = tab.t[768u + (crc & 0xffu)] ^ tab.t[512u + ((crc >> 8) & 0xffu)] ^
              tab.t[256u + ((crc >> 16) & 0xffu)] ^ tab.t[crc >> 24];
    }
    uint rest = n & 3u;
    if (rest != 0u) {
        uint v = src.words[w + full_words];
        for (uint i = 0u; i < rest; i++) {
            crc = tab.t[(crc ^ (v >> (i * 8u))) & 0xffu] ^ (crc >> 8);
        }
    }
    dst.crc[block] = crc;
}
