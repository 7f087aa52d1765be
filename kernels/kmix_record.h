// dali_kmix: the checks of a MixParams record, shared by the CPU and the GPU backends of the
// DALI operators (kmix_dali_op.cpp) and exposed by the host library (kmix_host.cpp,
// kmix_host_validate_record) to the tests and fuzzers.
//
// Free of DALI and CUDA types: an operator input is described by a KmixList (per-sample
// host pointers and shapes, as DALI's TensorList or a list of NumPy arrays holds them).
// GatherRecord checks the images' metadata and the record inputs, and gathers the record
// into contiguous arrays (what the kernels read); it returns "" or the error message, one
// message table for every caller. A record that passes is safe: every source index lies
// in [0, N), every box inside the image and nested in the one before, every weight finite
// and >= 0, so the kernels never read or write outside the images.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kmix_codes.h"

namespace kmix {

enum class Method { kDMixup = 0, kDCutMix = 1, kSwitch = 2 };

// One operator input. data may be null for the images (only their metadata is checked).
struct KmixList {
  int num_samples = 0;
  int ndim = 0;                         // every sample has ndim extents
  const int64_t* shape = nullptr;       // num_samples * ndim extents, sample-major
  const void* const* data = nullptr;    // num_samples host pointers
  int dtype = -1;                       // KMIX_U8, KMIX_F16, KMIX_F32, KMIX_I32, or -1 (another type)
  const char* type_name = "";           // the dtype as the caller names it, for messages ("int64")
};

// A checked record, gathered: what the kernels take.
struct Record {
  int n = 0, k = 0, height = 0, width = 0, channels = 0;
  int layout = KMIX_HWC;
  int dtype = -1;                        // the images' element type
  std::vector<int> sources;              // n * k
  std::vector<float> weights;            // n * k        (DMixup, kmix_mix)
  std::vector<int> boxes;                // n * (k-1) * 4 (DCutMix, kmix_mix)
  std::vector<unsigned char> cut;        // n            (kmix_mix)
};

template <typename... Args>
std::string Str(const Args&... args) {
  std::ostringstream ss;
  (ss << ... << args);
  return ss.str();
}

// Extents as Python writes a shape: (3, 4), (7,), ().
inline std::string ShapeStr(const int64_t* shape, int ndim) {
  std::string out = "(";
  for (int i = 0; i < ndim; ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (ndim == 1 ? ",)" : ")");
}

inline std::string ShapeStr(const std::vector<int64_t>& shape) {
  return ShapeStr(shape.data(), static_cast<int>(shape.size()));
}

inline const int64_t* SampleShape(const KmixList& l, int s) { return l.shape + static_cast<int64_t>(s) * l.ndim; }

// The operator's layout argument.
inline std::string CheckLayoutArg(const std::string& layout) {
  if (layout == "HWC" || layout == "CHW") return "";
  return Str("layout must be \"HWC\" or \"CHW\", got \"", layout, "\"");
}

namespace detail {

inline std::string CheckType(const KmixList& l, const char* name, int want, const char* want_name) {
  if (l.dtype == want) return "";
  return Str(name, " must have dtype ", want_name, ", got ", l.type_name);
}

inline std::string CheckCount(const KmixList& l, const char* name, int n) {
  if (l.num_samples == n) return "";
  return Str(name, " has ", l.num_samples, " samples but images has ", n);
}

// Every sample of `l` has the shape `want` (written `symbol` in the message).
inline std::string CheckShapes(const KmixList& l, const char* name, const char* symbol,
                               const std::vector<int64_t>& want) {
  for (int s = 0; s < l.num_samples; ++s) {
    const int64_t* sh = SampleShape(l, s);
    bool same = l.ndim == static_cast<int>(want.size());
    for (int i = 0; same && i < l.ndim; ++i) same = sh[i] == want[i];
    if (!same)
      return Str(name, " must have shape ", symbol, " = ", ShapeStr(want), " for every sample, got ",
                 ShapeStr(sh, l.ndim), " for sample ", s);
  }
  return "";
}

// The (K,) row of every sample of `l` into *out (n * k), each row checked first by check(s, row) ("" when fine).
template <typename T, typename Check>
std::string GatherRows(const KmixList& l, const char* name, const Record& r, std::vector<T>* out, Check check) {
  std::string err = CheckShapes(l, name, "(K,)", {r.k});
  out->resize(static_cast<size_t>(r.n) * r.k);
  for (int s = 0; err.empty() && s < r.n; ++s) {
    const T* row = static_cast<const T*>(l.data[s]);
    err = check(s, row);
    std::copy(row, row + r.k, out->begin() + static_cast<size_t>(s) * r.k);
  }
  return err;
}

inline std::string GatherSources(const KmixList& l, Record* r) {
  const int n = r->n, k = r->k;
  return GatherRows(l, "sources", *r, &r->sources, [n, k](int s, const int* p) -> std::string {
    if (p[0] != s)
      return Str("sources[", s, "][0] must be ", s, " (every sample anchors its own output), got ", p[0]);
    for (int j = 0; j < k; ++j)
      if (p[j] < 0 || p[j] >= n)
        return Str("sources must lie in [0, N=", n, "), got sources[", s, "][", j, "] = ", p[j]);
    return "";
  });
}

inline std::string GatherWeights(const KmixList& l, Record* r) {
  const int k = r->k;
  return GatherRows(l, "weights", *r, &r->weights, [k](int s, const float* p) -> std::string {
    for (int j = 0; j < k; ++j)
      if (!(std::isfinite(p[j]) && p[j] >= 0.0f))
        return Str("weights must be finite and >= 0, got weights[", s, "][", j, "] = ", p[j]);
    return "";
  });
}

inline std::string BoxStr(const int* q) { return Str("(", q[0], ", ", q[1], ", ", q[2], ", ", q[3], ")"); }

inline std::string GatherBoxes(const KmixList& l, Record* r) {
  std::string err = CheckShapes(l, "boxes", "(K-1, 4)", {r->k - 1, 4});
  if (!err.empty()) return err;
  const int n = r->n, k = r->k, h = r->height, w = r->width;
  r->boxes.resize(static_cast<size_t>(n) * (k - 1) * 4);
  for (int s = 0; s < n; ++s) {
    const int* b = static_cast<const int*>(l.data[s]);
    for (int d = 0; d < k - 1; ++d) {
      const int* q = b + 4 * d;
      if (!(0 <= q[0] && q[0] <= q[2] && q[2] <= h && 0 <= q[1] && q[1] <= q[3] && q[3] <= w))
        return Str("boxes must satisfy 0 <= y0 <= y1 <= H=", h, " and 0 <= x0 <= x1 <= W=", w, "; box ", d,
                   " of sample ", s, " is ", BoxStr(q));
      if (d > 0) {
        const int* o = q - 4;
        if (!(q[0] >= o[0] && q[1] >= o[1] && q[2] <= o[2] && q[3] <= o[3]))
          return Str("boxes must be nested: box ", d, " of sample ", s, " ", BoxStr(q), " is not inside box ",
                     d - 1, " ", BoxStr(o));
      }
      for (int e = 0; e < 4; ++e) r->boxes[(static_cast<size_t>(s) * (k - 1) + d) * 4 + e] = q[e];
    }
  }
  return "";
}

// cut: one uint8 per sample (shape () or (1,)), 0 or 1.
inline std::string GatherCut(const KmixList& l, Record* r) {
  r->cut.resize(r->n);
  for (int s = 0; s < r->n; ++s) {
    const int64_t* sh = SampleShape(l, s);
    int64_t volume = 1;
    for (int i = 0; i < l.ndim; ++i) volume *= sh[i];
    if (volume != 1)
      return Str("cut must hold one value per sample, got shape ", ShapeStr(sh, l.ndim), " for sample ", s);
    const unsigned char v = *static_cast<const unsigned char*>(l.data[s]);
    if (v > 1) return Str("cut must be 0 or 1, got cut[", s, "] = ", static_cast<int>(v));
    r->cut[s] = v;
  }
  return "";
}

}  // namespace detail

// The images' element type and carried layout (the blend operators and fn.kmix_draw): fills r's layout and dtype.
inline std::string CheckImageType(const std::string& layout, const std::string& found_layout, const KmixList& images,
                                  Record* out) {
  Record& r = *out;
  r = Record();
  r.layout = layout == "CHW" ? KMIX_CHW : KMIX_HWC;
  r.dtype = images.dtype;
  if (images.dtype != KMIX_U8 && images.dtype != KMIX_F16 && images.dtype != KMIX_F32)
    return Str("images must have dtype uint8, float16 or float32, got ", images.type_name);
  if (!found_layout.empty() && found_layout != layout)
    return Str("layout='", layout, "' was given but the images carry layout '", found_layout, "'");
  return "";
}

// The images' shapes (at least one sample): 3 dimensions, one shape for the batch, rows the kernels can index with
// int; fills r's n, height, width and channels.
inline std::string CheckImageShapes(const std::string& layout, const KmixList& images, Record* out) {
  Record& r = *out;
  r.n = images.num_samples;
  const int64_t* first = SampleShape(images, 0);
  if (images.ndim != 3)
    return Str("images: every sample must have 3 dimensions (", layout, "), got shape ",
               ShapeStr(first, images.ndim), " for sample 0");
  for (int s = 1; s < images.num_samples; ++s) {
    const int64_t* sh = SampleShape(images, s);
    if (sh[0] != first[0] || sh[1] != first[1] || sh[2] != first[2]) {  // worded as _checks.check_same_shapes
      const bool hwc = layout == "HWC";
      const bool size = hwc ? (sh[0] != first[0] || sh[1] != first[1]) : (sh[1] != first[1] || sh[2] != first[2]);
      return Str("images: all samples of a batch must have the same ", size ? "H x W" : "shape",
                 "; sample 0 has shape ", ShapeStr(first, 3), " but sample ", s, " has shape ", ShapeStr(sh, 3),
                 " (layout ", layout, "); resize or crop before mixing");
    }
  }
  // The kernels index a row (W * C or W elements) and the rows (H or C * H) with int; every extent is an int too
  // (checked first, so that the products below cannot overflow and the messages show the real extents).
  for (int d = 0; d < 3; ++d)
    if (first[d] > INT32_MAX)
      return Str("images: shape ", ShapeStr(first, 3), " (layout ", layout, ") has an extent of ", first[d],
                 "; every extent must be < 2^31");
  const int64_t rows = r.layout == KMIX_HWC ? first[0] : first[0] * first[1];
  const int64_t row_len = r.layout == KMIX_HWC ? first[1] * first[2] : first[2];
  if (rows > INT32_MAX || row_len > INT32_MAX)
    return Str("images: shape ", ShapeStr(first, 3), " (layout ", layout, ") has rows of ", row_len,
               " elements and ", rows, " rows; both must be < 2^31");
  const bool hwc = r.layout == KMIX_HWC;
  r.height = static_cast<int>(first[hwc ? 0 : 1]);
  r.width = static_cast<int>(first[hwc ? 1 : 2]);
  r.channels = static_cast<int>(first[hwc ? 2 : 0]);
  return "";
}

// Images that carry no layout and whose shape contradicts `layout`: "HWC" with more than 4 trailing and at most 4
// leading extents (3 x H x W), or "CHW" with more than 4 leading and at most 4 trailing (H x W x 3). Mixed in the
// wrong layout, the boxes would be cut across channels. Images that carry a layout are trusted (GatherRecord checks
// it against `layout`). Returns "" or the message (dali_kmix._checks.check_channels words it the same).
inline std::string CheckChannels(const std::string& layout, const std::string& found_layout, const KmixList& images) {
  constexpr int64_t kMaxChannels = 4;
  if (!found_layout.empty() || images.num_samples == 0 || images.ndim != 3) return "";
  const int64_t* s = SampleShape(images, 0);
  const bool hwc = layout == "HWC";
  if (hwc ? !(s[2] > kMaxChannels && s[0] <= kMaxChannels) : !(s[0] > kMaxChannels && s[2] <= kMaxChannels))
    return "";
  const std::string other = hwc ? "CHW" : "HWC";
  return Str("images: layout='", layout, "' was given but the images carry no layout and their shape ",
             ShapeStr(s, 3), " looks ", other, " (", hwc ? s[0] : s[2], " channels ", hwc ? "first" : "last",
             "); mixed as ", layout, " the boxes would be cut across channels. Pass layout='", other,
             "', or, if the shape is meant, give the images their layout (e.g. fn.reshape(images, layout='", layout,
             "'))");
}

// Check the images' metadata (dtype, layout, one shape of 3 dimensions) and the record inputs
// of `method` (sources and weights for DMixup; sources and boxes for DCutMix; sources, weights,
// boxes and cut for kmix_mix; the others null) and gather them into *out. `layout` is the
// operator's argument (already checked), `found_layout` the images' own ("" when unknown).
// Returns "" when valid, else the message.
inline std::string GatherRecord(Method method, const std::string& layout, const std::string& found_layout,
                                const KmixList& images, const KmixList& sources, const KmixList* weights,
                                const KmixList* boxes, const KmixList* cut, Record* out) {
  using namespace detail;  // NOLINT
  Record& r = *out;
  std::string err = CheckImageType(layout, found_layout, images, &r);
  if (!err.empty()) return err;
  const bool want_weights = method != Method::kDCutMix, want_boxes = method != Method::kDMixup;
  const bool want_cut = method == Method::kSwitch;
  if ((want_weights && !weights) || (want_boxes && !boxes) || (want_cut && !cut))
    return "dali_kmix: internal error, a record input is missing";
  err = CheckType(sources, "sources", KMIX_I32, "int32");
  if (err.empty() && want_weights) err = CheckType(*weights, "weights", KMIX_F32, "float");
  if (err.empty() && want_boxes) err = CheckType(*boxes, "boxes", KMIX_I32, "int32");
  if (err.empty() && want_cut) err = CheckType(*cut, "cut", KMIX_U8, "uint8");
  if (!err.empty()) return err;
  const int n = images.num_samples;
  r.n = n;
  err = CheckCount(sources, "sources", n);
  if (err.empty() && want_weights) err = CheckCount(*weights, "weights", n);
  if (err.empty() && want_boxes) err = CheckCount(*boxes, "boxes", n);
  if (err.empty() && want_cut) err = CheckCount(*cut, "cut", n);
  if (!err.empty() || n == 0) return err;
  err = CheckImageShapes(layout, images, &r);
  if (err.empty()) err = CheckChannels(layout, found_layout, images);  // before the boxes: they would only say
  if (!err.empty()) return err;                                          // "outside the image"
  const int64_t* k_shape = SampleShape(sources, 0);
  if (!(sources.ndim == 1 && k_shape[0] >= 1 && k_shape[0] <= INT32_MAX / 4))
    return Str("sources must hold K >= 1 int32 indices per sample, got shape ", ShapeStr(k_shape, sources.ndim));
  r.k = static_cast<int>(k_shape[0]);
  err = GatherSources(sources, &r);
  if (err.empty() && want_weights) err = GatherWeights(*weights, &r);
  if (err.empty() && want_boxes) err = GatherBoxes(*boxes, &r);
  if (err.empty() && want_cut) err = GatherCut(*cut, &r);
  return err;
}

}  // namespace kmix
