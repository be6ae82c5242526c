#version 450
// Inverts every bit of words [first, first + count) of binding 0, in place.
// The smallest shader that writes into a file region: run it on a region
// mapped for writing and the file's bytes change; run it twice and they are
// back. The runtime refuses it on a region mapped read-only.
layout(local_size_x = 64) in;

layout(push_constant) uniform Params {
    uint first;
    uint count;
} params;

layout(std430, binding = 0) buffer Data {
    uint words[];
} data;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < params.count) {
        data.words[params.first + i] = ~data.words[params.first + i];
    }
}
