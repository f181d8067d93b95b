// What the two Winograd kernel files share (F(4x4, 3x3) fp32 in _winograd_kernels.cpp, F(2x2, 3x3)
// fp32 and bf16 in _winograd_2x2_kernels.cpp): channels_last maps (N, H, W, C) with H and W multiples of the
// output tile, transformed tiles (P, Q, C) for P = (tile + 2)^2 values per tile, tile
// p = (n * h + i) * w + j, and a parallel loop over the tiles [p0, p0 + Q) of one chunk.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace diffkit {

constexpr int64_t kTileChannels = 64;  // channels per inner loop (a tile's working set stays in L1)

inline const char* dtype_name(at::ScalarType dtype) { return dtype == at::kFloat ? "float32" : "bfloat16"; }

// A contiguous (N, H, W, C) map of ``dtype`` on the CPU with H and W multiples of ``tile``.
inline void check_tile_map(const torch::Tensor& t, at::ScalarType dtype, int64_t tile, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous() && t.scalar_type() == dtype && t.device().is_cpu(),
              name, " must be a contiguous ", dtype_name(dtype), " CPU tensor (N, H, W, C)");
  TORCH_CHECK(t.size(1) % tile == 0 && t.size(2) % tile == 0, name, ": H and W must be multiples of ", tile);
}

// Contiguous (positions, Q, channels) transformed tiles of ``dtype`` for the tiles [p0, p0 + Q) of ``tiles``.
inline void check_tile_values(const torch::Tensor& t, at::ScalarType dtype, int64_t positions, int64_t channels,
                              int64_t p0, int64_t tiles, const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous() && t.scalar_type() == dtype && t.size(0) == positions &&
              t.size(2) == channels, name, " must be a contiguous ", dtype_name(dtype), " (", positions,
              ", Q, C) tensor");
  TORCH_CHECK(p0 >= 0 && p0 + t.size(1) <= tiles, name, ": tiles out of range");
}

// body(q, n, i, j, c0, K, scratch) for every tile q in [0, Q) (tile p0 + q of an (N, h tiles,
// w tiles, C) map: image n, tile row i, tile column j) and every block of K <= kTileChannels
// channels from c0, in parallel over tiles; scratch holds scratch_rows * kTileChannels floats per thread.
template <typename Body>
void for_each_tile(int64_t Q, int64_t p0, int64_t h, int64_t w, int64_t C, int64_t scratch_rows, const Body& body) {
  at::parallel_for(0, Q, 1, [&](int64_t q0, int64_t q1) {
    std::vector<float> scratch(scratch_rows * kTileChannels);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t p = p0 + q, n = p / (h * w), i = (p / w) % h, j = p % w;
      for (int64_t c0 = 0; c0 < C; c0 += kTileChannels)
        body(q, n, i, j, c0, std::min(kTileChannels, C - c0), scratch.data());
    }
  });
}

}  // namespace diffkit
