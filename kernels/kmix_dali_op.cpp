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
// With dtype=FLOAT or FLOAT16 (and mean, std, mirror, output_layout as crop_mirror_normalize takes them) the
// operator also normalises, in the same pass (kmix_mix_norm in kmix_blend.cu): the output is what
// crop_mirror_normalize would make of the mixed batch, which is never written out. A pipeline then runs one
// operator where it ran two (CPU, batch 64: about 5 % of the pipeline's throughput is what a separate operator
// that writes a new batch costs there).
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
#include <cstdint>
#include <cstdlib>
#include <charconv>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dali/core/float16.h"
#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "kmix_codes.h"
#include "kmix_draw.h"
#include "kmix_record.h"

#ifdef KMIX_WITH_GPU
#include <cuda_runtime_api.h>

#include "dali/kernels/dynamic_scratchpad.h"
#include "kmix_launch.h"
#endif

#include "kmix_host_api.h"

extern "C" {
#ifdef KMIX_WITH_GPU
int kmix_gpu_launch(int kernel, int dtype, const void* const* in, void* const* out, const int* sources,
                    const float* weights, const int* boxes, const unsigned char* cut, int n, int k, int height,
                    int width, int channels, int layout, cudaStream_t stream);
int kmix_gpu_launch_norm(int dtype, int out_dtype, const void* const* in, void* const* out, const int* sources,
                         const float* weights, const int* boxes, const unsigned char* cut, int method, int n, int k,
                         int height, int width, int channels, int layout, int out_layout, const float* mean,
                         const float* inv_std, const unsigned char* mirror, cudaStream_t stream);
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

// Element i of a buffer of DALI type t handed to f as its own C++ type, for bool and the integer types; false for
// any other type (f not called).
template <typename F>
bool WithInteger(dali::DALIDataType t, const void* p, int64_t i, F&& f) {
  switch (t) {
    case DALI_BOOL: f(((const bool*)p)[i]); return true;
    case DALI_UINT8: f(((const uint8_t*)p)[i]); return true;
    case DALI_INT8: f(((const int8_t*)p)[i]); return true;
    case DALI_UINT16: f(((const uint16_t*)p)[i]); return true;
    case DALI_INT16: f(((const int16_t*)p)[i]); return true;
    case DALI_UINT32: f(((const uint32_t*)p)[i]); return true;
    case DALI_INT32: f(((const int32_t*)p)[i]); return true;
    case DALI_UINT64: f(((const uint64_t*)p)[i]); return true;
    case DALI_INT64: f(((const int64_t*)p)[i]); return true;
    default: return false;
  }
}

// One integer per sample of a scalar input ((), (1,) or any one-element shape) as T; "" or the message (`what`:
// what its values must be, e.g. "integer class indices").
template <typename T>
std::string ScalarPerSample(const dali::TensorList<CPUBackend>& tl, const char* name, const char* what, int n,
                            std::vector<T>* out) {
  if (tl.num_samples() != n)
    return kmix::Str(name, " has ", tl.num_samples(), " samples but images has ", n);
  out->resize(n);
  for (int s = 0; s < n; ++s) {
    const auto shape = tl.tensor_shape(s);
    if (shape.num_elements() != 1)
      return kmix::Str(name, " must hold one value per sample, got shape ",
                       kmix::ShapeStr(std::vector<int64_t>(shape.begin(), shape.end())), " for sample ", s);
    if (!WithInteger(tl.type(), tl.raw_tensor(s), 0, [&](auto v) { (*out)[s] = (T)v; }))
      return kmix::Str(name, " must be ", what, ", got dtype ", dali::TypeName(tl.type()));
  }
  return "";
}

// Where each record input sits: weights (DMixup), boxes (DCutMix), or weights, boxes, cut (kmix_mix).
constexpr int WeightsAt(Method m) { return m == Method::kDCutMix ? -1 : 2; }
constexpr int BoxesAt(Method m) { return m == Method::kDMixup ? -1 : (m == Method::kDCutMix ? 2 : 3); }
constexpr int CutAt(Method m) { return m == Method::kSwitch ? 4 : -1; }

// The fused normalisation's arguments (dtype, mean, std, mirror, output_layout), as DALI's crop_mirror_normalize
// takes them, checked once for both backends; "" or the message.
struct NormArgs {
  bool on = false;          // dtype given: the output is normalised
  int out_dtype = -1;       // KMIX_F32 or KMIX_F16
  std::string out_layout;   // "HWC" or "CHW"
  std::vector<float> mean, std;
  bool mirror_input = false;  // mirror comes per sample (an argument input), else mirror_const for every sample
  int mirror_const = 0;

  int OutLayoutCode() const { return out_layout == "HWC" ? KMIX_HWC : KMIX_CHW; }

  std::string Read(const dali::OpSpec& spec, const std::string& layout) {
    on = spec.HasArgument("dtype");
    const auto type = on ? spec.GetArgument<dali::DALIDataType>("dtype") : DALI_NO_TYPE;
    mirror_input = spec.HasTensorArgument("mirror");
    if (!on) {
      for (const char* arg : {"mean", "std", "mirror", "output_layout"})
        if (spec.HasArgument(arg) || (std::string(arg) == "mirror" && mirror_input))
          return kmix::Str(arg, " belongs to the normalisation fused into the mix: give dtype=types.FLOAT or "
                                "types.FLOAT16 with it (or normalise with fn.crop_mirror_normalize after the mix)");
      return "";
    }
    if (type != DALI_FLOAT && type != DALI_FLOAT16)
      return kmix::Str("dtype must be FLOAT or FLOAT16 (the normalised images), got ", dali::TypeName(type));
    out_dtype = type == DALI_FLOAT ? KMIX_F32 : KMIX_F16;
    out_layout = spec.GetArgument<std::string>("output_layout");
    if (out_layout.empty()) out_layout = layout;
    if (out_layout != "HWC" && out_layout != "CHW")
      return kmix::Str("output_layout must be \"HWC\" or \"CHW\", got \"", out_layout, "\"");
    mean = spec.GetRepeatedArgument<float>("mean");
    std = spec.GetRepeatedArgument<float>("std");
    if (mean.empty()) mean = {0.0f};
    if (std.empty()) std = {1.0f};
    for (float m : mean)
      if (!std::isfinite(m)) return kmix::Str("mean must be finite, got ", m);
    for (float v : std)
      if (!(std::isfinite(v) && v > 0.0f)) return kmix::Str("std must be > 0 and finite, got ", v);
    if (!mirror_input) mirror_const = spec.GetArgument<int>("mirror");
    return "";
  }

  // Per channel: DALI's crop_mirror_normalize's float factors (the mean; 1 / std worked out in double).
  std::string Factors(int channels, std::vector<float>* m, std::vector<float>* inv) const {
    for (const auto* v : {&mean, &std})
      if (v->size() != 1 && (int)v->size() != channels)
        return kmix::Str(v == &mean ? "mean" : "std", " has ", v->size(), " values but the images have ", channels,
                         " channels (give one value, or one per channel)");
    m->resize(channels);
    inv->resize(channels);
    for (int c = 0; c < channels; ++c) {
      (*m)[c] = mean[mean.size() == 1 ? 0 : c];
      (*inv)[c] = (float)(1.0 / (double)std[std.size() == 1 ? 0 : c]);
    }
    return "";
  }
};

// Stateless: the output depends on the inputs alone (the record is drawn upstream from DALI's
// own checkpointed random operator), so a checkpoint holds nothing for it and a pipeline built
// with enable_checkpointing=True accepts it.
template <typename Backend, Method M>
class KMixBlendBase : public dali::StatelessOperator<Backend> {
 public:
  explicit KMixBlendBase(const dali::OpSpec& spec)
      : dali::StatelessOperator<Backend>(spec), layout_(spec.GetArgument<std::string>("layout")) {
    std::string err = kmix::CheckLayoutArg(layout_);
    if (err.empty()) err = norm_.Read(spec, layout_);
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
    if (err.empty() && norm_.on && rec_.n > 0) err = SetupNorm(ws);  // an empty batch has no channels to check
    if (!err.empty()) DALI_FAIL(err);
    output_desc.resize(1);
    if (!norm_.on) {
      output_desc[0] = {images.shape(), images.type()};
      return true;
    }
    const auto h = rec_.height, w = rec_.width, c = rec_.channels;  // the normalised batch: its layout, its type
    const dali::TensorShape<> sample = norm_.out_layout == "HWC" ? dali::TensorShape<>{h, w, c}
                                                                 : dali::TensorShape<>{c, h, w};
    output_desc[0] = {dali::uniform_list_shape(rec_.n, sample), norm_.out_dtype == KMIX_F32 ? DALI_FLOAT : DALI_FLOAT16};
    return true;
  }

  // The per-channel factors and the per-sample mirror flags of this iteration.
  std::string SetupNorm(const dali::Workspace& ws) {
    std::string err = norm_.Factors(rec_.channels, &mean_c_, &inv_c_);
    if (!err.empty()) return err;
    mirror_.assign(rec_.n, (unsigned char)(norm_.mirror_const != 0));
    if (norm_.mirror_input) {
      std::vector<int64_t> v;
      err = ScalarPerSample(ws.ArgumentInput("mirror"), "mirror", "integers or bools", rec_.n, &v);
      for (int s = 0; err.empty() && s < rec_.n; ++s) mirror_[s] = v[s] != 0;
    }
    return err;
  }

  // The operator's output layout.
  std::string OutLayout() const { return norm_.on ? norm_.out_layout : layout_; }

  // kmix_host_mix_norm_block's method code of this operator (also KMIX_KERNEL_DMIXUP / _DCUTMIX / _MIX).
  static constexpr int MethodCode() { return static_cast<int>(M); }
  static_assert(static_cast<int>(Method::kDMixup) == KMIX_KERNEL_DMIXUP &&
                    static_cast<int>(Method::kDCutMix) == KMIX_KERNEL_DCUTMIX &&
                    static_cast<int>(Method::kSwitch) == KMIX_KERNEL_MIX,
                "the operators' method codes are the kernel codes");

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
  NormArgs norm_;
  kmix::Record rec_;
  std::vector<const void*> in_;
  std::vector<void*> out_;
  std::vector<float> mean_c_, inv_c_;  // the fused normalisation, per channel
  std::vector<unsigned char> mirror_;  // and per sample
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
    output.SetLayout(dali::TensorLayout(this->OutLayout()));
    const kmix::Record& r = this->rec_;
    if (r.n == 0) return;
    this->Pointers(images, output);
    const long long elems = (long long)r.height * r.width * r.channels;
    auto& pool = ws.GetThreadPool();
    if (this->norm_.on) {  // the fused normalisation: bands of rows (kmix_host_norm_bands), sample by sample
      const long long blocks = (long long)r.n * kmix_host_norm_bands(r.dtype, r.height, r.width, r.channels);
      RunInTasks(pool, blocks, elems, [this](long long lo, long long hi) { RunNormBlocks(lo, hi); });
      return;
    }
    const int blend_chunks = kmix_host_dmixup_chunks(elems);
    const int cut_chunks = kmix_host_dcutmix_chunks(r.dtype, r.k, r.height, r.width, r.channels, r.layout);
    // the blocks, sample by sample: block b is (sample, chunk) = (start[s] <= b < start[s + 1]); SamplesFirst()
    // numbers the same blocks chunk by chunk instead (RunBlocks)
    start_.resize(r.n + 1);
    start_[0] = 0;
    for (int s = 0; s < r.n; ++s) start_[s + 1] = start_[s] + (IsCut(s) ? cut_chunks : blend_chunks);
    RunInTasks(pool, start_[r.n], elems, [this, elems](long long lo, long long hi) { RunBlocks(lo, hi, elems); });
  }

 private:
  // run(lo, hi) over blocks [0, blocks) in runs of consecutive blocks, a few tasks per thread of the pool.
  template <typename Pool, typename Run>
  static void RunInTasks(Pool& pool, long long blocks, long long elems, Run run) {
    const long long tasks = std::min<long long>(blocks, 8LL * std::max(1, pool.NumThreads()));
    for (long long t = 0; t < tasks; ++t) {
      const long long lo = blocks * t / tasks, hi = blocks * (t + 1) / tasks;
      pool.AddWork([run, lo, hi](int) { run(lo, hi); }, (hi - lo) * elems);
    }
    pool.RunAll();
  }

  bool IsCut(int s) const { return M == Method::kDCutMix || (M == Method::kSwitch && this->rec_.cut[s]); }

  // A deep float32 DCutMix nesting: chunk 0 of every sample, then chunk 1, ... (as kmix_host_dcutmix orders it).
  bool SamplesFirst() const {
    return M == Method::kDCutMix && kmix_host_dcutmix_samples_first(this->rec_.dtype, this->rec_.k);
  }

  // Blocks [lo, hi) of the list start_ numbers, or with SamplesFirst() block b is chunk b / n of sample b % n.
  void RunBlocks(long long lo, long long hi, long long elems) {
    const kmix::Record& r = this->rec_;
    const bool samples_first = SamplesFirst();
    int s = samples_first ? 0 : (int)(std::upper_bound(start_.begin(), start_.end(), lo) - start_.begin()) - 1;
    for (long long b = lo; b < hi; ++b) {
      int c;
      if (samples_first) {
        s = (int)(b % r.n);
        c = (int)(b / r.n);
      } else {
        while (b >= start_[s + 1]) ++s;
        c = (int)(b - start_[s]);
      }
      // samples first: this task's next block of sample s is b + n (chunk c + 1), whose input rows the block
      // prefetches (kmix_host_dcutmix_block)
      const int next = samples_first && b + r.n < hi ? c + 1 : -1;
      const int rc = IsCut(s) ? kmix_host_dcutmix_block(r.dtype, this->in_.data(), this->out_.data(), r.sources.data(),
                                                        r.boxes.data(), r.n, r.k, r.height, r.width, r.channels,
                                                        r.layout, c, s, next)
                              : kmix_host_dmixup_block(r.dtype, this->in_.data(), this->out_.data(), r.sources.data(),
                                                       r.weights.data(), r.n, r.k, elems, c, s);
      DALI_ENFORCE(rc == 0, "dali_kmix: internal error, a kernel block was refused");
    }
  }

  // Blocks [lo, hi) of the fused launch: block b is band b % bands of sample b / bands.
  void RunNormBlocks(long long lo, long long hi) {
    const kmix::Record& r = this->rec_;
    const int bands = kmix_host_norm_bands(r.dtype, r.height, r.width, r.channels);
    for (long long b = lo; b < hi; ++b) {
      const int rc = kmix_host_mix_norm_block(
          r.dtype, this->norm_.out_dtype, this->in_.data(), this->out_.data(), r.sources.data(),
          r.weights.empty() ? nullptr : r.weights.data(), r.boxes.empty() ? nullptr : r.boxes.data(),
          r.cut.empty() ? nullptr : r.cut.data(), this->MethodCode(), r.n, r.k, r.height, r.width, r.channels,
          r.layout, this->norm_.OutLayoutCode(), this->mean_c_.data(), this->inv_c_.data(), this->mirror_.data(),
          (int)(b % bands), (int)(b / bands));
      DALI_ENFORCE(rc == 0, "dali_kmix: internal error, a kernel block was refused");
    }
  }

  std::vector<long long> start_;
};

#ifdef KMIX_WITH_GPU
// GPU: the record reaches the device in one asynchronous copy, the kernel runs on ws.stream(). One launch function
// for the three operators (DALI's scratchpad templates instantiated once, not once per method).
// Device memory from DALI's pool, released in stream order when the scratchpad goes out of scope (after the launch
// is queued); ToContiguousGPU packs every array (the pointers, the record and, fused, the normalisation's factors
// and mirror flags; an empty one costs nothing) into one pinned staging buffer (freed in stream order too, so it
// lives until the copy has run) and issues one cudaMemcpyAsync on `stream`.
static void LaunchOnGpu(int method, const kmix::Record& r, const NormArgs& norm,
                        const std::vector<const void*>& in_ptrs, const std::vector<void*>& out_ptrs,
                        const std::vector<float>& mean_c, const std::vector<float>& inv_c,
                        const std::vector<unsigned char>& mirror_v, cudaStream_t stream) {
  dali::kernels::DynamicScratchpad scratch(dali::AccessOrder{stream});
  auto [in, out, sources, weights, boxes, cut, mean, inv, mirror] = scratch.ToContiguousGPU(
      stream, in_ptrs, out_ptrs, r.sources, r.weights, r.boxes, r.cut, mean_c, inv_c, mirror_v);
  if (norm.on) {
    const int rc = kmix_gpu_launch_norm(r.dtype, norm.out_dtype, in, out, sources,
                                        r.weights.empty() ? nullptr : weights, r.boxes.empty() ? nullptr : boxes,
                                        r.cut.empty() ? nullptr : cut, method, r.n, r.k, r.height, r.width,
                                        r.channels, r.layout, norm.OutLayoutCode(), mean, inv, mirror, stream);
    if (rc != 0) DALI_FAIL("dali_kmix: launching the fused kernel failed: ", kmix_gpu_error_string(rc));
    return;
  }
  const int rc = kmix_gpu_launch(method, r.dtype, in, out, sources, weights, boxes, cut, r.n, r.k, r.height, r.width,
                                 r.channels, r.layout, stream);
  if (rc != 0) DALI_FAIL("dali_kmix: launching the blend kernel failed: ", kmix_gpu_error_string(rc));
}

template <Method M>
class KMixBlend<dali::GPUBackend, M> : public KMixBlendBase<dali::GPUBackend, M> {
 public:
  using KMixBlendBase<dali::GPUBackend, M>::KMixBlendBase;

 protected:
  void RunImpl(dali::Workspace& ws) override {
    const auto& images = ws.Input<dali::GPUBackend>(0);
    auto& output = ws.Output<dali::GPUBackend>(0);
    output.SetLayout(dali::TensorLayout(this->OutLayout()));
    if (this->rec_.n == 0) return;
    this->Pointers(images, output);
    LaunchOnGpu(this->MethodCode(), this->rec_, this->norm_, this->in_, this->out_, this->mean_c_, this->inv_c_,
                this->mirror_, ws.stream());
  }
};
#endif

// ------------------------------------------------------------------ fn.kmix_draw: the record drawn natively
#ifndef KMIX_NO_NPYRANDOM  // NumPy's libnpyrandom.a is linked in (else the drawing stays in Python)

// Doubles that travel exactly through a string argument: Python's float.hex() of each, separated by spaces.
inline std::vector<double> HexDoubles(const std::string& text) {
  std::vector<double> out;
  const char* p = text.c_str();
  while (*p) {
    char* end = nullptr;
    const double v = std::strtod(p, &end);
    if (end == p) DALI_FAIL("dali_kmix: internal error, a float argument does not parse: '", text, "'");
    out.push_back(v);
    p = end;
    while (*p == ' ') ++p;
  }
  return out;
}

inline std::vector<float> ToFloats(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

// A double as Python's repr writes it (the shortest digits that read back; ".0" on an integral value), so that the
// messages name values as dali_kmix.dali's Python checks do.
inline std::string PyFloat(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string out(buf, r.ptr);
  if (out.find_first_of(".eEn") == std::string::npos) out += ".0";  // not "inf"/"nan", no exponent, no point
  return out;
}

inline std::string PyList(const double* v, int n) {
  std::string out = "[";
  for (int i = 0; i < n; ++i) out += (i ? ", " : "") + PyFloat(v[i]);
  return out + "]";
}

// The values of sample s of a numeric input as doubles (flattened); "" or the message.
inline std::string SampleDoubles(const dali::TensorList<CPUBackend>& tl, const char* name, int s,
                                 std::vector<double>* out) {
  const int64_t m = tl.tensor_shape(s).num_elements();
  out->resize(m);
  const void* p = tl.raw_tensor(s);
  for (int64_t i = 0; i < m; ++i) {
    double& v = (*out)[i];
    switch (tl.type()) {
      case DALI_FLOAT: v = ((const float*)p)[i]; break;
      case DALI_FLOAT64: v = ((const double*)p)[i]; break;
      case DALI_FLOAT16: v = (double)(float)((const dali::float16*)p)[i]; break;
      default:
        if (!WithInteger(tl.type(), p, i, [&](auto x) { v = (double)x; }))
          return kmix::Str(name, " must be numbers, got dtype ", dali::TypeName(tl.type()));
    }
  }
  return "";
}

// alpha given per sample (dali_kmix.dali.per_sample_alpha, its checks and messages): a scalar or K values each;
// the K-vector shared by the batch when every sample has the same one (*rows false), else n x K (*rows true).
inline std::string PerSampleAlpha(const dali::TensorList<CPUBackend>& tl, int n, int k, bool batch_mode,
                                  std::vector<double>* alpha, bool* rows) {
  alpha->assign((size_t)n * k, 0.0);
  std::vector<double> v;
  for (int s = 0; s < n; ++s) {
    std::string err = SampleDoubles(tl, "alpha", s, &v);
    if (!err.empty()) return err;
    double* row = alpha->data() + (size_t)s * k;
    if (v.size() == 1) {
      if (!(std::isfinite(v[0]) && v[0] > 0.0))
        return kmix::Str("alpha must be > 0 and finite, got ", PyFloat(v[0]), " for sample ", s);
      std::fill(row, row + k, v[0]);
      continue;
    }
    if ((int)v.size() != k)
      return kmix::Str("alpha must be a scalar or have length k=", k, ", got shape (", v.size(), ",): ",
                       PyList(v.data(), (int)v.size()), " for sample ", s);
    for (double a : v)
      if (!(std::isfinite(a) && a > 0.0))
        return kmix::Str("alpha must contain only finite values > 0, got ", PyList(v.data(), k), " for sample ", s);
    std::copy(v.begin(), v.end(), row);
  }
  *rows = false;
  for (int s = 1; s < n && !*rows; ++s)
    *rows = !std::equal(alpha->begin() + (size_t)s * k, alpha->begin() + (size_t)(s + 1) * k, alpha->begin());
  if (!*rows) {
    alpha->resize(n ? k : 0);
  } else if (batch_mode) {
    int s = 1;
    while (std::equal(alpha->begin() + (size_t)s * k, alpha->begin() + (size_t)(s + 1) * k, alpha->begin())) ++s;
    return kmix::Str("mode='batch' draws one Dirichlet for the whole batch, so alpha must be the same for every "
                     "sample; sample ", s, " has alpha ", PyList(alpha->data() + (size_t)s * k, k), " but sample 0 has ",
                     PyList(alpha->data(), k), " (mode='sample' gives every sample its own alpha)");
  }
  return "";
}

// prob given per sample (one value each, in [0, 1]: dali_kmix.dali._Draws.runtime_args).
inline std::string PerSampleProb(const dali::TensorList<CPUBackend>& tl, int n, std::vector<double>* prob) {
  prob->resize(n);
  std::vector<double> v;
  for (int s = 0; s < n; ++s) {
    std::string err = SampleDoubles(tl, "prob", s, &v);
    if (!err.empty()) return err;
    if (v.empty()) return kmix::Str("prob given as a DataNode must hold a value per sample, got none for sample ", s);
    if (v.size() != 1)
      return kmix::Str("prob given as a DataNode must hold one value per sample, got ", v.size(), " for sample ", s);
    (*prob)[s] = v[0];
  }
  for (int s = 0; s < n; ++s)
    if (!((*prob)[s] >= 0.0 && (*prob)[s] <= 1.0))
      return kmix::Str("prob must be in [0, 1], got ", PyFloat((*prob)[s]), " for sample ", s);
  return "";
}

// fn.kmix_draw(images, labels, keys[, centers][, alpha][, prob][, real]): the record and the label outputs of
// dali_kmix.dali's drawing python_function (_PluginRecord), drawn in C++ with NumPy's generator (kmix_draw.h), bit
// for bit: the same SeedSequence of a 0 word and the keys' bits, spawned at (shard_id, index), the same
// draws, nesting and soft targets. Saliency-DCutMix finds the salient points of the images here
// (kmix_host_salient_points). With shape_input, input 0 is the images' shapes (images.shape(): GPU pipelines,
// whose images stay on the device; _PluginRecordGivenCenters is the python_function it replaces), and
// Saliency-DCutMix takes the points found on the device as the input after the keys (centers_input).
// Stateless: the keys come from DALI's checkpointed random operator.
class KMixDraw : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit KMixDraw(const dali::OpSpec& spec)
      : dali::StatelessOperator<CPUBackend>(spec),
        method_(spec.GetArgument<int>("method")),
        k_(spec.GetArgument<int>("k")),
        batch_mode_(spec.GetArgument<std::string>("mode") == "batch"),
        dense_(spec.GetArgument<std::string>("label_format") == "dense"),
        num_classes_(spec.GetArgument<int>("num_classes")),
        layout_(spec.GetArgument<std::string>("layout")),
        alpha_input_(spec.GetArgument<bool>("alpha_input")),
        prob_input_(spec.GetArgument<bool>("prob_input")),
        shape_input_(spec.GetArgument<bool>("shape_input")),
        centers_input_(spec.GetArgument<bool>("centers_input")),
        alpha_(HexDoubles(spec.GetArgument<std::string>("alpha"))),
        cut_alpha_(HexDoubles(spec.GetArgument<std::string>("cutmix_alpha"))),
        taps_(ToFloats(HexDoubles(spec.GetArgument<std::string>("saliency_taps")))) {
    const std::vector<double> prob = HexDoubles(spec.GetArgument<std::string>("prob"));
    const std::vector<double> sw = HexDoubles(spec.GetArgument<std::string>("switch_prob"));
    const std::vector<double> sm = HexDoubles(spec.GetArgument<std::string>("smoothing"));
    DALI_ENFORCE(method_ >= 0 && method_ <= 3 && k_ >= 2 && (alpha_input_ || (int)alpha_.size() == k_) &&
                     (prob_input_ || prob.size() == 1) &&
                     sw.size() == 1 && sm.size() == 1 && num_classes_ >= 1 &&
                     (method_ != 3 || (int)cut_alpha_.size() == k_) &&
                     (method_ != 2 || centers_input_ || taps_.size() == 5) &&
                     (!centers_input_ || (method_ == 2 && shape_input_)) &&
                     (!shape_input_ || method_ != 2 || centers_input_),
                 "dali_kmix: internal error, fn.kmix_draw's arguments do not describe a record");
    if (!prob_input_) prob_.assign(1, prob[0]);
    switch_prob_ = sw[0];
    // dali_kmix.reference.smoothed_values: float32 of 1 - s + s / C and s / C, worked out in double
    on_ = (float)(1.0 - sm[0] + sm[0] / num_classes_);
    off_ = (float)(sm[0] / num_classes_);
    // the entropy's first word is 0: the draws depend on the keys alone (the pipeline's seed seeds the keys'
    // operator), as _Draws.generator's [0, *key words]
    kmix_draw::SeedSequence::append_words(seed_words_, 0);
    kmix_draw::SeedSequence::append_words(spawn_, (uint64_t)spec.GetArgument<int64_t>("shard_id"));
    kmix_draw::SeedSequence::append_words(spawn_, (uint64_t)spec.GetArgument<int64_t>("index"));
    const std::string err = kmix::CheckLayoutArg(layout_);
    if (!err.empty()) DALI_FAIL(err);
  }

 protected:
  // centers_input: one (y, x) integer pair per sample (dali_kmix.saliency.salient_points, found on the device);
  // "" or the message.
  std::string GivenCenters(const dali::TensorList<CPUBackend>& tl, int n) {
    const char* bad = "dali_kmix: internal error, fn.kmix_draw's centers must be two integers (y, x) per sample";
    if (tl.num_samples() != n) return bad;
    centers_.assign(2 * (size_t)n, 0);
    for (int s = 0; s < n; ++s) {
      if (tl.tensor_shape(s).num_elements() != 2) return bad;
      for (int i = 0; i < 2; ++i)
        if (!WithInteger(tl.type(), tl.raw_tensor(s), i, [&](auto v) { centers_[2 * (size_t)s + i] = (int)v; }))
          return bad;
    }
    return "";
  }

  // With shape_input: the images' shapes (one integer vector per sample) as a list of shapes without data, for the
  // checks of the images' shapes; "" or the message.
  std::string ShapesOfInput(const dali::TensorList<CPUBackend>& tl, kmix::KmixList* list) {
    const int n = tl.num_samples();
    const int ndim = n > 0 ? (int)tl.tensor_shape(0).num_elements() : 3;
    shape_values_.assign((size_t)n * ndim, 0);
    for (int s = 0; s < n; ++s) {
      if (tl.tensor_shape(s).sample_dim() != 1 || tl.tensor_shape(s).num_elements() != ndim)
        return "dali_kmix: internal error, fn.kmix_draw's shape_input must be one shape vector of the same length "
               "per sample";
      int64_t* row = shape_values_.data() + (size_t)s * ndim;
      for (int i = 0; i < ndim; ++i)
        if (!WithInteger(tl.type(), tl.raw_tensor(s), i, [&](auto v) { row[i] = (int64_t)v; }))
          return kmix::Str("dali_kmix: internal error, fn.kmix_draw's shape_input must be integers, got dtype ",
                           dali::TypeName(tl.type()));
    }
    *list = kmix::KmixList();
    list->num_samples = n;
    list->ndim = ndim;
    list->shape = shape_values_.data();  // no dtype (-1) and no data: KmixList's defaults
    return "";
  }

  bool SetupImpl(std::vector<dali::OutputDesc>& output_desc, const dali::Workspace& ws) override {
    const auto& images = ws.Input<CPUBackend>(0);
    const int n = images.num_samples();
    std::string err;
    kmix::KmixList shapes_list;
    std::unique_ptr<ListView> view;
    if (shape_input_) {  // the images' shapes only: their type and layout are the blend operator's to check
      err = ShapesOfInput(images, &shapes_list);
      rec_ = kmix::Record();
      rec_.layout = layout_ == "CHW" ? KMIX_CHW : KMIX_HWC;
    } else {
      view = std::make_unique<ListView>(images, false);
      shapes_list = **view;
      err = kmix::CheckImageType(layout_, images.GetLayout().str(), shapes_list, &rec_);
    }
    const kmix::KmixList& im = shapes_list;
    rec_.n = n;
    if (err.empty() && n > 0) err = kmix::CheckImageShapes(layout_, im, &rec_);
    if (err.empty() && !shape_input_) err = kmix::CheckChannels(layout_, images.GetLayout().str(), im);
    if (err.empty() && n > 0 && method_ != 0 && (rec_.height < 1 || rec_.width < 1))
      err = kmix::Str("images: ", method_ == 2 ? "saliency-dcutmix" : method_ == 3 ? "dmixup+dcutmix" : "dcutmix",
                      " needs images of at least 1 x 1 pixels (its label weights are box areas / (H x W)), but sample "
                      "0 has shape ", kmix::ShapeStr(kmix::SampleShape(im, 0), 3), " (layout ", layout_,
                      ", H x W = ", rec_.height, " x ", rec_.width, "); drop or resize empty images before mixing");
    if (err.empty() && n > 0 && method_ == 2 && !centers_input_ && rec_.channels < 1)  // as saliency.salient_points
      err = kmix::Str("images: saliency needs at least one channel, but sample 0 has shape ",
                      kmix::ShapeStr(kmix::SampleShape(im, 0), 3), " (layout ", layout_, ")");
    if (err.empty()) err = ScalarPerSample(ws.Input<CPUBackend>(1), "labels", "integer class indices", n, &labels_);
    for (int s = 0; err.empty() && s < n; ++s)
      if (labels_[s] < 0 || labels_[s] >= num_classes_)
        err = kmix::Str("labels must lie in [0, num_classes=", num_classes_, "), got label ", labels_[s]);
    if (err.empty()) {
      const auto& keys = ws.Input<CPUBackend>(2);
      if (keys.type() != DALI_FLOAT64 || keys.num_samples() != n)
        err = "dali_kmix: internal error, fn.kmix_draw's keys must be one float64 per sample";
      key_words_.clear();
      for (int s = 0; err.empty() && s < n; ++s) {
        if (keys.tensor_shape(s).num_elements() != 1) {
          err = "dali_kmix: internal error, fn.kmix_draw's keys must be one float64 per sample";
          break;
        }
        uint64_t bits;
        std::memcpy(&bits, keys.raw_tensor(s), sizeof bits);
        key_words_.push_back(bits);
      }
    }
    int next = 3;  // the inputs after the keys: the salient points, alpha, prob, the reader's "real sample" flags
    if (centers_input_) {
      if (err.empty()) err = GivenCenters(ws.Input<CPUBackend>(next), n);
      ++next;
    }
    alpha_rows_ = false;
    if (alpha_input_) {
      if (err.empty()) err = PerSampleAlpha(ws.Input<CPUBackend>(next), n, k_, batch_mode_, &batch_alpha_, &alpha_rows_);
      ++next;
    }
    if (prob_input_) {
      if (err.empty()) err = PerSampleProb(ws.Input<CPUBackend>(next), n, &prob_);
      ++next;
    }
    valid_.clear();
    if (err.empty() && ws.NumInput() > next) {
      std::vector<int64_t> v;
      err = ScalarPerSample(ws.Input<CPUBackend>(next), "real samples", "integers or bools", n, &v);
      for (auto x : v) valid_.push_back(x != 0);
    }
    if (!err.empty()) DALI_FAIL(err);
    auto uniform = [&](std::initializer_list<int64_t> shape, dali::DALIDataType t) {
      return dali::OutputDesc{dali::uniform_list_shape(n, dali::TensorShape<>(shape)), t};
    };
    const int k = k_;
    output_desc.clear();
    output_desc.push_back(uniform({k}, DALI_INT32));  // sources
    if (method_ == 0) output_desc.push_back(uniform({k}, DALI_FLOAT));  // weights
    if (method_ == 1 || method_ == 2) output_desc.push_back(uniform({k - 1, 4}, DALI_INT32));  // boxes
    if (method_ == 3) {
      output_desc.push_back(uniform({k}, DALI_FLOAT));
      output_desc.push_back(uniform({k - 1, 4}, DALI_INT32));
      output_desc.push_back(uniform({1}, DALI_UINT8));  // cut
    }
    if (dense_) {
      output_desc.push_back(uniform({num_classes_}, DALI_FLOAT));
    } else {
      output_desc.push_back(uniform({k}, DALI_INT32));
      output_desc.push_back(uniform({k}, DALI_FLOAT));
    }
    return true;
  }

  void RunImpl(dali::Workspace& ws) override {
    const auto& images = ws.Input<CPUBackend>(0);
    const int n = rec_.n, k = k_;
    std::vector<uint32_t> entropy = seed_words_;
    for (uint64_t w : key_words_) {
      entropy.push_back((uint32_t)w);
      if (w >> 32) entropy.push_back((uint32_t)(w >> 32));
    }
    sources_.resize((size_t)n * k);
    weights_.resize((size_t)n * k);
    boxes_.resize((size_t)n * (k - 1) * 4);
    std::vector<int> points;
    if (method_ == 2 && n > 0 && centers_input_) {
      points = centers_;
    } else if (method_ == 2 && n > 0) {
      points.resize(2 * (size_t)n);
      std::vector<const void*> in(n);
      for (int s = 0; s < n; ++s) in[s] = images.raw_tensor(s);
      const int rc = kmix_host_salient_points(rec_.dtype, in.data(), points.data(), n, rec_.height, rec_.width,
                                              rec_.channels, rec_.layout, 64, 64, taps_.data(),
                                              std::max(1, ws.GetThreadPool().NumThreads()));
      DALI_ENFORCE(rc == 0, "dali_kmix: internal error, the salient points were refused");
    }
    int cut = 0;
    const int rc = kmix_host_draw_record(entropy.data(), (int)entropy.size(), spawn_.data(), (int)spawn_.size(),
                                         method_, n, k, alpha_input_ ? batch_alpha_.data() : alpha_.data(),
                                         alpha_rows_ ? 1 : 0, cut_alpha_.data(), batch_mode_ ? 1 : 0, prob_.data(),
                                         prob_input_ ? 1 : 0, switch_prob_, valid_.empty() ? nullptr : valid_.data(),
                                         rec_.height, rec_.width, points.empty() ? nullptr : points.data(),
                                         sources_.data(), weights_.data(), boxes_.data(), &cut);
    DALI_ENFORCE(rc == 0, "dali_kmix: internal error, the record could not be drawn");
    int o = 0;
    auto rows = [&](int out, const void* src, size_t bytes) {
      auto& t = ws.Output<CPUBackend>(out);
      for (int s = 0; s < n; ++s) std::memcpy(t.raw_mutable_tensor(s), (const char*)src + s * bytes, bytes);
    };
    rows(o++, sources_.data(), sizeof(int) * k);
    if (method_ == 0 || method_ == 3) rows(o++, weights_.data(), sizeof(float) * k);
    if (method_ != 0) rows(o++, boxes_.data(), sizeof(int) * (k - 1) * 4);
    if (method_ == 3) {
      auto& t = ws.Output<CPUBackend>(o++);
      for (int s = 0; s < n; ++s) *t.mutable_tensor<uint8_t>(s) = (uint8_t)cut;
    }
    if (dense_) {
      targets_.resize((size_t)n * num_classes_);
      const int lrc = kmix_host_mix_labels(labels_.data(), n, sources_.data(), weights_.data(), n, k, num_classes_, on_,
                                           off_, targets_.data(), 0);  // the record is this operator's own
      DALI_ENFORCE(lrc == 0, "dali_kmix: internal error, the targets could not be mixed");
      rows(o++, targets_.data(), sizeof(float) * num_classes_);
    } else {
      std::vector<int> idx((size_t)n * k);
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = (int)labels_[sources_[i]];
      rows(o++, idx.data(), sizeof(int) * k);
      rows(o++, weights_.data(), sizeof(float) * k);
    }
  }

 private:
  int method_, k_;
  bool batch_mode_, dense_;
  int num_classes_;
  std::string layout_;
  bool alpha_input_, prob_input_, shape_input_, centers_input_, alpha_rows_ = false;
  std::vector<int64_t> shape_values_;  // shape_input: the batch's shapes, n x ndim
  std::vector<int> centers_;           // centers_input: the salient points (y, x) of every sample
  std::vector<double> alpha_, cut_alpha_, batch_alpha_, prob_;
  std::vector<float> taps_;
  double switch_prob_ = 0.0;
  float on_ = 1.0f, off_ = 0.0f;
  std::vector<uint32_t> seed_words_, spawn_;
  kmix::Record rec_;
  std::vector<long long> labels_;  // kmix_host_mix_labels' type
  std::vector<uint64_t> key_words_;
  std::vector<unsigned char> valid_;
  std::vector<int> sources_, boxes_;
  std::vector<float> weights_, targets_;
};
#endif  // KMIX_NO_NPYRANDOM

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
#ifndef KMIX_NO_NPYRANDOM
DALI_REGISTER_OPERATOR(KmixDraw, ::dali_kmix::KMixDraw, CPU);
#endif
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


// The fused normalisation's arguments, the same in every blending operator's schema.
#define KMIX_NORM_ARGS                                                                                              \
  AddOptionalTypeArg("dtype", "FLOAT or FLOAT16: normalise the mixed batch in the same pass, as crop_mirror_normalize "  \
                 "would after the mix (the same float32 bits: (x - mean[c]) * (1 / std[c]), the DMixup of uint8 "     \
                 "rounded to uint8 first; float16 rounds to nearest even, where DALI's CPU crop_mirror_normalize "     \
                 "rounds exact ties away from zero), and output that type. Default: no normalisation.")               \
      .AddOptionalArg("mean", "With dtype: the mean, one value or one per channel.", std::vector<float>{})          \
      .AddOptionalArg("std", "With dtype: the standard deviation (> 0), one value or one per channel.",            \
                      std::vector<float>{})                                                                          \
      .AddOptionalArg("mirror", "With dtype: 1 flips the sample left-right (after mixing), per sample.", 0, true)   \
      .AddOptionalArg("output_layout", "With dtype: \"HWC\" or \"CHW\" (default: layout).", std::string())

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
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING)
    .KMIX_NORM_ARGS;

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
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING)
    .KMIX_NORM_ARGS;

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
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING)
    .KMIX_NORM_ARGS;

#ifndef KMIX_NO_NPYRANDOM
DALI_SCHEMA(KmixDraw)
    .DocStr(R"(dali_kmix: draws one batch's mixing record and its label outputs on the host, in C++, with NumPy's
generator: the numbers dali_kmix.dali's drawing python_function gives, bit for bit. Outputs: sources, then weights
(method 0), boxes (1, 2) or weights, boxes and cut (3), then the targets (label_format "dense") or label_idx and
label_w. Used by dali_kmix.dali.dmixup / dcutmix / saliency_dcutmix / dmixup_or_dcutmix in CPU pipelines; the
float arguments are exact doubles written with Python's float.hex().)")
    .NumInput(3, 7)
    .OutputFn([](const OpSpec& spec) {
      const int method = spec.GetArgument<int>("method");
      return (method == 3 ? 4 : 2) + (spec.GetArgument<std::string>("label_format") == "dense" ? 1 : 2);
    })
    .InputDox(0, "images", "TensorList on the CPU",
              "The batch (its shape; Saliency-DCutMix also reads its pixels), or with shape_input its shapes.")
    .InputDox(1, "labels", "TensorList of integers", "One class index per sample.")
    .InputDox(2, "keys", "TensorList of float64", "One key per sample (fn.random.uniform).")
    .InputDox(3, "extra0", "TensorList of numbers",
              "Optional inputs extra0..extra3, in this order: the salient points (y, x) per sample "
              "(centers_input), alpha per sample (alpha_input), prob per sample (prob_input), 0 for a reader's "
              "padding samples.")
    .InputDox(4, "extra1", "TensorList of numbers", "Optional: the next of those inputs.")
    .InputDox(5, "extra2", "TensorList of numbers", "Optional: the next of those inputs.")
    .InputDox(6, "extra3", "TensorList of integers", "Optional: the reader's padding flags after the others.")
    .AddArg("method", "0 DMixup, 1 DCutMix, 2 Saliency-DCutMix, 3 DMixup or DCutMix per batch.", DALI_INT32)
    .AddArg("k", "Images per mix, K >= 2.", DALI_INT32)
    .AddArg("alpha", "K concentrations (float.hex, space-separated); \"\" with alpha_input.", DALI_STRING)
    .AddOptionalArg("alpha_input", "alpha comes per iteration, as the input after the keys.", false)
    .AddOptionalArg("prob_input", "prob comes per iteration, as the input after alpha's (or the keys).", false)
    .AddOptionalArg("shape_input", "Input 0 is the images' shapes (images.shape()), not the images.", false)
    .AddOptionalArg("centers_input", "Method 2 with shape_input: the salient points come as the input after the keys.",
                    false)
    .AddOptionalArg("cutmix_alpha", "Method 3: DCutMix's K concentrations (float.hex).", std::string())
    .AddArg("mode", "\"sample\" or \"batch\".", DALI_STRING)
    .AddArg("prob", "The probability that a sample is mixed (float.hex); \"\" with prob_input.", DALI_STRING)
    .AddOptionalArg("switch_prob", "Method 3: the probability of DCutMix (float.hex).", std::string("0x0.0p+0"))
    .AddArg("smoothing", "Label smoothing (float.hex).", DALI_STRING)
    .AddArg("num_classes", "Number of classes.", DALI_INT32)
    .AddArg("label_format", "\"dense\" or \"sparse\".", DALI_STRING)
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING)
    .AddArg("shard_id", "The spawn key's first word.", DALI_INT64)
    .AddArg("index", "The spawn key's second word (the operator's index in its pipeline).", DALI_INT64)
    .AddOptionalArg("saliency_taps", "Method 2: the 5 Gaussian taps of the saliency map (float.hex).", std::string());
#endif

}  // namespace dali
