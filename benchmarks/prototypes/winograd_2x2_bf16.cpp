// Prototype (not part of the diffkit package; built and measured by
// benchmarks/winograd_bf16_prototype.py, tested by tests/test_winograd_bf16_prototype.py):
// Winograd F(2x2, 3x3) tile transforms for bf16 maps (Lavin & Gray 2016, "Fast Algorithms for
// Convolutional Neural Networks", section 4.1 and eq. 8: Y = A^T [(G g G^T) . (B^T d B)] A per
// 2x2 output tile, d the 4x4 input tile around it). The matrices hold only 0, +-1 (B, A) and
// +-1/2 (G), so the transforms add no rounding of their own beyond the one bf16 rounding of each
// result (computed in float).
//
// Planar kernels first, for the contiguous layout diffkit's bf16 networks run in: maps are
// contiguous (N, C, H, W) bf16 (the input map may also be float32); transformed tiles are
// (16, C, Q) bf16 with the tiles of images n0 .. n0 + Q / (h w) numbered q = (n - n0) h w + i w + j,
// so that the products are one batched matrix product (16, Co, Ci) @ (16, Ci, Q), and each
// (image, channel) plane is one task. The channels_last kernels, vectorised along channels, are
// the package's (diffkit/models/_winograd_2x2_kernels.cpp).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../diffkit/models/_bf16.h"

namespace diffkit_prototype {  // apart from the package's kernels of the same names
using diffkit::load;
using diffkit::store;
namespace {

void check_plane_map(const torch::Tensor& t, const char* name, bool float_allowed) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous() && t.device().is_cpu() &&
              (t.scalar_type() == at::kBFloat16 || (float_allowed && t.scalar_type() == at::kFloat)),
              name, " must be a contiguous (N, C, H, W) bf16", float_allowed ? " or float32" : "", " CPU tensor");
  TORCH_CHECK(t.size(2) % 2 == 0 && t.size(3) % 2 == 0, name, ": H and W must be even");
}

// (16, C, Q) bf16 with Q = images * (H/2) * (W/2) tiles of images [n0, n0 + images) of a map.
int64_t check_plane_tiles(const torch::Tensor& t, const torch::Tensor& map, int64_t n0, const char* name) {
  const int64_t tiles_per_image = (map.size(2) / 2) * (map.size(3) / 2);
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous() && t.scalar_type() == at::kBFloat16 && t.size(0) == 16 &&
              t.size(1) == map.size(1) && t.size(2) % tiles_per_image == 0,
              name, " must be a contiguous bf16 (16, C, Q) tensor, Q a whole number of images' tiles");
  const int64_t images = t.size(2) / tiles_per_image;
  TORCH_CHECK(n0 >= 0 && n0 + images <= map.size(0), name, ": images out of range");
  return images;
}

uint16_t* bf16_data(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }
const uint16_t* bf16_data(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}

// v[:, c, q] = B^T d B, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], for
// every tile of the images' planes (zero padding 1 on every side). Each plane is first copied to
// float scratch split by the parity of its padded rows and columns, so that both passes are
// long unit-stride loops: padded row R = 2I + pr, column X = 2J + pc is p[pr][I][pc][J].
template <typename T>
void input_transform_planes(const T* x, uint16_t* v, int64_t n0, int64_t images, int64_t C, int64_t H, int64_t W) {
  const int64_t h = H / 2, w = W / 2, Q = images * h * w, L = 2 * (w + 1), B = (h + 1) * L;
  at::parallel_for(0, images * C, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> p(2 * B), t(4 * h * L);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / C, c = b % C;
      const T* plane = x + ((n0 + n) * C + c) * H * W;
      float* __restrict__ e = p.data();  // even padded rows
      float* __restrict__ o = p.data() + B;  // odd padded rows
      std::fill(e, e + L, 0.f);  // padded row 0 (row -1)
      std::fill(o + h * L, o + B, 0.f);  // padded row H + 1 (row H)
      for (int64_t row = 0; row < H; ++row) {
        const int64_t R = row + 1;
        float* __restrict__ ev = (R % 2 ? o : e) + (R / 2) * L;  // even padded columns: x = 2J - 1
        float* __restrict__ od = ev + (w + 1);  // odd padded columns: x = 2J
        const T* __restrict__ src = plane + row * W;
        ev[0] = 0.f;
        for (int64_t J = 1; J <= w; ++J) ev[J] = load(src[2 * J - 1]);
        for (int64_t J = 0; J < w; ++J) od[J] = load(src[2 * J]);
        od[w] = 0.f;
      }
      // rows of tile row i: padded rows 2i .. 2i + 3 = e[i], o[i], e[i + 1], o[i + 1]
      float* __restrict__ t0 = t.data();
      float* __restrict__ t1 = t0 + h * L;
      float* __restrict__ t2 = t1 + h * L;
      float* __restrict__ t3 = t2 + h * L;
      for (int64_t k = 0; k < h * L; ++k) {
        const float d0 = e[k], d1 = o[k], d2 = e[k + L], d3 = o[k + L];
        t0[k] = d0 - d2;
        t1[k] = d1 + d2;
        t2[k] = d2 - d1;
        t3[k] = d1 - d3;
      }
      // columns of tile j: padded columns 2j .. 2j + 3 = even[j], odd[j], even[j + 1], odd[j + 1]
      const int64_t q0 = n * h * w;
      for (int a = 0; a < 4; ++a) {
        uint16_t* __restrict__ v0 = v + ((a * 4 + 0) * C + c) * Q + q0;
        uint16_t* __restrict__ v1 = v + ((a * 4 + 1) * C + c) * Q + q0;
        uint16_t* __restrict__ v2 = v + ((a * 4 + 2) * C + c) * Q + q0;
        uint16_t* __restrict__ v3 = v + ((a * 4 + 3) * C + c) * Q + q0;
        for (int64_t i = 0; i < h; ++i) {
          const float* __restrict__ te = t.data() + (a * h + i) * L;
          const float* __restrict__ to = te + (w + 1);
          for (int64_t j = 0; j < w; ++j) {
            store(te[j] - te[j + 1], v0 + i * w + j);
            store(to[j] + te[j + 1], v1 + i * w + j);
            store(te[j + 1] - to[j], v2 + i * w + j);
            store(to[j] - to[j + 1], v3 + i * w + j);
          }
        }
      }
    }
  });
}

}  // namespace

// v (16, C, Q) = B^T d B for the tiles of images n0 .. n0 + Q / (h w) of x (N, C, H, W).
void input_transform_2x2(torch::Tensor x, torch::Tensor v, int64_t n0) {
  check_plane_map(x, "x", true);
  const int64_t images = check_plane_tiles(v, x, n0, "v");
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  if (x.scalar_type() == at::kFloat)
    input_transform_planes(x.data_ptr<float>(), bf16_data(v), n0, images, C, H, W);
  else
    input_transform_planes(bf16_data(x), bf16_data(v), n0, images, C, H, W);
}

// y's tiles of images n0 .. = A^T m A (+ bias[c], float32, if defined), A^T = [[1, 1, 1, 0],
// [0, 1, -1, -1]].
void output_transform_2x2(torch::Tensor m, torch::Tensor y, int64_t n0, c10::optional<torch::Tensor> bias) {
  check_plane_map(y, "y", false);
  const int64_t images = check_plane_tiles(m, y, n0, "m");
  const int64_t C = y.size(1), H = y.size(2), W = y.size(3), h = H / 2, w = W / 2, Q = images * h * w;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C && bias->is_contiguous() &&
                bias->scalar_type() == at::kFloat, "bias must be a contiguous float32 (C,) tensor");
    bp = bias->data_ptr<float>();
  }
  const uint16_t* mp = bf16_data(m);
  uint16_t* yp = bf16_data(y);
  at::parallel_for(0, images * C, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> p(8 * w);  // (A^T M)[r][b] for the tiles of one row
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / C, c = b % C;
      const float beta = bp ? bp[c] : 0.f;
      uint16_t* plane = yp + ((n0 + n) * C + c) * H * W;
      for (int64_t i = 0; i < h; ++i) {
        const int64_t q0 = n * h * w + i * w;
        for (int col = 0; col < 4; ++col) {  // P[0][col] = M0 + M1 + M2, P[1][col] = M1 - M2 - M3
          const uint16_t* __restrict__ m0 = mp + ((0 * 4 + col) * C + c) * Q + q0;
          const uint16_t* __restrict__ m1 = mp + ((1 * 4 + col) * C + c) * Q + q0;
          const uint16_t* __restrict__ m2 = mp + ((2 * 4 + col) * C + c) * Q + q0;
          const uint16_t* __restrict__ m3 = mp + ((3 * 4 + col) * C + c) * Q + q0;
          float* __restrict__ p0 = p.data() + col * w;
          float* __restrict__ p1 = p.data() + (4 + col) * w;
          for (int64_t j = 0; j < w; ++j) {
            const float a1 = load(m1[j]), a2 = load(m2[j]);
            p0[j] = load(m0[j]) + a1 + a2;
            p1[j] = a1 - a2 - load(m3[j]);
          }
        }
        for (int r = 0; r < 2; ++r) {  // Y[r][0] = P0 + P1 + P2, Y[r][1] = P1 - P2 - P3
          const float* __restrict__ q_0 = p.data() + (4 * r + 0) * w;
          const float* __restrict__ q_1 = p.data() + (4 * r + 1) * w;
          const float* __restrict__ q_2 = p.data() + (4 * r + 2) * w;
          const float* __restrict__ q_3 = p.data() + (4 * r + 3) * w;
          uint16_t* __restrict__ out = plane + (2 * i + r) * W;
          for (int64_t j = 0; j < w; ++j) {
            store(q_0[j] + q_1[j] + q_2[j] + beta, out + 2 * j);
            store(q_1[j] - q_2[j] - q_3[j] + beta, out + 2 * j + 1);
          }
        }
      }
    }
  });
}

// dm (16, C, Q) = A dY A^T (the adjoint of output_transform_2x2) for the tiles of images n0 .. of dy.
void output_gradient_transform_2x2(torch::Tensor dy, torch::Tensor dm, int64_t n0) {
  check_plane_map(dy, "dy", false);
  const int64_t images = check_plane_tiles(dm, dy, n0, "dm");
  const int64_t C = dy.size(1), H = dy.size(2), W = dy.size(3), h = H / 2, w = W / 2, Q = images * h * w;
  const uint16_t* yp = bf16_data(dy);
  uint16_t* mp = bf16_data(dm);
  at::parallel_for(0, images * C, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> rr(8 * w);  // R[a][s] = (A dY)[a][s] for the tiles of one row, a = 0..3, s = 0..1
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / C, c = b % C;
      const uint16_t* plane = yp + ((n0 + n) * C + c) * H * W;
      for (int64_t i = 0; i < h; ++i) {
        const uint16_t* __restrict__ y0 = plane + (2 * i) * W;
        const uint16_t* __restrict__ y1 = plane + (2 * i + 1) * W;
        for (int s = 0; s < 2; ++s) {  // R0 = y0, R1 = y0 + y1, R2 = y0 - y1, R3 = -y1
          float* __restrict__ ra0 = rr.data() + (0 * 2 + s) * w;
          float* __restrict__ ra1 = rr.data() + (1 * 2 + s) * w;
          float* __restrict__ ra2 = rr.data() + (2 * 2 + s) * w;
          float* __restrict__ ra3 = rr.data() + (3 * 2 + s) * w;
          for (int64_t j = 0; j < w; ++j) {
            const float a = load(y0[2 * j + s]), bb = load(y1[2 * j + s]);
            ra0[j] = a;
            ra1[j] = a + bb;
            ra2[j] = a - bb;
            ra3[j] = -bb;
          }
        }
        const int64_t q0 = n * h * w + i * w;
        for (int a = 0; a < 4; ++a) {  // dM[a] = (R0, R0 + R1, R0 - R1, -R1)
          const float* __restrict__ s0 = rr.data() + (a * 2 + 0) * w;
          const float* __restrict__ s1 = rr.data() + (a * 2 + 1) * w;
          uint16_t* __restrict__ d0 = mp + ((a * 4 + 0) * C + c) * Q + q0;
          uint16_t* __restrict__ d1 = mp + ((a * 4 + 1) * C + c) * Q + q0;
          uint16_t* __restrict__ d2 = mp + ((a * 4 + 2) * C + c) * Q + q0;
          uint16_t* __restrict__ d3 = mp + ((a * 4 + 3) * C + c) * Q + q0;
          for (int64_t j = 0; j < w; ++j) {
            store(s0[j], d0 + j);
            store(s0[j] + s1[j], d1 + j);
            store(s0[j] - s1[j], d2 + j);
            store(-s1[j], d3 + j);
          }
        }
      }
    }
  });
}

}  // namespace diffkit_prototype

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("input_transform_2x2", &diffkit_prototype::input_transform_2x2);
  m.def("output_transform_2x2", &diffkit_prototype::output_transform_2x2);
  m.def("output_gradient_transform_2x2", &diffkit_prototype::output_gradient_transform_2x2);
}
