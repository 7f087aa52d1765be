// dali_kmix: element types shared by the kernels, on the GPU (NVRTC/nvcc) and on the
// host (g++ through kmix_host_shim.h). Every conversion is exact or rounds to nearest
// even, so the GPU and the CPU build produce the same bits as the NumPy reference.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#define KMIX_DEV __device__ __forceinline__
#else
#ifndef KMIX_HOST_SHIM
#error "include kmix_host_shim.h before the kernels when compiling for the host"
#endif
#define KMIX_DEV inline
#endif

// Layout and element-type codes (KMIX_HWC, KMIX_CHW, KMIX_U8, KMIX_F16, KMIX_F32).
#include "kmix_codes.h"

// Load one element as float (exact for uint8 and float16).
KMIX_DEV float kmix_to_float(unsigned char v) { return (float)v; }
KMIX_DEV float kmix_to_float(float v) { return v; }
KMIX_DEV float kmix_to_float(__half v) { return __half2float(v); }

// Store a float sum: uint8 rounds half to even (rintf) and clips to [0, 255];
// float16 rounds to nearest even.
template <typename T> KMIX_DEV T kmix_from_float(float v);
template <> KMIX_DEV unsigned char kmix_from_float<unsigned char>(float v) {
  float r = rintf(v);
  r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
  return (unsigned char)r;
}
template <> KMIX_DEV float kmix_from_float<float>(float v) { return v; }
template <> KMIX_DEV __half kmix_from_float<__half>(float v) { return __float2half_rn(v); }
