// Python bindings of diffkit's CPU kernels (one extension, built once per machine and torch
// version by diffkit.models.cpu_kernels): the Winograd tile transforms (F(4x4, 3x3) fp32 in
// _winograd_kernels.cpp, F(2x2, 3x3) fp32 / bf16 in _winograd_2x2_kernels.cpp)
// and GroupNorm [+ SiLU] for channels_last fp32 and contiguous fp32 / bf16 maps
// (_group_norm_kernels.cpp), and dropout with a recomputable mask (_dropout_kernels.cpp).
#include <torch/extension.h>

#include <vector>

namespace diffkit {
void input_transform(torch::Tensor x, torch::Tensor v, int64_t p0);
void output_transform(torch::Tensor m, torch::Tensor y, int64_t p0);
void output_gradient_transform(torch::Tensor dy, torch::Tensor dm, int64_t p0);
void input_transform_2x2(torch::Tensor x, torch::Tensor v, int64_t p0);
void output_transform_2x2(torch::Tensor m, torch::Tensor y, int64_t p0, c10::optional<torch::Tensor> bias);
void output_gradient_transform_2x2(torch::Tensor dy, torch::Tensor dm, int64_t p0);
torch::Tensor weight_transform_2x2(torch::Tensor weight, bool flipped);
std::vector<torch::Tensor> group_norm_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                              int64_t groups, double eps, bool silu);
std::vector<torch::Tensor> group_norm_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor mean,
                                               torch::Tensor rstd, torch::Tensor weight, torch::Tensor bias,
                                               int64_t groups, bool silu);
std::vector<torch::Tensor> group_norm_nchw_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                                   int64_t groups, double eps, bool silu);
std::vector<torch::Tensor> group_norm_nchw_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor mean,
                                                    torch::Tensor rstd, torch::Tensor weight, torch::Tensor bias,
                                                    int64_t groups, bool silu);
torch::Tensor dropout_apply(torch::Tensor x, int64_t threshold, double scale, int64_t seed);
}  // namespace diffkit

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("input_transform", &diffkit::input_transform, "v[:, q] = B^T d B for the tiles p0 + q of x");
  m.def("output_transform", &diffkit::output_transform, "y's tiles p0 + q = A^T m[:, q] A");
  m.def("output_gradient_transform", &diffkit::output_gradient_transform, "dm[:, q] = A dY A^T for the tiles p0 + q");
  m.def("input_transform_2x2", &diffkit::input_transform_2x2,
        "F(2x2, 3x3), float32 or bf16: v[:, q] = B^T d B for the tiles p0 + q of x");
  m.def("output_transform_2x2", &diffkit::output_transform_2x2,
        "F(2x2, 3x3), float32 or bf16: y's tiles p0 + q = A^T m[:, q] A (+ bias)");
  m.def("output_gradient_transform_2x2", &diffkit::output_gradient_transform_2x2,
        "F(2x2, 3x3), float32 or bf16: dm[:, q] = A dY A^T for the tiles p0 + q");
  m.def("weight_transform_2x2", &diffkit::weight_transform_2x2,
        "F(2x2, 3x3): G g G^T in bf16 as (16, Co, Ci); flipped: of the flipped kernel, Ci and Co swapped");
  m.def("group_norm_forward", &diffkit::group_norm_forward,
        "(y, mean, rstd) of GroupNorm [+ SiLU] of a channels_last fp32 map");
  m.def("group_norm_backward", &diffkit::group_norm_backward, "(dx, dweight, dbias) of group_norm_forward");
  m.def("group_norm_nchw_forward", &diffkit::group_norm_nchw_forward,
        "(y, mean, rstd) of GroupNorm [+ SiLU] of a contiguous fp32 or bf16 map");
  m.def("group_norm_nchw_backward", &diffkit::group_norm_nchw_backward,
        "(dx, dweight, dbias) of group_norm_nchw_forward");
  m.def("dropout_apply", &diffkit::dropout_apply,
        "x * scale where the (threshold, seed) mask keeps an element, 0 elsewhere");
}
