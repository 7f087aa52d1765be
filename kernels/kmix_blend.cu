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

// The value a share w multiplies: the pixel x itself, or where w is 0 a zero with x's sign. So a
// partner with share 0 contributes nothing even where it holds Inf or NaN (0 * Inf is NaN), and for
// every finite x fmaf(w, x, acc) is unchanged (w * x is then the same signed zero). Skipping the term
// instead would change bits: acc can be -0 (a negative product below the smallest subnormal rounds
// to -0), and fmaf(0, x, -0) is +0 for x >= 0.
KMIX_DEV float kmix_share_input(float w, float x) { return w == 0.0f ? copysignf(0.0f, x) : x; }

// DMixup of one sample over elements [begin, end): o[i] = fma chain over j of w[j] * in[src[j]][i].
template <typename T>
KMIX_DEV void kmix_dmixup_sample(const T* const* __restrict__ in, T* __restrict__ o, const int* src,
                                 const float* w, int k, long long begin, long long end, long long tid,
                                 long long nthreads) {
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
        for (int e = 0; e < len; ++e) acc[e] = fmaf(wj, kmix_share_input(wj, kmix_to_float(p[e])), acc[e]);
      }
      for (int e = 0; e < len; ++e) o[i0 + e] = kmix_from_float<T>(acc[e]);
    }
    return;
  }
#endif
  for (long long i = begin + tid; i < end; i += nthreads) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc = fmaf(w[j], kmix_share_input(w[j], kmix_to_float(in[src[j]][i])), acc);
    o[i] = kmix_from_float<T>(acc);
  }
}

// The element range [begin, end) of block blockIdx.x when gridDim.x blocks split a sample:
// chunks rounded up to whole multiples of the block's threads.
KMIX_DEV void kmix_element_chunk(long long sample_elems, long long nthreads, long long* begin, long long* end) {
  long long chunk = (sample_elems + gridDim.x - 1) / gridDim.x;
  chunk = (chunk + nthreads - 1) / nthreads * nthreads;
  *begin = (long long)blockIdx.x * chunk;
  *end = *begin + chunk;
  if (*end > sample_elems) *end = sample_elems;
}

// DMixup. out[s][i] = fma chain over j of weights[s, j] * in[sources[s, j]][i].
//   in, out:  n per-sample pointers, each to sample_elems elements of type T
//   sources:  int32 (n, k);  weights: float32 (n, k)
template <typename T>
__global__ void kmix_dmixup(const T* const* __restrict__ in, T* const* __restrict__ out,
                            const int* __restrict__ sources, const float* __restrict__ weights,
                            int n, int k, long long sample_elems) {
  long long begin, end;
  kmix_element_chunk(sample_elems, blockDim.x, &begin, &end);
  for (int s = blockIdx.y; s < n; s += gridDim.y)
    kmix_dmixup_sample(in, out[s], sources + (long long)s * k, weights + (long long)s * k, k, begin, end,
                       (long long)threadIdx.x, (long long)blockDim.x);
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

// DCutMix of one sample over rows [r_begin, r_end) (see kmix_dcutmix).
template <typename T>
KMIX_DEV void kmix_dcutmix_sample(const T* const* __restrict__ in, T* __restrict__ out_s, const int* src,
                                  const int* bx, int k, int height, int width, int channels, int layout,
                                  int r_begin, int r_end, int tid, int nthreads) {
  const int cstep = layout == KMIX_HWC ? channels : 1;  // elements per pixel along a row
  const long long row_len = (long long)width * cstep;
  for (int r = r_begin; r < r_end; ++r) {
    const int y = layout == KMIX_HWC ? r : r % height;
    const long long off = (long long)r * row_len;
    T* __restrict__ o = out_s + off;
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

// The rows [r_begin, r_end) of block blockIdx.x when gridDim.x blocks split a sample's rows.
KMIX_DEV void kmix_row_chunk(int rows, int* r_begin, int* r_end) {
  const int per_block = (rows + gridDim.x - 1) / gridDim.x;
  *r_begin = blockIdx.x * per_block;
  *r_end = *r_begin + per_block;
  if (*r_end > rows) *r_end = rows;
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
  int r_begin, r_end;
  kmix_row_chunk(layout == KMIX_HWC ? height : channels * height, &r_begin, &r_end);
  for (int s = blockIdx.y; s < n; s += gridDim.y)
    kmix_dcutmix_sample(in, out[s], sources + (long long)s * k, boxes + (long long)s * (k - 1) * 4, k, height,
                        width, channels, layout, r_begin, r_end, (int)threadIdx.x, (int)blockDim.x);
}

// DMixup or DCutMix per sample, in one launch: sample s is pasted with its boxes where
// cut[s] != 0 and blended with its weights where cut[s] == 0, exactly as kmix_dcutmix /
// kmix_dmixup would (the per-sample bodies are theirs). gridDim.x splits a sample's
// elements for a blend and its rows for a paste; any gridDim.x gives the same output.
//   weights: float32 (n, k) (read where cut is 0); boxes: int32 (n, k - 1, 4) (read where
//   cut is 1); cut: uint8 (n,).
template <typename T>
__global__ void kmix_mix(const T* const* __restrict__ in, T* const* __restrict__ out,
                         const int* __restrict__ sources, const float* __restrict__ weights,
                         const int* __restrict__ boxes, const unsigned char* __restrict__ cut, int n, int k,
                         int height, int width, int channels, int layout) {
  const long long sample_elems = (long long)height * width * channels;
  long long begin, end;
  kmix_element_chunk(sample_elems, blockDim.x, &begin, &end);
  int r_begin, r_end;
  kmix_row_chunk(layout == KMIX_HWC ? height : channels * height, &r_begin, &r_end);
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    if (cut[s])
      kmix_dcutmix_sample(in, out[s], sources + (long long)s * k, boxes + (long long)s * (k - 1) * 4, k, height,
                          width, channels, layout, r_begin, r_end, (int)threadIdx.x, (int)blockDim.x);
    else
      kmix_dmixup_sample(in, out[s], sources + (long long)s * k, weights + (long long)s * k, k, begin, end,
                         (long long)threadIdx.x, (long long)blockDim.x);
  }
}
