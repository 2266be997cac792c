// Everything a model author needs: tensors, autograd and every op family.
#pragma once
#include "autograd/graph.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/index.h"
#include "ops/matmul.h"
#include "ops/norm.h"
#include "ops/reduce.h"
#include "ops/rope.h"
#include "ops/shape.h"
#include "ops/softmax.h"
#include "tensor/tensor.h"
