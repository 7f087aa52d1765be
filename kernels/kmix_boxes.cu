// dali_kmix box nesting on the device: one thread per sample turns its random draws into
// the MixParams record (sources, weights, boxes). The float64 arithmetic is the same, in
// the same order, as dali_kmix.sampling.nest_boxes, so both give the same boxes and weights.
#include "kmix_common.cuh"

// phi:      float64 (rows, k) Dirichlet shares, rows == n ("sample" mode) or 1 ("batch":
//           phi_stride == 0 reuses row 0 for every sample)
// uni:      float64 (rows, k - 1, 2) uniforms in [0, 1) placing each box (y, x)
// perms:    int32 (k - 1, n): level j + 1 partner of sample s is perms[j * n + s]
// mixed:    uint8 (n,): 0 means "not mixed": weight 1 on itself, empty boxes
// sources:  out int32 (n, k); weights: out float32 (n, k);
// boxes:    out int32 (n, k - 1, 4), or a null pointer for DMixup (weights = phi)
// centers:  int32 (n, 2) most salient pixel (y, x) of every image, or a null pointer.
//           With centers (Saliency-DCutMix) box j is centred on the point of its source
//           sources[s, j + 1] and then shifted, not shrunk, to lie inside its parent;
//           without, it is placed uniformly by `uni`. Box sizes do not depend on it.
extern "C" __global__ void kmix_nest_boxes(const double* __restrict__ phi,
                                           const double* __restrict__ uni, int phi_stride,
                                           const int* __restrict__ perms,
                                           const unsigned char* __restrict__ mixed, int n, int k,
                                           int height, int width, int* __restrict__ sources,
                                           float* __restrict__ weights, int* __restrict__ boxes,
                                           const int* __restrict__ centers) {
  const long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (s >= n) return;
  int* src = sources + s * k;
  float* w = weights + s * k;
  int* bx = boxes ? boxes + s * (k - 1) * 4 : 0;
  if (!mixed[s]) {
    for (int j = 0; j < k; ++j) {
      src[j] = (int)s;
      w[j] = j == 0 ? 1.0f : 0.0f;
    }
    if (bx)
      for (int j = 0; j < 4 * (k - 1); ++j) bx[j] = 0;
    return;
  }
  src[0] = (int)s;
  for (int j = 1; j < k; ++j) src[j] = perms[(long long)(j - 1) * n + s];
  const double* p = phi + s * phi_stride * k;
  if (!bx) {
    for (int j = 0; j < k; ++j) w[j] = (float)p[j];
    return;
  }
  const double* u = uni + s * phi_stride * (k - 1) * 2;
  // rem = phi_j + ... + phi_{k-1}, summed from the end like numpy's cumsum of the
  // reversed row; walked forwards by recomputing the suffix once per level.
  const double hw = (double)height * (double)width;
  double ph = (double)height, pw = (double)width;
  long long py = 0, px = 0;
  long long prev_area = (long long)height * (long long)width;
  for (int j = 0; j < k - 1; ++j) {
    double rem = p[k - 1];
    for (int t = k - 2; t >= j; --t) rem = p[t] + rem;
    double v = rem > 0.0 ? p[j] / rem : 1.0;
    if (v > 1.0) v = 1.0;
    const double sq = sqrt(1.0 - v);
    const double h = rint(ph * sq);
    const double wd = rint(pw * sq);
    const double ry = ph - h, rx = pw - wd;
    long long y0, x0;
    if (centers) {
      // centre on the source's salient point (top-left = c - floor(side / 2)), then shift inside
      const int* c = centers + 2LL * src[j + 1];
      y0 = (long long)c[0] - (long long)h / 2;
      x0 = (long long)c[1] - (long long)wd / 2;
      const long long ymax = py + (long long)ry, xmax = px + (long long)rx;
      y0 = y0 < py ? py : (y0 > ymax ? ymax : y0);
      x0 = x0 < px ? px : (x0 > xmax ? xmax : x0);
    } else {
      double oy = floor(u[2 * j + 0] * (ry + 1.0));
      double ox = floor(u[2 * j + 1] * (rx + 1.0));
      if (oy > ry) oy = ry;
      if (ox > rx) ox = rx;
      y0 = py + (long long)oy;
      x0 = px + (long long)ox;
    }
    bx[4 * j + 0] = (int)y0;
    bx[4 * j + 1] = (int)x0;
    bx[4 * j + 2] = (int)(y0 + (long long)h);
    bx[4 * j + 3] = (int)(x0 + (long long)wd);
    const long long area = (long long)h * (long long)wd;
    w[j] = (float)((double)(prev_area - area) / hw);
    prev_area = area;
    ph = h;
    pw = wd;
    py = y0;
    px = x0;
  }
  w[k - 1] = (float)((double)prev_area / hw);
}
