// dali_kmix host shim: lets the .cu kernels compile as plain C++ for the CPU.
//
// __global__/__device__ become ordinary (inline) functions, threadIdx/blockIdx/blockDim/
// gridDim are thread-local variables, and kmix_launch() runs a grid by looping over
// blocks (handed out to the process's worker threads) and, inside a block, over its threads
// in order.
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
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>  // the uint8 blend's SIMD steps (kmix_blend.cu)
#endif

#include <unistd.h>

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
// In a samples-first kmix_launch (below): the chunk (blockIdx.x) that this thread runs next for the same sample
// (blockIdx.y), or -1 where it runs none or the launch does not say (any other launch, or `reverse`).
extern KMIX_TLS int kmix_next_chunk;

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

// The worker threads of kmix_launch: started once per process (not per launch: a thread start costs
// tens of microseconds, a whole small blend on a loaded machine), asleep on a condition variable
// between launches (they spin on nothing, so they take no core from the pipeline around them).
// One launch at a time uses them; a launch that finds them busy (another Python thread inside a
// kernel) runs on its own calling thread. After a fork the child starts its own workers.
class KmixPool {
 public:
  // The pool of this process (created on first use, never destroyed: its threads sleep until the
  // process ends, so no static destructor joins a thread while another library still runs).
  static KmixPool& get() {
    static KmixPool* pool = nullptr;
    static pid_t owner = 0;
    static std::mutex create;
    std::lock_guard<std::mutex> lock(create);
    if (!pool || owner != getpid()) {  // first use, or a forked child: the parent's threads are not here
      pool = new KmixPool();
      owner = getpid();
    }
    return *pool;
  }

  // Run job(worker) on the calling thread (worker 0) and on up to `helpers` pool threads (those that
  // wake while the job lasts: workers 1, 2, ...), and return once every call has returned. Returns
  // false, running nothing, when another launch holds the pool (the caller then runs the job alone).
  template <class Job>
  bool run(int helpers, Job& job) {
    std::unique_lock<std::mutex> busy(launch_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    std::unique_lock<std::mutex> lock(m_);
    for (; threads_ < helpers; ++threads_) std::thread([this] { loop(); }).detach();
    task_ = &call<Job>;
    job_ = &job;
    wanted_ = helpers;
    joined_ = 0;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    job(0);
    lock.lock();
    wanted_ = 0;  // a helper that wakes only now finds nothing to join: the work was done without it
    done_.wait(lock, [this] { return inside_ == 0; });
    task_ = nullptr;
    job_ = nullptr;
    return true;
  }

 private:
  template <class Job>
  static void call(void* job, int worker) { (*static_cast<Job*>(job))(worker); }

  void loop() {
    unsigned long long seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen && joined_ < wanted_; });
      seen = generation_;
      const int worker = ++joined_;
      ++inside_;
      void (*const task)(void*, int) = task_;
      void* const job = job_;
      lock.unlock();
      task(job, worker);
      lock.lock();
      if (--inside_ == 0) done_.notify_all();
    }
  }

  std::mutex launch_;  // held for a whole launch
  std::mutex m_;       // guards the fields below
  std::condition_variable wake_, done_;
  void (*task_)(void*, int) = nullptr;  // the launch's job and how to call it
  void* job_ = nullptr;
  unsigned long long generation_ = 0;
  int threads_ = 0, wanted_ = 0, joined_ = 0, inside_ = 0;
};

// Run `body` for every (block, thread) of a grid, on `nworkers` threads: the calling thread and
// nworkers - 1 threads of the process's pool (KmixPool). Workers take blocks from a shared counter,
// a few at a time, so a worker that the machine's load delays leaves its share to the others
// instead of holding the launch up (a fixed split waits for the slowest). Inside a block its
// threads run in order. `reverse` hands the blocks out from the last and walks each block's
// threads backwards (the tests use it to show that the result does not depend on the order).
// Blocks go out along grid.x first (a sample's chunks, then the next sample's), or with
// `samples_first` along grid.y first (chunk 0 of every sample, then chunk 1, ...). A samples-first worker
// claims its next blocks before it starts on the ones it holds, so that each block knows (kmix_next_chunk)
// which chunk of its sample the same thread copies next: host DCutMix prefetches that chunk's input rows. It
// does so only where there are at least 4 claims a worker (else the first worker, claiming two before the others
// wake, could take all), so a delayed worker holds up at most its one claimed range besides the current one.
template <class Body>
static void kmix_launch(kmix_dim3 grid, kmix_dim3 block, int nworkers, bool reverse, Body body,
                        bool samples_first = false) {
  const long long nblocks = (long long)grid.x * grid.y * grid.z;
  const long long nthr = (long long)block.x * block.y * block.z;
  if (nblocks <= 0 || nthr <= 0) return;
  if (nworkers < 1) nworkers = 1;
  if (nworkers > nblocks) nworkers = (int)nblocks;
  // blocks per claim: about 16 claims per worker, so the shares even out, for few atomic operations
  long long grain = nblocks / (16LL * nworkers);
  if (grain < 1) grain = 1;
  if (samples_first) grain = (grain + grid.y - 1) / grid.y * grid.y;  // whole chunks: all samples' rows in one worker
  std::atomic<long long> next{0};
  const long long claims = (nblocks + grain - 1) / grain;
  const bool ahead = samples_first && !reverse && claims >= 4LL * nworkers;  // one range ahead (kmix_next_chunk)
  auto work = [&](int) {
    gridDim = grid;
    blockDim = block;
    kmix_next_chunk = -1;
    long long lo = next.fetch_add(grain, std::memory_order_relaxed);
    for (;;) {
      if (lo >= nblocks) break;
      const long long hi = lo + grain < nblocks ? lo + grain : nblocks;
      // the range after this one: lo is a multiple of grain, and grain of grid.y, so it starts at chunk boundary
      const long long after = ahead ? next.fetch_add(grain, std::memory_order_relaxed) : nblocks;
      for (long long bi = lo; bi < hi; ++bi) {
        const long long b = reverse ? nblocks - 1 - bi : bi;
        blockIdx.x = (unsigned)(samples_first ? (b / grid.y) % grid.x : b % grid.x);
        blockIdx.y = (unsigned)(samples_first ? b % grid.y : (b / grid.x) % grid.y);
        blockIdx.z = (unsigned)(b / ((long long)grid.x * grid.y));
        if (ahead) {  // this sample's next block on this thread: the next chunk here, else in the range after
          const long long nb = b + grid.y < hi ? b + grid.y : after + b % grid.y;
          const bool same_z = nb < nblocks && nb / ((long long)grid.x * grid.y) == blockIdx.z;
          kmix_next_chunk = same_z ? (int)((nb / grid.y) % grid.x) : -1;
        }
        for (long long ti = 0; ti < nthr; ++ti) {
          const long long t = reverse ? nthr - 1 - ti : ti;
          threadIdx.x = (unsigned)(t % block.x);
          threadIdx.y = (unsigned)((t / block.x) % block.y);
          threadIdx.z = (unsigned)(t / ((long long)block.x * block.y));
          body();
        }
      }
      lo = ahead ? after : next.fetch_add(grain, std::memory_order_relaxed);
    }
    kmix_next_chunk = -1;
  };
  if (nworkers == 1 || !KmixPool::get().run(nworkers - 1, work)) work(0);
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
