// dali_kmix: the spectral residual (dali_kmix.saliency.spectral_residual) on the host, for grids whose sides
// are powers of two (the default 64 x 64): float32, one image per block of the host pool, every step a loop
// the compiler vectorises.
//
// The same steps as the NumPy/CuPy code, which stays the reference (and runs every other size and float64):
//   F = FFT2(g); A = |F|; a bin is live where A > tol = eps * log2(h w) * sum |g| (else it carries no energy);
//   R = log A - (3 x 3 sum of log A) / (3 x 3 count of live bins), reflect-101 border, over the live bins;
//   back = |IFFT2(F * exp(R) / A)| (0 in the dead bins); map = Gaussian 5 x 5 (sigma 8, reflect-101)(back)^2,
//   divided by its peak.
// It is not bit for bit NumPy's: the FFT (radix 2, planar, vectorised across columns), log and exp (Cephes'
// float32 polynomials, ~1 ulp), |F| (sqrt(re^2 + im^2) for hypot) and the sum of |g| (in double) round in
// their own ways; the tests hold its maps and peaks against OpenCV's and NumPy's. IFFT2's 1 / (h w) is left
// out: a power of two, it scales every value exactly and the map is divided by its peak.
//
// Host only (kmix_host.cpp, after kmix_host_shim.h): the GPU runs the CuPy code.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace kmix_spectral {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// exp(x) for float32 (Cephes expf, ~1 ulp), branch-free so that a loop over it vectorises.
inline float exp_f(float x) {
  x = x < 88.3762626647949f ? x : 88.3762626647949f;
  x = x > -87.3365447505531f ? x : -87.3365447505531f;
  const float n = rintf(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * bits_to_float((uint32_t)((int)n + 127) << 23);
}

// log(x) for float32 x > 0 (Cephes logf, ~1 ulp; subnormals scaled by 2^23 first). Every choice is made on
// the bits with integer masks, so that a loop over it vectorises (a conditional floating-point operation
// would not: the compiler may not evaluate one speculatively under the default -ftrapping-math).
inline float log_f(float x) {
  uint32_t u = float_to_bits(x);
  const uint32_t tiny = 0u - (uint32_t)(u < 0x00800000u);  // subnormal (x > 0: the exponent bits are 0)
  u = (float_to_bits(x * 8388608.0f) & tiny) | (u & ~tiny);
  const uint32_t mbits = (u & 0x807fffffu) | 0x3f000000u;  // the mantissa as a float in [0.5, 1)
  const uint32_t low = 0u - (uint32_t)(mbits < 0x3f3504f3u);  // below sqrt(1/2): take 2 m - 1, e - 1
  const float e = (float)((int)((u >> 23) & 0xffu) - 126 - (int)(tiny & 23u) - (int)(low & 1u));
  const float m0 = bits_to_float(mbits);
  const float m = bits_to_float((float_to_bits(m0 + m0 - 1.0f) & low) | (float_to_bits(m0 - 1.0f) & ~low));
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + e * 0.693359375f;
}

// The radix-2 transform of one side: its bit reversal and twiddles (exp(-2 pi i k / n), k < n / 2).
struct Plan {
  int n = 0;
  std::vector<int> rev;
  std::vector<float> wr, wi;
  explicit Plan(int side) : n(side), rev(side), wr(side / 2), wi(side / 2) {
    int bits = 0;
    while ((1 << bits) < side) ++bits;
    for (int i = 0; i < side; ++i) {
      int r = 0;
      for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
      rev[i] = r;
    }
    const double pi = 3.14159265358979323846;
    for (int k = 0; k < side / 2; ++k) {
      wr[k] = (float)std::cos(2.0 * pi * k / side);
      wi[k] = (float)-std::sin(2.0 * pi * k / side);
    }
  }
};

// One radix-2 butterfly of the decimation-in-time transform: (a, b) <- (a + w b, a - w b), the product w b as
// (br c - bi s, br s + bi c).
inline void butterfly(float& ar, float& ai, float& br, float& bi, float c, float s) {
  const float tr = br * c - bi * s;
  const float ti = br * s + bi * c;
  br = ar - tr;
  bi = ai - ti;
  ar = ar + tr;
  ai = ai + ti;
}

// The butterfly on whole rows (a, b); the loop over the columns vectorises.
inline void butterfly_rows(float* __restrict__ ar, float* __restrict__ ai, float* __restrict__ br,
                           float* __restrict__ bi, float c, float s, int cols) {
  for (int x = 0; x < cols; ++x) butterfly(ar[x], ai[x], br[x], bi[x], c, s);
}

// Two successive radix-2 stages (block lengths len and 2 len) in one pass over four rows a, b, c, d (h = len / 2
// apart): the butterflies (a, b) and (c, d) with twiddle (c1, s1), then (a, c) with (c2, s2) and (b, d) with
// (c3, s3) -- the same operations in the same order as the two stages one after the other, so the same bits,
// with each element loaded and stored once instead of twice.
inline void butterfly_rows2(float* __restrict__ ar, float* __restrict__ ai, float* __restrict__ br,
                            float* __restrict__ bi, float* __restrict__ cr, float* __restrict__ ci,
                            float* __restrict__ dr, float* __restrict__ di, float c1, float s1, float c2, float s2,
                            float c3, float s3, int cols) {
  for (int x = 0; x < cols; ++x) {
    float a_r = ar[x], a_i = ai[x], b_r = br[x], b_i = bi[x], c_r = cr[x], c_i = ci[x], d_r = dr[x], d_i = di[x];
    butterfly(a_r, a_i, b_r, b_i, c1, s1);
    butterfly(c_r, c_i, d_r, d_i, c1, s1);
    butterfly(a_r, a_i, c_r, c_i, c2, s2);
    butterfly(b_r, b_i, d_r, d_i, c3, s3);
    ar[x] = a_r, ai[x] = a_i, br[x] = b_r, bi[x] = b_i, cr[x] = c_r, ci[x] = c_i, dr[x] = d_r, di[x] = d_i;
  }
}

// The transform along the first axis of (re, im), rows x cols row-major (plan.n == rows), for every
// column at once: the butterflies combine whole rows, so the loop over the columns vectorises. The
// radix-2 stages run two at a time (butterfly_rows2), the last one alone when their number is odd.
// permuted: the rows are in bit-reversed order already (the caller put them there).
inline void fft_columns(float* re, float* im, int cols, const Plan& plan, bool inverse, bool permuted = false) {
  const int rows = plan.n;
  for (int y = 0; y < rows && !permuted; ++y) {
    const int r = plan.rev[y];
    if (r > y) {
      for (int x = 0; x < cols; ++x) {
        std::swap(re[(long long)y * cols + x], re[(long long)r * cols + x]);
        std::swap(im[(long long)y * cols + x], im[(long long)r * cols + x]);
      }
    }
  }
  auto row = [&](float* plane, int y) { return plane + (long long)y * cols; };
  auto sine = [&](int k) { return inverse ? -plan.wi[k] : plan.wi[k]; };
  int len = 2;
  for (; 2 * len <= rows; len <<= 2) {  // stages len and 2 len together
    const int h = len >> 1, step1 = rows / len, step2 = rows / (2 * len);
    for (int start = 0; start < rows; start += 2 * len) {
      for (int j = 0; j < h; ++j) {
        const int a = start + j, b = a + h, c = a + 2 * h, d = a + 3 * h;
        butterfly_rows2(row(re, a), row(im, a), row(re, b), row(im, b), row(re, c), row(im, c), row(re, d),
                        row(im, d), plan.wr[j * step1], sine(j * step1), plan.wr[j * step2], sine(j * step2),
                        plan.wr[(j + h) * step2], sine((j + h) * step2), cols);
      }
    }
  }
  if (len <= rows) {  // an odd number of stages: the last alone
    const int half = len >> 1, step = rows / len;
    for (int start = 0; start < rows; start += len)
      for (int j = 0; j < half; ++j)
        butterfly_rows(row(re, start + j), row(im, start + j), row(re, start + j + half), row(im, start + j + half),
                       plan.wr[j * step], sine(j * step), cols);
  }
}

// out (cols x rows) = in (rows x cols) transposed: in 8 x 8 tiles, each in registers where AVX is there
// (8 loads, 24 shuffles, 8 stores instead of 64 scalar moves), element by element otherwise.
inline void transpose(const float* __restrict__ in, float* __restrict__ out, int rows, int cols) {
#if defined(__AVX__)
  if (rows % 8 == 0 && cols % 8 == 0) {
    for (int y0 = 0; y0 < rows; y0 += 8) {
      for (int x0 = 0; x0 < cols; x0 += 8) {
        const float* src = in + (long long)y0 * cols + x0;
        __m256 r[8], t[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (long long)i * cols);
        for (int i = 0; i < 8; i += 2) {
          t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
          t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
          r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
          r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
          r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
          r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
        }
        float* dst = out + (long long)x0 * rows + y0;
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(dst + (long long)i * rows, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
          _mm256_storeu_ps(dst + (long long)(i + 4) * rows, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
        }
      }
    }
    return;
  }
#endif
  for (int y = 0; y < rows; ++y)
    for (int x = 0; x < cols; ++x) out[(long long)x * rows + y] = in[(long long)y * cols + x];
}

// The 2D transform of (re, im), rows x cols, left transposed (cols x rows): the columns' transforms, a transpose
// (into the spare planes t0, t1, which then swap places with re, im), the columns' transforms again.
inline void fft2_transposing(float*& re, float*& im, float*& t0, float*& t1, int rows, int cols, const Plan& prow,
                             const Plan& pcol, bool inverse, bool permuted = false) {
  fft_columns(re, im, cols, prow, inverse, permuted);
  transpose(re, t0, rows, cols);
  transpose(im, t1, rows, cols);
  std::swap(re, t0);
  std::swap(im, t1);
  fft_columns(re, im, rows, pcol, inverse);
}

inline int reflect101(int i, int n) {  // OpenCV's BORDER_DEFAULT (np.pad's "reflect"), also past a side of 2
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * n - 2 - i;
  return i;
}

// out = sum over the 3 x 3 window of a (rows x cols), reflect-101 border: rows first, then columns, each as
// (a[-1] + a[0]) + a[+1] (the NumPy code's order). tmp: rows x cols.
inline void box_sum3(const float* a, float* tmp, float* out, int rows, int cols) {
  for (int y = 0; y < rows; ++y) {
    const float* __restrict__ up = a + (long long)reflect101(y - 1, rows) * cols;
    const float* __restrict__ mid = a + (long long)y * cols;
    const float* __restrict__ down = a + (long long)reflect101(y + 1, rows) * cols;
    float* __restrict__ t = tmp + (long long)y * cols;
    for (int x = 0; x < cols; ++x) t[x] = (up[x] + mid[x]) + down[x];
  }
  for (int y = 0; y < rows; ++y) {
    const float* __restrict__ t = tmp + (long long)y * cols;
    float* __restrict__ o = out + (long long)y * cols;
    o[0] = (t[reflect101(-1, cols)] + t[0]) + t[reflect101(1, cols)];
    for (int x = 1; x < cols - 1; ++x) o[x] = (t[x - 1] + t[x]) + t[x + 1];
    if (cols > 1) o[cols - 1] = (t[cols - 2] + t[cols - 1]) + t[reflect101(cols, cols)];
  }
}

// The 5-tap correlation of a (rows x cols) along its rows (axis 0), then its columns, reflect-101 border:
// acc = k0 * a[-2]; acc += k1 * a[-1]; ... (the NumPy code's order). Each row of the first pass is copied into
// pad with its reflected border (2 on each side), so every column of the second pass is the same vector loop.
// tmp: rows x cols; pad: cols + 4.
inline void gaussian5(const float* a, float* tmp, float* pad, float* out, int rows, int cols, const float* k) {
  for (int y = 0; y < rows; ++y) {
    float* __restrict__ t = tmp + (long long)y * cols;
    const float* __restrict__ r0 = a + (long long)reflect101(y - 2, rows) * cols;
    for (int x = 0; x < cols; ++x) t[x] = k[0] * r0[x];
    for (int i = 1; i < 5; ++i) {
      const float* __restrict__ ri = a + (long long)reflect101(y - 2 + i, rows) * cols;
      const float ki = k[i];
      for (int x = 0; x < cols; ++x) t[x] = t[x] + ki * ri[x];
    }
  }
  const float k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4];
  float* __restrict__ p = pad + 2;  // p[-2 .. cols + 1]
  for (int y = 0; y < rows; ++y) {
    const float* __restrict__ t = tmp + (long long)y * cols;
    float* __restrict__ o = out + (long long)y * cols;
    for (int x = 0; x < cols; ++x) p[x] = t[x];
    for (int x = -2; x < 0; ++x) p[x] = t[reflect101(x, cols)];
    for (int x = cols; x < cols + 2; ++x) p[x] = t[reflect101(x, cols)];
    for (int x = 0; x < cols; ++x)
      o[x] = (((k0 * p[x - 2] + k1 * p[x - 1]) + k2 * p[x]) + k3 * p[x + 1]) + k4 * p[x + 2];
  }
}

// Scratch of spectral_residual for rows x cols: 7 planes of floats and a padded row.
struct Work {
  std::vector<float> planes, pad;
  void resize(long long n, int cols) {
    if ((long long)planes.size() < 7 * n) planes.resize(7 * n);
    if ((int)pad.size() < cols + 4) pad.resize(cols + 4);
  }
};

// The map of one grey image g (rows x cols, both powers of two) into map (rows x cols); returns the index of
// its first largest value (np.argmax's).
inline int spectral_residual(const float* g, float* map, int rows, int cols, const Plan& prow, const Plan& pcol,
                             const float* gauss, Work& work) {
  const long long n = (long long)rows * cols;
  work.resize(n, rows > cols ? rows : cols);
  float* re = work.planes.data();
  float* im = re + n;
  float* t0 = re + 2 * n;
  float* t1 = re + 3 * n;
  float* t2 = re + 4 * n;
  float* t3 = re + 5 * n;
  float* live = re + 6 * n;  // 1 where the bin is live, else 0
  // F, transposed (cols x rows from here); g's rows go in in bit-reversed order (the transform's first step)
  for (int y = 0; y < rows; ++y) {
    const float* __restrict__ src = g + (long long)y * cols;
    float* __restrict__ dst = re + (long long)prow.rev[y] * cols;
    for (int x = 0; x < cols; ++x) dst[x] = src[x];
  }
  std::memset(im, 0, sizeof(float) * (size_t)n);
  float part[16] = {0.0f};  // sum |g| in 16 partial sums (a vector), then in double
  long long i16 = 0;
  for (; i16 + 16 <= n; i16 += 16)
    for (int j = 0; j < 16; ++j) part[j] += std::fabs(g[i16 + j]);
  double abs_sum = 0.0;
  for (int j = 0; j < 16; ++j) abs_sum += part[j];
  for (; i16 < n; ++i16) abs_sum += std::fabs(g[i16]);
  fft2_transposing(re, im, t0, t1, rows, cols, prow, pcol, false, true);
  // the live bins; A where live, else 1; log A (0 where dead); its 3 x 3 mean over the live bins
  int log2n = 0;
  while ((1LL << log2n) < n) ++log2n;
  const float tol = (float)(abs_sum * ((double)FLT_EPSILON * (log2n > 1 ? log2n : 1)));
  float* amp = t0;
  float* mean = t1;
  long long dead = 0;
  for (long long i = 0; i < n; ++i) {
    const float a = std::sqrt(re[i] * re[i] + im[i] * im[i]);
    live[i] = a > tol ? 1.0f : 0.0f;
    amp[i] = a > tol ? a : 1.0f;
  }
  for (long long i = 0; i < n; ++i) dead += live[i] == 0.0f;
  float* log_amp = t2;
  for (long long i = 0; i < n; ++i) log_amp[i] = log_f(amp[i]);
  box_sum3(log_amp, t3, mean, cols, rows);
  if (dead == 0) {
    for (long long i = 0; i < n; ++i) mean[i] = mean[i] / 9.0f;
  } else {
    box_sum3(live, map, t3, cols, rows);  // map: scratch until the end
    for (long long i = 0; i < n; ++i) mean[i] = mean[i] / (t3[i] > 1.0f ? t3[i] : 1.0f);
  }
  // F * exp(R) / A, 0 in the dead bins
  for (long long i = 0; i < n; ++i) {
    const float scale = exp_f(log_amp[i] - mean[i]) / amp[i] * live[i];  // finite before * 0 where dead
    re[i] = re[i] * scale;
    im[i] = im[i] * scale;
  }
  // |IFFT2| (rows x cols again)
  fft2_transposing(re, im, t0, t1, cols, rows, pcol, prow, true);
  float* back = t2;
  for (long long i = 0; i < n; ++i) back[i] = std::sqrt(re[i] * re[i] + im[i] * im[i]);
  gaussian5(back, t3, work.pad.data(), map, rows, cols, gauss);
  for (long long i = 0; i < n; ++i) map[i] = map[i] * map[i];
  // the peak: the largest bit pattern, these values being >= 0 (an integer maximum, which vectorises)
  uint32_t peak_bits = 0;
  for (long long i = 0; i < n; ++i) {
    const uint32_t b = float_to_bits(map[i]);
    peak_bits = b > peak_bits ? b : peak_bits;
  }
  const float peak = bits_to_float(peak_bits);
  const float div = peak > 1e-30f ? peak : 1e-30f;
  // np.argmax of the divided map: its first element equal to the largest, peak / div (dividing by div > 0 keeps
  // the order), found as a minimum over the indices in the same loop (a reduction that vectorises)
  const float top = peak / div;
  long long best = n - 1;
  for (long long i = 0; i < n; ++i) {
    const float v = map[i] / div;
    map[i] = v;
    const long long at = v == top ? i : n - 1;
    best = at < best ? at : best;
  }
  // a map that holds a NaN or an infinity (a NaN or +-Inf pixel spreads through the FFT to the whole map): no
  // peak, the centre cell of the grid instead (dali_kmix.saliency._first_peaks, as on every path). The values
  // being >= 0 or NaN (of either sign), a non-finite one is the largest bit pattern, >= that of +Inf.
  if (peak_bits >= 0x7F800000u) best = (long long)(rows / 2) * cols + cols / 2;
  return (int)best;
}

}  // namespace kmix_spectral
