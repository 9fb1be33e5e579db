// bitdistill: ternary (1.58-bit) neural networks and BitNet Distillation.
// Including this header gives the whole public API.
#pragma once

#include "bitdistill/autodiff/gradcheck.hpp"
#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/shape.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/losses/attention_relation.hpp"
#include "bitdistill/losses/cross_entropy.hpp"
#include "bitdistill/losses/logits_distillation.hpp"
#include "bitdistill/optim/adamw.hpp"
#include "bitdistill/optim/clip.hpp"
#include "bitdistill/optim/finite.hpp"
#include "bitdistill/optim/schedule.hpp"
