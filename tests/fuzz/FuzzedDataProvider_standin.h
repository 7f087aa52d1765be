// A stand-in for libFuzzer's <fuzzer/FuzzedDataProvider.h> (clang ships it, gcc does not), so that `make test` can
// build and run the host harness with g++ over a fixed set of inputs (tests/test_build.py). Only the calls the
// harness makes; each value is taken from the front of the data, and once the data is spent every value is its
// range's minimum (as libFuzzer's provider does). Written for this project, not libFuzzer's implementation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

class FuzzedDataProvider {
 public:
  FuzzedDataProvider(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining_bytes() const { return size_; }

  template <typename T>
  T ConsumeIntegralInRange(T min, T max) {
    static_assert(std::is_integral<T>::value, "an integer type");
    const uint64_t range = static_cast<uint64_t>(max) - static_cast<uint64_t>(min);
    uint64_t v = 0;
    for (size_t used = 0; used < sizeof(T) && size_ > 0 && (range >> (8 * used)) > 0; ++used) {
      v = (v << 8) | data_[0];
      ++data_;
      --size_;
    }
    if (range != std::numeric_limits<uint64_t>::max()) v %= range + 1;
    return static_cast<T>(static_cast<uint64_t>(min) + v);
  }

  template <typename T>
  T ConsumeIntegral() {
    return ConsumeIntegralInRange<T>(std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  }

  bool ConsumeBool() { return (ConsumeIntegral<uint8_t>() & 1) != 0; }

  template <typename T>
  T ConsumeProbability() {  // in [0, 1]
    return static_cast<T>(ConsumeIntegral<uint32_t>()) / static_cast<T>(std::numeric_limits<uint32_t>::max());
  }

  template <typename T>
  T ConsumeFloatingPointInRange(T min, T max) {
    return min + (max - min) * ConsumeProbability<T>();
  }

  template <typename T>
  std::vector<T> ConsumeBytes(size_t count) {
    const size_t n = count < size_ ? count : size_;
    std::vector<T> out(n);
    if (n) std::memcpy(out.data(), data_, n);
    data_ += n;
    size_ -= n;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};
