// --save-posteriors N: each particle's N most probable hypotheses as posteriors.star and .cs.
#pragma once
#include <filesystem>
#include <vector>

#include "emcryo/em/expectation.hpp"
#include "emcryo/io/particles.hpp"

namespace emcryo::jobs {

/// top[a]: the kept hypotheses of particle active[a], best first (weights as the E-step left them).
void write_top_hypotheses(const std::filesystem::path& dir, const io::ParticleSet& set, const std::vector<std::size_t>& active,
                          const std::vector<std::vector<em::Hypothesis>>& top, int count);

}  // namespace emcryo::jobs
