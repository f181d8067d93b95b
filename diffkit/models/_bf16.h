// bf16 <-> float for diffkit's CPU kernels, on bf16 values handled as their uint16_t bits
// (c10::BFloat16's own conversions do not vectorise); the float overloads let one template serve both.
#pragma once

#include <bit>
#include <cstdint>

namespace diffkit {

inline float load(float v) { return v; }
inline float load(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }
inline void store(float v, float* out) { *out = v; }
inline void store(float v, uint16_t* out) {  // round to nearest even; a nan stays a (quiet) nan
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  *out = static_cast<uint16_t>(v != v ? ((bits >> 16) | 0x40u) : rounded);
}

}  // namespace diffkit
