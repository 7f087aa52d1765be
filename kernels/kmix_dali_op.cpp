// dali_kmix DALI plugin: the blending kernels as native DALI operators, each with a CPU and
// (where nvcc built kmix_gpu_launch.cu; KMIX_WITH_GPU) a GPU backend.
//
//   fn.kmix_dmixup(images, sources, weights, layout="HWC"|"CHW")
//   fn.kmix_dcutmix(images, sources, boxes, layout="HWC"|"CHW")
//   fn.kmix_mix(images, sources, weights, boxes, cut, layout="HWC"|"CHW")   (DMixup or DCutMix per sample)
//
// apply one MixParams record, drawn by dali_kmix on the Python side, to a batch:
//   images   N samples of one shape, (H, W, C) or (C, H, W); uint8, float16 or float32; CPU or GPU
//   sources  int32 (K,) per sample: sources[s][0] == s, sources[s][j] the image of share j
//   weights  float32 (K,) per sample (DMixup): finite, >= 0
//   boxes    int32 (K - 1, 4) per sample (DCutMix): (y0, x0, y1, x1), half-open, nested
//   cut      uint8 () per sample (kmix_mix): 1 applies the sample's boxes, 0 its weights
// and return the mixed batch (same shape, dtype and layout, on the images' device).
//
// One schema per operator; both backends run the same checks (kmix_record.h: one message
// table) in SetupImpl. The record inputs are CPU tensors for both backends (the schema says
// so, DALI hands them over on the host): the GPU backend checks them on the host, then moves
// the per-sample input and output pointers and the record to the device in one asynchronous
// copy on the operator's stream (DALI's scratchpad: one pinned staging buffer, freed in
// stream order once the copy is done) and launches the kernels of kmix_blend.cu on that
// stream. Nothing synchronises; the inputs are never written; DALI allocates the output.
//
// The CPU backend runs the kernels compiled for the host (kmix_host.cpp, a separate
// translation unit: its host shim and the CUDA headers that DALI's headers pull in cannot
// meet in one), block by block on the pipeline's thread pool, straight into DALI's output.
#include <algorithm>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "kmix_codes.h"
#include "kmix_record.h"

#ifdef KMIX_WITH_GPU
#include <cuda_runtime_api.h>

#include "dali/kernels/dynamic_scratchpad.h"
#include "kmix_launch.h"
#endif

extern "C" {
int kmix_host_dmixup_chunks(long long sample_elems);
int kmix_host_dcutmix_chunks(int height, int width, int channels, int layout);
int kmix_host_dmixup_block(int dtype, const void* const* in, void* const* out, const int* sources,
                           const float* weights, int n, int k, long long sample_elems, int chunk,
                           int sample);
int kmix_host_dcutmix_block(int dtype, const void* const* in, void* const* out, const int* sources,
                            const int* boxes, int n, int k, int height, int width, int channels,
                            int layout, int chunk, int sample);
#ifdef KMIX_WITH_GPU
int kmix_gpu_launch(int kernel, int dtype, const void* const* in, void* const* out, const int* sources,
                    const float* weights, const int* boxes, const unsigned char* cut, int n, int k, int height,
                    int width, int channels, int layout, cudaStream_t stream);
const char* kmix_gpu_error_string(int code);
#endif
}

namespace dali_kmix {

using dali::CPUBackend;
using kmix::Method;

// Element-type codes of kmix_codes.h (-1: a type no kernel takes).
inline int DtypeCode(dali::DALIDataType t) {
  switch (t) {
    case DALI_UINT8: return KMIX_U8;
    case DALI_FLOAT16: return KMIX_F16;
    case DALI_FLOAT: return KMIX_F32;
    case DALI_INT32: return KMIX_I32;
    default: return -1;
  }
}

// An input as kmix_record.h reads it: shapes, dtype and (for record inputs) host pointers.
class ListView {
 public:
  template <typename Backend>
  ListView(const dali::TensorList<Backend>& tl, bool with_data)
      : type_name_(dali::TypeName(tl.type())), shape_(tl.shape()) {
    list_.num_samples = tl.num_samples();
    list_.ndim = shape_.sample_dim();
    list_.shape = shape_.shapes.data();
    list_.dtype = DtypeCode(tl.type());
    list_.type_name = type_name_.c_str();
    if (with_data) {
      data_.resize(list_.num_samples);
      for (int s = 0; s < list_.num_samples; ++s) data_[s] = tl.raw_tensor(s);
      list_.data = data_.data();
    }
  }
  const kmix::KmixList& operator*() const { return list_; }
  const kmix::KmixList* get() const { return &list_; }

 private:
  std::string type_name_;
  dali::TensorListShape<> shape_;
  std::vector<const void*> data_;
  kmix::KmixList list_;
};

// Where each record input sits: weights (DMixup), boxes (DCutMix), or weights, boxes, cut (kmix_mix).
constexpr int WeightsAt(Method m) { return m == Method::kDCutMix ? -1 : 2; }
constexpr int BoxesAt(Method m) { return m == Method::kDMixup ? -1 : (m == Method::kDCutMix ? 2 : 3); }
constexpr int CutAt(Method m) { return m == Method::kSwitch ? 4 : -1; }

// Stateless: the output depends on the inputs alone (the record is drawn upstream from DALI's
// own checkpointed random operator), so a checkpoint holds nothing for it and a pipeline built
// with enable_checkpointing=True accepts it.
template <typename Backend, Method M>
class KMixBlendBase : public dali::StatelessOperator<Backend> {
 public:
  explicit KMixBlendBase(const dali::OpSpec& spec)
      : dali::StatelessOperator<Backend>(spec), layout_(spec.GetArgument<std::string>("layout")) {
    const std::string err = kmix::CheckLayoutArg(layout_);
    if (!err.empty()) DALI_FAIL(err);
  }

 protected:
  // The checks shared by both backends (kmix_record.h); leaves the gathered record in rec_.
  bool SetupImpl(std::vector<dali::OutputDesc>& output_desc, const dali::Workspace& ws) override {
    const auto& images = ws.template Input<Backend>(0);
    const ListView im(images, false), src(ws.Input<CPUBackend>(1), true);
    auto record_input = [&](int at) {
      return at < 0 ? std::unique_ptr<ListView>() : std::make_unique<ListView>(ws.Input<CPUBackend>(at), true);
    };
    const auto weights = record_input(WeightsAt(M)), boxes = record_input(BoxesAt(M)), cut = record_input(CutAt(M));
    const std::string found = images.GetLayout().str();
    std::string err = kmix::GatherRecord(M, layout_, found, *im, *src, weights ? weights->get() : nullptr,
                                         boxes ? boxes->get() : nullptr, cut ? cut->get() : nullptr, &rec_);
    if (err.empty()) err = kmix::CheckChannels(layout_, found, *im);
    if (!err.empty()) DALI_FAIL(err);
    output_desc.resize(1);
    output_desc[0] = {images.shape(), images.type()};
    return true;
  }

  // Per-sample input and output pointers of this iteration.
  template <typename Out>
  void Pointers(const dali::TensorList<Backend>& images, Out& output) {
    in_.resize(rec_.n);
    out_.resize(rec_.n);
    for (int s = 0; s < rec_.n; ++s) {
      in_[s] = images.raw_tensor(s);
      out_[s] = output.raw_mutable_tensor(s);
    }
  }

  std::string layout_;
  kmix::Record rec_;
  std::vector<const void*> in_;
  std::vector<void*> out_;
};

template <typename Backend, Method M>
class KMixBlend;

// CPU: the kernels' blocks (one thread each) on the pipeline's thread pool, in a few tasks per thread: each
// task a run of consecutive blocks (sample-major), so the pool's per-task cost (a queued std::function, a
// wake-up) is paid some 8 times per thread instead of once per 64 Ki-element block.
template <Method M>
class KMixBlend<CPUBackend, M> : public KMixBlendBase<CPUBackend, M> {
 public:
  using KMixBlendBase<CPUBackend, M>::KMixBlendBase;

 protected:
  void RunImpl(dali::Workspace& ws) override {
    const auto& images = ws.Input<CPUBackend>(0);
    auto& output = ws.Output<CPUBackend>(0);
    output.SetLayout(dali::TensorLayout(this->layout_));
    const kmix::Record& r = this->rec_;
    if (r.n == 0) return;
    this->Pointers(images, output);
    const long long elems = (long long)r.height * r.width * r.channels;
    const int blend_chunks = kmix_host_dmixup_chunks(elems);
    const int cut_chunks = kmix_host_dcutmix_chunks(r.height, r.width, r.channels, r.layout);
    // the blocks, sample by sample: block b is (sample, chunk) = (start[s] <= b < start[s + 1])
    start_.resize(r.n + 1);
    start_[0] = 0;
    for (int s = 0; s < r.n; ++s) start_[s + 1] = start_[s] + (IsCut(s) ? cut_chunks : blend_chunks);
    auto& pool = ws.GetThreadPool();
    const long long blocks = start_[r.n];
    const long long tasks = std::min<long long>(blocks, 8LL * std::max(1, pool.NumThreads()));
    for (long long t = 0; t < tasks; ++t) {
      const long long lo = blocks * t / tasks, hi = blocks * (t + 1) / tasks;
      pool.AddWork([this, lo, hi, elems](int) { RunBlocks(lo, hi, elems); }, (hi - lo) * elems);
    }
    pool.RunAll();
  }

 private:
  bool IsCut(int s) const { return M == Method::kDCutMix || (M == Method::kSwitch && this->rec_.cut[s]); }

  // Blocks [lo, hi) of the list start_ numbers.
  void RunBlocks(long long lo, long long hi, long long elems) {
    const kmix::Record& r = this->rec_;
    int s = (int)(std::upper_bound(start_.begin(), start_.end(), lo) - start_.begin()) - 1;
    for (long long b = lo; b < hi; ++b) {
      while (b >= start_[s + 1]) ++s;
      const int c = (int)(b - start_[s]);
      const int rc = IsCut(s) ? kmix_host_dcutmix_block(r.dtype, this->in_.data(), this->out_.data(), r.sources.data(),
                                                        r.boxes.data(), r.n, r.k, r.height, r.width, r.channels,
                                                        r.layout, c, s)
                              : kmix_host_dmixup_block(r.dtype, this->in_.data(), this->out_.data(), r.sources.data(),
                                                       r.weights.data(), r.n, r.k, elems, c, s);
      DALI_ENFORCE(rc == 0, "dali_kmix: internal error, a kernel block was refused");
    }
  }

  std::vector<long long> start_;
};

#ifdef KMIX_WITH_GPU
// GPU: the record reaches the device in one asynchronous copy, the kernel runs on ws.stream().
template <Method M>
class KMixBlend<dali::GPUBackend, M> : public KMixBlendBase<dali::GPUBackend, M> {
 public:
  using KMixBlendBase<dali::GPUBackend, M>::KMixBlendBase;

 protected:
  void RunImpl(dali::Workspace& ws) override {
    const auto& images = ws.Input<dali::GPUBackend>(0);
    auto& output = ws.Output<dali::GPUBackend>(0);
    output.SetLayout(dali::TensorLayout(this->layout_));
    const kmix::Record& r = this->rec_;
    if (r.n == 0) return;
    this->Pointers(images, output);
    const cudaStream_t stream = ws.stream();
    // Device memory from DALI's pool, released in stream order when the scratchpad goes out of scope
    // (after the launch below is queued); ToContiguousGPU packs every array into one pinned staging
    // buffer (freed in stream order too, so it lives until the copy has run) and issues one
    // cudaMemcpyAsync on `stream`.
    dali::kernels::DynamicScratchpad scratch(dali::AccessOrder{stream});
    auto [in, out, sources, weights, boxes, cut] =
        scratch.ToContiguousGPU(stream, this->in_, this->out_, r.sources, r.weights, r.boxes, r.cut);
    const int kernel = M == Method::kDMixup ? KMIX_KERNEL_DMIXUP
                                            : (M == Method::kDCutMix ? KMIX_KERNEL_DCUTMIX : KMIX_KERNEL_MIX);
    const int rc = kmix_gpu_launch(kernel, r.dtype, in, out, sources, weights, boxes, cut, r.n, r.k, r.height,
                                   r.width, r.channels, r.layout, stream);
    if (rc != 0) DALI_FAIL("dali_kmix: launching the blend kernel failed: ", kmix_gpu_error_string(rc));
  }
};
#endif

// One name per registered class (the registration macro takes no template argument list).
using DmixupCpu = KMixBlend<CPUBackend, Method::kDMixup>;
using DcutmixCpu = KMixBlend<CPUBackend, Method::kDCutMix>;
using MixCpu = KMixBlend<CPUBackend, Method::kSwitch>;
#ifdef KMIX_WITH_GPU
using DmixupGpu = KMixBlend<dali::GPUBackend, Method::kDMixup>;
using DcutmixGpu = KMixBlend<dali::GPUBackend, Method::kDCutMix>;
using MixGpu = KMixBlend<dali::GPUBackend, Method::kSwitch>;
#endif

}  // namespace dali_kmix

namespace dali {

DALI_REGISTER_OPERATOR(KmixDmixup, ::dali_kmix::DmixupCpu, CPU);
DALI_REGISTER_OPERATOR(KmixDcutmix, ::dali_kmix::DcutmixCpu, CPU);
DALI_REGISTER_OPERATOR(KmixMix, ::dali_kmix::MixCpu, CPU);
#ifdef KMIX_WITH_GPU
DALI_REGISTER_OPERATOR(KmixDmixup, ::dali_kmix::DmixupGpu, GPU);
DALI_REGISTER_OPERATOR(KmixDcutmix, ::dali_kmix::DcutmixGpu, GPU);
DALI_REGISTER_OPERATOR(KmixMix, ::dali_kmix::MixGpu, GPU);
#endif

// DALI_SCHEMA defines a static registration object that nothing else names.
#pragma GCC diagnostic ignored "-Wunused-variable"

#define KMIX_IMAGES_DOX                                                                                 \
  "TensorList of uint8, float16 or float32, HWC or CHW, on the CPU or the GPU",                         \
      "Same-shape samples; the output is on their device."
#define KMIX_RECORD_DOX(what) "TensorList of " what " on the CPU (the record, drawn on the host)"

DALI_SCHEMA(KmixDmixup)
    .DocStr(R"(dali_kmix DMixup: every output sample is the Dirichlet-weighted sum of K images of the batch,
out[s] = sum_j weights[s][j] * images[sources[s][j]] (float32 fused multiply-adds in order j = 0..K-1;
uint8 rounds half to even and clips, float16 rounds to nearest even). CPU and GPU backends give the same
bits. Use dali_kmix.dali.dmixup, which draws the record and the labels.)")
    .NumInput(3)
    .NumOutput(1)
    .InputDevice(1, 3, InputDevice::CPU)
    .InputDox(0, "images", KMIX_IMAGES_DOX)
    .InputDox(1, "sources", KMIX_RECORD_DOX("int32 (K,)"), "sources[s][0] == s; the images mixed into sample s.")
    .InputDox(2, "weights", KMIX_RECORD_DOX("float32 (K,)"), "The shares of the K images (finite, >= 0).")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);

DALI_SCHEMA(KmixDcutmix)
    .DocStr(R"(dali_kmix DCutMix: every output pixel is copied from the image of the deepest of K-1 nested boxes
that holds it (sources[s][d + 1] inside box d, the sample itself outside box 0). CPU and GPU backends give
the same bits. Use dali_kmix.dali.dcutmix, which draws the record and the area-weighted labels.)")
    .NumInput(3)
    .NumOutput(1)
    .InputDevice(1, 3, InputDevice::CPU)
    .InputDox(0, "images", KMIX_IMAGES_DOX)
    .InputDox(1, "sources", KMIX_RECORD_DOX("int32 (K,)"), "sources[s][0] == s; the images pasted into sample s.")
    .InputDox(2, "boxes", KMIX_RECORD_DOX("int32 (K-1, 4)"), "(y0, x0, y1, x1), half-open, each inside the last.")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);

DALI_SCHEMA(KmixMix)
    .DocStr(R"(dali_kmix DMixup or DCutMix per sample: sample s is blended with its weights where cut[s] == 0 and
cut-and-pasted with its boxes where cut[s] == 1, exactly as KmixDmixup / KmixDcutmix would. CPU and GPU
backends give the same bits. Use dali_kmix.dali.dmixup_or_dcutmix, which draws the records, the method and
the labels.)")
    .NumInput(5)
    .NumOutput(1)
    .InputDevice(1, 5, InputDevice::CPU)
    .InputDox(0, "images", KMIX_IMAGES_DOX)
    .InputDox(1, "sources", KMIX_RECORD_DOX("int32 (K,)"), "sources[s][0] == s; the images mixed into sample s.")
    .InputDox(2, "weights", KMIX_RECORD_DOX("float32 (K,)"), "The shares of the K images (finite, >= 0).")
    .InputDox(3, "boxes", KMIX_RECORD_DOX("int32 (K-1, 4)"), "(y0, x0, y1, x1), half-open, each inside the last.")
    .InputDox(4, "cut", KMIX_RECORD_DOX("uint8 ()"), "1: paste the boxes; 0: blend with the weights.")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);

}  // namespace dali
