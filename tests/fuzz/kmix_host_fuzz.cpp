// libFuzzer harness for the host kernels (kernels/kmix_host.cpp: the .cu kernels compiled for the CPU),
// built by tests/fuzz/run.py with clang -fsanitize=fuzzer,address,undefined.
//
// Every input is turned into one call of a C entry point with a record inside the kernels' contract (what
// dali_kmix validates before it calls them): a batch of 1-9 samples (up to 48 x 48, or now and then 1-2 of
// up to 180 x 180, which the host grid splits into several chunks), each in its own malloc'd buffer of
// exactly its size (so ASan's redzones sit right after every sample), any pixel bits (NaN, Inf, -0,
// subnormals), sources in [0, N), finite weights >= 0 of any size, boxes nested inside the image, any
// scheduling (workers, threads per block, reversed order), and the block entry points of the DALI plugin
// with chunk and sample indices in and out of range. The output is checked against a plain loop written
// here from the reference's definition (dali_kmix/reference.py), bit for bit; the inputs must be unchanged.
// A crash, a sanitizer report or a mismatch (abort) is a finding.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kmix_codes.h"
#include "kmix_host_shim.h"  // __half and its conversions, the same as the kernels use

#include "kmix_host_api.h"  // the entry points, as kmix_host.cpp defines them

namespace {

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "kmix_host_fuzz: check failed: %s (line %d)\n", #cond, __LINE__); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

const int kElemSize[3] = {1, 2, 4};  // KMIX_U8, KMIX_F16, KMIX_F32

float load(int dtype, const unsigned char* p) {
  if (dtype == KMIX_U8) return (float)*p;
  if (dtype == KMIX_F16) {
    __half h;
    std::memcpy(&h.bits, p, 2);
    return __half2float(h);
  }
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

void store(int dtype, float v, unsigned char* p) {
  if (dtype == KMIX_U8) {
    float r = std::rint(v);
    r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
    *p = (unsigned char)r;
  } else if (dtype == KMIX_F16) {
    const __half h = __float2half_rn(v);
    std::memcpy(p, &h.bits, 2);
  } else {
    std::memcpy(p, &v, 4);
  }
}

// One batch: n samples, each its own buffer of exactly `bytes` bytes.
struct Batch {
  std::vector<unsigned char*> in, out;
  std::vector<std::vector<unsigned char>> copy;  // the inputs as given, to check they are not written
  size_t bytes = 0;
  ~Batch() {
    for (auto* p : in) std::free(p);
    for (auto* p : out) std::free(p);
  }
};

void make_batch(FuzzedDataProvider& fdp, Batch& b, int n, size_t bytes) {
  b.bytes = bytes;
  const int fillmode = fdp.ConsumeIntegralInRange(0, 2);
  for (int s = 0; s < n; ++s) {
    auto* p = (unsigned char*)std::malloc(bytes ? bytes : 1);
    auto* q = (unsigned char*)std::malloc(bytes ? bytes : 1);
    if (fillmode == 0) {  // bytes from the input, then a pattern
      const std::vector<unsigned char> raw = fdp.ConsumeBytes<unsigned char>(bytes);
      for (size_t i = 0; i < bytes; ++i) p[i] = i < raw.size() ? raw[i] : (unsigned char)(i * 131 + s * 7);
    } else {  // a pattern (the input is better spent on the record)
      for (size_t i = 0; i < bytes; ++i) p[i] = (unsigned char)((i * (fillmode == 1 ? 37 : 1)) ^ (s * 91));
    }
    std::memset(q, 0xCD, bytes ? bytes : 1);
    b.in.push_back(p);
    b.out.push_back(q);
    b.copy.emplace_back(p, p + bytes);
  }
}

void check_inputs_unchanged(const Batch& b) {
  if (b.bytes == 0) return;
  for (size_t s = 0; s < b.in.size(); ++s) CHECK(std::memcmp(b.in[s], b.copy[s].data(), b.bytes) == 0);
}

// Finite weights >= 0: zeros, subnormals, ordinary shares, huge values.
float weight(FuzzedDataProvider& fdp) {
  if (!fdp.remaining_bytes()) return 0.375f;  // out of bytes: an ordinary share
  switch (fdp.ConsumeIntegralInRange(0, 5)) {
    case 0: return 0.0f;
    case 1: return -0.0f;  // passes "w >= 0"
    case 2: return 1.0f;
    case 3: {
      uint32_t bits = fdp.ConsumeIntegral<uint32_t>() & 0x7fffffffu;
      float f;
      std::memcpy(&f, &bits, 4);
      return std::isfinite(f) ? f : 0.5f;
    }
    default: return fdp.ConsumeFloatingPointInRange(0.0f, 1.0f);
  }
}

// The reference blend of one element (dali_kmix/reference.py): fmaf chain from +0, a zero share adds a
// zero of its pixel's sign.
float blend_at(int dtype, const Batch& b, const int* src, const float* w, int k, size_t elem) {
  float acc = 0.0f;
  for (int j = 0; j < k; ++j) {
    float x = load(dtype, b.in[src[j]] + elem * kElemSize[dtype]);
    if (w[j] == 0.0f) x = std::copysign(0.0f, x);
    acc = std::fma(w[j], x, acc);
  }
  return acc;
}

void check_blend_sample(int dtype, const Batch& b, int s, const int* src, const float* w, int k, size_t elems) {
  const int es = kElemSize[dtype];
  for (size_t i = 0; i < elems; ++i) {
    unsigned char want[4];
    store(dtype, blend_at(dtype, b, src, w, k, i), want);
    CHECK(std::memcmp(b.out[s] + i * es, want, es) == 0);
  }
}

// The reference paste (dali_kmix/reference.py): the anchor, then box j (in order) from source j + 1.
void check_paste_sample(int dtype, const Batch& b, int s, const int* src, const int* bx, int k, int h, int w, int c,
                        int layout) {
  const int es = kElemSize[dtype];
  std::vector<unsigned char> want(b.in[s], b.in[s] + b.bytes);
  for (int j = 0; j < k - 1; ++j) {
    const int* q = bx + 4 * j;
    const unsigned char* from = b.in[src[j + 1]];
    for (int ch = 0; ch < c; ++ch)
      for (int y = q[0]; y < q[2]; ++y)
        for (int x = q[1]; x < q[3]; ++x) {
          const size_t e = layout == KMIX_HWC ? ((size_t)y * w + x) * c + ch : ((size_t)ch * h + y) * w + x;
          std::memcpy(&want[e * es], from + e * es, es);
        }
  }
  CHECK(std::memcmp(b.out[s], want.data(), b.bytes) == 0);
}

// Nested boxes inside an h x w image, each inside the last; empty, full and one-pixel boxes often.
void make_boxes(FuzzedDataProvider& fdp, std::vector<int>& boxes, int n, int k, int h, int w) {
  boxes.assign((size_t)n * (k - 1) * 4, 0);
  for (int s = 0; s < n; ++s) {
    int py0 = 0, px0 = 0, py1 = h, px1 = w;
    for (int j = 0; j < k - 1; ++j) {
      int* q = &boxes[((size_t)s * (k - 1) + j) * 4];
      if (fdp.ConsumeIntegralInRange(0, 7) == 0) {
        q[0] = py0, q[1] = px0, q[2] = py1, q[3] = px1;
      } else {
        q[0] = fdp.ConsumeIntegralInRange(py0, py1);
        q[2] = fdp.ConsumeIntegralInRange(q[0], py1);
        q[1] = fdp.ConsumeIntegralInRange(px0, px1);
        q[3] = fdp.ConsumeIntegralInRange(q[1], px1);
      }
      py0 = q[0], px0 = q[1], py1 = q[2], px1 = q[3];
    }
  }
}

void fuzz_blend_and_paste(FuzzedDataProvider& fdp, int entry) {
  const int dtype = fdp.ConsumeIntegralInRange(0, 2);
  const int layout = fdp.ConsumeIntegralInRange(0, 1);
  // now and then a large sample (more than 64 Ki elements), which the host grid splits into several chunks
  const bool large = fdp.ConsumeIntegralInRange(0, 31) == 31;
  const int n = fdp.ConsumeIntegralInRange(1, large ? 2 : 9);
  const int k = fdp.ConsumeIntegralInRange(1, 8);
  const int h = large ? fdp.ConsumeIntegralInRange(120, 180) : fdp.ConsumeIntegralInRange(0, 48);
  const int w = large ? fdp.ConsumeIntegralInRange(120, 180) : fdp.ConsumeIntegralInRange(0, 48);
  const int c = fdp.ConsumeIntegralInRange(1, 4);
  const int workers = fdp.ConsumeIntegralInRange(1, 3);
  const int threads = fdp.ConsumeBool() ? 1 : fdp.ConsumeIntegralInRange(1, 40);
  const int reverse = fdp.ConsumeBool();
  const size_t elems = (size_t)h * w * c;
  std::vector<int> src((size_t)n * k);
  std::vector<float> wt((size_t)n * k);
  std::vector<int> boxes;
  std::vector<unsigned char> cut(n);
  for (int s = 0; s < n; ++s) {
    src[(size_t)s * k] = s;  // every sample anchors its own output
    for (int j = 1; j < k; ++j) src[(size_t)s * k + j] = fdp.ConsumeIntegralInRange(0, n - 1);
    for (int j = 0; j < k; ++j) wt[(size_t)s * k + j] = weight(fdp);
    cut[s] = entry == 0 ? 0 : (entry == 1 ? 1 : fdp.ConsumeBool());
  }
  make_boxes(fdp, boxes, n, k, h, w);
  Batch b;
  make_batch(fdp, b, n, elems * kElemSize[dtype]);
  const void* const* in = (const void* const*)b.in.data();
  void* const* out = (void* const*)b.out.data();
  int rc = 0;
  if (entry == 0) {
    rc = kmix_host_dmixup(dtype, in, out, src.data(), wt.data(), n, k, (long long)elems, workers, threads, reverse);
  } else if (entry == 1) {
    rc = kmix_host_dcutmix(dtype, in, out, src.data(), boxes.data(), n, k, h, w, c, layout, workers, threads, reverse);
  } else if (entry == 2) {
    rc = kmix_host_mix(dtype, in, out, src.data(), wt.data(), boxes.data(), cut.data(), n, k, h, w, c, layout, workers,
                       threads, reverse);
  } else {  // the plugin's way: every block of the grid on its own, plus indices outside the grid (refused)
    const bool paste = entry == 4;
    const int chunks = paste ? kmix_host_dcutmix_chunks(dtype, k, h, w, c, layout)
                             : kmix_host_dmixup_chunks((long long)elems);
    for (int s = 0; s < n; ++s)
      for (int ch = 0; ch < chunks; ++ch) {
        // any next chunk (a prefetch hint) or none: the output must not depend on it
        const int next = paste ? fdp.ConsumeIntegralInRange(-1, chunks - 1) : -1;
        rc |= paste ? kmix_host_dcutmix_block(dtype, in, out, src.data(), boxes.data(), n, k, h, w, c, layout, ch, s,
                                              next)
                    : kmix_host_dmixup_block(dtype, in, out, src.data(), wt.data(), n, k, (long long)elems, ch, s);
      }
    const int bad_chunk = fdp.ConsumeBool() ? -1 - fdp.ConsumeIntegralInRange(0, 5) : chunks + fdp.ConsumeIntegralInRange(0, 5);
    const int bad_sample = fdp.ConsumeBool() ? -1 - fdp.ConsumeIntegralInRange(0, 5) : n + fdp.ConsumeIntegralInRange(0, 5);
    CHECK((paste ? kmix_host_dcutmix_block(dtype, in, out, src.data(), boxes.data(), n, k, h, w, c, layout, bad_chunk, 0,
                                           -1)
                 : kmix_host_dmixup_block(dtype, in, out, src.data(), wt.data(), n, k, (long long)elems, bad_chunk, 0)) == 1);
    CHECK((paste ? kmix_host_dcutmix_block(dtype, in, out, src.data(), boxes.data(), n, k, h, w, c, layout, 0, bad_sample,
                                           -1)
                 : kmix_host_dmixup_block(dtype, in, out, src.data(), wt.data(), n, k, (long long)elems, 0, bad_sample)) == 1);
    if (paste && bad_chunk != -1)  // a next chunk outside [-1, chunks) is refused like a chunk outside the grid
      CHECK(kmix_host_dcutmix_block(dtype, in, out, src.data(), boxes.data(), n, k, h, w, c, layout, 0, 0, bad_chunk) ==
            1);
    CHECK(kmix_host_dmixup_block(7, in, out, src.data(), wt.data(), n, k, (long long)elems, 0, 0) == 1);
    if (elems == 0) return;
    if (paste) entry = 1; else entry = 0;
  }
  CHECK(rc == 0);
  check_inputs_unchanged(b);
  if (elems == 0) return;
  for (int s = 0; s < n; ++s) {
    const bool pasted = entry == 1 || (entry == 2 && cut[s]);
    if (pasted)
      check_paste_sample(dtype, b, s, &src[(size_t)s * k], boxes.data() + (size_t)s * (k - 1) * 4, k, h, w, c, layout);
    else
      check_blend_sample(dtype, b, s, &src[(size_t)s * k], &wt[(size_t)s * k], k, elems);
  }
}

void fuzz_nest_boxes(FuzzedDataProvider& fdp) {
  const int n = fdp.ConsumeIntegralInRange(1, 9);
  const int k = fdp.ConsumeIntegralInRange(1, 12);
  const bool big = fdp.ConsumeBool();
  const int h = big ? fdp.ConsumeIntegralInRange(1, 0x7fffffff) : fdp.ConsumeIntegralInRange(1, 64);
  const int w = big ? fdp.ConsumeIntegralInRange(1, 0x7fffffff) : fdp.ConsumeIntegralInRange(1, 64);
  const bool batch = fdp.ConsumeBool();
  const bool dmixup = fdp.ConsumeIntegralInRange(0, 3) == 0;
  const bool salient = !dmixup && fdp.ConsumeBool();
  std::vector<unsigned char> mixed(n);
  for (int s = 0; s < n; ++s) mixed[s] = fdp.ConsumeIntegralInRange(0, 4) != 4;  // mixed unless told (short inputs too)
  const int rows = batch ? 1 : n;
  std::vector<double> phi((size_t)rows * k), uni((size_t)rows * (k - 1) * 2 + 1);
  for (int r = 0; r < rows; ++r) {  // Dirichlet-like rows: >= 0, summing to 1 (zeros, one-hots, tiny shares)
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {  // out of bytes: shares 1, 2, ..., K (normalised)
      const int kind = fdp.remaining_bytes() ? fdp.ConsumeIntegralInRange(0, 4) : 5;
      double v = kind == 0 ? 0.0 : (kind == 1 ? 1e-300 : (kind == 5 ? 1.0 + j : fdp.ConsumeFloatingPointInRange(0.0, 1.0)));
      phi[(size_t)r * k + j] = v;
      sum += v;
    }
    if (sum <= 0.0) {
      phi[(size_t)r * k] = 1.0;
      sum = 1.0;
    }
    for (int j = 0; j < k; ++j) phi[(size_t)r * k + j] /= sum;
  }
  for (auto& u : uni) u = fdp.ConsumeProbability<double>() * 0.9999999999;  // [0, 1)
  std::vector<int> perms((size_t)(k - 1) * n + 1), centers((size_t)2 * n);
  for (auto& p : perms) p = fdp.ConsumeIntegralInRange(0, n - 1);
  for (int s = 0; s < n; ++s) {
    centers[2 * s] = fdp.ConsumeIntegralInRange(0, h - 1);
    centers[2 * s + 1] = fdp.ConsumeIntegralInRange(0, w - 1);
  }
  std::vector<int> src((size_t)n * k), boxes((size_t)n * (k - 1) * 4 + 1);
  std::vector<float> wt((size_t)n * k);
  CHECK(kmix_host_nest_boxes(phi.data(), uni.data(), batch ? 0 : 1, perms.data(), mixed.data(), n, k, h, w,
                             src.data(), wt.data(), dmixup ? nullptr : boxes.data(), salient ? centers.data() : nullptr,
                             fdp.ConsumeIntegralInRange(1, 2), fdp.ConsumeBool()) == 0);
  for (int s = 0; s < n; ++s) {
    CHECK(src[(size_t)s * k] == s);
    double total = 0.0;
    for (int j = 0; j < k; ++j) {
      const float v = wt[(size_t)s * k + j];
      CHECK(std::isfinite(v) && v >= 0.0f);
      CHECK(src[(size_t)s * k + j] >= 0 && src[(size_t)s * k + j] < n);
      total += v;
    }
    CHECK(std::fabs(total - 1.0) <= 1e-5);
    if (dmixup) continue;
    long long py0 = 0, px0 = 0, py1 = h, px1 = w, prev = (long long)h * w;
    for (int j = 0; j < k - 1; ++j) {
      const int* q = &boxes[((size_t)s * (k - 1) + j) * 4];
      CHECK(py0 <= q[0] && q[0] <= q[2] && q[2] <= py1 && px0 <= q[1] && q[1] <= q[3] && q[3] <= px1);
      const long long area = (long long)(q[2] - q[0]) * (q[3] - q[1]);
      CHECK(wt[(size_t)s * k + j] == (float)((double)(prev - area) / ((double)h * (double)w)));
      prev = area;
      py0 = q[0], px0 = q[1], py1 = q[2], px1 = q[3];
    }
  }
}

void fuzz_grey_resize(FuzzedDataProvider& fdp) {
  const int dtype = fdp.ConsumeIntegralInRange(0, 2);
  const int layout = fdp.ConsumeIntegralInRange(0, 1);
  const int n = fdp.ConsumeIntegralInRange(1, 5);
  const int h = fdp.ConsumeIntegralInRange(0, 80);
  const int w = fdp.ConsumeIntegralInRange(0, 80);
  const int c = fdp.ConsumeIntegralInRange(0, 4);
  const int oh = fdp.ConsumeIntegralInRange(1, 70), ow = fdp.ConsumeIntegralInRange(1, 70);
  Batch b;
  make_batch(fdp, b, n, (size_t)h * w * c * kElemSize[dtype]);
  std::vector<float> out((size_t)n * oh * ow, -1.0f);
  const int rc = kmix_host_grey_resize(dtype, (const void* const*)b.in.data(), out.data(), n, h, w, c, layout, oh, ow,
                                       fdp.ConsumeIntegralInRange(1, 2), fdp.ConsumeBool());
  check_inputs_unchanged(b);
  if (h <= 0 || w <= 0 || c <= 0) {  // nothing to read: refused (the Python side refuses it first)
    CHECK(rc == 1);
    return;
  }
  CHECK(rc == 0);
  if (dtype == KMIX_U8)  // a grey uint8 image stays in [0, 255]
    for (float v : out) CHECK(v >= 0.0f && v <= 255.0f * 1.0001f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider fdp(data, size);
  const int entry = fdp.ConsumeIntegralInRange(0, 6);
  if (entry <= 4)
    fuzz_blend_and_paste(fdp, entry);
  else if (entry == 5)
    fuzz_nest_boxes(fdp);
  else
    fuzz_grey_resize(fdp);
  return 0;
}
