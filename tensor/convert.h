// Value conversion between element types, through double (exact for every source type).
#pragma once
#include "tensor/dtype.h"

namespace nt {
template <class T> NT_HD double to_double(T v) { return (double)v; }
template <> NT_HD double to_double(bf16 v) { return (double)(float)v; }
template <> NT_HD double to_double(f8e4m3 v) { return (double)(float)v; }
template <> NT_HD double to_double(f8e5m2 v) { return (double)(float)v; }

template <class T> NT_HD T from_double(double d) { return (T)d; }
template <> NT_HD bool from_double<bool>(double d) { return d != 0.0; }
template <> NT_HD bf16 from_double<bf16>(double d) { return bf16((float)d); }
template <> NT_HD f8e4m3 from_double<f8e4m3>(double d) { return f8e4m3(d); }
template <> NT_HD f8e5m2 from_double<f8e5m2>(double d) { return f8e5m2(d); }
}  // namespace nt
