// dali_kmix blending kernels: DMixup (Dirichlet-weighted sum) and DCutMix (nested boxes).
//
// Both read per-sample input pointers (DALI's list of samples needs no stacking copy)
// and write per-sample output pointers. Inputs are never written. Each output element
// is written exactly once (on the host, a deep DCutMix row's short runs may first be
// overwritten by the runs after them: kmix_dcutmix_rows_host).
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

#ifdef KMIX_HOST_SHIM
// Host fast path of one term of the chain over a strip: acc[e] = fmaf(w, kmix_share_input(w, x[e]), acc[e])
// (or with acc = +0 for the first term). The share is tested once per strip instead of once per element:
// for w != 0 kmix_share_input is x itself, so the loop is a plain fused multiply-add that vectorises;
// w == 0 (rare: a tiny alpha) keeps the exact expression. Same bits as the generic loop below.
template <bool First, typename T>
inline void kmix_dmixup_term(float* __restrict__ acc, const T* __restrict__ p, float w, int len) {
  if (w != 0.0f) {
    for (int e = 0; e < len; ++e) acc[e] = fmaf(w, kmix_to_float(p[e]), First ? 0.0f : acc[e]);
  } else {
    for (int e = 0; e < len; ++e)
      acc[e] = fmaf(w, kmix_share_input(w, kmix_to_float(p[e])), First ? 0.0f : acc[e]);
  }
}

// The store of the host fast path: kmix_from_float<T>, written for uint8 so that it vectorises (the clip
// to 255 in float, the clip to 0 after the conversion to int). The same byte as kmix_from_float for every
// float but NaN, which a blend of uint8 pixels (finite, >= 0) with finite shares >= 0 never makes.
template <typename T>
inline T kmix_host_store(float v) {
  return kmix_from_float<T>(v);
}
template <>
inline unsigned char kmix_host_store<unsigned char>(float v) {
  float r = rintf(v);
  r = r < 255.0f ? r : 255.0f;
  const int i = (int)r;
  return (unsigned char)(i > 0 ? i : 0);
}

// Host fast path for K <= KMIX_HOST_FIXED_K images, none of them with a share of 0 (then kmix_share_input
// is the pixel itself): the whole chain of one element in registers, K known to the compiler, so one
// loop reads the K images and writes the output once, vectorised, with no buffer in between.
#define KMIX_HOST_FIXED_K 8

// The uint8 steps of kmix_dmixup_fixed in SIMD registers, 16 (AVX-512) or 32 then 8 (AVX2 + FMA) elements a step,
// from element i while a whole step fits before end; returns where the scalar loop goes on. Per lane the same
// operations as that loop, so the same bytes: (float)x is exact, _fmadd_ps is fmaf (the chain starting from
// +0.0f), and the store is kmix_host_store: min(v, 255) then the conversion in the current rounding mode (rintf's)
// equals min(rintf(v), 255) (255 is an integer and rintf is monotone; for NaN min_ps returns 255, as the scalar
// comparison does), the conversion of a value below -2^31 gives INT_MIN as the scalar (int) does, and max(., 0)
// then a saturating pack of values in [0, 255] is the clip to 0. Where the compiler's own vectorisation of the
// scalar loop widens the bytes in three steps and packs them back with permutes, this takes about 0.7x the time.
// Without AVX2 and FMA (or in a build without -march) it does nothing.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push  // GCC 12 warns inside its own AVX-512 intrinsics (_mm512_undefined_*: GCC bug 105593)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
template <int K>
inline long long kmix_dmixup_u8_steps(const unsigned char* const* p, unsigned char* __restrict__ o, const float* wk,
                                      long long i, long long end) {
#if defined(__AVX512F__)
  __m512 wv[K];
  for (int j = 0; j < K; ++j) wv[j] = _mm512_set1_ps(wk[j]);
  const __m512 top = _mm512_set1_ps(255.0f);
  for (; i + 16 <= end; i += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < K; ++j) {
      const __m128i b = _mm_loadu_si128((const __m128i*)(p[j] + i));
      acc = _mm512_fmadd_ps(wv[j], _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)), acc);
    }
    const __m512i q = _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_min_ps(acc, top)), _mm512_setzero_si512());
    _mm_storeu_si128((__m128i*)(o + i), _mm512_cvtusepi32_epi8(q));
  }
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 wv[K];
  for (int j = 0; j < K; ++j) wv[j] = _mm256_set1_ps(wk[j]);
  const __m256 top = _mm256_set1_ps(255.0f);
  // Shares in [-8, 8] (every share a record check lets through; NaN is not in it): then |acc| <= 255 * 8 * K
  // <= 16320, so the clip needs no min: cvtps_epi32 gives that int, and the two saturating packs (int32 to
  // uint16, then int16 to uint8) clip it to [0, 255] as min(., 255) and max(., 0) do. Steps of 32 elements from
  // one 32-byte load per image: its four groups of 4 bytes per 128-bit lane (vpshufb) are four vectors whose
  // packs come back in order, so no permute. The first image's bytes become floats without a conversion:
  // unpacked with zeros and 0x4B00 words each is the float 2^23 + x, and fmaf(w, 2^23 + x, -w * 2^23) is
  // w * x rounded once, as fmaf(w, x, +0.0f) is (-w * 2^23 is exact, w a float in [-8, 8]; an exact zero sum
  // is +0 in round to nearest, as fmaf's w * 0 + 0 is for w > 0). About 0.75x the time of the permute steps
  // below (AMD Zen 3, K = 3, data in L1).
  bool small = true;
  for (int j = 0; j < K; ++j) small = small && wk[j] >= -8.0f && wk[j] <= 8.0f;
  if (small) {
    const __m256i pick[4] = {
        _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2,
                         -1, -1, -1, 3, -1, -1, -1),
        _mm256_setr_epi8(4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7, -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6,
                         -1, -1, -1, 7, -1, -1, -1),
        _mm256_setr_epi8(8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11, -1, -1, -1, 8, -1, -1, -1, 9, -1, -1, -1,
                         10, -1, -1, -1, 11, -1, -1, -1),
        _mm256_setr_epi8(12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15, -1, -1, -1, 12, -1, -1, -1, 13, -1, -1,
                         -1, 14, -1, -1, -1, 15, -1, -1, -1)};
    const __m256i zero = _mm256_setzero_si256(), exponent = _mm256_set1_epi16((short)0x4B00);
    const __m256 offset = _mm256_set1_ps(-(wk[0] * 8388608.0f));
    for (; i + 32 <= end; i += 32) {
      // group q of each lane: elements 4q..4q+3 (lane 0) and 16+4q..16+4q+3 (lane 1)
      const __m256i b0 = _mm256_loadu_si256((const __m256i*)(p[0] + i));
      const __m256i lo = _mm256_unpacklo_epi8(b0, zero), hi = _mm256_unpackhi_epi8(b0, zero);
      __m256 acc[4] = {
          _mm256_fmadd_ps(wv[0], _mm256_castsi256_ps(_mm256_unpacklo_epi16(lo, exponent)), offset),
          _mm256_fmadd_ps(wv[0], _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo, exponent)), offset),
          _mm256_fmadd_ps(wv[0], _mm256_castsi256_ps(_mm256_unpacklo_epi16(hi, exponent)), offset),
          _mm256_fmadd_ps(wv[0], _mm256_castsi256_ps(_mm256_unpackhi_epi16(hi, exponent)), offset)};
      for (int j = 1; j < K; ++j) {
        const __m256i b = _mm256_loadu_si256((const __m256i*)(p[j] + i));
        for (int q = 0; q < 4; ++q)
          acc[q] = _mm256_fmadd_ps(wv[j], _mm256_cvtepi32_ps(_mm256_shuffle_epi8(b, pick[q])), acc[q]);
      }
      const __m256i words01 = _mm256_packus_epi32(_mm256_cvtps_epi32(acc[0]), _mm256_cvtps_epi32(acc[1]));
      const __m256i words23 = _mm256_packus_epi32(_mm256_cvtps_epi32(acc[2]), _mm256_cvtps_epi32(acc[3]));
      _mm256_storeu_si256((__m256i*)(o + i), _mm256_packus_epi16(words01, words23));
    }
  }
  // 32 elements a step for any shares: four chains side by side, their bytes packed with two saturating packs and
  // put back in order with one permute, one 32-byte store. A pack clips negatives to 0 as the max below does, so
  // it needs no max. About 0.7x the time of the 8-element steps (AMD Zen 3, K = 3, data in L2), which were bound
  // by their shuffles (a widening and two packs for every 8 bytes).
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; i + 32 <= end; i += 32) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int j = 0; j < K; ++j)
      for (int q = 0; q < 4; ++q) {
        const __m128i b = _mm_loadl_epi64((const __m128i*)(p[j] + i + 8 * q));
        acc[q] = _mm256_fmadd_ps(wv[j], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), acc[q]);
      }
    __m256i v[4];
    for (int q = 0; q < 4; ++q) v[q] = _mm256_cvtps_epi32(_mm256_min_ps(acc[q], top));
    // per 128-bit lane: the words of v0, v1 (v2, v3), lower halves then upper; the bytes: lane 0 the lower
    // halves of v0..v3, lane 1 their upper halves; the permute takes them back to v0, v1, v2, v3.
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(v[0], v[1]), _mm256_packus_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i*)(o + i), _mm256_permutevar8x32_epi32(bytes, order));
  }
  for (; i + 8 <= end; i += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int j = 0; j < K; ++j) {
      const __m128i b = _mm_loadl_epi64((const __m128i*)(p[j] + i));
      acc = _mm256_fmadd_ps(wv[j], _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), acc);
    }
    const __m256i q = _mm256_max_epi32(_mm256_cvtps_epi32(_mm256_min_ps(acc, top)), _mm256_setzero_si256());
    const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64((__m128i*)(o + i), _mm_packus_epi16(h, h));
  }
#else
  (void)p, (void)o, (void)wk, (void)end;
#endif
  return i;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

template <int K, typename T>
inline void kmix_dmixup_fixed(const T* const* __restrict__ in, T* __restrict__ o, const int* src, const float* w,
                              long long begin, long long end) {
  const T* p[K];
  float wk[K];
  for (int j = 0; j < K; ++j) {
    p[j] = in[src[j]];
    wk[j] = w[j];
  }
  if constexpr (std::is_same<T, unsigned char>::value) begin = kmix_dmixup_u8_steps<K>(p, o, wk, begin, end);
  for (long long i = begin; i < end; ++i) {
    float acc = fmaf(wk[0], kmix_to_float(p[0][i]), 0.0f);
    for (int j = 1; j < K; ++j) acc = fmaf(wk[j], kmix_to_float(p[j][i]), acc);
    o[i] = kmix_host_store<T>(acc);
  }
}

// Runs kmix_dmixup_fixed<k> when it applies (k <= KMIX_HOST_FIXED_K, no share of 0); false otherwise.
template <typename T>
inline bool kmix_dmixup_host_fixed(const T* const* __restrict__ in, T* __restrict__ o, const int* src,
                                   const float* w, int k, long long begin, long long end) {
  if (k > KMIX_HOST_FIXED_K) return false;
  for (int j = 0; j < k; ++j)
    if (w[j] == 0.0f) return false;
  switch (k) {
    case 1: kmix_dmixup_fixed<1>(in, o, src, w, begin, end); break;
    case 2: kmix_dmixup_fixed<2>(in, o, src, w, begin, end); break;
    case 3: kmix_dmixup_fixed<3>(in, o, src, w, begin, end); break;
    case 4: kmix_dmixup_fixed<4>(in, o, src, w, begin, end); break;
    case 5: kmix_dmixup_fixed<5>(in, o, src, w, begin, end); break;
    case 6: kmix_dmixup_fixed<6>(in, o, src, w, begin, end); break;
    case 7: kmix_dmixup_fixed<7>(in, o, src, w, begin, end); break;
    case 8: kmix_dmixup_fixed<8>(in, o, src, w, begin, end); break;
    default: return false;
  }
  return true;
}
#endif

// DMixup of one sample over elements [begin, end): o[i] = fma chain over j of w[j] * in[src[j]][i].
template <typename T>
KMIX_DEV void kmix_dmixup_sample(const T* const* __restrict__ in, T* __restrict__ o, const int* src,
                                 const float* w, int k, long long begin, long long end, long long tid,
                                 long long nthreads) {
#ifdef KMIX_HOST_SHIM
  if (nthreads == 1) {
    // Host fast paths (one thread per block, a contiguous range): the same fmaf chain per element,
    // for few images in one pass (kmix_dmixup_host_fixed), else strip by strip with the k loop
    // outside so that it vectorises.
    if (kmix_dmixup_host_fixed(in, o, src, w, k, begin, end)) return;
    for (long long i0 = begin; i0 < end; i0 += KMIX_STRIP) {
      const int len = (int)(end - i0 < KMIX_STRIP ? end - i0 : KMIX_STRIP);
      float acc[KMIX_STRIP];
      kmix_dmixup_term<true>(acc, in[src[0]] + i0, w[0], len);
      for (int j = 1; j < k; ++j) kmix_dmixup_term<false>(acc, in[src[j]] + i0, w[j], len);
      T* __restrict__ out = o + i0;
      for (int e = 0; e < len; ++e) out[e] = kmix_host_store<T>(acc[e]);
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

#ifdef KMIX_HOST_SHIM
// The n bytes at d from s, n in [N, 2 N]: two overlapping moves of a fixed size (no memcpy call).
template <size_t N>
inline void kmix_copy_ends(char* __restrict__ d, const char* __restrict__ s, size_t n) {
  char head[N], tail[N];
  std::memcpy(head, s, N);
  std::memcpy(tail, s + n - N, N);
  std::memcpy(d, head, N);
  std::memcpy(d + n - N, tail, N);
}

// The n > 64 bytes at d from s, 32 bytes a move: the first and last 32 loaded first and stored last (unaligned),
// the moves between them stored at d's 32-byte boundaries. For the copies that memcpy does badly: glibc 2.36 copies
// 4 KiB and more with `rep movsb`, which on AMD Zen 3 runs about 10x slower (3 against 30 GB/s, this CPU, data in
// L2/L3) when d - s is not a multiple of 32 or 64 (16 or 1: the batch and the output are two allocations,
// NumPy's or DALI's, at any offset from each other), while this loop keeps 30 GB/s at every offset. The empty asm
// hides the loop's address from GCC, whose loop distribution would otherwise turn the loop back into memcpy.
inline void kmix_copy_long(char* __restrict__ d, const char* __restrict__ s, size_t n) {
  char head[32], tail[32];
  std::memcpy(head, s, 32);
  std::memcpy(tail, s + n - 32, 32);
  const size_t skip = 32 - ((uintptr_t)d & 31);  // 1 to 32: from there on d's stores are aligned
  char* dd = d + skip;
  const char* ss = s + skip;
  for (const char* end = s + n - 32; ss <= end; dd += 32, ss += 32) {
    char v[32];
    std::memcpy(v, ss, 32);
    std::memcpy(dd, v, 32);
#if defined(__GNUC__)
    __asm__("" : "+r"(dd));
#endif
  }
  std::memcpy(d, head, 32);
  std::memcpy(d + n - 32, tail, 32);
}

// Copies of at least this many bytes whose two ends are not at one offset mod 64 take kmix_copy_long; the others
// stay with memcpy (as fast as the loop where its string move is not in the way, and faster on Intel).
#define KMIX_COPY_LONG_MIN 1024

// memcpy between two distinct buffers, the short copies (<= 64 bytes: most runs of a deep nesting) inline.
inline void kmix_copy_bytes(char* __restrict__ d, const char* __restrict__ s, size_t n) {
  if (n > 64) {
    if (n >= KMIX_COPY_LONG_MIN && (((uintptr_t)d - (uintptr_t)s) & 63) != 0)
      kmix_copy_long(d, s, n);
    else
      std::memcpy(d, s, n);
  } else if (n > 32)
    kmix_copy_ends<32>(d, s, n);
  else if (n > 16)
    kmix_copy_ends<16>(d, s, n);
  else if (n >= 8)
    kmix_copy_ends<8>(d, s, n);
  else if (n >= 4)
    kmix_copy_ends<4>(d, s, n);
  else
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
}
#endif

// Copy elements [a, b) of one row from `from` to `to` (both already offset to the row).
template <typename T>
KMIX_DEV void kmix_copy_run(const T* __restrict__ from, T* __restrict__ to, int a, int b,
                            int tid, int nthreads) {
#ifdef KMIX_HOST_SHIM
  if (nthreads == 1) {  // host launch: one contiguous run
    if (b > a) kmix_copy_bytes((char*)(to + a), (const char*)(from + a), (size_t)(b - a) * sizeof(T));
    return;
  }
#endif
  // unsigned: a row may hold up to 2^31 - 1 elements, and e + nthreads past the last one must not overflow
  for (unsigned e = (unsigned)a + (unsigned)tid; e < (unsigned)b; e += (unsigned)nthreads) to[e] = from[e];
}

// The depth of row y (the number of leading boxes whose rows contain it; nested, so they are a prefix).
KMIX_DEV int kmix_row_depth(const int* bx, int k, int y) {
  int m = 0;
  while (m < k - 1 && y >= bx[4 * m + 0] && y < bx[4 * m + 2]) ++m;
  return m;
}

// DCutMix of rows [r_begin, r_end) of one sample, row by row: the threads of a block stride through each run.
template <typename T>
KMIX_DEV void kmix_dcutmix_rows(const T* const* __restrict__ in, T* __restrict__ out_s, const int* src,
                                const int* bx, int k, int height, int width, int channels, int layout,
                                int r_begin, int r_end, int tid, int nthreads) {
  const int cstep = layout == KMIX_HWC ? channels : 1;  // elements per pixel along a row
  const long long row_len = (long long)width * cstep;
  for (int r = r_begin; r < r_end; ++r) {
    const int y = layout == KMIX_HWC ? r : r % height;
    const long long off = (long long)r * row_len;
    T* __restrict__ o = out_s + off;
    const int m = kmix_row_depth(bx, k, y);
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

#ifdef KMIX_HOST_SHIM
// Host DCutMix: the copies of a chunk of rows, each run [a, b) of sample offsets (the same in the source and
// in the output) copied from one image. Adjacent runs from one image become one copy: the anchor's part at
// the end of a row and at the start of the next are adjacent in the anchor and in the output, so a row inside
// box 0 costs one copy fewer, and the rows outside every box are one copy whatever their number.
template <typename T>
struct KmixRunCopier {
  T* out;
  const T* from = nullptr;
  long long a = 0, b = 0;
  void add(const T* src, long long ra, long long rb) {
    if (ra >= rb) return;
    if (src == from && ra == b) {
      b = rb;
      return;
    }
    flush();
    from = src;
    a = ra;
    b = rb;
  }
  void flush() {
    if (b > a) kmix_copy_bytes((char*)(out + a), (const char*)(from + a), (size_t)(b - a) * sizeof(T));
    from = nullptr;
    a = b = 0;
  }
};

// The deepest box nesting kmix_dcutmix_rows_host works out once per band of rows; deeper rows take the
// generic per-row code.
#define KMIX_HOST_MAX_DEPTH 64
// The rows that a deep band (more than 3 runs a row) copies run by run (where its block does not prefetch: below).
#define KMIX_HOST_DEEP_ROWS 8
// A deep band's run of at most this many bytes is copied as this many bytes from its start (see below).
#define KMIX_HOST_SPILL 32

// Whether a deep band's run of `bytes` bytes from element a of a row of row_len elements is copied as one move of
// KMIX_HOST_SPILL bytes (kmix_spill_copy): it is that short and its row goes on that far from its start.
template <typename T>
inline bool kmix_spill_run(long long a, size_t bytes, long long row_len) {
  return bytes <= KMIX_HOST_SPILL && (size_t)a * sizeof(T) + KMIX_HOST_SPILL <= (size_t)row_len * sizeof(T);
}
inline void kmix_spill_copy(char* __restrict__ d, const char* __restrict__ s) {
  char v[KMIX_HOST_SPILL];
  std::memcpy(v, s, KMIX_HOST_SPILL);
  std::memcpy(d, v, KMIX_HOST_SPILL);
}

// The prefetch of a samples-first host DCutMix block that knows its thread's next chunk (kmix_dcutmix_block_host):
// while the block copies its rows, the rows of its sample's input in that chunk, one row of lines for each row
// copied (prefetcht1: into L2). A round of samples-first blocks (one chunk of every sample) so prefetches every
// input's rows of the thread's next round, which that round's runs then read from the caches.
struct KmixRowPrefetch {
  bool on = false;            // a block that prefetches: its deep rows go row by row
  const char* next = nullptr; // the next line to prefetch
  long long left = 0;         // bytes from there still to prefetch (no pointer goes past the input)
  long long per_row = 0;      // bytes (whole lines) to prefetch for each row copied
  void rows(long long n) {    // n rows' worth, or what is left
    const long long bytes = per_row > 0 && n < left / per_row ? n * per_row : left;
    for (long long o = 0; o < bytes; o += 64) __builtin_prefetch(next + o, 0, 2);
    next += bytes;
    left -= bytes;
  }
  void rest() { rows(left); }
};
extern KMIX_TLS KmixRowPrefetch kmix_row_prefetch;

// DCutMix of one sample over rows [r_begin, r_end), band by band: between two box edges every row has the
// same runs (at most 2 m + 1 at depth m), worked out once per band instead of once per row.
template <typename T>
inline void kmix_dcutmix_rows_host(const T* const* __restrict__ in, T* __restrict__ out_s, const int* src,
                                   const int* bx, int k, int height, int width, int channels, int layout,
                                   int r_begin, int r_end) {
  const int cstep = layout == KMIX_HWC ? channels : 1;
  const long long row_len = (long long)width * cstep;
  KmixRunCopier<T> copier{out_s};
  struct Run {
    const T* from;
    long long a, b;
  } runs[2 * KMIX_HOST_MAX_DEPTH + 1];
  for (int r = r_begin; r < r_end;) {
    const int y = layout == KMIX_HWC ? r : r % height;
    const int m = kmix_row_depth(bx, k, y);
    int stop_y = height;  // the band ends at the next box edge below y (or the plane's last row)
    for (int d = 0; d < k - 1; ++d) {
      if (bx[4 * d + 0] > y && bx[4 * d + 0] < stop_y) stop_y = bx[4 * d + 0];
      if (bx[4 * d + 2] > y && bx[4 * d + 2] < stop_y) stop_y = bx[4 * d + 2];
    }
    const int r_stop = r + (stop_y - y) < r_end ? r + (stop_y - y) : r_end;
    if (m > KMIX_HOST_MAX_DEPTH) {  // very deep nesting: the generic rows
      copier.flush();
      kmix_dcutmix_rows(in, out_s, src, bx, k, height, width, channels, layout, r, r_stop, 0, 1);
      r = r_stop;
      continue;
    }
    // the runs of one row of the band, left to right (as the generic code walks them)
    int nruns = 0;
    long long left = 0;
    for (int d = 0; d < m; ++d) {
      const long long x0 = (long long)bx[4 * d + 1] * cstep;
      runs[nruns++] = {in[src[d]], left, x0};
      left = x0;
    }
    long long right = m > 0 ? (long long)bx[4 * (m - 1) + 3] * cstep : row_len;
    runs[nruns++] = {in[src[m]], left, right};
    for (int d = m - 1; d >= 0; --d) {
      const long long stop = d > 0 ? (long long)bx[4 * (d - 1) + 3] * cstep : row_len;
      runs[nruns++] = {in[src[d]], right, stop};
      right = stop;
    }
    KmixRowPrefetch& pf = kmix_row_prefetch;
    if (nruns > 3 && pf.on) {  // deep rows of a block that prefetches: row by row, runs left to right
      // Run by run (below) wins where the runs' inputs come from memory, row by row where they are in the caches
      // (float32 CHW 224, K = 16, batch 64 of 4 distinct images: 0.72x), and the block's prefetch puts them there
      // (kmix_dcutmix_block_host). Together, against run by run without the prefetch: 0.72-0.91x (kmix_host.cpp,
      // KMIX_HOST_DEEP_CHUNK_BYTES); either alone about 1.0x at batch 64. A short run is one KMIX_HOST_SPILL-byte
      // copy as below: the runs after it in the row are copied after it.
      copier.flush();
      for (; r < r_stop; ++r) {
        const long long off = (long long)r * row_len;
        for (int i = 0; i < nruns; ++i) {
          if (runs[i].b <= runs[i].a) continue;
          const size_t bytes = (size_t)(runs[i].b - runs[i].a) * sizeof(T);
          const long long at = off + runs[i].a;
          if (kmix_spill_run<T>(runs[i].a, bytes, row_len))
            kmix_spill_copy((char*)(out_s + at), (const char*)(runs[i].from + at));
          else
            kmix_copy_bytes((char*)(out_s + at), (const char*)(runs[i].from + at), bytes);
        }
        pf.rows(1);
      }
      continue;
    }
    if (nruns > 3) {  // deep rows: many short runs from as many images
      // Run by run over KMIX_HOST_DEEP_ROWS rows at a time, not row by row through all the runs: one image at a
      // time, at a fixed stride, instead of 2 m + 1 images in turn, while those few rows of the output stay in
      // L1. Row by row (with a software prefetch of every run's start 2 rows ahead), K = 16 took 2.1x the time
      // of K = 2 (float32 CHW, batch 64, two workers, AMD Zen 3); run by run 1.7x: at K = 16 the runs' shared
      // cache lines are read from two images, 2.0 lines read for every line written against 1.09 at K = 2.
      copier.flush();
      for (int stop; r < r_stop; r = stop) {
        stop = r_stop - r > KMIX_HOST_DEEP_ROWS ? r + KMIX_HOST_DEEP_ROWS : r_stop;
        for (int i = 0; i < nruns; ++i) {
          if (runs[i].b <= runs[i].a) continue;
          const size_t bytes = (size_t)(runs[i].b - runs[i].a) * sizeof(T);
          // A short run whose row goes on for KMIX_HOST_SPILL bytes from its start: one copy of that many bytes,
          // no branch on its length. What it writes past the run lies in the runs after it in the row, which this
          // loop copies later (left to right, each over the same rows), so their bytes are what stays: every
          // element ends as the reference's. The inputs are only read, inside the same row. With the batch in
          // cache K = 16 takes 0.91x the time (float32 CHW, batch 8, one worker), uint8 HWC K = 3 0.92-0.97x
          // (batch 64, two workers); float32 at batch 64 is bound by the memory and does not change.
          if (kmix_spill_run<T>(runs[i].a, bytes, row_len)) {
            for (int rr = r; rr < stop; ++rr) {
              const long long at = (long long)rr * row_len + runs[i].a;
              kmix_spill_copy((char*)(out_s + at), (const char*)(runs[i].from + at));
            }
            continue;
          }
          for (int rr = r; rr < stop; ++rr) {
            const long long at = (long long)rr * row_len + runs[i].a;
            kmix_copy_bytes((char*)(out_s + at), (const char*)(runs[i].from + at), bytes);
          }
        }
      }
      continue;
    }
    for (; r < r_stop; ++r) {
      const long long off = (long long)r * row_len;
      for (int i = 0; i < nruns; ++i) copier.add(runs[i].from, off + runs[i].a, off + runs[i].b);
      if (pf.on) pf.rows(1);
    }
  }
  copier.flush();
}
#endif

// DCutMix of one sample over rows [r_begin, r_end) (see kmix_dcutmix).
template <typename T>
KMIX_DEV void kmix_dcutmix_sample(const T* const* __restrict__ in, T* __restrict__ out_s, const int* src,
                                  const int* bx, int k, int height, int width, int channels, int layout,
                                  int r_begin, int r_end, int tid, int nthreads) {
#ifdef KMIX_HOST_SHIM
  if (nthreads == 1) {  // host launch: one thread per block
    kmix_dcutmix_rows_host(in, out_s, src, bx, k, height, width, channels, layout, r_begin, r_end);
    return;
  }
#endif
  kmix_dcutmix_rows(in, out_s, src, bx, k, height, width, channels, layout, r_begin, r_end, tid, nthreads);
}


// The rows [r_begin, r_end) of chunk `chunk` when `chunks` blocks split a sample's rows (kmix_row_chunk: those of
// block blockIdx.x of gridDim.x).
KMIX_DEV void kmix_row_range(int rows, int chunk, int chunks, int* r_begin, int* r_end) {
  const int per_block = (rows + chunks - 1) / chunks;
  *r_begin = chunk * per_block;
  *r_end = *r_begin + per_block;
  if (*r_end > rows) *r_end = rows;
}

KMIX_DEV void kmix_row_chunk(int rows, int* r_begin, int* r_end) {
  kmix_row_range(rows, (int)blockIdx.x, (int)gridDim.x, r_begin, r_end);
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

// ------------------------------------------------------------------ the mix with its normalisation fused
// What DALI's crop_mirror_normalize does to the mixed batch, in the same pass: out(c, y, x) =
// (m(y, x', c) - mean[c]) * inv_std[c] in float (a subtraction then a product, never fused), x' = W - 1 - x where
// the sample is mirrored, m the mixed image in the images' own type (a DMixup of uint8 rounded to uint8 first, as
// kmix_dmixup stores it), stored as float or float16 (rounded to nearest even, as DALI's GPU crop_mirror_normalize
// and NumPy do; its CPU one rounds exact ties away from zero, 1 ulp apart there) in the output layout. So the
// result has the bits of kmix_dmixup / kmix_dcutmix / kmix_mix followed by crop_mirror_normalize, without the
// mixed batch ever being written out: the pipeline runs one operator where it ran two.
//   mean, inv_std: float32 (channels,)   mirror: uint8 (n,) or null (no sample mirrored)
//   method: KMIX_KERNEL_DMIXUP (weights), KMIX_KERNEL_DCUTMIX (boxes) or KMIX_KERNEL_MIX (weights, boxes, cut)
template <typename O> KMIX_DEV O kmix_norm_store(float v);
template <> KMIX_DEV float kmix_norm_store<float>(float v) { return v; }
template <> KMIX_DEV __half kmix_norm_store<__half>(float v) { return __float2half_rn(v); }

// The mixed value of one element of sample s (element idx of the images' layout, pixel (y, x)), as a float.
template <typename T>
KMIX_DEV float kmix_mixed_element(const T* const* __restrict__ in, const int* src, const float* w, const int* bx,
                                  bool paste, int k, int y, int x, long long idx) {
  if (paste) {  // the deepest box that holds the pixel (nested: the boxes holding it are a prefix)
    int d = 0;
    while (d < k - 1 && y >= bx[4 * d + 0] && y < bx[4 * d + 2] && x >= bx[4 * d + 1] && x < bx[4 * d + 3]) ++d;
    return kmix_to_float(in[src[d]][idx]);
  }
  float acc = 0.0f;
  for (int j = 0; j < k; ++j) acc = fmaf(w[j], kmix_share_input(w[j], kmix_to_float(in[src[j]][idx])), acc);
  return kmix_to_float(kmix_from_float<T>(acc));
}

// Whether sample s is pasted (method KMIX_KERNEL_DCUTMIX, or KMIX_KERNEL_MIX with cut[s] set).
KMIX_DEV bool kmix_is_paste(int method, const unsigned char* cut, int s) {
  return method == KMIX_KERNEL_DCUTMIX || (method == KMIX_KERNEL_MIX && cut[s] != 0);
}

// The fused kernel, element by element of the output (the GPU's; the host runs kmix_mix_norm_band): blockIdx.x
// takes a chunk of a sample's output elements (kmix_element_chunk), blockIdx.y walks the samples.
template <typename T, typename O>
__global__ void kmix_mix_norm(const T* const* __restrict__ in, O* const* __restrict__ out,
                              const int* __restrict__ sources, const float* __restrict__ weights,
                              const int* __restrict__ boxes, const unsigned char* __restrict__ cut, int method, int n,
                              int k, int height, int width, int channels, int layout, int out_layout,
                              const float* __restrict__ mean, const float* __restrict__ inv_std,
                              const unsigned char* __restrict__ mirror) {
  const long long sample_elems = (long long)height * width * channels;
  long long begin, end;
  kmix_element_chunk(sample_elems, blockDim.x, &begin, &end);
  for (int s = blockIdx.y; s < n; s += gridDim.y) {
    const int* src = sources + (long long)s * k;
    const float* w = weights ? weights + (long long)s * k : nullptr;
    const int* bx = boxes ? boxes + (long long)s * (k - 1) * 4 : nullptr;
    const bool paste = kmix_is_paste(method, cut, s);
    const bool flip = mirror != nullptr && mirror[s] != 0;
    O* __restrict__ o = out[s];
    for (long long e = begin + threadIdx.x; e < end; e += blockDim.x) {
      int c, y, x;
      if (out_layout == KMIX_CHW) {
        x = (int)(e % width);
        y = (int)((e / width) % height);
        c = (int)(e / ((long long)width * height));
      } else {
        c = (int)(e % channels);
        x = (int)((e / channels) % width);
        y = (int)(e / ((long long)channels * width));
      }
      const int xs = flip ? width - 1 - x : x;
      const long long idx = layout == KMIX_HWC ? ((long long)y * width + xs) * channels + c
                                               : ((long long)c * height + y) * width + xs;
      const float v = kmix_mixed_element(in, src, w, bx, paste, k, y, xs, idx);
      o[e] = kmix_norm_store<O>((v - mean[c]) * inv_std[c]);
    }
  }
}

#ifdef KMIX_HOST_SHIM
// One row of one channel normalised: o[x * OS] = (row[x' * IS] - m) * s, strides known to the compiler where they
// are template arguments (0: the runtime ones), so the common layouts vectorise.
template <int IS, int OS, typename T, typename O>
inline void kmix_norm_row(O* __restrict__ o, int os, const T* __restrict__ row, int is, int width, float m, float s,
                          bool flip) {
  const int ist = IS ? IS : is, ost = OS ? OS : os;
  if (flip) {
    const T* __restrict__ last = row + (long long)(width - 1) * ist;
    for (int x = 0; x < width; ++x) o[x * ost] = kmix_norm_store<O>((kmix_to_float(last[-(long long)x * ist]) - m) * s);
  } else {
    for (int x = 0; x < width; ++x) o[x * ost] = kmix_norm_store<O>((kmix_to_float(row[(long long)x * ist]) - m) * s);
  }
}

// Host: the rows [y0, y1) of sample s, mixed by the host paths of kmix_dcutmix / kmix_dmixup into `scratch` (a
// buffer of one sample, its elements at the sample's offsets, of which only the band's are touched: they stay in
// L1 or L2), then normalised from there into the output. The same bits as kmix_mix_norm.
template <typename T, typename O>
inline void kmix_mix_norm_band(const T* const* __restrict__ in, O* __restrict__ out_s, T* __restrict__ scratch,
                               const int* src, const float* w, const int* bx, bool paste, int k, int height,
                               int width, int channels, int layout, int out_layout, const float* mean,
                               const float* inv_std, bool flip, int y0, int y1) {
  const long long plane = (long long)height * width;
  const int planes = layout == KMIX_HWC ? 1 : channels;  // the runs of rows the band covers in the images' layout
  const long long row_len = layout == KMIX_HWC ? (long long)width * channels : width;
  for (int p = 0; p < planes; ++p) {
    const int r0 = p * height + y0, r1 = p * height + y1;
    if (paste)
      kmix_dcutmix_rows_host(in, scratch, src, bx, k, height, width, channels, layout, r0, r1);
    else
      kmix_dmixup_sample(in, scratch, src, w, k, r0 * row_len, r1 * row_len, 0, 1);
  }
  const int is = layout == KMIX_HWC ? channels : 1, os = out_layout == KMIX_HWC ? channels : 1;
  for (int y = y0; y < y1; ++y)
    for (int c = 0; c < channels; ++c) {
      const T* row = scratch + (layout == KMIX_HWC ? (long long)y * width * channels + c : c * plane + (long long)y * width);
      O* o = out_s + (out_layout == KMIX_HWC ? (long long)y * width * channels + c : c * plane + (long long)y * width);
      if (is == 3 && os == 1)
        kmix_norm_row<3, 1>(o, os, row, is, width, mean[c], inv_std[c], flip);
      else if (is == 1 && os == 1)
        kmix_norm_row<1, 1>(o, os, row, is, width, mean[c], inv_std[c], flip);
      else if (is == 3 && os == 3)
        kmix_norm_row<3, 3>(o, os, row, is, width, mean[c], inv_std[c], flip);
      else
        kmix_norm_row<0, 0>(o, os, row, is, width, mean[c], inv_std[c], flip);
    }
}
#endif
