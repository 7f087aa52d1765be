// The C entry points of the host build (kmix_host.cpp), declared once: kmix_host.cpp includes this header, so a
// definition that drifts from its declaration does not compile, and the DALI plugin (kmix_dali_op.cpp) and the
// fuzzer (tests/fuzz/kmix_host_fuzz.cpp) call them through it. (The fuzzer once declared an old signature of
// kmix_host_dcutmix_chunks; extern "C" hid the mismatch from the linker, and the per-block paste path it fuzzes got
// a wrong chunk count.) dali_kmix.backends.cpu binds the same functions through ctypes.
#pragma once

#include <stdint.h>

namespace kmix {
struct KmixList;  // kmix_record.h
}  // namespace kmix

extern "C" {
int kmix_host_dmixup_chunks(long long sample_elems);
int kmix_host_dcutmix_chunks(int dtype, int k, int height, int width, int channels, int layout);
int kmix_host_dcutmix_samples_first(int dtype, int k);
int kmix_host_dmixup_block(int dtype, const void* const* in, void* const* out, const int* sources,
                           const float* weights, int n, int k, long long sample_elems, int chunk,
                           int sample);
int kmix_host_dcutmix_block(int dtype, const void* const* in, void* const* out, const int* sources,
                            const int* boxes, int n, int k, int height, int width, int channels,
                            int layout, int chunk, int sample, int next_chunk);
int kmix_host_draw_record(const uint32_t* entropy, int n_entropy, const uint32_t* spawn, int n_spawn, int method,
                          int n, int k, const double* alpha, int alpha_rows, const double* cut_alpha, int batch_mode,
                          const double* prob, int prob_rows, double switch_prob, const unsigned char* valid,
                          int height, int width, const int* centers, int* sources, float* weights, int* boxes,
                          int* cut);
int kmix_host_norm_bands(int dtype, int height, int width, int channels);
int kmix_host_mix_norm_block(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                             const float* weights, const int* boxes, const unsigned char* cut, int method, int n,
                             int k, int height, int width, int channels, int layout, int out_layout,
                             const float* mean, const float* inv_std, const unsigned char* mirror, int band,
                             int sample);
int kmix_host_salient_points(int dtype, const void* const* in, int* points, int n, int height, int width,
                             int channels, int layout, int out_h, int out_w, const float* gauss, int nworkers);
int kmix_host_mix_labels(const long long* labels, long long m, const int* sources, const float* weights, int n, int k,
                         int classes, float on, float off, float* out, int checked);
int kmix_host_dmixup(int dtype, const void* const* in, void* const* out, const int* sources, const float* weights,
                     int n, int k, long long sample_elems, int nworkers, int block_threads, int reverse);
int kmix_host_dcutmix(int dtype, const void* const* in, void* const* out, const int* sources, const int* boxes,
                      int n, int k, int height, int width, int channels, int layout, int nworkers, int block_threads,
                      int reverse);
int kmix_host_blend_batch(int dtype, const void* in, long long in_stride, void* out, long long out_stride,
                          const int* sources, const float* weights, const int* boxes, int n, int k, int height,
                          int width, int channels, int layout, int nworkers, int block_threads, int reverse);
int kmix_host_mix(int dtype, const void* const* in, void* const* out, const int* sources, const float* weights,
                  const int* boxes, const unsigned char* cut, int n, int k, int height, int width, int channels,
                  int layout, int nworkers, int block_threads, int reverse);
int kmix_host_nest_boxes(const double* phi, const double* uni, int phi_stride, const int* perms,
                         const unsigned char* mixed, int n, int k, int height, int width, int* sources,
                         float* weights, int* boxes, const int* centers, int nworkers, int reverse);
int kmix_host_grey_resize(int dtype, const void* const* in, float* out, int n, int height, int width, int channels,
                          int layout, int out_h, int out_w, int nworkers, int reverse);
int kmix_host_mix_norm(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                       const float* weights, const int* boxes, const unsigned char* cut, int method, int n, int k,
                       int height, int width, int channels, int layout, int out_layout, const float* mean,
                       const float* inv_std, const unsigned char* mirror, int nworkers, int block_threads,
                       int reverse);
int kmix_host_spectral_residual(const float* g, float* maps, int* peaks, int n, int rows, int cols,
                                const float* gauss, int nworkers);
void kmix_host_dirichlet(const double* alpha, int alpha_stride, const double* gamma1, const double* uniform,
                         int rows, int k, double* phi);
// defined where NumPy's libnpyrandom.a is linked in (not with -DKMIX_NO_NPYRANDOM)
void kmix_host_pcg64_raw(const uint32_t* entropy, int n_entropy, const uint32_t* spawn, int n_spawn, long long count,
                         uint64_t* out);
int kmix_host_draw_record_bitgen(void* bitgen, int method, int n, int k, const double* alpha, int alpha_rows,
                                 int batch_mode, const double* prob, int prob_rows, int height, int width,
                                 const int* centers, int* sources, float* weights, int* boxes, int* cut);
int kmix_host_record_valid(const int* sources, const float* weights, const int* boxes, int n, int k, int height,
                           int width);
void kmix_host_launch_config(int kernel, int n, int height, int width, int channels, int layout, unsigned* cfg);
int kmix_host_launch_cover(int kernel, int n, int height, int width, int channels, int layout, int* visits,
                           long long* last);
int kmix_host_validate_record(int method, const char* layout, const char* found_layout, const kmix::KmixList* images,
                              const kmix::KmixList* sources, const kmix::KmixList* weights,
                              const kmix::KmixList* boxes, const kmix::KmixList* cut, char* msg, int msg_len);
void kmix_host_half_to_float(const uint16_t* in, float* out, long long count);
void kmix_host_float_to_half(const float* in, uint16_t* out, long long count);
}  // extern "C"
