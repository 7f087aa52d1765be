// dali_kmix: one batch's random draws on the host, in C++ -- the numbers dali_kmix.sampling.draw_raw draws
// with NumPy for the DALI operators (dali_kmix.dali._Draws), bit for bit, so that a pipeline can draw its
// record natively (fn.kmix_draw) instead of in a python_function.
//
//   * the generator: NumPy's SeedSequence(entropy, spawn_key) (its hash mix and state generation on 32-bit
//     words) seeding NumPy's PCG64 (128-bit LCG, XSL-RR output); uniform doubles as NumPy's next_double;
//   * Gamma(alpha + 1) draws: NumPy's own random_standard_gamma, from the static library numpy ships for
//     C users (numpy/random/lib/libnpyrandom.a), called with this bit generator;
//   * the Dirichlet, its partners' permutations (a stable sort of the ranks) and the "mixed" flags in
//     draw_raw's order, with the C library's log and exp (dali_kmix.sampling._dirichlet_from_draws calls
//     the same functions: math.log / math.exp, or this code through the CPU build).
//
// Host only; plain C++ with the standard library (kmix_host.cpp includes it before the kernels' shim).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "numpy/random/bitgen.h"

extern "C" double random_standard_gamma(bitgen_t* bitgen_state, double shape);

namespace kmix_draw {

// NumPy's SeedSequence: a pool of 4 uint32 words mixed from the entropy words, then the state words.
class SeedSequence {
 public:
  // entropy: the run entropy as uint32 words; spawn: the spawn key as uint32 words.
  SeedSequence(std::vector<uint32_t> entropy, const std::vector<uint32_t>& spawn) {
    if (!spawn.empty() && entropy.size() < kPool) entropy.resize(kPool, 0u);
    entropy.insert(entropy.end(), spawn.begin(), spawn.end());
    uint32_t hash_const = kInitA;
    auto hashmix = [&](uint32_t value) {
      value ^= hash_const;
      hash_const *= kMultA;
      value *= hash_const;
      value ^= value >> kXShift;
      return value;
    };
    auto mix = [](uint32_t x, uint32_t y) {
      uint32_t r = kMixMultL * x - kMixMultR * y;
      r ^= r >> kXShift;
      return r;
    };
    for (size_t i = 0; i < kPool; ++i) pool_[i] = hashmix(i < entropy.size() ? entropy[i] : 0u);
    for (size_t src = 0; src < kPool; ++src)
      for (size_t dst = 0; dst < kPool; ++dst)
        if (src != dst) pool_[dst] = mix(pool_[dst], hashmix(pool_[src]));
    for (size_t src = kPool; src < entropy.size(); ++src)
      for (size_t dst = 0; dst < kPool; ++dst) pool_[dst] = mix(pool_[dst], hashmix(entropy[src]));
  }

  // generate_state(n, np.uint64): 2 n uint32 words, paired little-endian.
  std::vector<uint64_t> generate_state64(size_t n) const {
    std::vector<uint64_t> out(n);
    uint32_t hash_const = kInitB;
    uint32_t words[2];
    for (size_t i = 0; i < 2 * n; ++i) {
      uint32_t v = pool_[i % kPool];
      v ^= hash_const;
      hash_const *= kMultB;
      v *= hash_const;
      v ^= v >> kXShift;
      words[i % 2] = v;
      if (i % 2) out[i / 2] = (uint64_t)words[0] | ((uint64_t)words[1] << 32);
    }
    return out;
  }

  // An int as NumPy coerces it: 32-bit words, least significant first; one word for 0.
  static void append_words(std::vector<uint32_t>& out, uint64_t v) {
    out.push_back((uint32_t)v);
    for (v >>= 32; v; v >>= 32) out.push_back((uint32_t)v);
  }

 private:
  static constexpr size_t kPool = 4;
  static constexpr uint32_t kInitA = 0x43b0d7e5u, kMultA = 0x931e8875u, kInitB = 0x8b51f9ddu, kMultB = 0x58f38dedu;
  static constexpr uint32_t kMixMultL = 0xca01f9ddu, kMixMultR = 0x4973f715u;
  static constexpr int kXShift = 16;
  uint32_t pool_[kPool];
};

// NumPy's PCG64 (pcg_setseq_128_xsl_rr_64), seeded as numpy.random.PCG64(seed_sequence) is, behind NumPy's
// bitgen_t so that NumPy's distribution functions draw from it.
class Pcg64 {
 public:
  explicit Pcg64(const SeedSequence& seq) {
    const std::vector<uint64_t> s = seq.generate_state64(4);
    const unsigned __int128 initstate = ((unsigned __int128)s[0] << 64) | s[1];
    const unsigned __int128 initseq = ((unsigned __int128)s[2] << 64) | s[3];
    state_ = 0;
    inc_ = (initseq << 1) | 1u;
    step();
    state_ += initstate;
    step();
    bitgen_.state = this;
    bitgen_.next_uint64 = [](void* st) { return static_cast<Pcg64*>(st)->next64(); };
    bitgen_.next_uint32 = [](void* st) { return static_cast<Pcg64*>(st)->next32(); };
    bitgen_.next_double = [](void* st) { return static_cast<Pcg64*>(st)->next_double(); };
    bitgen_.next_raw = [](void* st) { return static_cast<Pcg64*>(st)->next64(); };
  }
  Pcg64(const Pcg64&) = delete;
  Pcg64& operator=(const Pcg64&) = delete;
  bitgen_t* bitgen() { return &bitgen_; }

  uint64_t next64() {
    step();
    const uint64_t x = (uint64_t)(state_ >> 64) ^ (uint64_t)state_;
    const unsigned rot = (unsigned)(state_ >> 122);
    return (x >> rot) | (x << ((64u - rot) & 63u));
  }
  uint32_t next32() {  // NumPy buffers the upper half of a 64-bit draw for the next call
    if (has32_) {
      has32_ = false;
      return buffered_;
    }
    const uint64_t v = next64();
    has32_ = true;
    buffered_ = (uint32_t)(v >> 32);
    return (uint32_t)v;
  }
  double next_double() { return (double)(next64() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  void step() {
    const unsigned __int128 mult = ((unsigned __int128)0x2360ed051fc65da4ULL << 64) | 0x4385df649fccf645ULL;
    state_ = state_ * mult + inc_;
  }
  unsigned __int128 state_, inc_;
  bool has32_ = false;
  uint32_t buffered_ = 0;
  bitgen_t bitgen_;
};

// dali_kmix.sampling._dirichlet_from_draws for rows x k draws (alpha: k values, or rows x k with alpha_stride
// k): log G = log(gamma1) + log(U) / a, a max-shifted softmax summed left to right, and the one-hot rows of the
// overflow case (every component -inf: the component whose log(-log U) - log a is smallest).
inline void dirichlet(const double* alpha, int alpha_stride, const double* gamma1, const double* uniform, int rows,
                      int k, double* phi) {
  std::vector<double> logg(k);
  for (int r = 0; r < rows; ++r) {
    const double* a = alpha + (long long)r * alpha_stride;
    const double* g = gamma1 + (long long)r * k;
    const double* u = uniform + (long long)r * k;
    double* p = phi + (long long)r * k;
    double top = -INFINITY;
    for (int j = 0; j < k; ++j) {
      logg[j] = std::log(g[j]) + std::log(u[j]) / a[j];
      top = j == 0 || logg[j] > top ? logg[j] : top;  // np.max: NaN wins (none arise here: a > 0, U in (0, 1])
    }
    if (top == -INFINITY) {  // every component overflowed: one-hot at the first smallest log(-log U) - log a
      int best = 0;
      double least = 0.0;
      for (int j = 0; j < k; ++j) {
        const double order = std::log(-std::log(u[j])) - std::log(a[j]);
        if (j == 0 || order < least) {
          least = order;
          best = j;
        }
      }
      for (int j = 0; j < k; ++j) p[j] = j == best ? 1.0 : 0.0;
      continue;
    }
    double sum = 0.0;
    for (int j = 0; j < k; ++j) {
      p[j] = std::exp(logg[j] - top);
      sum = j == 0 ? p[j] : sum + p[j];
    }
    for (int j = 0; j < k; ++j) p[j] = p[j] / sum;
  }
}

#ifndef KMIX_NO_NPYRANDOM
// The draws of draw_raw (its order) from gen (this file's Pcg64, or a numpy.random.Generator's own bit generator,
// whose methods call the same bitgen_t functions: next_double for Generator.random, random_standard_gamma for
// Generator.standard_gamma): phi (rows x k), uniforms (rows x (k - 1) x 2), perms ((k - 1) x n)
// and mixed (n); rows = n ("sample" mode) or 1 ("batch"). alpha: k values, or n x k (alpha_rows, "sample"
// mode); prob: one value, or n (prob_per_sample); valid: null (every sample is real) or n flags.
inline void draw_raw(bitgen_t* gen, int n, int k, const double* alpha, bool alpha_rows, bool batch_mode,
                     const double* prob, bool prob_per_sample, const unsigned char* valid, std::vector<double>& phi,
                     std::vector<double>& uniforms, std::vector<int>& perms, std::vector<unsigned char>& mixed) {
  const int rows = batch_mode ? 1 : n;
  const int astride = alpha_rows ? k : 0;
  std::vector<double> gamma1((size_t)rows * k), uni((size_t)rows * k);
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < k; ++j) gamma1[(size_t)r * k + j] = random_standard_gamma(gen, alpha[(long long)r * astride + j] + 1.0);
  for (auto& u : uni) u = 1.0 - gen->next_double(gen->state);
  phi.resize((size_t)rows * k);
  dirichlet(alpha, astride, gamma1.data(), uni.data(), rows, k, phi.data());
  uniforms.resize((size_t)rows * (k - 1) * 2);
  for (auto& u : uniforms) u = gen->next_double(gen->state);
  std::vector<double> ranks((size_t)(k - 1) * n);
  for (auto& v : ranks) v = gen->next_double(gen->state);
  mixed.resize(n);
  for (int s = 0; s < n; ++s) mixed[s] = gen->next_double(gen->state) < prob[prob_per_sample ? s : 0];
  // each level: the (valid) samples ranked by their uniforms, ties in index order (np.argsort(kind="stable"))
  std::vector<int> real;
  for (int s = 0; s < n; ++s)
    if (!valid || valid[s]) real.push_back(s);
  perms.resize((size_t)(k - 1) * n);
  std::vector<int> order(real.size());
  for (int lvl = 0; lvl < k - 1; ++lvl) {
    int* perm = perms.data() + (size_t)lvl * n;
    const double* rank = ranks.data() + (size_t)lvl * n;
    std::iota(perm, perm + n, 0);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rank[real[a]] < rank[real[b]]; });
    for (size_t i = 0; i < real.size(); ++i) perm[real[i]] = real[order[i]];
  }
  if (valid)
    for (int s = 0; s < n; ++s) mixed[s] = mixed[s] && valid[s];
}
#endif  // KMIX_NO_NPYRANDOM

}  // namespace kmix_draw
