// Winograd F(4x4, 3x3) tile transforms for diffkit.models.winograd (Lavin & Gray 2016, "Fast
// Algorithms for Convolutional Neural Networks", section 4.2): Y = A^T [(G g G^T) . (B^T d B)] A
// per 4x4 output tile, d the 6x6 input tile around it. The products between the transformed
// tiles and weights are one batched matrix product in PyTorch; these kernels do the transforms,
// each in one pass over channels_last memory. Tiles are numbered p = (n * h + i) * w + j for an
// (N, 4h, 4w, C) map; each call handles tiles [p0, p0 + Q) so that the caller can work in chunks.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "_winograd_tiles.h"

namespace diffkit {
namespace {

constexpr int64_t kChunk = kTileChannels;

// B^T d for six input lines d0..d5 of K channels.
inline void input_lines(const float* const* d, float* const* o, int64_t K) {
  const float* __restrict__ d0 = d[0];
  const float* __restrict__ d1 = d[1];
  const float* __restrict__ d2 = d[2];
  const float* __restrict__ d3 = d[3];
  const float* __restrict__ d4 = d[4];
  const float* __restrict__ d5 = d[5];
  float* __restrict__ o0 = o[0];
  float* __restrict__ o1 = o[1];
  float* __restrict__ o2 = o[2];
  float* __restrict__ o3 = o[3];
  float* __restrict__ o4 = o[4];
  float* __restrict__ o5 = o[5];
  for (int64_t k = 0; k < K; ++k) {
    const float a1 = d1[k], a2 = d2[k], a3 = d3[k], a4 = d4[k];
    o0[k] = 4.f * d0[k] - 5.f * a2 + a4;
    o1[k] = -4.f * (a1 + a2) + a3 + a4;
    o2[k] = 4.f * (a1 - a2) - a3 + a4;
    o3[k] = 2.f * (a3 - a1) - a2 + a4;
    o4[k] = 2.f * (a1 - a3) - a2 + a4;
    o5[k] = 4.f * a1 - 5.f * a3 + d5[k];
  }
}

// A^T m for six transformed lines m0..m5 -> four output lines.
inline void output_lines(const float* const* m, float* const* o, int64_t K) {
  const float* __restrict__ m0 = m[0];
  const float* __restrict__ m1 = m[1];
  const float* __restrict__ m2 = m[2];
  const float* __restrict__ m3 = m[3];
  const float* __restrict__ m4 = m[4];
  const float* __restrict__ m5 = m[5];
  float* __restrict__ o0 = o[0];
  float* __restrict__ o1 = o[1];
  float* __restrict__ o2 = o[2];
  float* __restrict__ o3 = o[3];
  for (int64_t k = 0; k < K; ++k) {
    const float s12 = m1[k] + m2[k], d12 = m1[k] - m2[k], s34 = m3[k] + m4[k], d34 = m3[k] - m4[k];
    o0[k] = m0[k] + s12 + s34;
    o1[k] = d12 + 2.f * d34;
    o2[k] = s12 + 4.f * s34;
    o3[k] = d12 + 8.f * d34 + m5[k];
  }
}

// A y for four output-gradient lines y0..y3 -> six lines (the adjoint of output_lines).
inline void output_gradient_lines(const float* const* y, float* const* o, int64_t K) {
  const float* __restrict__ y0 = y[0];
  const float* __restrict__ y1 = y[1];
  const float* __restrict__ y2 = y[2];
  const float* __restrict__ y3 = y[3];
  float* __restrict__ o0 = o[0];
  float* __restrict__ o1 = o[1];
  float* __restrict__ o2 = o[2];
  float* __restrict__ o3 = o[3];
  float* __restrict__ o4 = o[4];
  float* __restrict__ o5 = o[5];
  for (int64_t k = 0; k < K; ++k) {
    const float e = y0[k] + y2[k], f = y1[k] + y3[k];
    const float g = y0[k] + 4.f * y2[k], h = 2.f * y1[k] + 8.f * y3[k];
    o0[k] = y0[k];
    o1[k] = e + f;
    o2[k] = e - f;
    o3[k] = g + h;
    o4[k] = g - h;
    o5[k] = y3[k];
  }
}

}  // namespace

// v[:, q] = B^T d B for the tiles p0 + q of x (zero padding 1 on every side).
void input_transform(torch::Tensor x, torch::Tensor v, int64_t p0) {
  check_tile_map(x, at::kFloat, 4, "x");
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), h = H / 4, w = W / 4;
  check_tile_values(v, at::kFloat, 36, C, p0, N * h * w, "v");
  const int64_t Q = v.size(1);
  const float* xp = x.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  static const std::vector<float> zeros(kChunk, 0.f);
  for_each_tile(Q, p0, h, w, C, 36, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* rows) {
    for (int s = 0; s < 6; ++s) {  // column s of the tile, along its rows
      const int64_t col = 4 * j - 1 + s;
      const float* d[6];
      float* o[6];
      for (int r = 0; r < 6; ++r) {
        const int64_t row = 4 * i - 1 + r;
        d[r] = (row < 0 || row >= H || col < 0 || col >= W) ? zeros.data() : xp + ((n * H + row) * W + col) * C + c0;
        o[r] = rows + (r * 6 + s) * kChunk;
      }
      input_lines(d, o, K);
    }
    for (int a = 0; a < 6; ++a) {  // then each transformed row, along its columns
      const float* d[6];
      float* o[6];
      for (int b = 0; b < 6; ++b) {
        d[b] = rows + (a * 6 + b) * kChunk;
        o[b] = vp + ((a * 6 + b) * Q + q) * C + c0;
      }
      input_lines(d, o, K);
    }
  });
}

// y's tiles p0 + q = A^T m[:, q] A.
void output_transform(torch::Tensor m, torch::Tensor y, int64_t p0) {
  check_tile_map(y, at::kFloat, 4, "y");
  const int64_t N = y.size(0), H = y.size(1), W = y.size(2), C = y.size(3), h = H / 4, w = W / 4;
  check_tile_values(m, at::kFloat, 36, C, p0, N * h * w, "m");
  const int64_t Q = m.size(1);
  const float* mp = m.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_each_tile(Q, p0, h, w, C, 36, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* rows) {
    for (int b = 0; b < 6; ++b) {  // column b of the transformed tile, along its rows
      const float* d[6];
      float* o[4];
      for (int a = 0; a < 6; ++a) d[a] = mp + ((a * 6 + b) * Q + q) * C + c0;
      for (int r = 0; r < 4; ++r) o[r] = rows + (r * 6 + b) * kChunk;
      output_lines(d, o, K);
    }
    for (int r = 0; r < 4; ++r) {  // then each output row, along its columns
      const float* d[6];
      float* o[4];
      for (int b = 0; b < 6; ++b) d[b] = rows + (r * 6 + b) * kChunk;
      for (int s = 0; s < 4; ++s) o[s] = yp + ((n * H + 4 * i + r) * W + 4 * j + s) * C + c0;
      output_lines(d, o, K);
    }
  });
}

// dm[:, q] = A dY A^T for the tiles p0 + q of dy.
void output_gradient_transform(torch::Tensor dy, torch::Tensor dm, int64_t p0) {
  check_tile_map(dy, at::kFloat, 4, "dy");
  const int64_t N = dy.size(0), H = dy.size(1), W = dy.size(2), C = dy.size(3), h = H / 4, w = W / 4;
  check_tile_values(dm, at::kFloat, 36, C, p0, N * h * w, "dm");
  const int64_t Q = dm.size(1);
  const float* yp = dy.data_ptr<float>();
  float* mp = dm.data_ptr<float>();
  for_each_tile(Q, p0, h, w, C, 36, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* rows) {
    for (int s = 0; s < 4; ++s) {  // column s of the output tile, along its rows
      const float* d[4];
      float* o[6];
      for (int r = 0; r < 4; ++r) d[r] = yp + ((n * H + 4 * i + r) * W + 4 * j + s) * C + c0;
      for (int a = 0; a < 6; ++a) o[a] = rows + (a * 4 + s) * kChunk;
      output_gradient_lines(d, o, K);
    }
    for (int a = 0; a < 6; ++a) {  // then each transformed row, along its columns
      const float* d[4];
      float* o[6];
      for (int s = 0; s < 4; ++s) d[s] = rows + (a * 4 + s) * kChunk;
      for (int b = 0; b < 6; ++b) o[b] = mp + ((a * 6 + b) * Q + q) * C + c0;
      output_gradient_lines(d, o, K);
    }
  });
}

}  // namespace diffkit
