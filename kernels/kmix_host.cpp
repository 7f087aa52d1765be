// dali_kmix CPU build: the .cu kernels compiled as C++ through kmix_host_shim.h, with
// C entry points that dali_kmix.backends.cpu calls through ctypes.
//
// Built with -ffp-contract=off so that the compiler fuses nothing on its own: the only
// fused multiply-adds are the kernels' explicit fmaf calls, as on the GPU.
#include "kmix_host_api.h"  // the entry points below, declared for the plugin and the fuzzer
#include "kmix_record.h"  // before the shim: plain C++ with the standard library
#include "kmix_launch.h"
#include "kmix_draw.h"  // NumPy's generator and draw_raw's draws (links numpy's libnpyrandom.a)
#include "kmix_host_shim.h"

KMIX_TLS kmix_dim3 threadIdx;
KMIX_TLS kmix_dim3 blockIdx;
KMIX_TLS kmix_dim3 blockDim;
KMIX_TLS kmix_dim3 gridDim;
KMIX_TLS int kmix_next_chunk = -1;

#include "kmix_blend.cu"
KMIX_TLS KmixRowPrefetch kmix_row_prefetch;
#include "kmix_boxes.cu"
#include "kmix_saliency.cu"
#include "kmix_spectral.h"

// Element-type codes: KMIX_U8, KMIX_F16, KMIX_F32 (kmix_common.cuh).
#define KMIX_DISPATCH(dtype, CALL)                                     \
  switch (dtype) {                                                     \
    case KMIX_U8: { typedef unsigned char T; CALL; } break;            \
    case KMIX_F16: { typedef __half T; CALL; } break;                  \
    case KMIX_F32: { typedef float T; CALL; } break;                   \
    default: return 1;                                                 \
  }

static bool kmix_pow2(int v) { return v > 0 && (v & (v - 1)) == 0; }

// The bilinear taps of every output column of a grey copy (kmix_tap of each ox), worked out once per launch.
struct KmixGreyTaps {
  std::vector<int> x0s, x1s;
  std::vector<float> fxs;
  KmixGreyTaps(int width, int out_w) : x0s(out_w), x1s(out_w), fxs(out_w) {
    for (int ox = 0; ox < out_w; ++ox) kmix_tap(ox, width, out_w, &x0s[ox], &x1s[ox], &fxs[ox]);
  }
};

static unsigned kmix_chunks(long long total, long long target) {
  long long c = (total + target - 1) / target;
  return (unsigned)(c < 1 ? 1 : c);
}

// One block (blockIdx) of a host DCutMix launch of grid gridDim. Given `next_chunk` (>= 0: the chunk of this sample
// that the same thread copies next, as samples-first launches know it), a block with one thread (the host's
// launches) prefetches that chunk's input rows, one row of lines for each row it copies, and copies its deep rows
// row by row (KmixRowPrefetch); else it copies as before. The output does not depend on next_chunk.
template <typename T>
static void kmix_dcutmix_block_host(const T* const* in, T* const* out, const int* sources, const int* boxes, int n,
                                    int k, int height, int width, int channels, int layout, int next_chunk) {
  KmixRowPrefetch& pf = kmix_row_prefetch;
  pf = KmixRowPrefetch{};
  if (next_chunk >= 0 && next_chunk < (int)gridDim.x && blockDim.x == 1) {
    const long long row_bytes = (long long)width * (layout == KMIX_HWC ? channels : 1) * (long long)sizeof(T);
    int r0, r1;  // that chunk's rows, as its block will copy them
    kmix_row_range(layout == KMIX_HWC ? height : channels * height, next_chunk, (int)gridDim.x, &r0, &r1);
    if (r1 > r0) {
      pf.on = true;
      pf.next = (const char*)in[blockIdx.y] + (long long)r0 * row_bytes;  // input s: a round covers every input
      pf.left = (long long)(r1 - r0) * row_bytes;
      pf.per_row = (row_bytes + 63) / 64 * 64;
    }
  }
  kmix_dcutmix<T>(in, out, sources, boxes, n, k, height, width, channels, layout);
  pf.rest();  // what the rows left (a short last band, the generic rows)
  pf = KmixRowPrefetch{};
}

extern "C" {

// Host launch shape: by default one thread per block, so each block is a contiguous loop
// (block_threads > 1 runs the GPU's strided path, for the tests). Samples go on grid.y;
// grid.x splits a sample into chunks of about 64 Ki elements.
// Blocks along grid.x (chunks of one sample) of the host launches; the DALI plugin asks
// for the same numbers so that both split a sample alike.
int kmix_host_dmixup_chunks(long long sample_elems) {
  return sample_elems <= 0 ? 0 : (int)kmix_chunks(sample_elems, 1 << 16);
}

// Host DCutMix: how a launch cuts a sample's rows into chunks (grid.x) and in which order its blocks run.
// By default sample by sample, chunks of about 64 Ki elements, whose long runs stream from one image at a
// time. A float32 nesting of K >= KMIX_HOST_DEEP_K: chunks of about KMIX_HOST_DEEP_CHUNK_BYTES of a sample,
// the same chunk of every sample before the next chunk. Such rows have many short runs (16.3 a row at
// K = 16, median 4 pixels), each from another image and each reading whole 64-byte lines for a few pixels:
// 28.5 lines a row of a float32 CHW 224 plane at K = 16 against 15.4 at K = 2. Outputs whose runs take the
// same rows of the same image, worked on together, share those lines in L2 instead of each fetching them
// from L3. Measured with 24 KiB chunks, run by run, no prefetch (batch 64, 224 x 224 x 3, interleaved rounds,
// this order over the other; an Intel Xeon): float32 CHW
// K = 16 0.90 with two workers, 0.77 with one, K = 8 0.92 / 0.83, float32 HWC K = 16 0.90; K = 2 1.0; but
// uint8 HWC 1.03, uint8 CHW 1.12 and float16 CHW 1.04 at K = 16 (their rows are a quarter or half the
// bytes, the runs' instructions weigh more than the lines), so those keep the default order.
// A samples-first block whose thread copies another chunk of its sample next (all but the last round, where the
// launch has at least 4 claims a worker) prefetches that chunk's input rows and copies its deep rows row by row
// (kmix_dcutmix_block_host), so a round's runs read inputs that the last round put in the caches. Its chunks are
// 8 KiB: a round of batch 64 then prefetches 512 KiB, the L2 of a Zen 3 core. Measured against 24 KiB chunks, run
// by run and no prefetch (K = 16, float32 CHW 224, kernel alone, two workers, AMD EPYC Zen 3): batch 32 0.85x,
// 64 0.78x, 128 0.91x; one worker, batch 64, 0.72x; float32 HWC, batch 64, 1.0x.
#define KMIX_HOST_DEEP_K 6
#define KMIX_HOST_DEEP_CHUNK_BYTES (8 << 10)

int kmix_host_dcutmix_samples_first(int dtype, int k) {
  return dtype == KMIX_F32 && k >= KMIX_HOST_DEEP_K;
}

int kmix_host_dcutmix_chunks(int dtype, int k, int height, int width, int channels, int layout) {
  if (height <= 0 || width <= 0 || channels <= 0) return 0;
  const int rows = layout == KMIX_HWC ? height : channels * height;
  const long long row_len = (long long)width * (layout == KMIX_HWC ? channels : 1);
  const long long target =  // samples first is float32 only
      kmix_host_dcutmix_samples_first(dtype, k) ? KMIX_HOST_DEEP_CHUNK_BYTES / (long long)sizeof(float) : 1LL << 16;
  const unsigned row_chunks = kmix_chunks((long long)rows * row_len, target);
  return (int)(row_chunks < (unsigned)rows ? row_chunks : (unsigned)rows);
}

int kmix_host_dmixup(int dtype, const void* const* in, void* const* out, const int* sources,
                     const float* weights, int n, int k, long long sample_elems, int nworkers,
                     int block_threads, int reverse) {
  if (n <= 0 || sample_elems <= 0) return 0;
  const kmix_dim3 grid = {(unsigned)kmix_host_dmixup_chunks(sample_elems), (unsigned)n, 1};
  const kmix_dim3 block = {(unsigned)(block_threads < 1 ? 1 : block_threads), 1, 1};
  KMIX_DISPATCH(dtype, kmix_launch(grid, block, nworkers, reverse != 0, [&]() {
    kmix_dmixup<T>((const T* const*)in, (T* const*)out, sources, weights, n, k, sample_elems);
  }));
  return 0;
}

int kmix_host_dcutmix(int dtype, const void* const* in, void* const* out, const int* sources,
                      const int* boxes, int n, int k, int height, int width, int channels,
                      int layout, int nworkers, int block_threads, int reverse) {
  if (n <= 0 || height <= 0 || width <= 0 || channels <= 0) return 0;
  const kmix_dim3 grid = {(unsigned)kmix_host_dcutmix_chunks(dtype, k, height, width, channels, layout),
                          (unsigned)n, 1};
  const kmix_dim3 block = {(unsigned)(block_threads < 1 ? 1 : block_threads), 1, 1};
  const bool samples_first = kmix_host_dcutmix_samples_first(dtype, k) != 0;
  KMIX_DISPATCH(dtype, kmix_launch(grid, block, nworkers, reverse != 0, [&]() {
    kmix_dcutmix_block_host<T>((const T* const*)in, (T* const*)out, sources, boxes, n, k, height, width, channels,
                               layout, kmix_next_chunk);
  }, samples_first));
  return 0;
}

// The blend of a batch held in two C-contiguous allocations (sample s at in + s * in_stride bytes, its output at
// out + s * out_stride), after kmix_host_record_valid's check of the record: DMixup where boxes is null, else
// DCutMix. What mix_images makes of a NumPy batch in one call, where it made two (the check, the launch) and
// worked out the samples' addresses in NumPy. Returns 2, writing nothing, for a record the check does not pass
// (the caller's MixParams.validate then names the fault; a row sum it passes, held a hair tighter here, goes
// through kmix_host_dmixup / kmix_host_dcutmix), else their code.
int kmix_host_blend_batch(int dtype, const void* in, long long in_stride, void* out, long long out_stride,
                          const int* sources, const float* weights, const int* boxes, int n, int k, int height,
                          int width, int channels, int layout, int nworkers, int block_threads, int reverse) {
  if (!kmix_host_record_valid(sources, weights, boxes, n, k, height, width)) return 2;
  if (n <= 0) return 0;
  std::vector<const void*> pin((size_t)n);
  std::vector<void*> pout((size_t)n);
  for (int s = 0; s < n; ++s) {
    pin[(size_t)s] = (const char*)in + (long long)s * in_stride;
    pout[(size_t)s] = (char*)out + (long long)s * out_stride;
  }
  if (!boxes)
    return kmix_host_dmixup(dtype, pin.data(), pout.data(), sources, weights, n, k,
                            (long long)height * width * channels, nworkers, block_threads, reverse);
  return kmix_host_dcutmix(dtype, pin.data(), pout.data(), sources, boxes, n, k, height, width, channels, layout,
                           nworkers, block_threads, reverse);
}

// DMixup or DCutMix per sample in one launch (kmix_mix): the blend's chunks along grid.x, which
// a paste divides among rows (it has at most as many chunks as rows to give).
int kmix_host_mix(int dtype, const void* const* in, void* const* out, const int* sources, const float* weights,
                  const int* boxes, const unsigned char* cut, int n, int k, int height, int width, int channels,
                  int layout, int nworkers, int block_threads, int reverse) {
  if (n <= 0 || height <= 0 || width <= 0 || channels <= 0) return 0;
  const long long elems = (long long)height * width * channels;
  const kmix_dim3 grid = {(unsigned)kmix_host_dmixup_chunks(elems), (unsigned)n, 1};
  const kmix_dim3 block = {(unsigned)(block_threads < 1 ? 1 : block_threads), 1, 1};
  KMIX_DISPATCH(dtype, kmix_launch(grid, block, nworkers, reverse != 0, [&]() {
    kmix_mix<T>((const T* const*)in, (T* const*)out, sources, weights, boxes, cut, n, k, height, width, channels,
                layout);
  }));
  return 0;
}

// One block (chunk `chunk` of sample `sample`, one thread) of the host grids above, for a
// caller that runs the blocks on its own thread pool (the DALI plugin, kmix_dali_op.cpp).
// Returns 1 for an unknown dtype or a block outside the grid.
int kmix_host_dmixup_block(int dtype, const void* const* in, void* const* out, const int* sources,
                           const float* weights, int n, int k, long long sample_elems, int chunk,
                           int sample) {
  const int chunks = kmix_host_dmixup_chunks(sample_elems);
  if (chunk < 0 || chunk >= chunks || sample < 0 || sample >= n) return 1;
  const kmix_dim3 grid = {(unsigned)chunks, (unsigned)n, 1};
  KMIX_DISPATCH(dtype, kmix_run_block(grid, (unsigned)chunk, (unsigned)sample, [&]() {
    kmix_dmixup<T>((const T* const*)in, (T* const*)out, sources, weights, n, k, sample_elems);
  }));
  return 0;
}

int kmix_host_dcutmix_block(int dtype, const void* const* in, void* const* out, const int* sources,
                            const int* boxes, int n, int k, int height, int width, int channels,
                            int layout, int chunk, int sample, int next_chunk) {
  const int chunks = kmix_host_dcutmix_chunks(dtype, k, height, width, channels, layout);
  if (chunk < 0 || chunk >= chunks || sample < 0 || sample >= n || next_chunk < -1 || next_chunk >= chunks) return 1;
  const kmix_dim3 grid = {(unsigned)chunks, (unsigned)n, 1};
  KMIX_DISPATCH(dtype, kmix_run_block(grid, (unsigned)chunk, (unsigned)sample, [&]() {
    kmix_dcutmix_block_host<T>((const T* const*)in, (T* const*)out, sources, boxes, n, k, height, width, channels,
                               layout, next_chunk);
  }));
  return 0;
}

// The mix with its normalisation fused (kmix_mix_norm, kmix_mix_norm_band): the output type O is float or float16.
#define KMIX_DISPATCH_NORM(dtype, out_dtype, CALL)                              \
  switch (out_dtype) {                                                          \
    case KMIX_F32: { typedef float O; KMIX_DISPATCH(dtype, CALL); } break;      \
    case KMIX_F16: { typedef __half O; KMIX_DISPATCH(dtype, CALL); } break;     \
    default: return 1;                                                          \
  }

// Host bands of the fused launch: a sample's rows in bands of about KMIX_HOST_NORM_BAND_BYTES of the images (all
// channels of the band's rows), mixed into a per-thread scratch that stays in cache, then normalised from it.
#define KMIX_HOST_NORM_BAND_BYTES (16 << 10)

static int kmix_elem_size(int dtype) { return dtype == KMIX_U8 ? 1 : (dtype == KMIX_F16 ? 2 : 4); }

int kmix_host_norm_bands(int dtype, int height, int width, int channels) {
  if (height <= 0 || width <= 0 || channels <= 0) return 0;
  const long long row_bytes = (long long)width * channels * kmix_elem_size(dtype);
  long long rows = KMIX_HOST_NORM_BAND_BYTES / row_bytes;
  if (rows < 1) rows = 1;
  return (int)((height + rows - 1) / rows);
}

// The scratch of the calling thread: one sample of `bytes`, kept between calls.
static void* kmix_norm_scratch(size_t bytes) {
  static thread_local std::vector<unsigned char> buf;
  if (buf.size() < bytes + 64) buf.resize(bytes + 64);
  return (void*)(((uintptr_t)buf.data() + 63) & ~(uintptr_t)63);
}

// Band `band` (of kmix_host_norm_bands) of sample `sample`: the fused mix and normalisation of its rows.
// method: 0 DMixup (weights), 1 DCutMix (boxes), 2 per sample by cut. Returns 1 for an unknown type or method, or a
// block outside the grid.
int kmix_host_mix_norm_block(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                             const float* weights, const int* boxes, const unsigned char* cut, int method, int n,
                             int k, int height, int width, int channels, int layout, int out_layout,
                             const float* mean, const float* inv_std, const unsigned char* mirror, int band,
                             int sample) {
  const int bands = kmix_host_norm_bands(dtype, height, width, channels);
  if (band < 0 || band >= bands || sample < 0 || sample >= n || method < 0 || method > 2) return 1;
  const int per = (height + bands - 1) / bands;
  const int y0 = band * per, y1 = y0 + per < height ? y0 + per : height;
  if (y0 >= y1) return 0;
  const bool paste = kmix_is_paste(method, cut, sample);
  const bool flip = mirror != nullptr && mirror[sample] != 0;
  void* scratch = kmix_norm_scratch((size_t)height * width * channels * kmix_elem_size(dtype));
  KMIX_DISPATCH_NORM(dtype, out_dtype, (kmix_mix_norm_band<T, O>(  // parenthesised: the commas stay in the call
      (const T* const*)in, (O*)out[sample], (T*)scratch, sources + (long long)sample * k,
      weights ? weights + (long long)sample * k : nullptr, boxes ? boxes + (long long)sample * (k - 1) * 4 : nullptr,
      paste, k, height, width, channels, layout, out_layout, mean, inv_std, flip, y0, y1)));
  return 0;
}

// The fused launch over a batch: with block_threads == 1 the host bands (kmix_host_mix_norm_block) on nworkers
// threads; with more, the GPU's kernel kmix_mix_norm, its threads run one after another (for the tests: both give
// the same bits).
int kmix_host_mix_norm(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                       const float* weights, const int* boxes, const unsigned char* cut, int method, int n, int k,
                       int height, int width, int channels, int layout, int out_layout, const float* mean,
                       const float* inv_std, const unsigned char* mirror, int nworkers, int block_threads,
                       int reverse) {
  if (method < 0 || method > 2) return 1;
  if (n <= 0 || height <= 0 || width <= 0 || channels <= 0) return 0;
  if (block_threads <= 1) {
    const int bands = kmix_host_norm_bands(dtype, height, width, channels);
    const kmix_dim3 grid = {(unsigned)bands, (unsigned)n, 1};
    std::atomic<int> failed{0};
    kmix_launch(grid, {1, 1, 1}, nworkers, reverse != 0, [&]() {
      if (kmix_host_mix_norm_block(dtype, out_dtype, in, out, sources, weights, boxes, cut, method, n, k, height,
                                   width, channels, layout, out_layout, mean, inv_std, mirror, (int)blockIdx.x,
                                   (int)blockIdx.y))
        failed = 1;
    });
    return failed.load();
  }
  const kmix_dim3 grid = {(unsigned)kmix_host_dmixup_chunks((long long)height * width * channels), (unsigned)n, 1};
  const kmix_dim3 block = {(unsigned)block_threads, 1, 1};
  KMIX_DISPATCH_NORM(dtype, out_dtype, (kmix_launch(grid, block, nworkers, reverse != 0, [&]() {
    kmix_mix_norm<T, O>((const T* const*)in, (O* const*)out, sources, weights, boxes, cut, method, n, k, height,
                        width, channels, layout, out_layout, mean, inv_std, mirror);
  })));
  return 0;
}

// Same grid shape as the GPU launch (threads of a block run one after another here).
int kmix_host_nest_boxes(const double* phi, const double* uni, int phi_stride, const int* perms,
                         const unsigned char* mixed, int n, int k, int height, int width,
                         int* sources, float* weights, int* boxes, const int* centers,
                         int nworkers, int reverse) {
  if (n <= 0) return 0;
  const kmix_dim3 block = {64, 1, 1};
  const kmix_dim3 grid = {(unsigned)((n + 63) / 64), 1, 1};
  kmix_launch(grid, block, nworkers, reverse != 0, [&]() {
    kmix_nest_boxes(phi, uni, phi_stride, perms, mixed, n, k, height, width, sources, weights,
                    boxes, centers);
  });
  return 0;
}

// One block per sample (one thread): kmix_grey_resize_host, the per-pixel arithmetic of kmix_grey_resize with
// the grey values of the source rows worked out whole and the column taps once.
int kmix_host_grey_resize(int dtype, const void* const* in, float* out, int n, int height, int width,
                          int channels, int layout, int out_h, int out_w, int nworkers, int reverse) {
  if (n <= 0 || out_h <= 0 || out_w <= 0) return 0;
  if (height <= 0 || width <= 0 || channels <= 0) return 1;  // no pixel to read (the tap would clamp to -1)
  const KmixGreyTaps taps(width, out_w);
  KMIX_DISPATCH(dtype, kmix_launch({(unsigned)n, 1, 1}, {1, 1, 1}, nworkers, reverse != 0, [&]() {
    thread_local std::vector<float> rows;
    rows.resize(2 * (size_t)width);
    const int s = (int)blockIdx.x;
    kmix_grey_resize_host<T>((const T*)in[s], out + (long long)s * out_h * out_w, height, width, channels, layout,
                             out_h, out_w, taps.x0s.data(), taps.x1s.data(), taps.fxs.data(), rows.data());
  }));
  return 0;
}

// The spectral residual (kmix_spectral.h) of n grey images g (n x rows x cols float32; rows and cols powers of
// two): the maps into maps (same shape) and the index of each map's first peak into peaks; gauss: the 5 taps
// of the Gaussian. One block per image on the pool. Returns 2 when a side is not a power of two.
int kmix_host_spectral_residual(const float* g, float* maps, int* peaks, int n, int rows, int cols,
                                const float* gauss, int nworkers) {
  if (!kmix_pow2(rows) || !kmix_pow2(cols)) return 2;
  if (n <= 0) return 0;
  const kmix_spectral::Plan prow(rows), pcol(cols);
  const long long size = (long long)rows * cols;
  kmix_launch({(unsigned)n, 1, 1}, {1, 1, 1}, nworkers, false, [&]() {
    thread_local kmix_spectral::Work work;
    const long long s = blockIdx.x;
    peaks[s] = kmix_spectral::spectral_residual(g + s * size, maps + s * size, rows, cols, prow, pcol, gauss, work);
  });
  return 0;
}

// The most salient pixel (y, x) of each of n images into points (n x 2 int32): per image, in one block of the
// pool, its grey copy (kmix_grey_resize_host, as kmix_host_grey_resize), its spectral-residual map
// (kmix_spectral::spectral_residual, as kmix_host_spectral_residual) and the centre pixel of the map's first
// peak in full-resolution coordinates (dali_kmix.saliency.salient_points' arithmetic). The same points as those
// two launches and the peak's cell, in one launch whose grey copy and map stay in the worker's cache.
// Returns 2 when a side of the grid is not a power of two, 1 for a dtype no kernel takes or an empty image.
int kmix_host_salient_points(int dtype, const void* const* in, int* points, int n, int height, int width,
                             int channels, int layout, int out_h, int out_w, const float* gauss, int nworkers) {
  if (!kmix_pow2(out_h) || !kmix_pow2(out_w)) return 2;
  if (n <= 0) return 0;
  if (height <= 0 || width <= 0 || channels <= 0) return 1;
  const KmixGreyTaps taps(width, out_w);
  const kmix_spectral::Plan prow(out_h), pcol(out_w);
  const long long size = (long long)out_h * out_w;
  KMIX_DISPATCH(dtype, kmix_launch({(unsigned)n, 1, 1}, {1, 1, 1}, nworkers, false, [&]() {
    thread_local std::vector<float> rows, grid;
    thread_local kmix_spectral::Work work;
    rows.resize(2 * (size_t)width);
    grid.resize(2 * (size_t)size);  // the grey copy, then the map
    const int s = (int)blockIdx.x;
    kmix_grey_resize_host<T>((const T*)in[s], grid.data(), height, width, channels, layout, out_h, out_w,
                             taps.x0s.data(), taps.x1s.data(), taps.fxs.data(), rows.data());
    const int peak = kmix_spectral::spectral_residual(grid.data(), grid.data() + size, out_h, out_w, prow, pcol,
                                                      gauss, work);
    const long long iy = peak / out_w, ix = peak % out_w;
    const long long cy = ((2 * iy + 1) * height) / (2LL * out_h), cx = ((2 * ix + 1) * width) / (2LL * out_w);
    points[2 * s] = (int)(cy < height - 1 ? cy : height - 1);
    points[2 * s + 1] = (int)(cx < width - 1 ? cx : width - 1);
  }));
  return 0;
}

// ------------------------------------------------------------------ the record drawn natively (kmix_draw.h)

// dali_kmix.sampling._dirichlet_from_draws (NumPy arrays, float64): rows x k shares from the Gamma(alpha + 1)
// draws and the uniforms; alpha: k values (alpha_stride 0) or rows x k (alpha_stride k).
void kmix_host_dirichlet(const double* alpha, int alpha_stride, const double* gamma1, const double* uniform,
                         int rows, int k, double* phi) {
  kmix_draw::dirichlet(alpha, alpha_stride, gamma1, uniform, rows, k, phi);
}

#ifndef KMIX_NO_NPYRANDOM  // NumPy's libnpyrandom.a is linked in (dali_kmix.backends.build.numpy_random)
// count raw 64-bit outputs of numpy.random.PCG64(SeedSequence(entropy, spawn_key=spawn)) (entropy and spawn as
// uint32 words) into out: what the tests hold against NumPy's bit_generator.random_raw.
void kmix_host_pcg64_raw(const uint32_t* entropy, int n_entropy, const uint32_t* spawn, int n_spawn, long long count,
                         uint64_t* out) {
  kmix_draw::Pcg64 gen(kmix_draw::SeedSequence(std::vector<uint32_t>(entropy, entropy + n_entropy),
                                               std::vector<uint32_t>(spawn, spawn + n_spawn)));
  for (long long i = 0; i < count; ++i) out[i] = gen.next64();
}

// One batch's record drawn from gen and nested natively (kmix_host_draw_record, kmix_host_draw_record_bitgen).
static int kmix_draw_record(bitgen_t* gen, int method, int n, int k, const double* alpha, int alpha_rows,
                            const double* cut_alpha, int batch_mode, const double* prob, int prob_rows,
                            double switch_prob, const unsigned char* valid, int height, int width, const int* centers,
                            int* sources, float* weights, int* boxes, int* cut) {
  if (n < 0 || k < 2 || method < 0 || method > 3 || (method == 2 && !centers) || (method != 0 && !boxes)) return 1;
  bool boxed = method == 1 || method == 2;
  if (method == 3) {
    boxed = gen->next_double(gen->state) < switch_prob;
    if (boxed) {
      alpha = cut_alpha;
      alpha_rows = 0;
    }
  }
  if (cut) *cut = boxed ? 1 : 0;
  if (n == 0) return 0;
  std::vector<double> phi, uniforms;
  std::vector<int> perms;
  std::vector<unsigned char> mixed;
  kmix_draw::draw_raw(gen, n, k, alpha, alpha_rows != 0, batch_mode != 0, prob, prob_rows != 0, valid, phi, uniforms,
                      perms, mixed);
  if (!boxed && boxes)
    for (long long i = 0; i < (long long)n * (k - 1) * 4; ++i) boxes[i] = 0;
  return kmix_host_nest_boxes(phi.data(), uniforms.data(), batch_mode ? 0 : 1, perms.data(), mixed.data(), n, k,
                              height, width, sources, weights, boxed ? boxes : nullptr, method == 2 ? centers : nullptr,
                              1, 0);
}

// One batch's record, drawn and nested natively: the numbers of dali_kmix.dali._HostRecord.record (draw_raw's
// draws from numpy.random.PCG64(SeedSequence(entropy, spawn_key=spawn)), then kmix_nest_boxes).
//   method: 0 DMixup, 1 DCutMix, 2 Saliency-DCutMix (centers: n x 2 points of the images), 3 DMixup or DCutMix
//           per batch (a first uniform < switch_prob: DCutMix with cut_alpha, else DMixup with alpha);
//   alpha: k values, or n x k (alpha_rows, "sample" mode); prob: 1 value or n (prob_rows); valid: null or n
//   flags (0: a reader's padding, never mixed and no partner).
// Outputs: sources and weights n x k; boxes n x (k - 1) x 4 (zeros when the batch is DMixup; may be null for
// method 0); *cut (cut may be null): 1 when the batch's record is DCutMix. Returns 1 for arguments no record has.
int kmix_host_draw_record(const uint32_t* entropy, int n_entropy, const uint32_t* spawn, int n_spawn, int method,
                          int n, int k, const double* alpha, int alpha_rows, const double* cut_alpha, int batch_mode,
                          const double* prob, int prob_rows, double switch_prob, const unsigned char* valid,
                          int height, int width, const int* centers, int* sources, float* weights, int* boxes,
                          int* cut) {
  kmix_draw::Pcg64 gen(kmix_draw::SeedSequence(std::vector<uint32_t>(entropy, entropy + n_entropy),
                                               std::vector<uint32_t>(spawn, spawn + n_spawn)));
  return kmix_draw_record(gen.bitgen(), method, n, k, alpha, alpha_rows, cut_alpha, batch_mode, prob, prob_rows,
                          switch_prob, valid, height, width, centers, sources, weights, boxes, cut);
}

// The same from a numpy.random.Generator's bit generator (its bit_generator.ctypes.bit_generator: NumPy's
// bitgen_t), advanced in place exactly as sample_params' draw_raw + record_from_draws advance it. The caller
// holds the bit generator's lock.
int kmix_host_draw_record_bitgen(void* bitgen, int method, int n, int k, const double* alpha, int alpha_rows,
                                 int batch_mode, const double* prob, int prob_rows, int height, int width,
                                 const int* centers, int* sources, float* weights, int* boxes, int* cut) {
  if (!bitgen || method == 3) return 1;
  return kmix_draw_record(static_cast<bitgen_t*>(bitgen), method, n, k, alpha, alpha_rows, nullptr, batch_mode, prob,
                          prob_rows, 0.0, nullptr, height, width, centers, sources, weights, boxes, cut);
}
#endif  // KMIX_NO_NPYRANDOM

// 1 when a MixParams record (NumPy arrays: sources int32 (n, k), weights float32 (n, k), boxes int32
// (n, k - 1, 4) or null) passes MixParams.validate(n, height, width) -- every check it makes, made the same
// way in double and held a hair tighter where NumPy's summation order could differ (the row sums) -- else 0,
// and then the caller runs MixParams.validate, which names the fault. One pass instead of some thirty NumPy
// operations.
int kmix_host_record_valid(const int* sources, const float* weights, const int* boxes, int n, int k, int height,
                           int width) {
  const double weight_atol = 1e-5;
  for (int s = 0; s < n; ++s) {
    const int* src = sources + (long long)s * k;
    const float* w = weights + (long long)s * k;
    if (src[0] != s) return 0;
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {
      if (src[j] < 0 || src[j] >= n) return 0;
      if (!std::isfinite(w[j]) || w[j] < 0.0f) return 0;
      sum += (double)w[j];
    }
    if (!(std::fabs(sum - 1.0) <= weight_atol - 1e-12)) return 0;
    if (!boxes || k == 1) continue;
    const int* b = boxes + (long long)s * (k - 1) * 4;
    const double hw = (double)height * (double)width;
    long long outer = (long long)height * width;
    for (int d = 0; d < k - 1; ++d) {
      const int* q = b + 4 * d;
      if (q[0] < 0 || q[1] < 0 || q[2] > height || q[3] > width || q[2] < q[0] || q[3] < q[1]) return 0;
      if (d > 0 && !(q[0] >= q[-4] && q[1] >= q[-3] && q[2] <= q[-2] && q[3] <= q[-1])) return 0;
      const long long area = (long long)(q[2] - q[0]) * (q[3] - q[1]);
      if (!(std::fabs((double)(float)((double)(outer - area) / hw) - (double)w[d]) <= weight_atol)) return 0;
      outer = area;
    }
    if (!(std::fabs((double)(float)((double)outer / hw) - (double)w[k - 1]) <= weight_atol)) return 0;
  }
  return 1;
}

// The soft targets of dali_kmix.reference.mix_labels, with its float32 operations in its order: per row, the
// chain ((0 + w_0 v_0) + w_1 v_1) + ... with v = on for the class of share j, off elsewhere; every class that
// is none of the row's labels gets the chain of the off terms. labels: int64 (m,) class indices; sources:
// int32 (n, k); out: float32 (n, classes). Returns 1, writing nothing, at a source outside [0, m) or a label that
// a source names outside [0, classes), and with `checked`, 2 for rows kmix_host_record_valid does not pass (the
// caller's NumPy code then reports either), else 0. Rows that pass name every label (sources[s][0] == s, m == n).
int kmix_host_mix_labels(const long long* labels, long long m, const int* sources, const float* weights, int n, int k,
                         int classes, float on, float off, float* out, int checked) {
  for (long long i = 0; i < (long long)n * k; ++i)
    if (sources[i] < 0 || sources[i] >= m || labels[sources[i]] < 0 || labels[sources[i]] >= classes) return 1;
  if (checked && !kmix_host_record_valid(sources, weights, nullptr, n, k, 0, 0)) return 2;
  for (int s = 0; s < n; ++s) {
    const int* src = sources + (long long)s * k;
    const float* w = weights + (long long)s * k;
    float* o = out + (long long)s * classes;
    float rest = 0.0f;
    for (int j = 0; j < k; ++j) rest = rest + w[j] * off;
    for (int c = 0; c < classes; ++c) o[c] = rest;
    for (int j = 0; j < k; ++j) {
      const long long cj = labels[src[j]];
      float acc = 0.0f;
      for (int i = 0; i < k; ++i) acc = acc + w[i] * (labels[src[i]] == cj ? on : off);
      o[cj] = acc;
    }
  }
  return 0;
}

// ------------------------------------------------------------------ the GPU launch configuration (kmix_launch.h)

// grid.x, grid.y and block.x of kmix_launch_config(kernel, ...) into cfg[0..2].
void kmix_host_launch_config(int kernel, int n, int height, int width, int channels, int layout, unsigned* cfg) {
  const kmix_launch_t c = kmix_launch_config(kernel, n, height, width, channels, layout);
  cfg[0] = c.grid_x;
  cfg[1] = c.grid_y;
  cfg[2] = c.block_x;
}

// Walks the blocks of kmix_launch_config(kernel, ...) through the kernels' own work split
// (kmix_element_chunk for a blend, kmix_row_chunk for a paste; kmix_mix both) and the samples'
// grid-stride loop over blockIdx.y: counts every sample's visits into visits[n] and returns 0 when
// the chunks of grid.x tile [0, elements) and [0, rows) exactly, in order, else 1. *last gets the
// largest element offset a chunk reaches (end - 1 of the last blend chunk, int64).
int kmix_host_launch_cover(int kernel, int n, int height, int width, int channels, int layout, int* visits,
                           long long* last) {
  const kmix_launch_t c = kmix_launch_config(kernel, n, height, width, channels, layout);
  *last = -1;
  for (int s = 0; s < n; ++s) visits[s] = 0;
  if (c.grid_x == 0) return n == 0 || height <= 0 || width <= 0 || channels <= 0 ? 0 : 1;
  gridDim = {c.grid_x, c.grid_y, 1};
  blockDim = {c.block_x, 1, 1};
  for (unsigned by = 0; by < c.grid_y; ++by)
    for (int s = (int)by; s < n; s += (int)c.grid_y) ++visits[s];
  const long long elems = (long long)height * width * channels;
  const int rows = layout == KMIX_HWC ? height : channels * height;
  long long next_elem = 0;
  int next_row = 0;
  for (unsigned bx = 0; bx < c.grid_x; ++bx) {
    blockIdx = {bx, 0, 0};
    if (kernel != KMIX_KERNEL_DCUTMIX) {
      long long begin, end;
      kmix_element_chunk(elems, (long long)c.block_x, &begin, &end);
      if (begin < end) {
        if (begin != next_elem) return 1;
        next_elem = end;
        *last = end - 1;
      }
    }
    if (kernel != KMIX_KERNEL_DMIXUP) {
      int r_begin, r_end;
      kmix_row_chunk(rows, &r_begin, &r_end);
      if (r_begin < r_end) {
        if (r_begin != next_row) return 1;
        next_row = r_end;
      }
    }
  }
  if (kernel != KMIX_KERNEL_DCUTMIX && next_elem != elems) return 1;
  if (kernel != KMIX_KERNEL_DMIXUP && next_row != rows) return 1;
  return 0;
}

// ------------------------------------------------------------------ the checks of a record (kmix_record.h)

// The checks both backends of the DALI operators run (kmix::GatherRecord), for the tests and fuzzers:
// method 0 DMixup (sources, weights), 1 DCutMix (sources, boxes), 2 kmix_mix (all four; others may be
// null). Returns 0 when the record is valid, else 1 with the message (truncated to msg_len - 1 bytes)
// in msg.
int kmix_host_validate_record(int method, const char* layout, const char* found_layout, const kmix::KmixList* images,
                              const kmix::KmixList* sources, const kmix::KmixList* weights,
                              const kmix::KmixList* boxes, const kmix::KmixList* cut, char* msg, int msg_len) {
  std::string err = kmix::CheckLayoutArg(layout);
  if (err.empty() && (method < 0 || method > 2)) err = kmix::Str("method must be 0, 1 or 2, got ", method);
  if (err.empty()) {
    kmix::Record rec;
    err = kmix::GatherRecord(static_cast<kmix::Method>(method), layout, found_layout, *images, *sources, weights,
                             boxes, cut, &rec);
  }
  if (msg && msg_len > 0) {
    const size_t len = err.size() < (size_t)msg_len - 1 ? err.size() : (size_t)msg_len - 1;
    std::memcpy(msg, err.data(), len);
    msg[len] = 0;
  }
  return err.empty() ? 0 : 1;
}

// Exposed for the exhaustive float16 conversion test.
void kmix_host_half_to_float(const uint16_t* in, float* out, long long count) {
  for (long long i = 0; i < count; ++i) {
    __half h;
    h.bits = in[i];
    out[i] = __half2float(h);
  }
}

void kmix_host_float_to_half(const float* in, uint16_t* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = __float2half_rn(in[i]).bits;
}

}  // extern "C"
