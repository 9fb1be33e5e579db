// bitdistill: ternary (1.58-bit) neural networks and BitNet Distillation.
// Including this header gives the whole public API.
#pragma once

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/shape.hpp"
#include "bitdistill/core/tensor.hpp"
