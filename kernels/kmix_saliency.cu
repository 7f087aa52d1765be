// dali_kmix saliency input: a small grey copy of every image, straight from DALI's list of
// samples (per-sample pointers, no stacking copy). The FFT part of the spectral residual runs
// in CuPy/NumPy on these (n, out_h, out_w) float32 images.
//
// Same arithmetic, in the same order, as dali_kmix.saliency.grey + resize_bilinear (float64
// sample positions with half-pixel centres, float32 luma and interpolation), so the GPU, the
// CPU build and the NumPy code agree bit for bit.
#include "kmix_common.cuh"

// Grey value of pixel (y, x): ITU-R 601 luma for 3 channels, the channel mean otherwise.
template <typename T>
KMIX_DEV float kmix_grey_at(const T* __restrict__ img, int y, int x, int height, int width,
                            int channels, int layout) {
  const long long hw = (long long)height * width;
  const long long pix = (long long)y * width + x;
  if (channels == 3) {
    float c0, c1, c2;
    if (layout == KMIX_HWC) {
      c0 = kmix_to_float(img[pix * 3 + 0]);
      c1 = kmix_to_float(img[pix * 3 + 1]);
      c2 = kmix_to_float(img[pix * 3 + 2]);
    } else {
      c0 = kmix_to_float(img[pix]);
      c1 = kmix_to_float(img[hw + pix]);
      c2 = kmix_to_float(img[2 * hw + pix]);
    }
    return c0 * 0.299f + c1 * 0.587f + c2 * 0.114f;
  }
  float acc = 0.0f;
  for (int c = 0; c < channels; ++c)
    acc = acc + kmix_to_float(layout == KMIX_HWC ? img[pix * channels + c] : img[c * hw + pix]);
  return acc / (float)channels;
}

// Bilinear source coordinate of output index o (half-pixel centres, clamped to the image).
KMIX_DEV void kmix_tap(int o, int n_in, int n_out, int* lo, int* hi, float* frac) {
  double pos = ((double)o + 0.5) * ((double)n_in / (double)n_out) - 0.5;
  if (pos < 0.0) pos = 0.0;
  if (pos > (double)(n_in - 1)) pos = (double)(n_in - 1);
  const double f = floor(pos);
  *lo = (int)f;
  *hi = *lo + 1 < n_in ? *lo + 1 : n_in - 1;
  *frac = (float)(pos - f);
}

// out: float32 (n, out_h, out_w); one thread per output pixel (grid-stride).
template <typename T>
__global__ void kmix_grey_resize(const T* const* __restrict__ in, float* __restrict__ out, int n,
                                 int height, int width, int channels, int layout, int out_h,
                                 int out_w) {
  const long long total = (long long)n * out_h * out_w;
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int s = (int)(i / ((long long)out_h * out_w));
    const int r = (int)(i % ((long long)out_h * out_w));
    const int oy = r / out_w, ox = r % out_w;
    int y0, y1, x0, x1;
    float fy, fx;
    kmix_tap(oy, height, out_h, &y0, &y1, &fy);
    kmix_tap(ox, width, out_w, &x0, &x1, &fx);
    const T* img = in[s];
    const float a = kmix_grey_at(img, y0, x0, height, width, channels, layout);
    const float b = kmix_grey_at(img, y0, x1, height, width, channels, layout);
    const float c = kmix_grey_at(img, y1, x0, height, width, channels, layout);
    const float d = kmix_grey_at(img, y1, x1, height, width, channels, layout);
    const float top = a * (1.0f - fx) + b * fx;
    const float bot = c * (1.0f - fx) + d * fx;
    out[i] = top * (1.0f - fy) + bot * fy;
  }
}

#ifdef KMIX_HOST_SHIM
// Host: the grey value of every pixel of row y, each as kmix_grey_at computes it (the same operations in the
// same order), in loops over the row that the compiler vectorises.
template <typename T>
inline void kmix_grey_row_host(const T* __restrict__ img, int y, int height, int width, int channels, int layout,
                               float* __restrict__ out) {
  const long long hw = (long long)height * width;
  if (channels == 3 && layout == KMIX_HWC) {
    const T* __restrict__ p = img + (long long)y * width * 3;
    for (int x = 0; x < width; ++x)
      out[x] = kmix_to_float(p[3 * x]) * 0.299f + kmix_to_float(p[3 * x + 1]) * 0.587f +
               kmix_to_float(p[3 * x + 2]) * 0.114f;
  } else if (channels == 3) {
    const T* __restrict__ p0 = img + (long long)y * width;
    const T* __restrict__ p1 = p0 + hw;
    const T* __restrict__ p2 = p1 + hw;
    for (int x = 0; x < width; ++x)
      out[x] = kmix_to_float(p0[x]) * 0.299f + kmix_to_float(p1[x]) * 0.587f + kmix_to_float(p2[x]) * 0.114f;
  } else {
    for (int x = 0; x < width; ++x) out[x] = kmix_grey_at(img, y, x, height, width, channels, layout);
  }
}

// Host: the grey copy of one sample (out_h x out_w), each pixel with the arithmetic of kmix_grey_resize (the
// same taps, grey values and interpolation, in the same order): the grey values of the two source rows an
// output row reads are worked out whole (kmix_grey_row_host, kept for the next output row when it reads them
// again), the taps of every column (x0s, x1s, fxs: kmix_tap of each ox) once by the caller.
template <typename T>
inline void kmix_grey_resize_host(const T* __restrict__ img, float* __restrict__ out, int height, int width,
                                  int channels, int layout, int out_h, int out_w, const int* __restrict__ x0s,
                                  const int* __restrict__ x1s, const float* __restrict__ fxs, float* rows) {
  float* grey[2] = {rows, rows + width};
  int held[2] = {-1, -1};
  auto row = [&](int y, int keep) -> const float* {  // row y's grey values; the row `keep` stays held
    for (int i = 0; i < 2; ++i)
      if (held[i] == y) return grey[i];
    const int slot = held[0] == keep ? 1 : 0;
    kmix_grey_row_host(img, y, height, width, channels, layout, grey[slot]);
    held[slot] = y;
    return grey[slot];
  };
  for (int oy = 0; oy < out_h; ++oy) {
    int y0, y1;
    float fy;
    kmix_tap(oy, height, out_h, &y0, &y1, &fy);
    const float* __restrict__ g0 = row(y0, y1);
    const float* __restrict__ g1 = row(y1, y0);
    float* __restrict__ o = out + (long long)oy * out_w;
    for (int ox = 0; ox < out_w; ++ox) {
      const float fx = fxs[ox];
      const float a = g0[x0s[ox]], b = g0[x1s[ox]], c = g1[x0s[ox]], d = g1[x1s[ox]];
      const float top = a * (1.0f - fx) + b * fx;
      const float bot = c * (1.0f - fx) + d * fx;
      o[ox] = top * (1.0f - fy) + bot * fy;
    }
  }
}
#endif
