// Inverted dropout (Srivastava et al. 2014, Sec. 4) whose mask is a function of a seed and each
// element's index, for diffkit.models.dropout: y = x * scale where the element is kept, 0 where it
// is dropped. Nothing is stored for the backward pass, which applies the same mask to the output
// gradient by recomputing it. Element i of a call gets 16 random bits: the top 16 bits of
// SplitMix64's output function (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
// generators"; a bijective mix) at the Weyl counter seed + (i + 1) * golden gamma; it is kept when
// they are >= threshold, i.e. with probability 1 - threshold / 2^16. The bits depend on i only,
// so the result is the same for any thread count. fp32 or bf16 (rounded once), dense tensors in
// their memory order (contiguous or channels_last).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "_bf16.h"

namespace diffkit {
namespace {

inline uint32_t random_bits16(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 48);
}

template <typename T>
void apply_mask(const T* x, T* y, int64_t n, uint32_t threshold, float scale, uint64_t seed) {
  at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float kept = load(x[i]) * scale;
      store(random_bits16(seed, static_cast<uint64_t>(i)) >= threshold ? kept : 0.0f, y + i);
    }
  });
}

}  // namespace

// dropout of x (fp32 or bf16, contiguous or channels_last) with the mask of (threshold, seed)
torch::Tensor dropout_apply(torch::Tensor x, int64_t threshold, double scale, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                  (x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast))),
              "x must be a dense (contiguous or channels_last) float32 or bfloat16 CPU tensor");
  TORCH_CHECK(threshold >= 0 && threshold < 65536, "threshold must be in [0, 2^16)");
  auto y = torch::empty_like(x);  // x's strides
  const uint64_t key = static_cast<uint64_t>(seed);
  if (x.scalar_type() == at::kFloat)
    apply_mask(x.data_ptr<float>(), y.data_ptr<float>(), x.numel(), static_cast<uint32_t>(threshold),
               static_cast<float>(scale), key);
  else
    apply_mask(reinterpret_cast<const uint16_t*>(x.data_ptr<c10::BFloat16>()),
               reinterpret_cast<uint16_t*>(y.data_ptr<c10::BFloat16>()), x.numel(),
               static_cast<uint32_t>(threshold), static_cast<float>(scale), key);
  return y;
}

}  // namespace diffkit
