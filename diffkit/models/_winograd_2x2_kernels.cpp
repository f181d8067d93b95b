// Winograd F(2x2, 3x3) tile transforms for float32 and bf16 maps, for diffkit.models.winograd (Lavin & Gray
// 2016, "Fast Algorithms for Convolutional Neural Networks", section 4.1 and eq. 8:
// Y = A^T [(G g G^T) . (B^T d B)] A per 2x2 output tile, d the 4x4 input tile around it, with
// B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] and A^T = [[1, 1, 1, 0],
// [0, 1, -1, -1]]). The matrices hold only 0 and +-1, so the transforms add no rounding of their
// own beyond one rounding of each result to the map's dtype (none for float32), computed in float.
// The products between the transformed tiles and weights are one batched matrix product in PyTorch.
//
// Maps are channels_last (N, H, W, C) float32 or bf16; transformed tiles are (16, Q, C) of the same dtype, tile
// p = (n * h + i) * w + j of an (N, 2h, 2w, C) map; each call handles tiles [p0, p0 + Q) so that
// the caller can work in chunks. Every tile value is a vector of channels (the fp32 F(4x4, 3x3)
// kernels' layout): the loops run along channels.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "_bf16.h"
#include "_winograd_tiles.h"

namespace diffkit {
namespace {

constexpr int64_t kLanes = kTileChannels;

const uint16_t* bf16_values(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
uint16_t* bf16_values(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// The element type of a map's values: float for float32, the bits of bf16 values otherwise.
template <typename T>
T* values(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) return t.data_ptr<float>();
  else return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// The dtype the transforms run in: x's, float32 or bf16.
at::ScalarType tile_dtype(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16");
  return x.scalar_type();
}

template <typename T>
void input_transform_2x2_impl(const torch::Tensor& x, torch::Tensor& v, int64_t p0);
template <typename T>
void output_transform_2x2_impl(const torch::Tensor& m, torch::Tensor& y, int64_t p0, const std::vector<float>& beta);
template <typename T>
void output_gradient_transform_2x2_impl(const torch::Tensor& dy, torch::Tensor& dm, int64_t p0);

}  // namespace

// v[:, q] = B^T d B for the tiles p0 + q of x (zero padding 1 on every side).
void input_transform_2x2(torch::Tensor x, torch::Tensor v, int64_t p0) {
  const at::ScalarType dtype = tile_dtype(x, "x");
  check_tile_map(x, dtype, 2, "x");
  check_tile_values(v, dtype, 16, x.size(3), p0, x.size(0) * (x.size(1) / 2) * (x.size(2) / 2), "v");
  if (dtype == at::kFloat) input_transform_2x2_impl<float>(x, v, p0);
  else input_transform_2x2_impl<uint16_t>(x, v, p0);
}

namespace {

template <typename T>
void input_transform_2x2_impl(const torch::Tensor& x, torch::Tensor& v, int64_t p0) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), h = H / 2, w = W / 2;
  (void)N;
  const int64_t Q = v.size(1);
  const T* xp = values<T>(x);
  T* vp = values<T>(v);
  static const std::vector<T> zeros(kLanes, T(0));
  for_each_tile(Q, p0, h, w, C, 16, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* rows) {
    for (int s = 0; s < 4; ++s) {  // column s of the tile: (B^T d)[a][s] along its rows
      const int64_t col = 2 * j - 1 + s;
      const T* d[4];
      for (int r = 0; r < 4; ++r) {
        const int64_t row = 2 * i - 1 + r;
        d[r] = (row < 0 || row >= H || col < 0 || col >= W) ? zeros.data() : xp + ((n * H + row) * W + col) * C + c0;
      }
      float* __restrict__ o0 = rows + (0 * 4 + s) * kLanes;
      float* __restrict__ o1 = rows + (1 * 4 + s) * kLanes;
      float* __restrict__ o2 = rows + (2 * 4 + s) * kLanes;
      float* __restrict__ o3 = rows + (3 * 4 + s) * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        const float d0 = load(d[0][k]), d1 = load(d[1][k]), d2 = load(d[2][k]), d3 = load(d[3][k]);
        o0[k] = d0 - d2;
        o1[k] = d1 + d2;
        o2[k] = d2 - d1;
        o3[k] = d1 - d3;
      }
    }
    for (int a = 0; a < 4; ++a) {  // then each transformed row along its columns, rounded to T
      const float* __restrict__ r0 = rows + (a * 4) * kLanes;
      T* __restrict__ v0 = vp + ((a * 4 + 0) * Q + q) * C + c0;
      T* __restrict__ v1 = vp + ((a * 4 + 1) * Q + q) * C + c0;
      T* __restrict__ v2 = vp + ((a * 4 + 2) * Q + q) * C + c0;
      T* __restrict__ v3 = vp + ((a * 4 + 3) * Q + q) * C + c0;
      for (int64_t k = 0; k < K; ++k) {
        const float d0 = r0[k], d1 = r0[kLanes + k], d2 = r0[2 * kLanes + k], d3 = r0[3 * kLanes + k];
        store(d0 - d2, v0 + k);
        store(d1 + d2, v1 + k);
        store(d2 - d1, v2 + k);
        store(d1 - d3, v3 + k);
      }
    }
  });
}

}  // namespace

// y's tiles p0 + q = A^T m[:, q] A (+ bias[c], float32, if given), rounded to y's dtype once.
void output_transform_2x2(torch::Tensor m, torch::Tensor y, int64_t p0, c10::optional<torch::Tensor> bias) {
  const at::ScalarType dtype = tile_dtype(y, "y");
  check_tile_map(y, dtype, 2, "y");
  const int64_t C = y.size(3);
  check_tile_values(m, dtype, 16, C, p0, y.size(0) * (y.size(1) / 2) * (y.size(2) / 2), "m");
  std::vector<float> beta(C, 0.f);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C && bias->is_contiguous() &&
                bias->scalar_type() == at::kFloat, "bias must be a contiguous float32 (C,) tensor");
    std::copy(bias->data_ptr<float>(), bias->data_ptr<float>() + C, beta.begin());
  }
  if (dtype == at::kFloat) output_transform_2x2_impl<float>(m, y, p0, beta);
  else output_transform_2x2_impl<uint16_t>(m, y, p0, beta);
}

namespace {

template <typename T>
void output_transform_2x2_impl(const torch::Tensor& m, torch::Tensor& y, int64_t p0, const std::vector<float>& beta) {
  const int64_t H = y.size(1), W = y.size(2), C = y.size(3), h = H / 2, w = W / 2;
  const int64_t Q = m.size(1);
  const T* mp = values<T>(m);
  T* yp = values<T>(y);
  for_each_tile(Q, p0, h, w, C, 16, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* p) {
    for (int b = 0; b < 4; ++b) {  // P = A^T M: P[0][b] = M0b + M1b + M2b, P[1][b] = M1b - M2b - M3b
      const T* __restrict__ m0 = mp + ((0 * 4 + b) * Q + q) * C + c0;
      const T* __restrict__ m1 = mp + ((1 * 4 + b) * Q + q) * C + c0;
      const T* __restrict__ m2 = mp + ((2 * 4 + b) * Q + q) * C + c0;
      const T* __restrict__ m3 = mp + ((3 * 4 + b) * Q + q) * C + c0;
      float* __restrict__ q0 = p + b * kLanes;
      float* __restrict__ q1 = p + (4 + b) * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        const float a1 = load(m1[k]), a2 = load(m2[k]);
        q0[k] = load(m0[k]) + a1 + a2;
        q1[k] = a1 - a2 - load(m3[k]);
      }
    }
    const float* __restrict__ bb = beta.data() + c0;
    for (int r = 0; r < 2; ++r) {  // Y = P A: Y[r][0] = P0 + P1 + P2, Y[r][1] = P1 - P2 - P3
      const float* __restrict__ pr = p + 4 * r * kLanes;
      T* __restrict__ o0 = yp + ((n * H + 2 * i + r) * W + 2 * j) * C + c0;
      T* __restrict__ o1 = o0 + C;
      for (int64_t k = 0; k < K; ++k) {
        store(pr[k] + pr[kLanes + k] + pr[2 * kLanes + k] + bb[k], o0 + k);
        store(pr[kLanes + k] - pr[2 * kLanes + k] - pr[3 * kLanes + k] + bb[k], o1 + k);
      }
    }
  });
}

}  // namespace

// dm[:, q] = A dY A^T (the adjoint of output_transform_2x2) for the tiles p0 + q of dy.
void output_gradient_transform_2x2(torch::Tensor dy, torch::Tensor dm, int64_t p0) {
  const at::ScalarType dtype = tile_dtype(dy, "dy");
  check_tile_map(dy, dtype, 2, "dy");
  check_tile_values(dm, dtype, 16, dy.size(3), p0, dy.size(0) * (dy.size(1) / 2) * (dy.size(2) / 2), "dm");
  if (dtype == at::kFloat) output_gradient_transform_2x2_impl<float>(dy, dm, p0);
  else output_gradient_transform_2x2_impl<uint16_t>(dy, dm, p0);
}

namespace {

template <typename T>
void output_gradient_transform_2x2_impl(const torch::Tensor& dy, torch::Tensor& dm, int64_t p0) {
  const int64_t H = dy.size(1), W = dy.size(2), C = dy.size(3), h = H / 2, w = W / 2;
  const int64_t Q = dm.size(1);
  const T* yp = values<T>(dy);
  T* mp = values<T>(dm);
  for_each_tile(Q, p0, h, w, C, 16, [&](int64_t q, int64_t n, int64_t i, int64_t j, int64_t c0, int64_t K,
                                        float* rr) {
    for (int s = 0; s < 2; ++s) {  // R = A dY: R0 = y0, R1 = y0 + y1, R2 = y0 - y1, R3 = -y1 (column s)
      const T* __restrict__ y0 = yp + ((n * H + 2 * i) * W + 2 * j + s) * C + c0;
      const T* __restrict__ y1 = y0 + W * C;
      float* __restrict__ r0 = rr + (0 * 2 + s) * kLanes;
      float* __restrict__ r1 = rr + (1 * 2 + s) * kLanes;
      float* __restrict__ r2 = rr + (2 * 2 + s) * kLanes;
      float* __restrict__ r3 = rr + (3 * 2 + s) * kLanes;
      for (int64_t k = 0; k < K; ++k) {
        const float a = load(y0[k]), b = load(y1[k]);
        r0[k] = a;
        r1[k] = a + b;
        r2[k] = a - b;
        r3[k] = -b;
      }
    }
    for (int a = 0; a < 4; ++a) {  // dM[a] = R[a] A^T = (R0, R0 + R1, R0 - R1, -R1)
      const float* __restrict__ s0 = rr + (a * 2) * kLanes;
      const float* __restrict__ s1 = s0 + kLanes;
      T* __restrict__ d0 = mp + ((a * 4 + 0) * Q + q) * C + c0;
      T* __restrict__ d1 = mp + ((a * 4 + 1) * Q + q) * C + c0;
      T* __restrict__ d2 = mp + ((a * 4 + 2) * Q + q) * C + c0;
      T* __restrict__ d3 = mp + ((a * 4 + 3) * Q + q) * C + c0;
      for (int64_t k = 0; k < K; ++k) {
        store(s0[k], d0 + k);
        store(s0[k] + s1[k], d1 + k);
        store(s0[k] - s1[k], d2 + k);
        store(-s1[k], d3 + k);
      }
    }
  });
}

}  // namespace


// The transformed weights U = G g G^T (Lavin & Gray 2016, section 4.1: G = [[1, 0, 0],
// [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]) of a channels_last float32 weight (Co, Ci, 3, 3),
// rounded to bf16 once, as (16, Co, Ci): one pass along each output channel's contiguous input
// channels. flipped: those of the flipped kernel with Ci and Co swapped (the input gradient's
// convolution, in Co, out Ci), the same values at other tile positions: with J the reversal of the
// three taps G J = P G, P swapping rows 0 and 3, so G (J g J) G^T = P U P, i.e. U[a][b] goes to
// (pi(a), pi(b)) with pi swapping 0 and 3.
torch::Tensor weight_transform_2x2(torch::Tensor weight, bool flipped) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kFloat &&
              weight.device().is_cpu() && weight.is_contiguous(at::MemoryFormat::ChannelsLast),
              "weight must be a channels_last float32 CPU tensor (Co, Ci, 3, 3)");
  const int64_t Co = weight.size(0), Ci = weight.size(1);
  auto u = torch::empty({16, Co, Ci}, weight.options().dtype(at::kBFloat16));
  const float* wp = weight.data_ptr<float>();  // memory (Co, 3, 3, Ci)
  uint16_t* up = bf16_values(u);
  auto position = [flipped](int a, int b) {
    const int pa = flipped && (a == 0 || a == 3) ? 3 - a : a, pb = flipped && (b == 0 || b == 3) ? 3 - b : b;
    return pa * 4 + pb;
  };
  at::parallel_for(0, Co, 1, [&](int64_t o0, int64_t o1) {
    std::vector<float> t(12 * kLanes);  // (G g)[a][kw] for a block of input channels
    for (int64_t co = o0; co < o1; ++co) {
      for (int64_t c0 = 0; c0 < Ci; c0 += kLanes) {
        const int64_t K = std::min(kLanes, Ci - c0);
        const float* g = wp + co * 9 * Ci + c0;
        for (int kw = 0; kw < 3; ++kw) {
          const float* __restrict__ g0 = g + (0 * 3 + kw) * Ci;
          const float* __restrict__ g1 = g + (1 * 3 + kw) * Ci;
          const float* __restrict__ g2 = g + (2 * 3 + kw) * Ci;
          float* __restrict__ t0 = t.data() + (0 * 3 + kw) * kLanes;
          float* __restrict__ t1 = t.data() + (1 * 3 + kw) * kLanes;
          float* __restrict__ t2 = t.data() + (2 * 3 + kw) * kLanes;
          float* __restrict__ t3 = t.data() + (3 * 3 + kw) * kLanes;
          for (int64_t k = 0; k < K; ++k) {
            t0[k] = g0[k];
            t1[k] = 0.5f * (g0[k] + g1[k] + g2[k]);
            t2[k] = 0.5f * (g0[k] - g1[k] + g2[k]);
            t3[k] = g2[k];
          }
        }
        for (int a = 0; a < 4; ++a) {  // U[a][b] = sum over kw of (G g)[a][kw] G[b][kw]
          const float* __restrict__ x0 = t.data() + (a * 3 + 0) * kLanes;
          const float* __restrict__ x1 = t.data() + (a * 3 + 1) * kLanes;
          const float* __restrict__ x2 = t.data() + (a * 3 + 2) * kLanes;
          uint16_t* __restrict__ u0 = up + (position(a, 0) * Co + co) * Ci + c0;
          uint16_t* __restrict__ u1 = up + (position(a, 1) * Co + co) * Ci + c0;
          uint16_t* __restrict__ u2 = up + (position(a, 2) * Co + co) * Ci + c0;
          uint16_t* __restrict__ u3 = up + (position(a, 3) * Co + co) * Ci + c0;
          for (int64_t k = 0; k < K; ++k) {
            store(x0[k], u0 + k);
            store(0.5f * (x0[k] + x1[k] + x2[k]), u1 + k);
            store(0.5f * (x0[k] - x1[k] + x2[k]), u2 + k);
            store(x2[k], u3 + k);
          }
        }
      }
    }
  });
  return u;
}

}  // namespace diffkit
