// dali_kmix: the launch configuration (grid and block) of the blend kernels on a GPU.
//
// One host function decides it for every caller: the DALI plugin's GPU operators
// (kmix_dali_gpu.cu) and, mirrored in Python and cross-checked by the tests, the CuPy
// path (dali_kmix.backends.gpu). Plain C, no CUDA types, so the host library
// (kmix_host.cpp) exposes it to the unit tests without a device.
//
//   block.x   KMIX_BLOCK threads
//   grid.y    min(n, KMIX_MAX_GRID_Y): the kernels walk samples blockIdx.y, + gridDim.y, ...
//   grid.x    a blend (kmix_dmixup, kmix_mix): the sample's elements in chunks of about
//             4 elements per thread (at most KMIX_MAX_BLEND_CHUNKS chunks; the threads stride
//             through a longer chunk); a paste (kmix_dcutmix): rows in groups of about
//             KMIX_PASTE_ELEMS elements. kmix_mix pastes with the blend's grid.x, its blocks
//             sharing the rows (kmix_row_chunk), so one launch serves both.
// Element counts are int64: a sample may hold more than 2^31 elements.
#pragma once

#include "kmix_codes.h"

#define KMIX_BLOCK 256
#define KMIX_MAX_GRID_Y 65535
#define KMIX_MAX_BLEND_CHUNKS (1 << 20)
#define KMIX_BLEND_ELEMS_PER_THREAD 4
#define KMIX_PASTE_ELEMS 4096

typedef struct {
  unsigned grid_x, grid_y, block_x;  // all 0: nothing to launch (no samples, or an empty sample)
} kmix_launch_t;

// Chunks along grid.x of a blend of `sample_elems` elements per sample.
static inline unsigned kmix_blend_grid_x(long long sample_elems) {
  const long long per_block = (long long)KMIX_BLOCK * KMIX_BLEND_ELEMS_PER_THREAD;
  long long g = (sample_elems + per_block - 1) / per_block;
  if (g < 1) g = 1;
  if (g > KMIX_MAX_BLEND_CHUNKS) g = KMIX_MAX_BLEND_CHUNKS;
  return (unsigned)g;
}

// Row groups along grid.x of a paste: rows are H (HWC) or C * H (CHW) rows of W * C or W elements.
static inline unsigned kmix_paste_grid_x(int height, int width, int channels, int layout) {
  const long long rows = layout == KMIX_HWC ? (long long)height : (long long)channels * height;
  const long long row_len = (long long)width * (layout == KMIX_HWC ? channels : 1);
  long long rows_per_block = KMIX_PASTE_ELEMS / (row_len > 0 ? row_len : 1);
  if (rows_per_block < 1) rows_per_block = 1;
  return (unsigned)((rows + rows_per_block - 1) / rows_per_block);
}

// The launch of `kernel` (KMIX_KERNEL_*) over n samples of height x width x channels.
static inline kmix_launch_t kmix_launch_config(int kernel, int n, int height, int width, int channels,
                                               int layout) {
  kmix_launch_t cfg = {0u, 0u, 0u};
  if (n <= 0 || height <= 0 || width <= 0 || channels <= 0) return cfg;
  const long long elems = (long long)height * width * channels;
  cfg.block_x = KMIX_BLOCK;
  cfg.grid_y = (unsigned)(n < KMIX_MAX_GRID_Y ? n : KMIX_MAX_GRID_Y);
  cfg.grid_x = kernel == KMIX_KERNEL_DCUTMIX ? kmix_paste_grid_x(height, width, channels, layout)
                                             : kmix_blend_grid_x(elems);
  return cfg;
}
