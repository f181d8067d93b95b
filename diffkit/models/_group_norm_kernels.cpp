// GroupNorm (Wu & He 2018, eq. 1-2 with the per-channel affine of eq. 4), optionally followed by
// SiLU (Elfwing et al. 2018: x * sigmoid(x)), forward and backward, for diffkit.models.group_norm:
// channels_last fp32 / bf16 CPU maps here, contiguous fp32 / bf16 maps further below. PyTorch's
// channels_last GroupNorm kernel is slow when a group holds few channels (4 per group in the 32-
// and 64-channel levels of a small U-Net: 3-7x the contiguous kernel's time); here every pass runs
// along the contiguous channel axis of each pixel row, and SiLU is applied (and differentiated) in
// the same pass instead of two more.
//
// Memory of an (N, C, H, W) channels_last map is (N, HW, C). Each pass splits every image's HW
// rows into chunks; the per-channel sums of a chunk are accumulated in float over 32-row blocks
// and in double across blocks, chunks and channels, so the statistics keep double accuracy. bf16
// values are read into float and results rounded to bf16 once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "_bf16.h"

namespace diffkit {
namespace {

constexpr int64_t kBlock = 32;  // rows summed in float before they are added in double

// exp(x) for x in [-87, 0] (the caller clamps): x = n ln2 + r with |r| <= ln2 / 2 (Cody-Waite, ln2 in
// two parts), exp(r) by its degree-6 Taylor-like minimax polynomial (Cephes expf), times 2^n built
// in the exponent bits. Relative error ~2e-7; plain arithmetic, so loops over it vectorise.
inline float exp_poly(float x) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds x / ln2 to an integer
  const float t = x * 1.44269504088896341f + kShifter;
  const float n = t - kShifter;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShifter);
  return p * std::bit_cast<float>((k + 127) << 23);
}

// sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0, e = exp(-min(|z|, 87)) in
// [e^-87, 1] (no overflow; no cancellation for negative z). The clamp compares the integer bits of
// |z| (monotonic for non-negative floats): written as a float min/max, GCC if-converted it into
// both branches and the loop ran 2.4x slower. A nan keeps a nan in SiLU and its derivative (the
// callers multiply by z).
inline float sigmoid(float z) {
  const int32_t magnitude = std::bit_cast<int32_t>(z) & 0x7fffffff;
  const float t = std::bit_cast<float>(std::min(magnitude, std::bit_cast<int32_t>(87.0f)));
  const float e = exp_poly(-t);
  return (std::bit_cast<int32_t>(z) < 0 ? e : 1.0f) / (1.0f + e);
}

struct Rows {  // image n's rows [r0, r1) of one task
  int64_t n, r0, r1;
};

// Tasks of whole-row chunks: at least four per thread when the batch is small, at least 16 rows each.
struct Split {
  int64_t N, HW, chunks, rows;
  Split(int64_t N_, int64_t HW_) : N(N_), HW(HW_) {
    const int64_t want = std::max<int64_t>(1, (4 * at::get_num_threads() + N - 1) / N);
    const int64_t most = std::max<int64_t>(1, HW / 16);
    rows = (HW + std::min(want, most) - 1) / std::min(want, most);
    chunks = (HW + rows - 1) / rows;
  }
  int64_t tasks() const { return N * chunks; }
  Rows operator()(int64_t task) const {
    const int64_t n = task / chunks, r0 = (task % chunks) * rows;
    return {n, r0, std::min(HW, r0 + rows)};
  }
};

void check_map(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) &&
                  t.device().is_cpu() && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, " must be a channels_last float32 or bfloat16 CPU tensor (N, C, H, W)");
}

// A map's values as float, or as bf16 bits (see _bf16.h).
template <typename T>
T* values(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>)
    return t.data_ptr<float>();
  else
    return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>());
}

void check_vector(const torch::Tensor& t, int64_t C, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.numel() == C && t.is_contiguous() && t.scalar_type() == at::kFloat &&
                  t.device().is_cpu(), name, " must be a contiguous float32 CPU vector of C values");
}

// The checks every entry point shares: groups divide the C channels; weight and bias are C floats.
void check_affine(const torch::Tensor& weight, const torch::Tensor& bias, int64_t C, int64_t groups) {
  TORCH_CHECK(groups > 0 && C % groups == 0, "groups must divide the channels");
  check_vector(weight, C, "weight");
  check_vector(bias, C, "bias");
}

void check_statistics(const torch::Tensor& mean, const torch::Tensor& rstd, int64_t N, int64_t groups) {
  TORCH_CHECK(mean.numel() == N * groups && rstd.numel() == N * groups && mean.is_contiguous() &&
                  rstd.is_contiguous() && mean.scalar_type() == at::kFloat && rstd.scalar_type() == at::kFloat,
              "mean and rstd must be contiguous float32 (N, groups) tensors");
}

// Float sums of x and x^2 lose the variance to cancellation where the mean dwarfs the spread: the
// variance comes out with a relative error of about 1e-7 * mean^2 / var. Such groups (mean^2 >
// kSpread * var, i.e. |mean| > 10 standard deviations) are summed again in double, whose error is
// 1e-16 * mean^2 / var, as are groups whose float sums overflowed; ordinary activations never are.
constexpr double kSpread = 100.0;
inline bool needs_double(double s1, double s2, double count) {
  if (!std::isfinite(s1) || !std::isfinite(s2)) return true;
  const double mean = s1 / count;
  return mean * mean > kSpread * (s2 / count - mean * mean);
}
// The same test from a group's forward statistics, for the backward sums (sum dz x - mean sum dz).
inline bool needs_double_backward(double mean, double rstd) { return mean * mean * rstd * rstd > kSpread; }

// mean and 1 / sqrt(var + eps) of a group from its sums s1 = sum x, s2 = sum x^2 over count values.
// A negative var from rounding is 0; a nan stays nan, so non-finite input gives non-finite output.
void group_statistics(double s1, double s2, double count, double eps, double& mean, double& rstd) {
  mean = s1 / count;
  double var = s2 / count - mean * mean;
  if (var < 0.0) var = 0.0;
  rstd = 1.0 / std::sqrt(var + eps);
}

// k1, k2 of dx = a dz + k1 x + k2 for a group (see group_norm_backward) from wdz = sum(w dz) and
// wdzx = sum(w dz x) over its count values.
void input_gradient_terms(double wdz, double wdzx, double mean, double rstd, double count, double& k1, double& k2) {
  k1 = (wdz * mean - wdzx) * rstd * rstd * rstd / count;
  k2 = -k1 * mean - wdz * rstd / count;
}

// partial[task][0:C] and [C:2C]: per-channel sums over the task's rows of the two terms that
// row_terms(n, r, first, second) adds for row r of image n (float over kBlock rows, then double).
template <typename RowTerms>
std::vector<double> channel_sums(const Split& split, int64_t C, const RowTerms& row_terms) {
  std::vector<double> partial(static_cast<size_t>(split.tasks() * 2 * C), 0.0);
  at::parallel_for(0, split.tasks(), 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(2 * C);
    for (int64_t task = t0; task < t1; ++task) {
      const Rows rows = split(task);
      double* out = partial.data() + task * 2 * C;
      for (int64_t b0 = rows.r0; b0 < rows.r1; b0 += kBlock) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t r = b0; r < std::min(rows.r1, b0 + kBlock); ++r)
          row_terms(rows.n, r, acc.data(), acc.data() + C);
        for (int64_t c = 0; c < 2 * C; ++c) out[c] += acc[c];
      }
    }
  });
  return partial;
}

// row_body(n, r) for every pixel row r of every image n, in parallel over the split's tasks.
template <typename RowBody>
void for_each_row(const Split& split, const RowBody& row_body) {
  at::parallel_for(0, split.tasks(), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const Rows rows = split(task);
      for (int64_t r = rows.r0; r < rows.r1; ++r) row_body(rows.n, r);
    }
  });
}

// Per-(n, c) scale a = rstd * weight and shift b = bias - mean * a: the affine GroupNorm is x a + b.
void affine(const float* mean, const float* rstd, const float* weight, const float* bias, int64_t N, int64_t C,
            int64_t D, float* a, float* b) {
  const int64_t G = C / D;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const float s = rstd[n * G + c / D] * weight[c];
      a[n * C + c] = s;
      b[n * C + c] = bias[c] - mean[n * G + c / D] * s;
    }
}

}  // namespace

namespace {

// GroupNorm [+ SiLU] of a channels_last map of T (float, or bf16 bits read into float and the
// result rounded once); statistics in float32 mean / rstd.
template <typename T>
void channels_last_forward(const T* xp, T* yp, float* mp, float* rp, const float* weight, const float* bias,
                           int64_t N, int64_t C, int64_t HW, int64_t groups, double eps, bool silu) {
  const int64_t D = C / groups;
  const Split split(N, HW);
  const std::vector<double> partial = channel_sums(split, C, [&](int64_t n, int64_t r, float* __restrict__ sum,
                                                                  float* __restrict__ squares) {
    const T* __restrict__ row = xp + (n * HW + r) * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = load(row[c]);
      sum[c] += v;
      squares[c] += v * v;
    }
  });
  const double count = static_cast<double>(HW * D);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t k = 0; k < split.chunks; ++k) {
        const double* p = partial.data() + (n * split.chunks + k) * 2 * C;
        for (int64_t c = g * D; c < (g + 1) * D; ++c) {
          s1 += p[c];
          s2 += p[C + c];
        }
      }
      if (needs_double(s1, s2, count)) {  // float blocks overflowed (|x| > 1.8e19), inf/nan, or cancelled:
        s1 = s2 = 0.0;                    // the group again, in double from the start
        for (int64_t r = 0; r < HW; ++r) {
          const T* row = xp + (n * HW + r) * C;
          for (int64_t c = g * D; c < (g + 1) * D; ++c) {
            const double v = load(row[c]);
            s1 += v;
            s2 += v * v;
          }
        }
      }
      double m, r;
      group_statistics(s1, s2, count, eps, m, r);
      mp[n * groups + g] = static_cast<float>(m);
      rp[n * groups + g] = static_cast<float>(r);
    }
  std::vector<float> scale(N * C), shift(N * C);
  affine(mp, rp, weight, bias, N, C, D, scale.data(), shift.data());
  for_each_row(split, [&](int64_t n, int64_t r) {
    const float* __restrict__ a = scale.data() + n * C;
    const float* __restrict__ b = shift.data() + n * C;
    const T* __restrict__ row = xp + (n * HW + r) * C;
    T* __restrict__ out = yp + (n * HW + r) * C;
    if (silu) {
      for (int64_t c = 0; c < C; ++c) {
        const float z = load(row[c]) * a[c] + b[c];
        store(z * sigmoid(z), out + c);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) store(load(row[c]) * a[c] + b[c], out + c);
    }
  });
}

}  // namespace

// (y, mean, rstd): y = GroupNorm(x) [then SiLU] in x's dtype (float32 or bf16), mean and
// rstd = 1 / sqrt(var + eps) per (n, group) in float32.
std::vector<torch::Tensor> group_norm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                              int64_t groups, double eps, bool silu) {
  check_map(x, "x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  check_affine(weight, bias, C, groups);
  auto mean = torch::empty({N, groups}, weight.options());
  auto rstd = torch::empty({N, groups}, weight.options());
  auto y = torch::empty_like(x);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  if (x.scalar_type() == at::kFloat)
    channels_last_forward(values<float>(x), values<float>(y), mean.data_ptr<float>(), rstd.data_ptr<float>(), w, b,
                          N, C, HW, groups, eps, silu);
  else
    channels_last_forward(values<uint16_t>(x), values<uint16_t>(y), mean.data_ptr<float>(), rstd.data_ptr<float>(),
                          w, b, N, C, HW, groups, eps, silu);
  return {y, mean, rstd};
}

namespace {

// dx (T) and the per-channel dweight, dbias (float) of channels_last_forward. With SiLU the first
// pass writes dz into dz_store and the second pass reads it back there (one sigmoid per element
// instead of two; dz is finite wherever dy, x and SiLU' are): dx's own memory for float maps, a
// float buffer for bf16 ones (dz is not rounded).
template <typename T>
void channels_last_backward(const T* gp, const T* xp, T* dxp, float* dz_store, const float* mp, const float* rp,
                            const float* w, const float* bias, float* dweight, float* dbias, int64_t N, int64_t C,
                            int64_t HW, int64_t groups, bool silu) {
  const int64_t D = C / groups;
  std::vector<float> scale(N * C), shift(N * C);
  affine(mp, rp, w, bias, N, C, D, scale.data(), shift.data());
  const Split split(N, HW);
  const std::vector<double> partial = channel_sums(split, C, [&](int64_t n, int64_t r, float* __restrict__ sdz,
                                                                  float* __restrict__ sdzx) {  // sum dz, sum dz x
    const float* __restrict__ a = scale.data() + n * C;
    const float* __restrict__ b = shift.data() + n * C;
    const T* __restrict__ row = xp + (n * HW + r) * C;
    const T* __restrict__ g = gp + (n * HW + r) * C;
    if (silu) {
      float* __restrict__ dz_row = dz_store + (n * HW + r) * C;
      for (int64_t c = 0; c < C; ++c) {
        const float xv = load(row[c]), z = xv * a[c] + b[c], s = sigmoid(z);
        const float dz = load(g[c]) * s * (1.0f + z * (1.0f - s));
        dz_row[c] = dz;
        sdz[c] += dz;
        sdzx[c] += dz * xv;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const float gv = load(g[c]);
        sdz[c] += gv;
        sdzx[c] += gv * load(row[c]);
      }
    }
  });
  std::vector<double> dw(C, 0.0), db(C, 0.0), sdz(C), sdzx(C);
  std::vector<float> k1(N * C), k2(N * C);
  const double count = static_cast<double>(HW * D);
  for (int64_t n = 0; n < N; ++n) {
    std::fill(sdz.begin(), sdz.end(), 0.0);
    std::fill(sdzx.begin(), sdzx.end(), 0.0);
    for (int64_t k = 0; k < split.chunks; ++k) {
      const double* p = partial.data() + (n * split.chunks + k) * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        sdz[c] += p[c];
        sdzx[c] += p[C + c];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t g = c / D;
      if (std::isfinite(sdz[c]) && std::isfinite(sdzx[c]) &&
          !needs_double_backward(mp[n * groups + g], rp[n * groups + g]))
        continue;
      sdz[c] = sdzx[c] = 0.0;  // float blocks overflowed (or inf/nan), or x's mean cancels: again, in double
      const float a = scale[n * C + c], b = shift[n * C + c];
      for (int64_t r = 0; r < HW; ++r) {
        const double xv = load(xp[(n * HW + r) * C + c]);
        double dz = load(gp[(n * HW + r) * C + c]);
        if (silu) {
          const double z = xv * a + b, sg = 1.0 / (1.0 + std::exp(-z));
          dz *= sg * (1.0 + z * (1.0 - sg));
        }
        sdz[c] += dz;
        sdzx[c] += dz * xv;
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const double m = mp[n * groups + g], r = rp[n * groups + g];
      double wdz = 0.0, wdzx = 0.0;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        wdz += w[c] * sdz[c];
        wdzx += w[c] * sdzx[c];
        dw[c] += (sdzx[c] - m * sdz[c]) * r;
        db[c] += sdz[c];
      }
      double c1, c2;
      input_gradient_terms(wdz, wdzx, m, r, count, c1, c2);
      std::fill(k1.begin() + n * C + g * D, k1.begin() + n * C + (g + 1) * D, static_cast<float>(c1));
      std::fill(k2.begin() + n * C + g * D, k2.begin() + n * C + (g + 1) * D, static_cast<float>(c2));
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    dweight[c] = static_cast<float>(dw[c]);
    dbias[c] = static_cast<float>(db[c]);
  }
  for_each_row(split, [&](int64_t n, int64_t r) {
    const float* __restrict__ a = scale.data() + n * C;
    const float* __restrict__ c1 = k1.data() + n * C;
    const float* __restrict__ c2 = k2.data() + n * C;
    const T* __restrict__ row = xp + (n * HW + r) * C;
    T* out = dxp + (n * HW + r) * C;  // not __restrict__: for float maps dz is out itself
    if (silu) {  // dz from the first pass
      const float* dz = dz_store + (n * HW + r) * C;
      for (int64_t c = 0; c < C; ++c) store(a[c] * dz[c] + c1[c] * load(row[c]) + c2[c], out + c);
    } else {
      const T* __restrict__ g = gp + (n * HW + r) * C;
      for (int64_t c = 0; c < C; ++c) store(a[c] * load(g[c]) + c1[c] * load(row[c]) + c2[c], out + c);
    }
  });
}

}  // namespace

// (dx, dweight, dbias) of group_norm_forward from its output gradient dy (channels_last, x's
// dtype); dx in x's dtype, dweight and dbias float32. With dz the gradient at the GroupNorm
// output (dy, or dy * SiLU'(z) recomputed from x), per (n, group) over its M = HW * D elements
// (Wu & He 2018, eq. 1-2 differentiated):
//   dx = a dz + k1 x + k2,  k1 = (sum(w dz) mean - sum(w dz x)) rstd^3 / M,  k2 = -k1 mean - sum(w dz) rstd / M.
std::vector<torch::Tensor> group_norm_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor mean,
                                               torch::Tensor rstd, torch::Tensor weight, torch::Tensor bias,
                                               int64_t groups, bool silu) {
  check_map(x, "x");
  check_map(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy must have x's shape and dtype");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  check_affine(weight, bias, C, groups);
  check_statistics(mean, rstd, N, groups);
  auto dx = torch::empty_like(x);
  auto dweight = torch::empty({C}, weight.options());
  auto dbias = torch::empty({C}, weight.options());
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  if (x.scalar_type() == at::kFloat) {
    channels_last_backward(values<float>(dy), values<float>(x), values<float>(dx), values<float>(dx),
                           mean.data_ptr<float>(), rstd.data_ptr<float>(), w, b, dweight.data_ptr<float>(),
                           dbias.data_ptr<float>(), N, C, HW, groups, silu);
  } else {
    auto dz = torch::empty({silu ? N * HW * C : 0}, weight.options());  // float, not rounded to bf16
    channels_last_backward(values<uint16_t>(dy), values<uint16_t>(x), values<uint16_t>(dx), dz.data_ptr<float>(),
                           mean.data_ptr<float>(), rstd.data_ptr<float>(), w, b, dweight.data_ptr<float>(),
                           dbias.data_ptr<float>(), N, C, HW, groups, silu);
  }
  return {dx, dweight, dbias};
}

// ------------------------------------------------------------------------------------------------
// The contiguous (N, C, H, W) layout, fp32 or bf16 (the layout diffkit's bf16 CPU networks use):
// each (image, group) is one contiguous block of D planes of HW values, small enough to stay in
// cache, so one task normalises one group: its sums, then its output, from the same cache lines.
// bf16 is read into float and the result rounded to bf16 once (round to nearest even), as
// PyTorch's bf16 GroupNorm does; statistics in double across planes (float within 256 values).
namespace {

constexpr int64_t kRun = 256;  // values summed in float (16 lanes of 16) before they are added in double

// sum(u) and sum(u v) over [0, n): float over runs of kRun values in 16 vector lanes, double
// across runs, lane by lane; the lanes meet once at the end. With GCC's / Clang's vector types:
// written as scalar sums, these are one chain of dependent additions that the compiler may not
// reorder (12x slower); `#pragma omp simd` reductions kept their lanes in memory (2x slower).
#if defined(__GNUC__)
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline f32x16 load16(const uint16_t* p) {
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
  f32x16 v;
  std::memcpy(&v, &w, sizeof v);
  return v;
}
#endif

template <typename A, typename B>
void pair_sums(const A* u, const B* v, int64_t n, double& first, double& second) {
  constexpr int kWidth = 16;
  double d1[kWidth] = {}, d2[kWidth] = {};
  for (int64_t i0 = 0; i0 < n; i0 += kRun) {
    const int64_t i1 = std::min(n, i0 + kRun);
    float s1[kWidth] = {}, s2[kWidth] = {};
    int64_t i = i0;
#if defined(__GNUC__)
    f32x16 a = {}, b = {};
    for (; i + kWidth <= i1; i += kWidth) {
      const f32x16 x = load16(u + i);
      a += x;
      b += x * load16(v + i);
    }
    std::memcpy(s1, &a, sizeof a);
    std::memcpy(s2, &b, sizeof b);
#endif
    for (; i < i1; ++i) {
      const float x = load(u[i]);
      s1[i % kWidth] += x;
      s2[i % kWidth] += x * load(v[i]);
    }
    for (int lane = 0; lane < kWidth; ++lane) {
      d1[lane] += s1[lane];
      d2[lane] += s2[lane];
    }
  }
  for (int lane = 0; lane < kWidth; ++lane) {
    first += d1[lane];
    second += d2[lane];
  }
}

void check_nchw(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) &&
                  t.device().is_cpu() && t.is_contiguous(),
              name, " must be a contiguous float32 or bfloat16 CPU tensor (N, C, H, W)");
}

template <typename T>
void nchw_forward(const T* xp, T* yp, const float* w, const float* bias, float* mp, float* rp, int64_t N,
                  int64_t C, int64_t HW, int64_t groups, double eps, bool silu) {
  const int64_t D = C / groups, M = D * HW;
  at::parallel_for(0, N * groups, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      const T* __restrict__ x = xp + task * M;
      T* __restrict__ y = yp + task * M;
      double s1 = 0.0, s2 = 0.0;
      pair_sums(x, x, M, s1, s2);
      if (needs_double(s1, s2, static_cast<double>(M))) {  // float runs overflowed, inf/nan, or cancelled
        s1 = s2 = 0.0;
        for (int64_t i = 0; i < M; ++i) {
          const double v = load(x[i]);
          s1 += v;
          s2 += v * v;
        }
      }
      double m, r;
      group_statistics(s1, s2, static_cast<double>(M), eps, m, r);
      mp[task] = static_cast<float>(m);
      rp[task] = static_cast<float>(r);
      const int64_t c0 = (task % groups) * D;
      for (int64_t d = 0; d < D; ++d) {
        const float a = static_cast<float>(r * w[c0 + d]);
        const float b = static_cast<float>(bias[c0 + d] - m * r * w[c0 + d]);
        const T* __restrict__ xc = x + d * HW;
        T* __restrict__ yc = y + d * HW;
        if (silu) {
          for (int64_t i = 0; i < HW; ++i) {
            const float z = load(xc[i]) * a + b;
            store(z * sigmoid(z), yc + i);
          }
        } else {
          for (int64_t i = 0; i < HW; ++i) store(load(xc[i]) * a + b, yc + i);
        }
      }
    }
  });
}

// dx as in group_norm_backward above, per group; dz (dy, or dy * SiLU'(z)) is kept in a float
// scratch row per task between the two passes. sdz / sdzx: per (n, c) sums for dweight and dbias.
template <typename T>
void nchw_backward(const T* gp, const T* xp, T* dxp, const float* w, const float* bias, const float* mp,
                   const float* rp, double* sdz, double* sdzx, int64_t N, int64_t C, int64_t HW, int64_t groups,
                   bool silu) {
  const int64_t D = C / groups, M = D * HW;
  at::parallel_for(0, N * groups, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(silu ? M : 0), a(D), b(D);
    for (int64_t task = t0; task < t1; ++task) {
      const T* __restrict__ x = xp + task * M;
      const T* __restrict__ g = gp + task * M;
      T* __restrict__ dx = dxp + task * M;
      float* __restrict__ dz = scratch.data();
      const double m = mp[task], r = rp[task];
      const int64_t n = task / groups, c0 = (task % groups) * D;
      double wdz = 0.0, wdzx = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = c0 + d;
        a[d] = static_cast<float>(r * w[c]);
        b[d] = static_cast<float>(bias[c] - m * r * w[c]);
        const T* __restrict__ xc = x + d * HW;
        const T* __restrict__ gc = g + d * HW;
        float* __restrict__ dzc = dz + d * HW;
        const float ad = a[d], bd = b[d];
        double s1 = 0.0, s2 = 0.0;
        if (silu) {
          for (int64_t i = 0; i < HW; ++i) {
            const float z = load(xc[i]) * ad + bd, s = sigmoid(z);
            dzc[i] = load(gc[i]) * s * (1.0f + z * (1.0f - s));
          }
          pair_sums(dzc, xc, HW, s1, s2);
        } else {
          pair_sums(gc, xc, HW, s1, s2);
        }
        if (!std::isfinite(s1) || !std::isfinite(s2) || needs_double_backward(m, r)) {  // overflow, inf/nan or
          s1 = s2 = 0.0;                                                                // cancellation: in double
          for (int64_t i = 0; i < HW; ++i) {
            const double xv = load(xc[i]);
            double v = load(gc[i]);
            if (silu) {
              const double z = xv * ad + bd, sg = 1.0 / (1.0 + std::exp(-z));
              v *= sg * (1.0 + z * (1.0 - sg));
            }
            s1 += v;
            s2 += v * xv;
          }
        }
        sdz[n * C + c] = s1;
        sdzx[n * C + c] = s2;
        wdz += w[c] * s1;
        wdzx += w[c] * s2;
      }
      double c1, c2;
      input_gradient_terms(wdz, wdzx, m, r, static_cast<double>(M), c1, c2);
      const float k1 = static_cast<float>(c1), k2 = static_cast<float>(c2);
      for (int64_t d = 0; d < D; ++d) {
        const T* __restrict__ xc = x + d * HW;
        const T* __restrict__ gc = g + d * HW;
        const float* __restrict__ dzc = dz + d * HW;
        T* __restrict__ out = dx + d * HW;
        const float ad = a[d];
        if (silu) {
          for (int64_t i = 0; i < HW; ++i) store(ad * dzc[i] + k1 * load(xc[i]) + k2, out + i);
        } else {
          for (int64_t i = 0; i < HW; ++i) store(ad * load(gc[i]) + k1 * load(xc[i]) + k2, out + i);
        }
      }
    }
  });
}

}  // namespace

// (y, mean, rstd) of GroupNorm [then SiLU] of a contiguous fp32 or bf16 map; y in x's dtype.
std::vector<torch::Tensor> group_norm_nchw_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                                   int64_t groups, double eps, bool silu) {
  check_nchw(x, "x");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  check_affine(weight, bias, C, groups);
  auto y = torch::empty_like(x);
  auto mean = torch::empty({N, groups}, weight.options());
  auto rstd = torch::empty({N, groups}, weight.options());
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  if (x.scalar_type() == at::kFloat)
    nchw_forward(values<float>(x), values<float>(y), w, b, mean.data_ptr<float>(), rstd.data_ptr<float>(),
                 N, C, HW, groups, eps, silu);
  else
    nchw_forward(values<uint16_t>(x), values<uint16_t>(y), w, b, mean.data_ptr<float>(),
                 rstd.data_ptr<float>(), N, C, HW, groups, eps, silu);
  return {y, mean, rstd};
}

// (dx, dweight, dbias) of group_norm_nchw_forward; dx in x's dtype, dweight and dbias float32.
std::vector<torch::Tensor> group_norm_nchw_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor mean,
                                                    torch::Tensor rstd, torch::Tensor weight, torch::Tensor bias,
                                                    int64_t groups, bool silu) {
  check_nchw(x, "x");
  check_nchw(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy must have x's shape and dtype");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  check_affine(weight, bias, C, groups);
  check_statistics(mean, rstd, N, groups);
  auto dx = torch::empty_like(x);
  std::vector<double> sdz(N * C), sdzx(N * C);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  if (x.scalar_type() == at::kFloat)
    nchw_backward(values<float>(dy), values<float>(x), values<float>(dx), w, b, mean.data_ptr<float>(),
                  rstd.data_ptr<float>(), sdz.data(), sdzx.data(), N, C, HW, groups, silu);
  else
    nchw_backward(values<uint16_t>(dy), values<uint16_t>(x), values<uint16_t>(dx), w, b,
                  mean.data_ptr<float>(), rstd.data_ptr<float>(), sdz.data(), sdzx.data(), N, C, HW, groups, silu);
  auto dweight = torch::empty({C}, weight.options());
  auto dbias = torch::empty({C}, weight.options());
  const float* mp = mean.data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  const int64_t D = C / groups;
  for (int64_t c = 0; c < C; ++c) {
    double dw = 0.0, db = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t group = n * groups + c / D;
      dw += (sdzx[n * C + c] - static_cast<double>(mp[group]) * sdz[n * C + c]) * rp[group];
      db += sdz[n * C + c];
    }
    dweight.data_ptr<float>()[c] = static_cast<float>(dw);
    dbias.data_ptr<float>()[c] = static_cast<float>(db);
  }
  return {dx, dweight, dbias};
}

}  // namespace diffkit
