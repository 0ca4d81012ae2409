// Model::Impl: what Model::Load builds (model.cpp) and every Generator of the model reads.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "external_data.hpp"
#include "graph.hpp"
#include "tandem/manifest.hpp"
#include "tandem/tandem.hpp"

namespace tandem {

struct Model::Impl {
  Manifest manifest;
  std::unique_ptr<detail::SharedWeights> shared;  // declared before the graphs: outlives their sessions
  std::unique_ptr<detail::Graph> large;
  std::unique_ptr<detail::Graph> tandem_drafter;  // null when the bundle has none
  std::unique_ptr<detail::Graph> plain_drafter;   // null when the bundle has none
  std::vector<int> memory_source;  // the tandem drafter's memory input i reads M_L's reps output [i]
  // decode_costs, measured once per drafter: [0] the tandem drafter's, [1] the plain one's
  mutable std::once_flag costs_once[2];
  mutable DecodeCosts costs[2];
};

}  // namespace tandem
