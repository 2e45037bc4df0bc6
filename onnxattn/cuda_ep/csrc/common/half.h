#pragma once
// 16-bit float storage types shared by CPU and CUDA code (bit-compatible with onnxruntime's
// Ort::Float16_t / Ort::BFloat16_t and CUDA's __half / __nv_bfloat16). Arithmetic is always done in
// float32; these only convert. Conversions round to nearest even and keep NaN/Inf.
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace onnxattn {

struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

ONNXATTN_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

ONNXATTN_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

ONNXATTN_HD float to_float(float x) { return x; }
ONNXATTN_HD float to_float(BFloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

ONNXATTN_HD float to_float(Float16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1Fu;
  const uint32_t mantissa = x.bits & 0x3FFu;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));  // Inf / NaN
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24
  const float magnitude = float(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

template <typename T>
ONNXATTN_HD T from_float(float x);

template <>
ONNXATTN_HD float from_float<float>(float x) { return x; }

template <>
ONNXATTN_HD BFloat16 from_float<BFloat16>(float x) {
  uint32_t bits = float_to_bits(x);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return BFloat16{uint16_t((bits >> 16) | 0x40u)};  // quiet NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return BFloat16{uint16_t(bits >> 16)};
}

template <>
ONNXATTN_HD Float16 from_float<Float16>(float x) {
  const uint32_t bits = float_to_bits(x);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return Float16{uint16_t(sign | 0x7E00u)};     // NaN
  if (abs_bits >= 0x477FF000u) return Float16{uint16_t(sign | 0x7C00u)};    // rounds to Inf
  if (abs_bits < 0x38800000u) {                                             // fp16 subnormal or zero
    // Scale into the subnormal grid (units of 2^-24) and round to nearest even via float addition.
    const float magnitude = bits_to_float(abs_bits) + 0.5f;                 // 0.5 = 2^-1: ulp of [0.5, 1)
    return Float16{uint16_t(sign | uint16_t(float_to_bits(magnitude) - 0x3F000000u))};
  }
  uint32_t rounded = abs_bits + 0xFFFu + ((abs_bits >> 13) & 1u);  // round mantissa to 10 bits, nearest even
  return Float16{uint16_t(sign | uint16_t((rounded - 0x38000000u) >> 13))};
}

}  // namespace onnxattn
