// Separable resampling with weight tables computed on the host (src/backend/coeffs.rs): output
// sample i reads `taps` inputs from starts[i] on, weighted by weights[i * taps + k]. The tables
// already widen the filter by the reduction ratio, so large reductions are antialiased, and
// taps past the end of a short window carry zero weight.
//
// The order and the rounding follow the CPU backend (fast_image_resize on RGBA8): the column
// pass runs first and its result is rounded to bytes, then the row pass. Bytes between the
// passes also keep the intermediate at a quarter of the size of float4.
#include "common.cuh"

// Column pass: RGBA8 source (width × src_height) into RGBA8 (width × dst_height).
extern "C" __global__ void iw_resample_cols(const uchar4 *src, int width, int src_height,
                                           uchar4 *dst, int dst_height, const int *starts,
                                           const float *weights, int taps) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= width || y >= dst_height) return;
    const float *w = weights + (size_t)y * taps;
    int start = starts[y];
    int last = src_height - 1;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < taps; ++k) {
        float weight = w[k];
        if (weight != 0.f)
            acc = iw_madd(acc, weight, iw_load_u8(src, (size_t)min(start + k, last) * width + x));
    }
    dst[(size_t)y * width + x] = iw_round_pixel(acc);
}

// Row pass: RGBA8 (src_width × height) into RGBA8 (dst_width × height).
extern "C" __global__ void iw_resample_rows(const uchar4 *src, int src_width, int height,
                                           uchar4 *dst, int dst_width, const int *starts,
                                           const float *weights, int taps) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_width || y >= height) return;
    const uchar4 *row = src + (size_t)y * src_width;
    const float *w = weights + (size_t)x * taps;
    int start = starts[x];
    int last = src_width - 1;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < taps; ++k) {
        float weight = w[k];
        if (weight != 0.f) acc = iw_madd(acc, weight, iw_load_u8(row, min(start + k, last)));
    }
    dst[(size_t)y * dst_width + x] = iw_round_pixel(acc);
}
