// Random tensors from the Philox stream (tensor/philox.h). CPU loops here; a CUDA draw uses the same element ->
// counter mapping, so a seed gives the same values on either device.
#include "autograd/graph.h"
#include "ops/dispatch.h"
#include "tensor/convert.h"
#include "tensor/philox.h"
#include "tensor/tensor.h"

namespace nt {

Generator& default_generator() {
  static Generator g(0x5eed);
  return g;
}
void manual_seed(uint64_t seed) {
  default_generator().seed = seed;
  default_generator().offset = 0;
}

namespace {
template <class F> Tensor draw(const Shape& shape, DType dtype, Device device, F value_at) {
  Tensor h = empty(shape, DType::f64);
  double* p = h.data<double>();
  const int64_t n = h.numel();
  for (int64_t i = 0; i < n; ++i) p[i] = value_at((uint64_t)i);
  return h.to(dtype).to(device);
}
}  // namespace

// On a GPU the draw runs in a kernel with the same element -> counter mapping (cuda/random.cu).
static Tensor device_draw(const Shape& shape, DType dtype, Device device, uint64_t seed, uint64_t off, bool normal) {
  Tensor t = empty(shape, dtype, device);
  NT_ON_CUDA(normal ? "randn" : "rand", cuda::philox_fill(dtype, t.data_ptr(), t.numel(), seed, off, normal, stream_of(t)));
  return t;
}

Tensor rand(const Shape& shape, DType dtype, Device device, Generator* gen) {
  NT_CHECK(is_floating(dtype), "rand: dtype must be floating, got {}", dtype_name(dtype));
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed, off = g.advance(philox::uniform_blocks(shape_numel(shape)));
  if (device.is_cuda() && dtype != DType::f8e4m3 && dtype != DType::f8e5m2)
    return device_draw(shape, dtype, device, seed, off, false);
  return draw(shape, dtype, device, [&](uint64_t i) { return (double)philox::uniform_at(seed, off, i); });
}

Tensor randn(const Shape& shape, DType dtype, Device device, Generator* gen) {
  NT_CHECK(is_floating(dtype), "randn: dtype must be floating, got {}", dtype_name(dtype));
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed, off = g.advance(philox::normal_blocks(shape_numel(shape)));
  if (device.is_cuda() && dtype != DType::f8e4m3 && dtype != DType::f8e5m2)
    return device_draw(shape, dtype, device, seed, off, true);
  return draw(shape, dtype, device, [&](uint64_t i) { return (double)philox::normal_at(seed, off, i); });
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, DType dtype, Device device, Generator* gen) {
  NT_CHECK(high > low, "randint: high ({}) must be greater than low ({})", high, low);
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed, off = g.advance(philox::uniform_blocks(shape_numel(shape)));
  const uint64_t range = (uint64_t)(high - low);
  return draw(shape, dtype, device, [&](uint64_t i) {
    const uint32_t x = philox::block(seed, off + i / 4).x[i % 4];
    return (double)(low + (int64_t)(((uint64_t)x * range) >> 32));
  });
}

}  // namespace nt
