// Premultiplied alpha, so that resampling and blurring do not pull colour out of transparent
// pixels. Integer formulas identical to the CPU backend's (src/ops.rs).
#include "common.cuh"

extern "C" __global__ void iw_premultiply(uchar4 *pixels, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    uchar4 p = pixels[i];
    unsigned a = p.w;
    p.x = (unsigned char)((p.x * a + 127) / 255);
    p.y = (unsigned char)((p.y * a + 127) / 255);
    p.z = (unsigned char)((p.z * a + 127) / 255);
    pixels[i] = p;
}

__device__ __forceinline__ unsigned char iw_unpremultiply_channel(unsigned c, unsigned a) {
    if (a == 0) return 0;
    unsigned v = (c * 255 + a / 2) / a;
    return (unsigned char)(v > 255 ? 255 : v);
}

extern "C" __global__ void iw_unpremultiply(uchar4 *pixels, int count) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    uchar4 p = pixels[i];
    p.x = iw_unpremultiply_channel(p.x, p.w);
    p.y = iw_unpremultiply_channel(p.y, p.w);
    p.z = iw_unpremultiply_channel(p.z, p.w);
    pixels[i] = p;
}
