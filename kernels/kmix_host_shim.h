// dali_kmix host shim: lets the .cu kernels compile as plain C++ for the CPU.
//
// __global__/__device__ become ordinary (inline) functions, threadIdx/blockIdx/blockDim/
// gridDim are thread-local variables, and kmix_launch() runs a grid by looping over
// blocks (spread over worker threads) and, inside a block, over its threads in order.
// This is only valid for kernels without shared memory, __syncthreads or warp
// intrinsics, which is how the dali_kmix kernels are written.
//
// __half is a 16-bit IEEE binary16 value with exact conversion to float and
// round-to-nearest-even conversion from float, written out here so the CPU build
// needs no CUDA headers.
#pragma once
#define KMIX_HOST_SHIM 1

#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

using std::floor;
using std::rint;
using std::sqrt;
using std::fmaf;
using std::rintf;
using std::copysignf;

struct kmix_dim3 {
  unsigned int x, y, z;
};

// initial-exec TLS: a plain %fs-relative access instead of a __tls_get_addr call per use.
#define KMIX_TLS thread_local __attribute__((tls_model("initial-exec")))
extern KMIX_TLS kmix_dim3 threadIdx;
extern KMIX_TLS kmix_dim3 blockIdx;
extern KMIX_TLS kmix_dim3 blockDim;
extern KMIX_TLS kmix_dim3 gridDim;

struct __half {
  uint16_t bits;
};

static inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {  // inf / nan
    out = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {  // normal
    out = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {  // zero
    out = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    out = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &out, sizeof f);
  return f;
}

static inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  __half h;
  if (ax >= 0x7f800000u) {  // inf or nan (keep nan quiet and non-zero)
    h.bits = sign | 0x7c00u | (ax > 0x7f800000u ? (uint16_t)(0x200u | ((ax >> 13) & 0x3ffu)) : 0);
    return h;
  }
  if (ax >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    h.bits = sign | 0x7c00u;
    return h;
  }
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (ax < 0x33000000u) {  // < 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
      h.bits = sign;
      return h;
    }
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // value = m * 2^(e-150); half subnormal unit 2^-24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    h.bits = sign | (uint16_t)q;
    return h;
  }
  // normal: rebias exponent, round 13 dropped mantissa bits to nearest even
  uint32_t r = ax - 0x38000000u;  // exponent 127 -> 15
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  h.bits = sign | (uint16_t)r;
  return h;
}

// Run `body` for every (block, thread) of a grid. Blocks are split into contiguous ranges,
// one per worker thread; `reverse` walks blocks and threads backwards (used by the tests to
// show that the result does not depend on the order of execution).
template <class Body>
static void kmix_launch(kmix_dim3 grid, kmix_dim3 block, int nworkers, bool reverse, Body body) {
  const long long nblocks = (long long)grid.x * grid.y * grid.z;
  const long long nthr = (long long)block.x * block.y * block.z;
  if (nblocks <= 0 || nthr <= 0) return;
  if (nworkers < 1) nworkers = 1;
  if (nworkers > nblocks) nworkers = (int)nblocks;
  auto work = [&](long long b_lo, long long b_hi) {
    gridDim = grid;
    blockDim = block;
    for (long long bi = b_lo; bi < b_hi; ++bi) {
      const long long b = reverse ? (b_hi - 1 - (bi - b_lo)) : bi;
      blockIdx.x = (unsigned)(b % grid.x);
      blockIdx.y = (unsigned)((b / grid.x) % grid.y);
      blockIdx.z = (unsigned)(b / ((long long)grid.x * grid.y));
      for (long long ti = 0; ti < nthr; ++ti) {
        const long long t = reverse ? nthr - 1 - ti : ti;
        threadIdx.x = (unsigned)(t % block.x);
        threadIdx.y = (unsigned)((t / block.x) % block.y);
        threadIdx.z = (unsigned)(t / ((long long)block.x * block.y));
        body();
      }
    }
  };
  if (nworkers == 1) {
    work(0, nblocks);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(nworkers - 1);
  const long long per = (nblocks + nworkers - 1) / nworkers;
  for (int wi = 1; wi < nworkers; ++wi) {
    const long long lo = wi * per, hi = lo + per < nblocks ? lo + per : nblocks;
    if (lo < hi) pool.emplace_back(work, lo, hi);
  }
  work(0, per < nblocks ? per : nblocks);
  for (auto& t : pool) t.join();
}

// Run one block (bx, by) of `grid` with one thread on the calling thread: for callers that
// bring their own thread pool. Only for kernels whose blocks are independent (all of ours).
template <class Body>
static void kmix_run_block(kmix_dim3 grid, unsigned bx, unsigned by, Body body) {
  gridDim = grid;
  blockDim = {1, 1, 1};
  blockIdx = {bx, by, 0};
  threadIdx = {0, 0, 0};
  body();
}
