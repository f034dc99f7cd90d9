// Separable Gaussian blur: a row pass into float4 and a column pass back to RGBA8, each over a
// shared-memory tile with a halo of `radius` pixels on both sides, borders clamped. The taps
// (2 * radius + 1 of them, normalised, centre at index radius) sit in constant memory; the host
// writes them with the symbol copy before the launch.
#include "common.cuh"

__constant__ float iw_gauss_taps[IW_MAX_BLUR_TAPS];

// Block: IW_BLUR_TILE threads along x, IW_BLUR_LINES rows. Each block filters a tile of
// IW_BLUR_TILE pixels of IW_BLUR_LINES rows.
extern "C" __global__ void iw_blur_rows(const uchar4 *src, float4 *dst, int width, int height,
                                       int radius) {
    __shared__ float4 tile[IW_BLUR_LINES][IW_BLUR_TILE + 2 * IW_MAX_BLUR_RADIUS];
    int line = threadIdx.y;
    int y = blockIdx.y * IW_BLUR_LINES + line;
    int x0 = blockIdx.x * IW_BLUR_TILE;
    bool row_inside = y < height;
    const uchar4 *row = src + (size_t)(row_inside ? y : 0) * width;
    // Cooperative load of the tile and its halo, clamped at the image borders.
    for (int i = threadIdx.x; i < IW_BLUR_TILE + 2 * radius; i += IW_BLUR_TILE) {
        int sx = iw_clamp(x0 + i - radius, 0, width - 1);
        tile[line][i] = iw_load_u8(row, sx);
    }
    __syncthreads();
    int x = x0 + threadIdx.x;
    if (!row_inside || x >= width) return;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k <= 2 * radius; ++k)
        acc = iw_madd(acc, iw_gauss_taps[k], tile[line][threadIdx.x + k]);
    dst[(size_t)y * width + x] = acc;
}

// Block: IW_BLUR_LINES threads along x (columns), IW_BLUR_TILE along y. Each block filters a
// tile of IW_BLUR_TILE rows of IW_BLUR_LINES columns.
extern "C" __global__ void iw_blur_cols(const float4 *src, uchar4 *dst, int width, int height,
                                       int radius) {
    __shared__ float4 tile[IW_BLUR_LINES][IW_BLUR_TILE + 2 * IW_MAX_BLUR_RADIUS];
    int column = threadIdx.x;
    int x = blockIdx.x * IW_BLUR_LINES + column;
    int y0 = blockIdx.y * IW_BLUR_TILE;
    bool column_inside = x < width;
    int sx = column_inside ? x : width - 1;
    for (int i = threadIdx.y; i < IW_BLUR_TILE + 2 * radius; i += IW_BLUR_TILE) {
        int sy = iw_clamp(y0 + i - radius, 0, height - 1);
        tile[column][i] = src[(size_t)sy * width + sx];
    }
    __syncthreads();
    int y = y0 + threadIdx.y;
    if (!column_inside || y >= height) return;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k <= 2 * radius; ++k)
        acc = iw_madd(acc, iw_gauss_taps[k], tile[column][threadIdx.y + k]);
    dst[(size_t)y * width + x] = iw_round_pixel(acc);
}
