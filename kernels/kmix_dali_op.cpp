// dali_kmix DALI plugin: the blending kernels as native DALI CPU operators.
//
//   fn.kmix_dmixup(images, sources, weights, layout="HWC"|"CHW")
//   fn.kmix_dcutmix(images, sources, boxes, layout="HWC"|"CHW")
//   fn.kmix_mix(images, sources, weights, boxes, cut, layout="HWC"|"CHW")   (DMixup or DCutMix per sample)
//
// apply one MixParams record, drawn by dali_kmix on the Python side, to a batch:
//   images   N samples of one shape, (H, W, C) or (C, H, W); uint8, float16 or float32
//   sources  int32 (K,) per sample: sources[s][0] == s, sources[s][j] the image of share j
//   weights  float32 (K,) per sample (DMixup): finite, >= 0
//   boxes    int32 (K - 1, 4) per sample (DCutMix): (y0, x0, y1, x1), half-open, nested
//   cut      uint8 () per sample (kmix_mix): 1 applies the sample's boxes, 0 its weights
// and return the mixed batch (same shape, dtype and layout).
//
// Why a plugin: a python_function hands back arrays that DALI copies into its own buffers,
// one more full pass over the batch per iteration; here the kernels write straight into
// DALI's output, and the work runs on the pipeline's own thread pool.
//
// The kernels are the .cu files, compiled for the host in kmix_host.cpp, a separate
// translation unit: its host shim and the CUDA headers that DALI's headers pull in cannot
// meet in one. This file validates the inputs (a bad record raises, it never reads or
// writes outside the images) and hands out the blocks of the host grid.
#include <cmath>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "kmix_codes.h"

extern "C" {
int kmix_host_dmixup_chunks(long long sample_elems);
int kmix_host_dcutmix_chunks(int height, int width, int channels, int layout);
int kmix_host_dmixup_block(int dtype, const void* const* in, void* const* out, const int* sources,
                           const float* weights, int n, int k, long long sample_elems, int chunk,
                           int sample);
int kmix_host_dcutmix_block(int dtype, const void* const* in, void* const* out, const int* sources,
                            const int* boxes, int n, int k, int height, int width, int channels,
                            int layout, int chunk, int sample);
}

namespace dali_kmix {

using dali::CPUBackend;
using dali::make_string;

enum class Method { kDMixup, kDCutMix, kSwitch };

// Element-type codes of the host entry points (kmix_common.cuh).
inline int DtypeCode(dali::DALIDataType t) {
  switch (t) {
    case DALI_UINT8: return KMIX_U8;
    case DALI_FLOAT16: return KMIX_F16;
    case DALI_FLOAT: return KMIX_F32;
    default: return -1;
  }
}

// A shape as Python writes it: (3, 4), (7,), ().
template <typename Shape>
std::string ShapeStr(const Shape& shape) {
  const int ndim = static_cast<int>(shape.size());
  std::string out = "(";
  for (int i = 0; i < ndim; ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (ndim == 1 ? ",)" : ")");
}

// Every sample of a record input has the shape `want` (written `symbol` in the message).
inline void EnforceSampleShapes(const dali::TensorList<CPUBackend>& input, const char* name, const char* symbol,
                                const std::vector<int64_t>& want) {
  for (int s = 0; s < input.num_samples(); ++s) {
    const auto shape = input.shape()[s];
    bool same = shape.size() == (int)want.size();
    for (int i = 0; same && i < shape.size(); ++i) same = shape[i] == want[i];
    DALI_ENFORCE(same, make_string(name, " must have shape ", symbol, " = ", ShapeStr(want),
                                   " for every sample, got ", ShapeStr(shape), " for sample ", s));
  }
}

// Stateless: the output depends on the inputs alone (the record is drawn upstream from DALI's
// own checkpointed random operator), so a checkpoint holds nothing for it and a pipeline built
// with enable_checkpointing=True accepts it.
template <Method M>
class KMixBlend : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit KMixBlend(const dali::OpSpec& spec)
      : dali::StatelessOperator<CPUBackend>(spec), layout_(spec.GetArgument<std::string>("layout")) {
    DALI_ENFORCE(layout_ == "HWC" || layout_ == "CHW",
                 make_string("layout must be \"HWC\" or \"CHW\", got \"", layout_, "\""));
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc>& output_desc, const dali::Workspace& ws) override {
    const auto& images = ws.Input<CPUBackend>(0);
    const auto& sources = ws.Input<CPUBackend>(1);
    const int n = images.num_samples();
    code_ = DtypeCode(images.type());
    DALI_ENFORCE(code_ >= 0, make_string("images must have dtype uint8, float16 or float32, got ",
                                         dali::TypeName(images.type())));
    const std::string found = images.GetLayout().str();
    DALI_ENFORCE(found.empty() || found == layout_,
                 make_string("layout='", layout_, "' was given but the images carry layout '", found, "'"));
    EnforceType(sources, "sources", DALI_INT32);
    // The record inputs after sources: weights (DMixup), boxes (DCutMix), or weights, boxes, cut (kmix_mix).
    const int weights_at = M == Method::kDCutMix ? -1 : 2;
    const int boxes_at = M == Method::kDMixup ? -1 : (M == Method::kDCutMix ? 2 : 3);
    if (weights_at >= 0) EnforceType(ws.Input<CPUBackend>(weights_at), "weights", DALI_FLOAT);
    if (boxes_at >= 0) EnforceType(ws.Input<CPUBackend>(boxes_at), "boxes", DALI_INT32);
    if (M == Method::kSwitch) EnforceType(ws.Input<CPUBackend>(4), "cut", DALI_UINT8);
    h_ = w_ = c_ = 0;
    k_ = 0;
    if (n > 0) {
      const auto first = images.shape()[0];
      DALI_ENFORCE(first.size() == 3, make_string("images: every sample must have 3 dimensions (", layout_,
                                                  "), got shape ", ShapeStr(first), " for sample 0"));
      for (int s = 1; s < n; ++s) {
        DALI_ENFORCE(images.shape()[s] == first,
                     make_string("images: all samples of a batch must have the same shape; sample 0 has shape ",
                                 ShapeStr(first), " but sample ", s, " has shape ", ShapeStr(images.shape()[s]),
                                 " (layout ",
                                 layout_, "); resize or crop before mixing"));
      }
      if (layout_ == "HWC") {
        h_ = first[0], w_ = first[1], c_ = first[2];
      } else {
        c_ = first[0], h_ = first[1], w_ = first[2];
      }
      const auto k_shape = sources.shape()[0];
      DALI_ENFORCE(k_shape.size() == 1 && k_shape[0] >= 1,
                   make_string("sources must hold K >= 1 int32 indices per sample, got shape ", ShapeStr(k_shape)));
      k_ = static_cast<int>(k_shape[0]);
      Gather(sources, n);
      if (weights_at >= 0) GatherWeights(ws.Input<CPUBackend>(weights_at), n);
      if (boxes_at >= 0) GatherBoxes(ws.Input<CPUBackend>(boxes_at), n);
      if (M == Method::kSwitch) GatherCut(ws.Input<CPUBackend>(4), n);
    }
    output_desc.resize(1);
    output_desc[0] = {images.shape(), images.type()};
    return true;
  }

  void RunImpl(dali::Workspace& ws) override {
    const auto& images = ws.Input<CPUBackend>(0);
    auto& output = ws.Output<CPUBackend>(0);
    output.SetLayout(dali::TensorLayout(layout_));
    const int n = images.num_samples();
    if (n == 0) return;
    in_.resize(n);
    out_.resize(n);
    for (int s = 0; s < n; ++s) {
      in_[s] = images.raw_tensor(s);
      out_[s] = output.raw_mutable_tensor(s);
    }
    const int layout = layout_ == "HWC" ? KMIX_HWC : KMIX_CHW;
    const long long elems = (long long)h_ * w_ * c_;
    const int blend_chunks = kmix_host_dmixup_chunks(elems);
    const int cut_chunks = kmix_host_dcutmix_chunks(h_, w_, c_, layout);
    auto& pool = ws.GetThreadPool();
    for (int s = 0; s < n; ++s) {
      const bool cut = M == Method::kDCutMix || (M == Method::kSwitch && cut_[s]);
      const int chunks = cut ? cut_chunks : blend_chunks;
      for (int c = 0; c < chunks; ++c) {
        pool.AddWork([this, s, c, n, layout, elems, cut](int) {
          const int rc = cut ? kmix_host_dcutmix_block(code_, in_.data(), out_.data(), src_.data(), boxes_.data(),
                                                       n, k_, h_, w_, c_, layout, c, s)
                             : kmix_host_dmixup_block(code_, in_.data(), out_.data(), src_.data(),
                                                      weights_.data(), n, k_, elems, c, s);
          DALI_ENFORCE(rc == 0, "dali_kmix: internal error, a kernel block was refused");
        }, elems / chunks);
      }
    }
    pool.RunAll();
  }

 private:
  // sources (K,) per sample -> src_ (N * K), checked: column 0 is the sample itself, all in [0, N).
  void Gather(const dali::TensorList<CPUBackend>& sources, int n) {
    EnforceSampleShapes(sources, "sources", "(K,)", {k_});
    src_.resize((size_t)n * k_);
    for (int s = 0; s < n; ++s) {
      const int* p = sources.tensor<int>(s);
      DALI_ENFORCE(p[0] == s, make_string("sources[", s, "][0] must be ", s,
                                          " (every sample anchors its own output), got ", p[0]));
      for (int j = 0; j < k_; ++j) {
        DALI_ENFORCE(p[j] >= 0 && p[j] < n, make_string("sources must lie in [0, N=", n, "), got sources[", s,
                                                        "][", j, "] = ", p[j]));
        src_[(size_t)s * k_ + j] = p[j];
      }
    }
  }

  static void EnforceType(const dali::TensorList<CPUBackend>& input, const char* name, dali::DALIDataType want) {
    DALI_ENFORCE(input.type() == want, make_string(name, " must have dtype ", dali::TypeName(want), ", got ",
                                                   dali::TypeName(input.type())));
  }

  void GatherWeights(const dali::TensorList<CPUBackend>& weights, int n) {
    EnforceSampleShapes(weights, "weights", "(K,)", {k_});
    weights_.resize((size_t)n * k_);
    for (int s = 0; s < n; ++s) {
      const float* p = weights.tensor<float>(s);
      for (int j = 0; j < k_; ++j) {
        DALI_ENFORCE(std::isfinite(p[j]) && p[j] >= 0.0f,
                     make_string("weights must be finite and >= 0, got weights[", s, "][", j, "] = ", p[j]));
        weights_[(size_t)s * k_ + j] = p[j];
      }
    }
  }

  void GatherBoxes(const dali::TensorList<CPUBackend>& boxes, int n) {
    EnforceSampleShapes(boxes, "boxes", "(K-1, 4)", {k_ - 1, 4});
    boxes_.resize((size_t)n * (k_ - 1) * 4);
    for (int s = 0; s < n; ++s) {
      const int* b = boxes.tensor<int>(s);
      for (int d = 0; d < k_ - 1; ++d) {
        const int* q = b + 4 * d;
        DALI_ENFORCE(0 <= q[0] && q[0] <= q[2] && q[2] <= h_ && 0 <= q[1] && q[1] <= q[3] && q[3] <= w_,
                     make_string("boxes must satisfy 0 <= y0 <= y1 <= H=", h_, " and 0 <= x0 <= x1 <= W=", w_,
                                 "; box ", d, " of sample ", s, " is (", q[0], ", ", q[1], ", ", q[2], ", ",
                                 q[3], ")"));
        if (d > 0) {
          const int* o = q - 4;
          DALI_ENFORCE(q[0] >= o[0] && q[1] >= o[1] && q[2] <= o[2] && q[3] <= o[3],
                       make_string("boxes must be nested: box ", d, " of sample ", s, " (", q[0], ", ", q[1],
                                   ", ", q[2], ", ", q[3], ") is not inside box ", d - 1, " (", o[0], ", ",
                                   o[1], ", ", o[2], ", ", o[3], ")"));
        }
        for (int e = 0; e < 4; ++e) boxes_[((size_t)s * (k_ - 1) + d) * 4 + e] = q[e];
      }
    }
  }

  // cut: one uint8 per sample (shape () or (1,)), 0 or 1.
  void GatherCut(const dali::TensorList<CPUBackend>& cut, int n) {
    cut_.resize(n);
    for (int s = 0; s < n; ++s) {
      const auto shape = cut.shape()[s];
      DALI_ENFORCE(dali::volume(shape) == 1,
                   make_string("cut must hold one value per sample, got shape ", ShapeStr(shape), " for sample ", s));
      const unsigned char v = *cut.tensor<unsigned char>(s);
      DALI_ENFORCE(v <= 1, make_string("cut must be 0 or 1, got cut[", s, "] = ", (int)v));
      cut_[s] = v;
    }
  }

  std::string layout_;
  int code_ = -1, h_ = 0, w_ = 0, c_ = 0, k_ = 0;
  std::vector<int> src_, boxes_;
  std::vector<float> weights_;
  std::vector<unsigned char> cut_;
  std::vector<const void*> in_;
  std::vector<void*> out_;
};

}  // namespace dali_kmix

DALI_REGISTER_OPERATOR(KmixDmixup, ::dali_kmix::KMixBlend<::dali_kmix::Method::kDMixup>, ::dali::CPU);
DALI_REGISTER_OPERATOR(KmixDcutmix, ::dali_kmix::KMixBlend<::dali_kmix::Method::kDCutMix>, ::dali::CPU);
DALI_REGISTER_OPERATOR(KmixMix, ::dali_kmix::KMixBlend<::dali_kmix::Method::kSwitch>, ::dali::CPU);

// DALI_SCHEMA defines a static registration object that nothing else names.
#pragma GCC diagnostic ignored "-Wunused-variable"

DALI_SCHEMA(KmixDmixup)
    .DocStr(R"(dali_kmix DMixup: every output sample is the Dirichlet-weighted sum of K images of the batch,
out[s] = sum_j weights[s][j] * images[sources[s][j]] (float32 fused multiply-adds in order j = 0..K-1;
uint8 rounds half to even and clips, float16 rounds to nearest even). Use dali_kmix.dali.dmixup,
which draws the record and the labels.)")
    .NumInput(3)
    .NumOutput(1)
    .InputDox(0, "images", "TensorList of uint8, float16 or float32, HWC or CHW", "Same-shape samples.")
    .InputDox(1, "sources", "TensorList of int32 (K,)", "sources[s][0] == s; the images mixed into sample s.")
    .InputDox(2, "weights", "TensorList of float32 (K,)", "The shares of the K images (finite, >= 0).")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);

DALI_SCHEMA(KmixDcutmix)
    .DocStr(R"(dali_kmix DCutMix: every output pixel is copied from the image of the deepest of K-1 nested boxes
that holds it (sources[s][d + 1] inside box d, the sample itself outside box 0). Use dali_kmix.dali.dcutmix,
which draws the record and the area-weighted labels.)")
    .NumInput(3)
    .NumOutput(1)
    .InputDox(0, "images", "TensorList of uint8, float16 or float32, HWC or CHW", "Same-shape samples.")
    .InputDox(1, "sources", "TensorList of int32 (K,)", "sources[s][0] == s; the images pasted into sample s.")
    .InputDox(2, "boxes", "TensorList of int32 (K-1, 4)", "(y0, x0, y1, x1), half-open, each inside the last.")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);

DALI_SCHEMA(KmixMix)
    .DocStr(R"(dali_kmix DMixup or DCutMix per sample: sample s is blended with its weights where cut[s] == 0 and
cut-and-pasted with its boxes where cut[s] == 1, exactly as KmixDmixup / KmixDcutmix would. Use
dali_kmix.dali.dmixup_or_dcutmix, which draws the records, the method and the labels.)")
    .NumInput(5)
    .NumOutput(1)
    .InputDox(0, "images", "TensorList of uint8, float16 or float32, HWC or CHW", "Same-shape samples.")
    .InputDox(1, "sources", "TensorList of int32 (K,)", "sources[s][0] == s; the images mixed into sample s.")
    .InputDox(2, "weights", "TensorList of float32 (K,)", "The shares of the K images (finite, >= 0).")
    .InputDox(3, "boxes", "TensorList of int32 (K-1, 4)", "(y0, x0, y1, x1), half-open, each inside the last.")
    .InputDox(4, "cut", "TensorList of uint8 ()", "1: paste the boxes; 0: blend with the weights.")
    .AddArg("layout", "\"HWC\" or \"CHW\".", DALI_STRING);
