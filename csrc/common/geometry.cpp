#include "common/geometry.h"

#include <algorithm>
#include <sstream>

namespace convcore {
namespace {

// Largest element count convcore accepts: keeps every index computation
// (including byte offsets) comfortably inside int64.
constexpr int64_t kMaxElements = int64_t(1) << 56;

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw ArgumentError(os.str());
}

void require_positive(int64_t v, const char* arg, const char* dim) {
  if (v < 1) fail(arg, " must be positive, got ", v, " for ", dim);
}

}  // namespace

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > kMaxElements)
    fail(what, ": size overflow (", a, " * ", b,
         " exceeds the largest supported array of 2^56 elements)");
  return r;
}

int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r) || r > kMaxElements || r < -kMaxElements)
    fail(what, ": size overflow (", a, " + ", b, ")");
  return r;
}

int64_t checked_numel(const int64_t* dims, int ndim, const char* what) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n = checked_mul(n, dims[i], what);
  return n;
}

std::string shape_string(const int64_t* dims, size_t n) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < n; ++i) os << (i ? ", " : "") << dims[i];
  os << (n == 1 ? ",)" : ")");
  return os.str();
}

std::vector<int64_t> checked_shape(const std::vector<int64_t>& sizes, const char* name,
                                   size_t count) {
  if (count != 0 && sizes.size() != count)
    fail(name, ": expected ", count, " sizes, got ", sizes.size());
  for (int64_t v : sizes)
    if (v < 0) fail(name, ": sizes must be non-negative, got ", shape_string(sizes));
  checked_numel(sizes.data(), int(sizes.size()), name);
  return sizes;
}

Pool2dGeometry make_pool2d_backward_geometry(const std::vector<int64_t>& input_shape,
                                             const std::vector<int64_t>& go) {
  const auto in = checked_shape(input_shape, "input_shape", 4);
  if (in[1] < 1 || in[2] < 1 || in[3] < 1)
    fail("input_shape: expected (N, C, H, W) with C, H, W >= 1, got ", shape_string(in));
  if (go.size() != 4 || go[0] != in[0] || go[1] != in[1] || go[2] < 1 || go[3] < 1)
    fail("grad_output: expected shape (", in[0], ", ", in[1], ", P, Q) matching input_shape ",
         shape_string(in), ", got ", shape_string(go));
  Pool2dGeometry g;
  g.N = in[0];
  g.C = in[1];
  g.H = in[2];
  g.W = in[3];
  g.P = go[2];
  g.Q = go[3];
  return g;
}

namespace {
// "a" or "axb": the compact form of a pair in problem names.
std::string pair_str(int64_t a, int64_t b) {
  return a == b ? std::to_string(a) : std::to_string(a) + "x" + std::to_string(b);
}
}  // namespace

// Same vocabulary as python/convcore/problems.py: n_c_h_w_k_r(kernel)_s(stride)_p(padding)
// [_d(dilation)][_g(groups)]; asymmetric padding is written top x left / bottom x right.
std::string Conv2dGeometry::name() const {
  std::ostringstream os;
  os << "n" << N << "_c" << C << "_h" << H << "_w" << W << "_k" << K << "_r" << pair_str(R, S)
     << "_s" << pair_str(stride_h, stride_w) << "_p" << pair_str(pad_top, pad_left);
  if (pad_bottom != pad_top || pad_right != pad_left) os << "/" << pair_str(pad_bottom, pad_right);
  if (dil_h != 1 || dil_w != 1) os << "_d" << pair_str(dil_h, dil_w);
  if (G != 1) os << "_g" << G;
  return os.str();
}

Conv2dGeometry make_conv2d_geometry(const int64_t in[4], const int64_t wt[4], int64_t stride_h,
                                    int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                                    int64_t pad_left, int64_t pad_right, int64_t dil_h,
                                    int64_t dil_w, int64_t groups) {
  if (in[0] < 0 || in[1] < 1 || in[2] < 1 || in[3] < 1)
    fail("input: expected shape (N, C, H, W) with N >= 0 and C, H, W >= 1, got ",
         shape_string(in, 4));
  if (wt[0] < 1 || wt[1] < 1 || wt[2] < 1 || wt[3] < 1)
    fail(
        "weight: expected shape (out_channels, in_channels/groups, kH, kW) with every size >= 1, "
        "got ",
        shape_string(wt, 4));
  if (groups < 1) fail("groups must be positive, got ", groups);
  require_positive(stride_h, "stride", "height");
  require_positive(stride_w, "stride", "width");
  require_positive(dil_h, "dilation", "height");
  require_positive(dil_w, "dilation", "width");
  if (pad_top < 0 || pad_bottom < 0 || pad_left < 0 || pad_right < 0)
    fail("padding must be non-negative, got (top, bottom, left, right) = (", pad_top, ", ",
         pad_bottom, ", ", pad_left, ", ", pad_right, ")");
  if (in[1] % groups != 0)
    fail("groups=", groups, " must divide the input channels, but input has C=", in[1]);
  if (wt[0] % groups != 0)
    fail("groups=", groups, " must divide out_channels, but weight has ", wt[0]);
  if (wt[1] * groups != in[1])
    fail("weight: expected in_channels/groups = ", in[1] / groups, " (input C=", in[1],
         ", groups=", groups, ") in weight.shape[1], got weight of shape ", shape_string(wt, 4));

  checked_numel(in, 4, "input");
  checked_numel(wt, 4, "weight");

  Conv2dGeometry g;
  g.N = in[0];
  g.C = in[1];
  g.H = in[2];
  g.W = in[3];
  g.K = wt[0];
  g.R = wt[2];
  g.S = wt[3];
  g.G = groups;
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_top = pad_top;
  g.pad_bottom = pad_bottom;
  g.pad_left = pad_left;
  g.pad_right = pad_right;
  g.dil_h = dil_h;
  g.dil_w = dil_w;

  const int64_t padded_h = checked_add(checked_add(g.H, pad_top, "padding"), pad_bottom, "padding");
  const int64_t padded_w = checked_add(checked_add(g.W, pad_left, "padding"), pad_right, "padding");
  const int64_t eff_r = checked_add(checked_mul(dil_h, g.R - 1, "dilation"), 1, "dilation");
  const int64_t eff_s = checked_add(checked_mul(dil_w, g.S - 1, "dilation"), 1, "dilation");
  if (eff_r > padded_h || eff_s > padded_w)
    fail("weight: kernel size (", eff_r, " x ", eff_s,
         ", dilation included) is larger than the padded input (", padded_h, " x ", padded_w, ")");
  g.P = (padded_h - eff_r) / stride_h + 1;
  g.Q = (padded_w - eff_s) / stride_w + 1;
  const int64_t out[4] = {g.N, g.K, g.P, g.Q};
  checked_numel(out, 4, "output");
  // The columns of the GEMM data gradient for one image, (C/G * R * S) x (P * Q), must be
  // indexable too.
  checked_mul(checked_mul(checked_mul(g.Cg(), g.R, "weight"), g.S, "weight"),
              checked_mul(g.P, g.Q, "output"), "convolution workspace");
  // The direct kernels lay each channel's padded plane out by stride phase,
  // rounded up to whole strides: up to (padded_h + stride_h) x (padded_w +
  // stride_w) floats per channel.  Bounded here so that size and its byte
  // count cannot overflow (a stride of 2^31 once wrapped them to a tiny
  // workspace that the kernels then overran).
  checked_mul(checked_mul(checked_add(padded_h, stride_h, "stride"),
                          checked_add(padded_w, stride_w, "stride"),
                          "stride (input padded to whole strides)"),
              g.C, "stride (input padded to whole strides)");
  return g;
}

void same_padding(int64_t kernel, int64_t dilation, int64_t stride, const char* dim_name,
                  int64_t* before, int64_t* after) {
  if (stride != 1)
    fail("padding='same' is not supported for strided convolutions (stride must be 1, got ", stride,
         " for ", dim_name, ")");
  if (dilation < 1) fail("dilation must be positive, got ", dilation, " for ", dim_name);
  if (kernel < 1) fail("weight: kernel ", dim_name, " must be positive, got ", kernel);
  const int64_t total = checked_mul(dilation, kernel - 1, "dilation");
  *before = total / 2;
  *after = total - *before;
}

std::string LinearGeometry::name() const {
  std::ostringstream os;
  os << "linear_m" << M << "_k" << K << "_n" << N;
  return os.str();
}

LinearGeometry make_linear_geometry(const std::vector<int64_t>& in,
                                    const std::vector<int64_t>& wt) {
  if (in.empty())
    throw ArgumentError("input: expected an array of shape (..., in_features), got a 0-D array");
  if (wt.size() != 2)
    throw ArgumentError("weight: expected a 2-D array (out_features, in_features), got " +
                        std::to_string(wt.size()) + "-D");
  LinearGeometry g;
  g.K = in.back();
  g.N = wt[0];
  if (wt[1] != g.K)
    throw ArgumentError("weight: expected shape (out_features, " + std::to_string(g.K) +
                        ") to match input's last dimension, got " + shape_string(wt));
  g.M = checked_numel(in.data(), int(in.size()) - 1, "input");
  checked_numel(in.data(), int(in.size()), "input");
  checked_numel(wt.data(), 2, "weight");
  checked_mul(g.M, g.N, "output");
  return g;
}

std::string Pool2dGeometry::name() const {
  std::ostringstream os;
  os << "pool_n" << N << "_c" << C << "_h" << H << "_w" << W << "_r" << pair_str(kernel_h, kernel_w)
     << "_s" << pair_str(stride_h, stride_w) << "_p" << pair_str(pad_h, pad_w);
  if (dil_h != 1 || dil_w != 1) os << "_d" << pair_str(dil_h, dil_w);
  if (ceil_mode) os << "_ceil";
  return os.str();
}

namespace {
int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                      bool ceil_mode) {
  // PyTorch's rule: floor((span + (ceil_mode ? stride - 1 : 0)) / stride) + 1,
  // with floor division, so with ceil_mode a kernel may overhang the padded
  // input by less than a stride and still give one window.
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  // With ceil_mode the last window must start inside the input or left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}
}  // namespace

Pool2dGeometry make_pool2d_geometry(const int64_t in[4], int64_t kernel_h, int64_t kernel_w,
                                    int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                    int64_t pad_w, int64_t dil_h, int64_t dil_w, bool ceil_mode) {
  if (in[0] < 0 || in[1] < 1 || in[2] < 1 || in[3] < 1)
    fail("input: expected shape (N, C, H, W) with N >= 0 and C, H, W >= 1, got ",
         shape_string(in, 4));
  require_positive(kernel_h, "kernel_size", "height");
  require_positive(kernel_w, "kernel_size", "width");
  require_positive(stride_h, "stride", "height");
  require_positive(stride_w, "stride", "width");
  require_positive(dil_h, "dilation", "height");
  require_positive(dil_w, "dilation", "width");
  if (pad_h < 0 || pad_w < 0) fail("padding must be non-negative, got (", pad_h, ", ", pad_w, ")");
  if (pad_h > kernel_h / 2 || pad_w > kernel_w / 2)
    fail("padding should be at most half of kernel_size, but got padding=(", pad_h, ", ", pad_w,
         ") and kernel_size=(", kernel_h, ", ", kernel_w, ")");
  checked_numel(in, 4, "input");
  // Bound every size before arithmetic on it so the output formula cannot overflow.
  checked_mul(kernel_h, 1, "kernel_size");
  checked_mul(kernel_w, 1, "kernel_size");
  checked_mul(stride_h, 1, "stride");
  checked_mul(stride_w, 1, "stride");
  checked_mul(dil_h, kernel_h, "dilation * kernel_size");
  checked_mul(dil_w, kernel_w, "dilation * kernel_size");

  Pool2dGeometry g;
  g.N = in[0];
  g.C = in[1];
  g.H = in[2];
  g.W = in[3];
  g.kernel_h = kernel_h;
  g.kernel_w = kernel_w;
  g.stride_h = stride_h;
  g.stride_w = stride_w;
  g.pad_h = pad_h;
  g.pad_w = pad_w;
  g.dil_h = dil_h;
  g.dil_w = dil_w;
  g.ceil_mode = ceil_mode;
  g.P = pool_out_size(g.H, kernel_h, pad_h, stride_h, dil_h, ceil_mode);
  g.Q = pool_out_size(g.W, kernel_w, pad_w, stride_w, dil_w, ceil_mode);
  if (g.P < 1 || g.Q < 1)
    fail("max_pool2d: output size is too small: input (", g.H, " x ", g.W, "), kernel_size (",
         kernel_h, " x ", kernel_w, "), dilation (", dil_h, " x ", dil_w, "), padding (", pad_h,
         " x ", pad_w, ") give output (", g.P, " x ", g.Q, "); every output size must be >= 1");
  return g;
}

std::string Pad2dGeometry::name() const { return pad_mode_name(mode); }

PadMode parse_pad_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::Constant;
  if (mode == "reflect") return PadMode::Reflect;
  if (mode == "replicate") return PadMode::Replicate;
  if (mode == "circular") return PadMode::Circular;
  fail("mode must be one of 'constant', 'reflect', 'replicate' or 'circular', got '", mode, "'");
}

const char* pad_mode_name(PadMode mode) {
  switch (mode) {
    case PadMode::Constant:
      return "constant";
    case PadMode::Reflect:
      return "reflect";
    case PadMode::Replicate:
      return "replicate";
    case PadMode::Circular:
      return "circular";
  }
  return "?";
}

Pad2dGeometry make_pad2d_geometry(int64_t planes, int64_t H, int64_t W, int64_t pad_left,
                                  int64_t pad_right, int64_t pad_top, int64_t pad_bottom,
                                  PadMode mode) {
  if (planes < 0 || H < 0 || W < 0) fail("input: sizes must be non-negative");
  for (int64_t p : {pad_left, pad_right, pad_top, pad_bottom}) checked_add(p, 0, "pad");
  Pad2dGeometry g;
  g.planes = planes;
  g.H = H;
  g.W = W;
  g.pad_left = pad_left;
  g.pad_right = pad_right;
  g.pad_top = pad_top;
  g.pad_bottom = pad_bottom;
  g.mode = mode;
  g.OH = checked_add(checked_add(H, pad_top, "pad"), pad_bottom, "pad");
  g.OW = checked_add(checked_add(W, pad_left, "pad"), pad_right, "pad");
  if (g.OH < 0 || g.OW < 0)
    fail("pad: input of size (", H, " x ", W, ") padded by (left, right, top, bottom) = (",
         pad_left, ", ", pad_right, ", ", pad_top, ", ", pad_bottom,
         ") gives a negative output size (", g.OH, " x ", g.OW, ")");
  if (mode != PadMode::Constant) {
    // Non-constant modes read the input, so every padded row/column needs a source.
    if ((g.OH > 0 && H == 0) || (g.OW > 0 && W == 0))
      fail("pad: mode '", pad_mode_name(mode), "' needs a non-empty input, got (", H, " x ", W,
           ")");
  }
  if (mode == PadMode::Constant) {
    // Negative pads crop before positive ones pad (PyTorch narrows first):
    // a crop may not remove more than the input has.
    if (W + std::min<int64_t>(pad_left, 0) + std::min<int64_t>(pad_right, 0) < 0 ||
        H + std::min<int64_t>(pad_top, 0) + std::min<int64_t>(pad_bottom, 0) < 0)
      fail("pad: negative pads (left, right, top, bottom) = (", pad_left, ", ", pad_right, ", ",
           pad_top, ", ", pad_bottom, ") crop more than the input of size (", H, " x ", W, ") has");
  }
  if (mode == PadMode::Reflect) {
    if (pad_left >= W || pad_right >= W || pad_top >= H || pad_bottom >= H)
      fail(
          "pad: reflect padding must be smaller than the input dimension it pads, got "
          "(left, right, top, bottom) = (",
          pad_left, ", ", pad_right, ", ", pad_top, ", ", pad_bottom, ") for input of size (", H,
          " x ", W, ")");
  } else if (mode == PadMode::Circular) {
    // Negative pads crop first; positive pads then wrap around the cropped
    // extent, at most once (as PyTorch's circular padding does).
    const int64_t cw = W - std::max<int64_t>(0, -pad_left) - std::max<int64_t>(0, -pad_right);
    const int64_t ch = H - std::max<int64_t>(0, -pad_top) - std::max<int64_t>(0, -pad_bottom);
    if (pad_left > cw || pad_right > cw || pad_top > ch || pad_bottom > ch ||
        ((pad_left > 0 || pad_right > 0) && cw < 1) || ((pad_top > 0 || pad_bottom > 0) && ch < 1))
      fail(
          "pad: circular padding can wrap around at most once: each pad must be at most the "
          "(cropped) input dimension it pads, got (left, right, top, bottom) = (",
          pad_left, ", ", pad_right, ", ", pad_top, ", ", pad_bottom, ") for input of size (", H,
          " x ", W, ")");
  }
  const int64_t out[3] = {planes, g.OH, g.OW};
  checked_numel(out, 3, "output");
  return g;
}

Pad2dGeometry make_pad2d_geometry(const std::vector<int64_t>& shape, int64_t pad_left,
                                  int64_t pad_right, int64_t pad_top, int64_t pad_bottom,
                                  const std::string& mode) {
  const PadMode m = parse_pad_mode(mode);
  if (shape.size() < 2)
    fail("input: expected an array with at least 2 dimensions (..., H, W), got ", shape.size(),
         "-D");
  int64_t planes = 1;
  for (size_t i = 0; i + 2 < shape.size(); ++i) planes = checked_mul(planes, shape[i], "input");
  return make_pad2d_geometry(planes, shape[shape.size() - 2], shape.back(), pad_left, pad_right,
                             pad_top, pad_bottom, m);
}

std::string BatchNorm2dGeometry::name() const {
  std::ostringstream os;
  os << "bn_n" << N << "_c" << C << "_h" << H << "_w" << W;
  return os.str();
}

BatchNorm2dGeometry make_batchnorm2d_geometry(const int64_t input_shape[4], bool training) {
  BatchNorm2dGeometry g;
  g.N = input_shape[0];
  g.C = input_shape[1];
  g.H = input_shape[2];
  g.W = input_shape[3];
  checked_numel(input_shape, 4, "input");
  if (training && g.M() == 1)
    fail("input: expected more than 1 value per channel when training, got input of shape ",
         shape_string(input_shape, 4));
  return g;
}

}  // namespace convcore
