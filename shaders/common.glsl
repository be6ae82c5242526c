// Shared declarations for dmafile's compute shaders.
//
// Every shader sees the same interface (see runtime/src/gpu/kernels.rs):
//   binding 0: the input bytes, as 32-bit little-endian words (read-only).
//   binding 1: the shader's output.
//   binding 2: constant tables (CRC-32C slicing tables; unused by the others).
//   push constant `len`: number of valid input bytes. Bytes at or past `len`
//   are never counted, whatever the buffer holds there.
// Each invocation owns one block of BLOCK_BYTES input bytes.

#define BLOCK_BYTES 4096u
#define BLOCK_WORDS (BLOCK_BYTES / 4u)

layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint len;
} params;

layout(std430, binding = 0) readonly buffer Input {
    uint words[];
} src;

// Number of valid bytes of block `block` (0 when the block is past the end).
uint block_len(uint block) {
    uint start = block * BLOCK_BYTES;
    if (start >= params.len) {
        return 0u;
    }
    return min(BLOCK_BYTES, params.len - start);
}

// The word at word index `w`, with the bytes at or past `len` cleared.
uint masked_word(uint w) {
    uint v = src.words[w];
    uint first = w * 4u;
    if (first + 4u > params.len) {
        uint valid = params.len - first; // 1..3, callers never ask past len
        v &= (1u << (valid * 8u)) - 1u;
    }
    return v;
}
