// Shared device helpers for the image-worker kernels.
//
// Every image on the device is RGBA8, rows packed without padding. The resampling passes round
// to bytes after each pass, as the CPU backend does; the blur keeps float4 between its passes.
#pragma once

#include <stdint.h>

// Largest Gaussian radius the blur kernels accept: ceil(3 * 32), the largest configurable sigma,
// rounded up. The host refuses anything larger before launching.
#define IW_MAX_BLUR_RADIUS 127
#define IW_MAX_BLUR_TAPS (2 * IW_MAX_BLUR_RADIUS + 1)

// Pixels per block along the filtered axis, and lines per block across it, for the blur tiles.
#define IW_BLUR_TILE 128
#define IW_BLUR_LINES 4

__device__ __forceinline__ float4 iw_load_u8(const uchar4 *image, size_t index) {
    uchar4 p = image[index];
    return make_float4(p.x, p.y, p.z, p.w);
}

__device__ __forceinline__ unsigned char iw_round_u8(float v) {
    return (unsigned char)fminf(fmaxf(v + 0.5f, 0.0f), 255.0f);
}

__device__ __forceinline__ uchar4 iw_round_pixel(float4 v) {
    return make_uchar4(iw_round_u8(v.x), iw_round_u8(v.y), iw_round_u8(v.z), iw_round_u8(v.w));
}

__device__ __forceinline__ float4 iw_madd(float4 acc, float weight, float4 p) {
    acc.x = fmaf(weight, p.x, acc.x);
    acc.y = fmaf(weight, p.y, acc.y);
    acc.z = fmaf(weight, p.z, acc.z);
    acc.w = fmaf(weight, p.w, acc.w);
    return acc;
}

__device__ __forceinline__ int iw_clamp(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}
