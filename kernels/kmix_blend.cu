// dali_kmix blending kernels: DMixup (Dirichlet-weighted sum) and DCutMix (nested boxes).
//
// Both read per-sample input pointers (DALI's list of samples needs no stacking copy)
// and write per-sample output pointers. Inputs are never written. Each output element
// is written exactly once.
//
// Written so that the same source compiles for the host (kmix_host_shim.h) and stays
// bit-exact: no shared memory, no warp intrinsics, no fast math; the blend uses an
// explicit fmaf so that no compiler is free to contract or not contract it.
//
// Work split: blockIdx.y (strided by gridDim.y) walks the samples; blockIdx.x picks a
// contiguous chunk of the sample; the threads of a block stride through the chunk, so a
// GPU warp reads consecutive addresses and a host "block" (blockDim.x == 1) runs a plain
// contiguous loop.
#include "kmix_common.cuh"

#define KMIX_STRIP 512

// DMixup. out[s][i] = fma chain over j of weights[s, j] * in[sources[s, j]][i].
//   in, out:  n per-sample pointers, each to sample_elems elements of type T
//   sources:  int32 (n, k);  weights: float32 (n, k)
template <typename T>
__global__ void kmix_dmixup(const T* const* __restrict__ in, T* const* __restrict__ out,
                            const int* __restrict__ sources, const float* __restrict__ weights,
                            int n, int k, long long sample_elems) {
  const long long tid = threadIdx.x;
  const long long nthreads = blockDim.x;
  long long chunk = (sample_elems + gridDim.x - 1) / gridDim.x;
  chunk = (chunk + nthreads - 1) / nthreads * nthreads;
  const long long begin = (long long)blockIdx.x * chunk;
  long long end = begin + chunk;
  if (end > sample_elems) end = sample_elems;
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    const int* src = sources + (long long)s * k;
    const float* w = weights + (long long)s * k;
    T* __restrict__ o = out[s];
#ifdef KMIX_HOST_SHIM
    if (nthreads == 1) {
      // Host fast path (one thread per block, a contiguous range): the same fmaf chain per
      // element, computed strip by strip with the k loop outside so that it vectorises.
      for (long long i0 = begin; i0 < end; i0 += KMIX_STRIP) {
        const int len = (int)(end - i0 < KMIX_STRIP ? end - i0 : KMIX_STRIP);
        float acc[KMIX_STRIP];
        for (int e = 0; e < len; ++e) acc[e] = 0.0f;
        for (int j = 0; j < k; ++j) {
          const T* __restrict__ p = in[src[j]] + i0;
          const float wj = w[j];
          for (int e = 0; e < len; ++e) acc[e] = fmaf(wj, kmix_to_float(p[e]), acc[e]);
        }
        for (int e = 0; e < len; ++e) o[i0 + e] = kmix_from_float<T>(acc[e]);
      }
      continue;
    }
#endif
    for (long long i = begin + tid; i < end; i += nthreads) {
      float acc = 0.0f;
      for (int j = 0; j < k; ++j) acc = fmaf(w[j], kmix_to_float(in[src[j]][i]), acc);
      o[i] = kmix_from_float<T>(acc);
    }
  }
}

// Copy elements [a, b) of one row from `from` to `to` (both already offset to the row).
template <typename T>
KMIX_DEV void kmix_copy_run(const T* __restrict__ from, T* __restrict__ to, int a, int b,
                            int tid, int nthreads) {
#ifdef KMIX_HOST_SHIM
  if (nthreads == 1) {  // host launch: one contiguous run
    if (b > a) std::memcpy(to + a, from + a, (size_t)(b - a) * sizeof(T));
    return;
  }
#endif
  for (int e = a + tid; e < b; e += nthreads) to[e] = from[e];
}

// DCutMix. Every output pixel copies the pixel of the deepest box that contains it
// (the anchor sources[s, 0] outside box 0). Rows are cut into runs of constant depth,
// at most 2 (K-1) + 1 per row, and each run is copied from its one source, so each
// output element reads exactly one input element and the cost does not grow with K.
//   boxes: int32 (n, k - 1, 4) as (y0, x0, y1, x1), half-open, nested.
//   layout KMIX_HWC: a row is W * C elements; KMIX_CHW: a row is W elements of one plane.
template <typename T>
__global__ void kmix_dcutmix(const T* const* __restrict__ in, T* const* __restrict__ out,
                             const int* __restrict__ sources, const int* __restrict__ boxes,
                             int n, int k, int height, int width, int channels, int layout) {
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int rows = layout == KMIX_HWC ? height : channels * height;
  const int cstep = layout == KMIX_HWC ? channels : 1;  // elements per pixel along a row
  const long long row_len = (long long)width * cstep;
  int per_block = (rows + gridDim.x - 1) / gridDim.x;
  const int r_begin = blockIdx.x * per_block;
  int r_end = r_begin + per_block;
  if (r_end > rows) r_end = rows;
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    const int* src = sources + (long long)s * k;
    const int* bx = boxes + (long long)s * (k - 1) * 4;
    for (int r = r_begin; r < r_end; ++r) {
      const int y = layout == KMIX_HWC ? r : r % height;
      const long long off = (long long)r * row_len;
      T* __restrict__ o = out[s] + off;
      // m = number of leading boxes whose rows contain y (nested, so they are a prefix).
      int m = 0;
      while (m < k - 1 && y >= bx[4 * m + 0] && y < bx[4 * m + 2]) ++m;
      int left = 0;
      for (int d = 0; d < m; ++d) {  // entering box d: [left, x0_d) has depth d
        const int x0 = bx[4 * d + 1] * cstep;
        kmix_copy_run(in[src[d]] + off, o, left, x0, tid, nthreads);
        left = x0;
      }
      int right = m > 0 ? bx[4 * (m - 1) + 3] * cstep : (int)row_len;
      kmix_copy_run(in[src[m]] + off, o, left, right, tid, nthreads);  // innermost run
      for (int d = m - 1; d >= 0; --d) {  // leaving box d: [x1_d, x1_{d-1}) has depth d
        const int stop = d > 0 ? bx[4 * (d - 1) + 3] * cstep : (int)row_len;
        kmix_copy_run(in[src[d]] + off, o, right, stop, tid, nthreads);
        right = stop;
      }
    }
  }
}
