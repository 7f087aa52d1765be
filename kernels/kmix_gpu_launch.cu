// dali_kmix: the blend kernels of kmix_blend.cu launched on a CUDA stream, for the GPU
// backend of the DALI operators (kmix_dali_op.cpp). Compiled by nvcc with the FP options
// of dali_kmix.backends.sources.FP_OPTIONS (no contraction, no flush-to-zero, IEEE division
// and square root): the same __global__ kernels, the same options as the NVRTC build of
// the CuPy path. Holds no DALI type, so it compiles without DALI's headers.
//
// Every pointer is a device pointer: the per-sample input and output pointers and the
// record, already checked on the host (kmix_record.h) and copied to the device.
#include <cuda_runtime.h>

#include "kmix_blend.cu"
#include "kmix_launch.h"

namespace {

template <typename T>
cudaError_t kmix_launch_typed(int kernel, const void* const* in, void* const* out, const int* sources,
                              const float* weights, const int* boxes, const unsigned char* cut, int n, int k,
                              int height, int width, int channels, int layout, cudaStream_t stream) {
  const kmix_launch_t cfg = kmix_launch_config(kernel, n, height, width, channels, layout);
  if (cfg.grid_x == 0) return cudaSuccess;
  const dim3 grid(cfg.grid_x, cfg.grid_y), block(cfg.block_x);
  const T* const* tin = reinterpret_cast<const T* const*>(in);
  T* const* tout = reinterpret_cast<T* const*>(out);
  switch (kernel) {
    case KMIX_KERNEL_DMIXUP:
      kmix_dmixup<T><<<grid, block, 0, stream>>>(tin, tout, sources, weights, n, k,
                                                 (long long)height * width * channels);
      break;
    case KMIX_KERNEL_DCUTMIX:
      kmix_dcutmix<T><<<grid, block, 0, stream>>>(tin, tout, sources, boxes, n, k, height, width, channels, layout);
      break;
    case KMIX_KERNEL_MIX:
      kmix_mix<T><<<grid, block, 0, stream>>>(tin, tout, sources, weights, boxes, cut, n, k, height, width,
                                              channels, layout);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

template <typename T, typename O>
cudaError_t kmix_launch_norm_typed(const void* const* in, void* const* out, const int* sources, const float* weights,
                                   const int* boxes, const unsigned char* cut, int method, int n, int k, int height,
                                   int width, int channels, int layout, int out_layout, const float* mean,
                                   const float* inv_std, const unsigned char* mirror, cudaStream_t stream) {
  // the blend's grid: chunks of a sample's output elements on grid.x, the samples on grid.y
  const kmix_launch_t cfg = kmix_launch_config(KMIX_KERNEL_DMIXUP, n, height, width, channels, layout);
  if (cfg.grid_x == 0) return cudaSuccess;
  const dim3 grid(cfg.grid_x, cfg.grid_y), block(cfg.block_x);
  kmix_mix_norm<T, O><<<grid, block, 0, stream>>>(reinterpret_cast<const T* const*>(in),
                                                  reinterpret_cast<O* const*>(out), sources, weights, boxes, cut,
                                                  method, n, k, height, width, channels, layout, out_layout, mean,
                                                  inv_std, mirror);
  return cudaGetLastError();
}

template <typename O>
cudaError_t kmix_launch_norm_out(int dtype, const void* const* in, void* const* out, const int* sources,
                                 const float* weights, const int* boxes, const unsigned char* cut, int method, int n,
                                 int k, int height, int width, int channels, int layout, int out_layout,
                                 const float* mean, const float* inv_std, const unsigned char* mirror,
                                 cudaStream_t stream) {
  switch (dtype) {
    case KMIX_U8:
      return kmix_launch_norm_typed<unsigned char, O>(in, out, sources, weights, boxes, cut, method, n, k, height,
                                                      width, channels, layout, out_layout, mean, inv_std, mirror,
                                                      stream);
    case KMIX_F16:
      return kmix_launch_norm_typed<__half, O>(in, out, sources, weights, boxes, cut, method, n, k, height, width,
                                               channels, layout, out_layout, mean, inv_std, mirror, stream);
    case KMIX_F32:
      return kmix_launch_norm_typed<float, O>(in, out, sources, weights, boxes, cut, method, n, k, height, width,
                                              channels, layout, out_layout, mean, inv_std, mirror, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

extern "C" {

// The mix with its normalisation fused (kmix_mix_norm): images of dtype (KMIX_U8, KMIX_F16, KMIX_F32) into
// out_dtype (KMIX_F32 or KMIX_F16) in out_layout, on `stream`. Returns a cudaError_t (0: launched).
int kmix_gpu_launch_norm(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                         const float* weights, const int* boxes, const unsigned char* cut, int method, int n, int k,
                         int height, int width, int channels, int layout, int out_layout, const float* mean,
                         const float* inv_std, const unsigned char* mirror, cudaStream_t stream) {
  if (out_dtype == KMIX_F32)
    return kmix_launch_norm_out<float>(dtype, in, out, sources, weights, boxes, cut, method, n, k, height, width,
                                       channels, layout, out_layout, mean, inv_std, mirror, stream);
  if (out_dtype == KMIX_F16)
    return kmix_launch_norm_out<__half>(dtype, in, out, sources, weights, boxes, cut, method, n, k, height, width,
                                        channels, layout, out_layout, mean, inv_std, mirror, stream);
  return cudaErrorInvalidValue;
}


// Launch kernel (KMIX_KERNEL_*) on element type dtype (KMIX_U8, KMIX_F16, KMIX_F32) over n
// samples on `stream`, configured by kmix_launch_config. Returns a cudaError_t (0: launched).
int kmix_gpu_launch(int kernel, int dtype, const void* const* in, void* const* out, const int* sources,
                    const float* weights, const int* boxes, const unsigned char* cut, int n, int k, int height,
                    int width, int channels, int layout, cudaStream_t stream) {
  switch (dtype) {
    case KMIX_U8:
      return kmix_launch_typed<unsigned char>(kernel, in, out, sources, weights, boxes, cut, n, k, height, width,
                                              channels, layout, stream);
    case KMIX_F16:
      return kmix_launch_typed<__half>(kernel, in, out, sources, weights, boxes, cut, n, k, height, width,
                                       channels, layout, stream);
    case KMIX_F32:
      return kmix_launch_typed<float>(kernel, in, out, sources, weights, boxes, cut, n, k, height, width,
                                      channels, layout, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

const char* kmix_gpu_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
