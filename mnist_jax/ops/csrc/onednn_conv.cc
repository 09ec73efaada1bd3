// oneDNN 2-D convolutions (forward, backward-data, backward-weights, optional bias) as XLA FFI
// handlers, for mnist_jax.ops.onednn.
//
// Layouts are flax's: NHWC activations, HWIO kernels, row-major. oneDNN picks its own (blocked)
// weight layout for speed, so kernels are reordered into it on the way in and kernel gradients
// out of it on the way back; activations stay NHWC, which oneDNN's brgemm kernels take as is.
// The forward pass can apply a ReLU to its output as a oneDNN post-op, saving XLA a pass over
// the activations. Primitive descriptors are built once per shape and cached: building one walks
// oneDNN's implementation list, which costs more than running a small convolution.

#include <cpuid.h>
#include <omp.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = memory::format_tag;

namespace {

enum class Op : int64_t { kFwd, kBwdData, kBwdWeights };

// Geometry of one convolution: x [n, h, w, c] * kernel [kh, kw, c, o] -> y [n, oh, ow, o].
struct Geometry {
  memory::data_type dt;
  int64_t n, h, w, c, o, kh, kw, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr;
  bool bias;
  bool relu;  // forward only: ReLU fused as a post-op
};

// The OpenMP thread count is part of the key: oneDNN fixes a primitive's work split (and so its
// summation order) for the thread count current when the primitive is created.
using Key = std::array<int64_t, 20>;

Key MakeKey(Op op, const Geometry& g) {
  return {static_cast<int64_t>(op), static_cast<int64_t>(g.dt), g.n, g.h, g.w, g.c, g.o, g.kh,
          g.kw, g.oh, g.ow, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr, g.bias, g.relu,
          omp_get_max_threads()};
}

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Per-thread growable, 64-byte aligned buffer (scratchpads and reordered kernels). Each XLA
// device thread calls with its own, so concurrent calls of one primitive never share memory.
class Buffer {
 public:
  void* Get(size_t bytes) {
    if (bytes > size_) {
      data_.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      size_ = bytes;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t size_ = 0;
};

Buffer& ThreadBuffer(int which) {
  thread_local std::array<Buffer, 2> buffers;
  return buffers[which];
}

struct Descs {
  memory::desc src, weights_user, weights_any, dst, bias;
  memory::dims strides, pad_l, pad_r;
};

Descs MakeDescs(const Geometry& g) {
  return {memory::desc({g.n, g.c, g.h, g.w}, g.dt, Tag::nhwc),
          memory::desc({g.o, g.c, g.kh, g.kw}, g.dt, Tag::hwio),
          memory::desc({g.o, g.c, g.kh, g.kw}, g.dt, Tag::any),
          memory::desc({g.n, g.o, g.oh, g.ow}, g.dt, Tag::nhwc),
          g.bias ? memory::desc({g.o}, g.dt, Tag::a) : memory::desc(),
          {g.sh, g.sw},
          {g.pt, g.pl},
          {g.pb, g.pr}};
}

dnnl::primitive_attr UserScratchpad(bool relu = false) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, const Descs& d) {
  auto algo = dnnl::algorithm::convolution_direct;
  auto prop = dnnl::prop_kind::forward_training;
  return g.bias ? dnnl::convolution_forward::primitive_desc(
                      Engine(), prop, algo, d.src, d.weights_any, d.bias, d.dst, d.strides,
                      d.pad_l, d.pad_r, UserScratchpad(g.relu))
                : dnnl::convolution_forward::primitive_desc(
                      Engine(), prop, algo, d.src, d.weights_any, d.dst, d.strides, d.pad_l,
                      d.pad_r, UserScratchpad(g.relu));
}

// A cached primitive with the reorder between flax's HWIO kernel and the primitive's layout.
struct Entry {
  dnnl::primitive prim;
  memory::desc weights;  // the primitive's kernel (or kernel-gradient) layout
  std::optional<dnnl::reorder> reorder;
  size_t scratchpad_bytes;
};

template <typename PrimitiveDesc>
Entry MakeEntry(const PrimitiveDesc& pd, const memory::desc& prim_weights,
                const memory::desc& user_weights, bool into_primitive) {
  Entry e{dnnl::primitive(pd), prim_weights, std::nullopt, pd.scratchpad_desc().get_size()};
  if (prim_weights != user_weights) {
    e.reorder = into_primitive
                    ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user_weights,
                                                                  Engine(), prim_weights))
                    : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), prim_weights,
                                                                  Engine(), user_weights));
  }
  return e;
}

Entry Build(Op op, const Geometry& g) {
  Descs d = MakeDescs(g);
  if (op == Op::kFwd) {
    auto pd = ForwardDesc(g, d);
    return MakeEntry(pd, pd.weights_desc(), d.weights_user, true);
  }
  Geometry plain = g;
  plain.bias = false;
  plain.relu = false;
  auto hint = ForwardDesc(plain, MakeDescs(plain));
  auto algo = dnnl::algorithm::convolution_direct;
  if (op == Op::kBwdData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), algo, d.src, d.weights_any,
                                                       d.dst, d.strides, d.pad_l, d.pad_r,
                                                       hint, UserScratchpad());
    return MakeEntry(pd, pd.weights_desc(), d.weights_user, true);
  }
  auto pd = g.bias ? dnnl::convolution_backward_weights::primitive_desc(
                         Engine(), algo, d.src, d.weights_any, d.bias, d.dst, d.strides,
                         d.pad_l, d.pad_r, hint, UserScratchpad())
                   : dnnl::convolution_backward_weights::primitive_desc(
                         Engine(), algo, d.src, d.weights_any, d.dst, d.strides, d.pad_l,
                         d.pad_r, hint, UserScratchpad());
  return MakeEntry(pd, pd.diff_weights_desc(), d.weights_user, false);
}

const Entry& Lookup(Op op, const Geometry& g) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[MakeKey(op, g)];
  if (!slot) slot = std::make_unique<Entry>(Build(op, g));
  return *slot;
}

std::optional<memory::data_type> DataType(ffi::DataType t) {
  if (t == ffi::DataType::F32) return memory::data_type::f32;
  if (t == ffi::DataType::BF16) return memory::data_type::bf16;
  return std::nullopt;
}

// sh, sw, pt, pb, pl, pr, the OpenMP threads to run on (0: OpenMP's default), then relu (0/1,
// read by the forward pass only).
using Attrs = std::array<int64_t, 8>;

// Geometry from x [n,h,w,c], kernel dims [kh,kw,c,o] and y [n,oh,ow,o] (whichever of them is
// the input or the result of the op at hand) and the attributes.
Geometry MakeGeometry(memory::data_type dt, ffi::AnyBuffer::Dimensions x,
                      ffi::AnyBuffer::Dimensions k, ffi::AnyBuffer::Dimensions y,
                      const Attrs& attrs, bool bias) {
  return {dt,       x[0],     x[1],     x[2],     x[3],     k[3],     k[0],     k[1],   y[1],
          y[2],     attrs[0], attrs[1], attrs[2], attrs[3], attrs[4], attrs[5], bias,
          attrs[7] != 0};
}

void* Data(ffi::AnyBuffer b) { return b.untyped_data(); }

// Runs op on the calling thread's stream: `args` holds the activation/gradient memories, the
// kernel (or kernel gradient) goes through the entry's reorder when it has one.
void Run(const Entry& e, const memory::desc& user_weights, void* weights, int weights_arg,
         std::unordered_map<int, memory> args) {
  dnnl::stream& s = Stream();
  memory user(user_weights, Engine(), weights);
  std::optional<memory> prim_weights;
  if (e.reorder) {
    prim_weights.emplace(e.weights, Engine(), ThreadBuffer(1).Get(e.weights.get_size()));
  }
  bool into = weights_arg != DNNL_ARG_DIFF_WEIGHTS;
  if (e.reorder && into) e.reorder->execute(s, user, *prim_weights);
  args[weights_arg] = prim_weights ? *prim_weights : user;
  if (e.scratchpad_bytes) {
    args[DNNL_ARG_SCRATCHPAD] = memory(memory::desc({static_cast<int64_t>(e.scratchpad_bytes)},
                                                    memory::data_type::u8, Tag::a),
                                       Engine(), ThreadBuffer(0).Get(e.scratchpad_bytes));
  }
  e.prim.execute(s, args);
  if (e.reorder && !into) e.reorder->execute(s, *prim_weights, user);
  s.wait();
}

// Runs fn(data type) on `threads` OpenMP threads (0: OpenMP's default), oneDNN errors returned.
template <typename Fn>
ffi::Error Guard(ffi::DataType t, int64_t threads, Fn fn) {
  auto dt = DataType(t);
  if (!dt) return ffi::Error::InvalidArgument("mnist_onednn: only float32 and bfloat16");
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  try {
    fn(*dt);
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("mnist_onednn: oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer k, std::optional<ffi::AnyBuffer> b,
                   ffi::Result<ffi::AnyBuffer> y, const Attrs& a) {
  return Guard(x.element_type(), a[6], [&](memory::data_type dt) {
    Geometry g = MakeGeometry(dt, x.dimensions(), k.dimensions(), y->dimensions(), a, b.has_value());
    const Entry& e = Lookup(Op::kFwd, g);
    Descs d = MakeDescs(g);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(d.src, Engine(), Data(x))},
                                         {DNNL_ARG_DST, memory(d.dst, Engine(), Data(*y))}};
    if (b) args[DNNL_ARG_BIAS] = memory(d.bias, Engine(), Data(*b));
    Run(e, d.weights_user, Data(k), DNNL_ARG_WEIGHTS, std::move(args));
  });
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> dx,
                        const Attrs& a) {
  return Guard(dy.element_type(), a[6], [&](memory::data_type dt) {
    Geometry g = MakeGeometry(dt, dx->dimensions(), k.dimensions(), dy.dimensions(), a, false);
    const Entry& e = Lookup(Op::kBwdData, g);
    Descs d = MakeDescs(g);
    Run(e, d.weights_user, Data(k), DNNL_ARG_WEIGHTS,
        {{DNNL_ARG_DIFF_DST, memory(d.dst, Engine(), Data(dy))},
         {DNNL_ARG_DIFF_SRC, memory(d.src, Engine(), Data(*dx))}});
  });
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dk,
                           std::optional<ffi::Result<ffi::AnyBuffer>> db, const Attrs& a) {
  return Guard(x.element_type(), a[6], [&](memory::data_type dt) {
    Geometry g = MakeGeometry(dt, x.dimensions(), dk->dimensions(), dy.dimensions(), a,
                              db.has_value());
    const Entry& e = Lookup(Op::kBwdWeights, g);
    Descs d = MakeDescs(g);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(d.src, Engine(), Data(x))},
                                         {DNNL_ARG_DIFF_DST, memory(d.dst, Engine(), Data(dy))}};
    if (db) args[DNNL_ARG_DIFF_BIAS] = memory(d.bias, Engine(), Data(**db));
    Run(e, d.weights_user, Data(*dk), DNNL_ARG_DIFF_WEIGHTS, std::move(args));
  });
}

Attrs Pack(int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
           int64_t threads, int64_t relu = 0) {
  return {sh, sw, pt, pb, pl, pr, threads, relu};
}

#define MNIST_ONEDNN_ATTRS                                                                   \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")         \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("threads")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    mnist_onednn_conv_fwd,
    [](ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw,
       int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads, int64_t relu) {
      return Forward(x, k, std::nullopt, y, Pack(sh, sw, pt, pb, pl, pr, threads, relu));
    },
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        MNIST_ONEDNN_ATTRS.Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    mnist_onednn_conv_bias_fwd,
    [](ffi::AnyBuffer x, ffi::AnyBuffer k, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
       int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads,
       int64_t relu) {
      return Forward(x, k, b, y, Pack(sh, sw, pt, pb, pl, pr, threads, relu));
    },
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>() MNIST_ONEDNN_ATTRS.Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    mnist_onednn_conv_bwd_data,
    [](ffi::AnyBuffer dy, ffi::AnyBuffer k, ffi::Result<ffi::AnyBuffer> dx, int64_t sh,
       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
      return BackwardData(dy, k, dx, Pack(sh, sw, pt, pb, pl, pr, threads));
    },
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        MNIST_ONEDNN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    mnist_onednn_conv_bwd_weights,
    [](ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dk, int64_t sh,
       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t threads) {
      return BackwardWeights(x, dy, dk, std::nullopt, Pack(sh, sw, pt, pb, pl, pr, threads));
    },
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        MNIST_ONEDNN_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    mnist_onednn_conv_bias_bwd_weights,
    [](ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dk,
       ffi::Result<ffi::AnyBuffer> db, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
       int64_t pl, int64_t pr, int64_t threads) {
      return BackwardWeights(x, dy, dk, db, Pack(sh, sw, pt, pb, pl, pr, threads));
    },
    ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
        .Ret<ffi::AnyBuffer>() MNIST_ONEDNN_ATTRS);

// 1 if this CPU runs dtype (0: float32, 1: bfloat16) convolutions through oneDNN, else 0.
extern "C" int mnist_onednn_supports(int bf16) {
  Geometry g{bf16 ? memory::data_type::bf16 : memory::data_type::f32, 2, 8, 8, 16, 16, 3, 3, 8, 8,
             1, 1, 1, 1, 1, 1, true, false};
  try {
    for (Op op : {Op::kFwd, Op::kBwdData, Op::kBwdWeights}) Lookup(op, g);
  } catch (const dnnl::error&) {
    return 0;
  }
  return 1;
}

// Whether oneDNN's effective ISA includes `want` (so ONEDNN_MAX_CPU_ISA counts).
static bool HasIsa(dnnl::cpu_isa want) {
  const int isa = static_cast<int>(dnnl::get_effective_cpu_isa());
  return (isa & static_cast<int>(want)) == static_cast<int>(want);
}

// 1 if oneDNN runs AVX-512 kernels on this CPU.
extern "C" int mnist_onednn_avx512() { return HasIsa(dnnl::cpu_isa::avx512_core); }

// 1 if oneDNN's bfloat16 convolutions should beat its float32 ones here: AVX512_BF16 on an AMD
// CPU (Zen 4 measured 1.3-2.1x, experiments/results/speed.md), or AMX (oneDNN's fastest
// bfloat16 kernels, not measured here). Intel's AVX512_BF16 without AMX ran them 1.2-1.8x
// slower than float32.
extern "C" int mnist_onednn_bf16_fast() {
  if (HasIsa(dnnl::cpu_isa::avx512_core_amx)) return 1;
  unsigned int max_leaf, vendor_b, vendor_c, vendor_d;
  if (!__get_cpuid(0, &max_leaf, &vendor_b, &vendor_c, &vendor_d)) return 0;
  const bool amd = vendor_b == 0x68747541 && vendor_d == 0x69746e65 && vendor_c == 0x444d4163;
  return amd && HasIsa(dnnl::cpu_isa::avx512_core_bf16);
}
