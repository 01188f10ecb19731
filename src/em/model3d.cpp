#include "emcryo/em/model3d.hpp"

#include <omp.h>

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstdint>

#include "emcryo/core/error.hpp"
#include "emcryo/em/score_rows.hpp"
#include "emcryo/image/fourier.hpp"

namespace emcryo::em {

namespace {

std::size_t sz(int v) { return static_cast<std::size_t>(v); }

/// Central slices of K maps.
class MapTemplates final : public TemplateSource {
 public:
  explicit MapTemplates(const std::vector<const Projector*>& maps) : maps_(maps) {}
  int classes() const override { return static_cast<int>(maps_.size()); }
  void sample(int k, const geometry::Euler& o, const FrequencyList& list, Complex* out) const override {
    maps_[sz(k)]->sample(geometry::euler_to_matrix(o), list, out);
  }
  ReferenceGrids grids() const override {
    ReferenceGrids g;
    // Known-pose jobs (reconstruct, hetero-reconstruct) pass no maps: nothing to sample.
    if (maps_.empty() || std::find(maps_.begin(), maps_.end(), nullptr) != maps_.end()) return g;
    g.dimensions = 3, g.padding = maps_.front()->padding(), g.m = g.padding * maps_.front()->box(), g.hm = g.m / 2 + 1;
    for (const Projector* p : maps_) {
      if (p->padding() != g.padding || p->box() != maps_.front()->box()) return {};  // mixed grids: sampled on the host
      // A transform held on a device is left there (the backend reads it in place).
      g.classes.push_back(p->held() ? nullptr : p->grid().data());
      g.held.push_back(p->held());
    }
    return g;
  }

 private:
  std::vector<const Projector*> maps_;
};

bool same_orientation(const Hypothesis& a, const Hypothesis& b) {
  return a.k == b.k && a.orientation.rot == b.orientation.rot && a.orientation.tilt == b.orientation.tilt &&
         a.orientation.psi == b.orientation.psi;
}
/// Orders hypotheses by class and orientation, so that those sharing one are adjacent.
bool orientation_order(const Hypothesis& a, const Hypothesis& b) {
  if (a.k != b.k) return a.k < b.k;
  if (a.orientation.rot != b.orientation.rot) return a.orientation.rot < b.orientation.rot;
  if (a.orientation.tilt != b.orientation.tilt) return a.orientation.tilt < b.orientation.tilt;
  return a.orientation.psi < b.orientation.psi;
}

/// One particle's slices for back-projection, within a radius of the half grid: C X / sigma^2
/// shifted by each distinct shift of its kept poses (made once, on first use) and C^2 / sigma^2.
class ParticleSlices {
 public:
  ParticleSlices(int n, double radius) : n_(n), radius_(radius), half_(image::half_size(n, n)), ctf2_(half_), weighted_(half_) {
    const int h = n / 2 + 1;
    const int reach = std::min(n / 2 - 1, static_cast<int>(std::floor(radius)));
    for (int ky = -reach; ky <= reach; ++ky) {
      const int count = std::min(h, static_cast<int>(std::floor(std::sqrt(radius * radius - ky * ky))) + 1);
      spans_.push_back({sz(image::storage_index(ky, n)) * sz(h), sz(count)});
    }
  }
  void set_particle(const Complex* unmasked, const float* ctf, const float* inv_sigma2) {
    for (const auto& [first, count] : spans_)
      for (std::size_t k = first; k < first + count; ++k) {
        weighted_[k] = unmasked[k] * (ctf[k] * inv_sigma2[k]);
        ctf2_[k] = ctf[k] * ctf[k] * inv_sigma2[k];
      }
    shifts_.clear();
  }
  const float* ctf2() const { return ctf2_.data(); }
  void clear(Complex* data) const {
    for (const auto& [first, count] : spans_) std::fill_n(data + first, count, Complex{});
  }
  /// data += weight x (the particle shifted by -shift).
  void add_shifted(const Shift& shift, float weight, Complex* data) {
    const Complex* shifted = shifted_by(shift);
    for (const auto& [first, count] : spans_)
      for (std::size_t k = first; k < first + count; ++k) data[k] += weight * shifted[k];
  }

 private:
  const Complex* shifted_by(const Shift& shift) {
    std::size_t i = 0;
    while (i < shifts_.size() && shifts_[i] != shift) ++i;
    if (i == shifts_.size()) {
      shifts_.push_back(shift);
      if (shifted_.size() < shifts_.size() * half_) shifted_.resize(shifts_.size() * half_);
      Complex* out = shifted_.data() + i * half_;
      clear(out);
      image::add_shifted_half_grid_2d(weighted_.data(), n_, -shift.first, -shift.second, 1.0f, radius_, out);
    }
    return shifted_.data() + i * half_;
  }
  int n_;
  double radius_;
  std::size_t half_;
  std::vector<std::pair<std::size_t, std::size_t>> spans_;  // (first, count) of each row within the radius
  std::vector<float> ctf2_;
  std::vector<Complex> weighted_, shifted_;
  std::vector<Shift> shifts_;
};

/// Calls group(first, last) for each run of order[first, last) sharing a class and orientation,
/// `order` being the hypotheses' indices sorted so (the fine pass pairs each child orientation
/// with several shifts: those are summed and inserted once).
template <class F>
void for_each_orientation(const std::vector<Hypothesis>& kept, std::vector<std::size_t>& order, F group) {
  order.resize(kept.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) { return orientation_order(kept[x], kept[y]); });
  for (std::size_t first = 0; first < order.size();) {
    std::size_t last = first + 1;
    while (last < order.size() && same_orientation(kept[order[first]], kept[order[last]])) ++last;
    group(first, last);
    first = last;
  }
}

/// Lanes that fit in about 1 GB of padded volumes, at most 8.
int lane_count(int n) {
  const double bytes = 4.0 * BackProjector::kCellFloats * (n + 1) * (2.0 * n) * (2.0 * n);  // padded half volume of cells
  return std::clamp(static_cast<int>(1e9 / bytes), 1, 8);
}

/// A particle's pose through a chunk's message.
void put_pose(mpi::Message& m, const Pose3D& p) {
  m.put(p.rot), m.put(p.tilt), m.put(p.psi), m.put(p.shift_x), m.put(p.shift_y), m.put(p.max_probability);
  m.put(p.significant), m.put(p.class_index), m.put(p.class_posterior), m.put(p.class_log_evidence);
  put_hypotheses(m, p.top);
}

Pose3D get_pose(mpi::Message& m) {
  Pose3D p;
  p.rot = m.get<double>(), p.tilt = m.get<double>(), p.psi = m.get<double>(), p.shift_x = m.get<double>(), p.shift_y = m.get<double>();
  p.max_probability = m.get<double>(), p.significant = m.get<int>(), p.class_index = m.get<int>();
  p.class_posterior = m.get_vector<double>();
  p.class_log_evidence = m.get_vector<double>();
  p.top = get_hypotheses(m);
  return p;
}

/// Which particles of the call (by position) measure the noise: every k-th of each optics group, at
/// most `cap` a group (ExpectationSettings::noise_particles_per_group); all where there are no groups.
std::vector<std::uint8_t> noise_measuring_particles(const io::ParticleSet& set, const std::vector<std::size_t>& image_index,
                                                    std::size_t groups, int cap) {
  std::vector<std::uint8_t> measures(image_index.size(), 1);
  if (groups == 0) return measures;
  const auto group_of = [&](std::size_t image) { return std::min(static_cast<std::size_t>(set.optics_index(image)), groups - 1); };
  std::vector<std::size_t> in_group(groups, 0), seen(groups, 0);
  for (std::size_t i : image_index) ++in_group[group_of(i)];
  const auto most = static_cast<std::size_t>(std::max(1, cap));
  for (std::size_t p = 0; p < image_index.size(); ++p) {
    const std::size_t g = group_of(image_index[p]);
    measures[p] = seen[g]++ % ((in_group[g] + most - 1) / most) == 0;
  }
  return measures;
}

}  // namespace

NoiseSums::NoiseSums(std::size_t groups, std::size_t shells)
    : sum(groups, std::vector<double>(shells, 0.0)), count(groups, std::vector<double>(shells, 0.0)) {}

void NoiseSums::add(const NoiseSums& other) {
  for (std::size_t g = 0; g < sum.size(); ++g) add(g, other.sum[g], other.count[g]);
}

void NoiseSums::add(std::size_t g, const std::vector<double>& residual, const std::vector<double>& counts) {
  for (std::size_t s = 0; s < sum[g].size() && s < residual.size(); ++s) sum[g][s] += residual[s], count[g][s] += counts[s];
}

void NoiseSums::update(std::vector<std::vector<double>>& sigma2) const {
  for (std::size_t g = 0; g < sigma2.size() && g < sum.size(); ++g)
    for (std::size_t s = 1; s < sigma2[g].size() && s < sum[g].size(); ++s)
      if (count[g][s] > 0) sigma2[g][s] = std::max(1e-12, sum[g][s] / (2 * count[g][s]));
}

ReconstructionSums::ReconstructionSums(int classes, int n)
    : n_(n), max_lanes_(lane_count(n)), lanes_(std::make_shared<Lanes>(sz(classes))) {
  // Made in place, not copied from one: a copy writes every page of the padded volume.
  for (auto& lanes : *lanes_) lanes.emplace_back(n);
  totals_.reserve(sz(classes));
  for (int k = 0; k < classes; ++k) totals_.emplace_back(n);
}

std::vector<ReconstructionSums> ReconstructionSums::for_halves(int classes, int n) {
  std::vector<ReconstructionSums> halves;
  halves.reserve(2);
  halves.emplace_back(classes, n);
  halves.emplace_back(classes, n);
  halves[1].lanes_ = halves[0].lanes_;
  return halves;
}

void ReconstructionSums::provide_lanes(int count) {
  if (count > max_lanes_) fail("reconstruction sums: {} lanes asked, at most {} (internal error)", count, max_lanes_);
  for (auto& lanes : *lanes_)
    while (static_cast<int>(lanes.size()) < count) lanes.emplace_back(n_);
}

BackProjector& ReconstructionSums::fold_lanes(int k) {
  auto& lanes = (*lanes_)[sz(k)];
  for (std::size_t l = 1; l < lanes.size(); ++l) lanes[0].add(lanes[l]), lanes[l].clear();
  return lanes[0];
}

void ReconstructionSums::clear_lanes() {
  for (auto& lanes : *lanes_)
    for (auto& lane : lanes) lane.clear();
}

void expectation_3d(const io::ParticleSet& set, const std::vector<std::size_t>& image_index, std::vector<Pose3D>& poses,
                    const std::vector<const Projector*>& references, const FrequencyList& list,
                    const std::vector<std::vector<double>>& sigma2, const std::vector<float>& particle_mask, const PoseSearch& search,
                    const std::vector<geometry::Mat3>& symmetry, const ExpectationSettings& settings, ScoringBackend& backend,
                    ReconstructionSums& sums, NoiseSums& noise, ExpectationStats& stats, Progress* progress) {
  const int n = set.box();
  const int F = static_cast<int>(list.size());
  const int K = static_cast<int>(references.size());
  const std::size_t half = image::half_size(n, n);
  const auto shells = image::shell_index_2d(n);
  const int n_shells = n / 2 + 1;
  std::vector<geometry::Mat3> symmetry_t;
  for (const auto& s : symmetry) symmetry_t.push_back(geometry::transpose(s));
  std::vector<std::vector<float>> inv_sigma2_grid(sigma2.size(), std::vector<float>(half));
  for (std::size_t g = 0; g < sigma2.size(); ++g)
    for (std::size_t k = 0; k < half; ++k)
      inv_sigma2_grid[g][k] = static_cast<float>(1.0 / sigma2[g][std::min(static_cast<std::size_t>(shells[k]), sigma2[g].size() - 1)]);

  SearchSpace space;
  space.orientations = search.fixed ? SearchSpace::Orientations::fixed
                                    : (search.local ? SearchSpace::Orientations::local : SearchSpace::Orientations::grid);
  space.grid = search.grid;
  // Local searches reach 2-2.4 steps at a spacing of one step (the sub-cells then sample half a
  // step): particles that the global stage left a few steps off can still come home.
  // (Measured on the held-out 2XHE set: the same accuracy as +/- 1 step at half the spacing, in
  // 20% less time, since the coarser spacing lowers the coarse pass's frequency limit.)
  space.local_spacing = search.step;
  space.shifts = search.shifts;
  space.relative_shifts = search.relative_shifts;
  space.coarse_to_fine = search.coarse_to_fine && !search.fixed;
  space.cell = search.local ? space.local_spacing : search.step;  // spacing of the coarse orientations
  space.coarse_radius = coarse_radius_for(space.cell, 2 * search.shifts.step, n, list.radius);

  EStepSettings es;
  es.use_ctf = settings.use_ctf;
  es.cross_correlation = settings.cc_scoring;
  es.full_grids = true;
  es.full_grids_on_device = backend.sums_volumes();
  es.score = !settings.known_poses;
  if (settings.known_poses) {
    space.orientations = SearchSpace::Orientations::fixed;
    space.shifts = make_shift_grid(0, 1);
    space.relative_shifts = true;
    space.coarse_to_fine = false;
  }
  es.batch = settings.batch;
  // The consumer reads a particle's prepared rows for its noise residual only.
  std::vector<std::uint8_t> measures_noise(image_index.size(), 0);
  if (!settings.cc_scoring && !settings.known_poses)
    measures_noise = noise_measuring_particles(set, image_index, noise.sum.size(), settings.noise_particles_per_group);
  es.host_rows = &measures_noise;
  es.share_children = settings.share_children;
  es.fine.poses = settings.marginalize && !settings.cc_scoring ? Reduce::marginalize : Reduce::maximize;
  es.fine.classes = settings.hard_classes || settings.cc_scoring ? Reduce::maximize : Reduce::marginalize;
  for (double p : settings.class_priors) es.fine.log_class_prior.push_back(std::log(std::max(p, 1e-12)));
  // At most 300 hypotheses per particle enter the reconstruction (RELION's --maxsig 300); 64 cut
  // the posterior short at low SNR (held-out 2XHE, SNR 0.03: 10.86 vs 10.53 Å at FSC 0.5 to the truth).
  es.fine.cap = 300;
  es.coarse.cap = settings.cc_scoring ? 16 : 32;
  es.coarse.log_class_prior = es.fine.log_class_prior;
  es.fine.class_temperature = es.coarse.class_temperature = settings.class_temperature;

  const auto start_of = [](const Pose3D& pose) {
    return StartPose{{pose.rot, pose.tilt, pose.psi}, {static_cast<float>(pose.shift_x), static_cast<float>(pose.shift_y)}};
  };
  std::vector<StartPose> start(poses.size()), centres;
  for (std::size_t p = 0; p < poses.size(); ++p) start[p] = start_of(poses[p]);
  if (search.prior_centres) {
    for (const auto& c : *search.prior_centres) centres.push_back(start_of(c));
    space.prior_centres = &centres;
    space.prior = search.prior;
  }
  const MapTemplates source(references);
  // Known poses with given class weights: the one hypothesis, once per class that has weight.
  const auto known_class_weights = [&](const std::vector<Hypothesis>& kept, const Pose3D& pose,
                                       std::vector<Hypothesis>& expanded) -> const std::vector<Hypothesis>& {
    if (!settings.known_poses || pose.class_posterior.empty()) return kept;
    expanded.clear();
    for (std::size_t k = 0; k < pose.class_posterior.size() && k < sz(K); ++k)
      if (pose.class_posterior[k] > 0) {
        Hypothesis h = kept.front();
        h.k = static_cast<int>(k);
        h.weight = static_cast<float>(pose.class_posterior[k]);
        expanded.push_back(h);
      }
    return expanded;
  };
  // The chunk's particles go into lanes by index (so the sums do not depend on the thread count),
  // and every lane is cleared and folded per chunk: a chunk of a small set (a few dozen particles)
  // uses fewer lanes, about one per 8 particles, where folding 8 lanes cost more than its inserts.
  // The count depends on the chunk's size only, so the answer still does not depend on the threads.
  int lanes = sums.lanes();
  // ExpectationSettings::insert_weight_floor, for the (class, orientation) run kept[order[first, last)).
  // Known poses are exempt: their class weights are the user's (hetero-reconstruct), not a posterior's tail.
  const double insert_floor = settings.known_poses ? 0.0 : settings.insert_weight_floor;
  const auto below_insert_floor = [&](const std::vector<Hypothesis>& kept, const std::vector<std::size_t>& order, std::size_t first,
                                      std::size_t last) {
    float total = 0;
    for (std::size_t i = first; i < last; ++i) total += kept[order[i]].weight;
    return total < insert_floor;
  };
  const auto lanes_for_chunk = [&](std::size_t items) {
    constexpr std::size_t kParticlesPerLane = 8;
    return std::clamp(static_cast<int>(items / kParticlesPerLane), 1, sums.lanes());
  };
  // A device backend back-projects on its card (ScoringBackend::sums_volumes): the batch's grids and
  // the same insertions as the CPU block below go up, the volumes come back at the chunk's end.
  const bool device_volumes = backend.sums_volumes();
  const int padding = sums.lane(0, 0).padding();
  std::int64_t inserted_hypotheses = 0, inserted_orientations = 0;  // of the chunk being computed
  std::vector<VolumeInsertion> insertions;
  std::vector<VolumeShift> insertion_shifts;
  std::vector<std::vector<VolumeInsertion>> particle_insertions;  // a batch's, per particle (kept: no allocation per batch)
  std::vector<std::vector<VolumeShift>> particle_shifts;
  const auto back_project_on_device = [&](const ScoredBatch& batch) {
    const int bc = static_cast<int>(batch.particles.size());
    VolumeSumsBatch q;
    q.particles = bc;
    for (const auto& g : inv_sigma2_grid) q.inv_sigma2.push_back(g.data());
    // Each particle's insertions and shifts built on its own (in parallel: ~50,000 particles a half
    // E-step of a large refine), then joined in particle order: the same list as one pass.
    particle_insertions.resize(sz(bc)), particle_shifts.resize(sz(bc));
    std::int64_t hypotheses = 0, orientations = 0;
#pragma omp parallel reduction(+ : hypotheses, orientations)
    {
      std::vector<std::size_t> order;
      std::vector<Hypothesis> expanded;
#pragma omp for schedule(dynamic, 16)
      for (int b = 0; b < bc; ++b) {
        auto& own = particle_insertions[sz(b)];
        auto& own_shifts = particle_shifts[sz(b)];
        own.clear(), own_shifts.clear();
        const auto& kept = known_class_weights(batch.outcomes[sz(b)].kept, poses[batch.first + sz(b)], expanded);
        for_each_orientation(kept, order, [&](std::size_t first, std::size_t last) {
          if (below_insert_floor(kept, order, first, last)) return;
          hypotheses += static_cast<std::int64_t>(last - first), ++orientations;
          VolumeInsertion r;
          r.k = kept[order[first]].k, r.b = b;
          r.first_shift = static_cast<int>(own_shifts.size()), r.shifts = static_cast<int>(last - first);  // within the particle's
          for (std::size_t i = first; i < last; ++i) {
            const Hypothesis& h = kept[order[i]];
            own_shifts.push_back({-h.shift.first, -h.shift.second, h.weight});
            r.total += h.weight;
          }
          const geometry::Mat3 a = geometry::euler_to_matrix(kept[order[first]].orientation);
          for (const auto& st : symmetry_t) {
            const geometry::Mat3 as = a * st;
            for (int j = 0; j < 3; ++j) r.a[j] = as(0, j) * padding, r.a[3 + j] = as(1, j) * padding;
            own.push_back(r);
          }
        });
      }
    }
    inserted_hypotheses += hypotheses, inserted_orientations += orientations;
    insertions.clear(), insertion_shifts.clear();
    for (int b = 0; b < bc; ++b) {
      const PreparedParticle& pp = batch.particles[sz(b)];
      q.unmasked.push_back(reinterpret_cast<const float*>(pp.unmasked)), q.ctf.push_back(pp.ctf_grid), q.group.push_back(pp.group);
      const int shift_offset = static_cast<int>(insertion_shifts.size());
      for (VolumeInsertion r : particle_insertions[sz(b)]) {
        r.first_shift += shift_offset;
        insertions.push_back(r);
      }
      insertion_shifts.insert(insertion_shifts.end(), particle_shifts[sz(b)].begin(), particle_shifts[sz(b)].end());
    }
    q.insertions = insertions.data(), q.insertion_count = insertions.size();
    q.shifts = insertion_shifts.data(), q.shift_count = insertion_shifts.size();
    backend.add_volume_sums(q);
  };
  const bool device_samples = backend.samples_templates(source);
  std::vector<std::pair<int, geometry::Euler>> best_poses;  // a batch's noise-measuring particles' best (class, orientation)
  std::vector<int> best_slot;                                // per particle of the batch: its row of best_templates, or -1
  std::vector<Complex> best_templates;
  int changed = 0;            // of the chunk being computed
  double angle_change = 0;
  NoiseSums part_noise(noise.sum.size(), noise.sum.empty() ? 0 : noise.sum.front().size());

  const auto consumer = [&](const ScoredBatch& batch) {
    const int bc = static_cast<int>(batch.particles.size());
    std::vector<std::vector<double>> residual(sz(bc)), counts(sz(bc));
    std::vector<double> moved(sz(bc), 0.0);
    // The noise-measuring particles' best templates: sampled by the backend where it samples (a
    // GPU's references stay on the card, not copied to the host for these), else on the host below.
    best_templates.clear(), best_poses.clear(), best_slot.assign(sz(bc), -1);
    if (device_samples)
      for (int b = 0; b < bc; ++b)
        if (measures_noise[batch.first + sz(b)]) {
          const Hypothesis& best = batch.outcomes[sz(b)].kept.front();
          best_slot[sz(b)] = static_cast<int>(best_poses.size());
          best_poses.emplace_back(best.k, best.orientation);
        }
    if (!best_poses.empty()) {
      best_templates.resize(best_poses.size() * sz(F));
      backend.sample_to_host({&source, best_poses.data(), &list}, static_cast<int>(best_poses.size()), F,
                             reinterpret_cast<float*>(best_templates.data()));
    }
    // Per particle: the new pose, how far it moved, the residual at the best hypothesis.
#pragma omp parallel
    {
      std::vector<Complex> sample(sz(F)), ramp(sz(F));  // per thread: the best template, for the noise residual
      std::vector<float> row(2 * sz(F));
#pragma omp for schedule(dynamic, 2)
    for (int b = 0; b < bc; ++b) {
      const std::size_t p = batch.first + sz(b);
      const ParticleOutcome& out = batch.outcomes[sz(b)];
      const Hypothesis& best = out.kept.front();
      Pose3D& pose = poses[p];
      moved[sz(b)] = geometry::rotation_angle_between(geometry::euler_to_matrix({pose.rot, pose.tilt, pose.psi}),
                                                      geometry::euler_to_matrix(best.orientation));
      if (measures_noise[p]) {
        const PreparedParticle& pp = batch.particles[sz(b)];
        if (best_slot[sz(b)] >= 0)
          std::copy_n(best_templates.begin() + static_cast<std::ptrdiff_t>(sz(best_slot[sz(b)]) * sz(F)), F, sample.begin());
        else
          source.sample(best.k, best.orientation, list, sample.data());
        store_template_row(sample.data(), F, row.data(), nullptr);
        shift_ramps(list, {best.shift}, 0, 0, ramp.data());
        residual[sz(b)].assign(sz(n_shells), 0.0), counts[sz(b)].assign(sz(n_shells), 0.0);
        add_noise_residual(list, pp.x, pp.ctf, ramp.data(), row.data(), residual[sz(b)].data(), counts[sz(b)].data());
      }
      pose.rot = best.orientation.rot, pose.tilt = best.orientation.tilt, pose.psi = best.orientation.psi;
      pose.shift_x = best.shift.first, pose.shift_y = best.shift.second;
      pose.max_probability = best.weight;
      pose.significant = static_cast<int>(out.kept.size());
      if (!settings.known_poses) {
        pose.class_index = out.posterior.best_class;
        if (K > 1) pose.class_posterior = out.posterior.class_posterior, pose.class_log_evidence = out.posterior.class_log_evidence;
      }
      pose.top.assign(out.kept.begin(), out.kept.begin() + std::min<std::ptrdiff_t>(settings.keep_top, static_cast<std::ptrdiff_t>(out.kept.size())));
    }
    }
    for (int b = 0; b < bc; ++b) {
      angle_change += moved[sz(b)];
      changed += moved[sz(b)] > search.step / 2;
      if (!residual[sz(b)].empty()) part_noise.add(sz(batch.particles[sz(b)].group), residual[sz(b)], counts[sz(b)]);
    }
    if (!settings.back_project) return;
    if (device_volumes) return back_project_on_device(batch);
    // Back-projection: the unmasked particle re-centred, weighted by w C / sigma^2, at each kept
    // pose, lane by lane. Hypotheses that share an orientation (the fine pass pairs each child
    // orientation with several shifts) are summed first and inserted once; each distinct shift of
    // a particle is applied once (ParticleSlices), as the kept poses share a few shifts.
    std::int64_t hypotheses = 0, orientations = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : hypotheses, orientations)
    for (int l = 0; l < lanes; ++l) {
      ParticleSlices slices(n, settings.insert_radius + 1);  // the frequencies insert() reads, with a rounding margin
      std::vector<std::vector<Complex>> data;  // per orientation of the particle (kept: no allocation per particle)
      std::vector<std::vector<BackProjector::Slice>> per_class(sz(K));
      std::vector<std::size_t> order;
      std::vector<Hypothesis> expanded;
      for (int b = 0; b < bc; ++b) {
        if (static_cast<int>((batch.first + sz(b)) % sz(lanes)) != l) continue;
        const PreparedParticle& pp = batch.particles[sz(b)];
        slices.set_particle(pp.unmasked, pp.ctf_grid, inv_sigma2_grid[sz(pp.group)].data());
        const auto& kept = known_class_weights(batch.outcomes[sz(b)].kept, poses[batch.first + sz(b)], expanded);
        for (auto& class_slices : per_class) class_slices.clear();
        std::size_t used = 0;
        for_each_orientation(kept, order, [&](std::size_t first, std::size_t last) {
          if (below_insert_floor(kept, order, first, last)) return;
          hypotheses += static_cast<std::int64_t>(last - first), ++orientations;
          if (data.size() <= used) data.emplace_back(half);
          Complex* sum = data[used++].data();
          slices.clear(sum);
          float total = 0;
          for (std::size_t i = first; i < last; ++i) {
            const Hypothesis& h = kept[order[i]];
            slices.add_shifted(h.shift, h.weight, sum);
            total += h.weight;
          }
          const Hypothesis& h = kept[order[first]];
          const geometry::Mat3 a = geometry::euler_to_matrix(h.orientation);
          for (const auto& st : symmetry_t) per_class[sz(h.k)].push_back({a * st, sum, total});
        });
        // A particle's slices of a class at once: they lie a few degrees apart and meet the same voxels.
        for (int k = 0; k < K; ++k) sums.lane(k, l).insert_all(per_class[sz(k)], slices.ctf2(), n, settings.insert_radius);
      }
    }
    inserted_hypotheses += hypotheses, inserted_orientations += orientations;
  };

  // The E-step chunk by chunk (each on its rank), every chunk's sums from zero, folded in chunk
  // order on one rank (settings.fold_rank) and shared from there: the same sums and poses with any number of ranks and threads.
  const mpi::Chunks chunks(image_index.size());
  ExpectationRun estep(set, image_index, start, space, source, list, sigma2, particle_mask, es, backend);
  // One process folds each chunk as it computes it: the chunk's lanes are added into the totals in
  // one pass (add_lanes_to_total), not folded, copied into the message and out again (the same adds).
  const bool fold_in_place = mpi::folds_where_computed();
  const auto compute = [&](int c, mpi::Message& message) {
    EStepStats es_stats;
    if (settings.back_project) {
      const StageClock clock(es_stats.stages, StageTimes::chunk_sums);
      sums.clear_lanes();
      if (device_volumes) backend.begin_volume_sums(K, n, padding, settings.insert_radius);
    }
    part_noise = NoiseSums(noise.sum.size(), noise.sum.empty() ? 0 : noise.sum.front().size());
    changed = 0, angle_change = 0, inserted_hypotheses = 0, inserted_orientations = 0;
    lanes = lanes_for_chunk(chunks.end(c) - chunks.begin(c));
    if (!device_volumes) sums.provide_lanes(lanes);  // the device sums into lane 0 alone
    estep.run(chunks.begin(c), chunks.end(c), consumer, es_stats, progress);
    for (std::size_t p = chunks.begin(c); p < chunks.end(c); ++p) put_pose(message, poses[p]);
    if (settings.back_project) {  // scoring only: the sums stay empty and are not sent
      const StageClock clock(es_stats.stages, StageTimes::chunk_sums);
      if (device_volumes && fold_in_place) {
        backend.fold_volume_sums();  // into the device's totals, brought back once after the last chunk
      } else if (device_volumes) {
        std::vector<BackProjector*> into;
        for (int k = 0; k < K; ++k) into.push_back(&sums.lane(k, 0));
        backend.end_volume_sums(into);
      }
      if (!fold_in_place)
        for (int k = 0; k < K; ++k) sums.fold_lanes(k).put(message);
    }
    for (std::size_t g = 0; g < part_noise.sum.size(); ++g) message.put(part_noise.sum[g]), message.put(part_noise.count[g]);
    message.put(changed), message.put(angle_change), message.put(inserted_hypotheses), message.put(inserted_orientations);
    put_stats(message, es_stats);
  };
  const auto fold = [&](int c, mpi::Message& message) {
    for (std::size_t p = chunks.begin(c); p < chunks.end(c); ++p) poses[p] = get_pose(message);
    if (settings.back_project) {
      const StageClock clock(stats.stages, StageTimes::chunk_sums);
      for (int k = 0; k < K; ++k) {
        if (fold_in_place && !device_volumes) sums.add_lanes_to_total(k);
        else if (!fold_in_place) sums.total(k).add_from(message);
      }
    }
    for (std::size_t g = 0; g < noise.sum.size(); ++g) message.add_into(noise.sum[g]), message.add_into(noise.count[g]);
    stats.changed += message.get<int>();
    stats.angle_change += message.get<double>();
    stats.inserted_hypotheses += message.get<std::int64_t>();
    stats.inserted_orientations += message.get<std::int64_t>();
    EStepStats es_stats;
    add_stats(message, es_stats);
    stats.flops += es_stats.flops;
    stats.gemm_seconds += es_stats.gemm_seconds;
    stats.coarse_hypotheses += es_stats.coarse_hypotheses;
    stats.fine_hypotheses += es_stats.fine_hypotheses;
    stats.stages += es_stats.stages;
  };
  // What every rank needs next: every pose (the next E-step, the outputs) and the totals as folded.
  const auto share = [&](mpi::Message& message) {
    for (const auto& pose : poses) put_pose(message, pose);
    if (settings.back_project)
      for (int k = 0; k < K; ++k) sums.total(k).put(message);
    for (std::size_t g = 0; g < noise.sum.size(); ++g) message.put(noise.sum[g]), message.put(noise.count[g]);
    message.put(stats);
  };
  const auto take = [&](mpi::Message& message) {
    for (auto& pose : poses) pose = get_pose(message);
    if (settings.back_project)
      for (int k = 0; k < K; ++k) sums.total(k).take_from(message);
    for (std::size_t g = 0; g < noise.sum.size(); ++g) message.get_into(noise.sum[g]), message.get_into(noise.count[g]);
    stats = message.get<ExpectationStats>();
  };
  mpi::reduce_in_chunk_order(chunks, {compute, fold, share, take}, settings.fold_rank);
  if (settings.back_project && device_volumes && fold_in_place) {
    const StageClock clock(stats.stages, StageTimes::chunk_sums);
    std::vector<BackProjector*> totals;
    for (int k = 0; k < K; ++k) totals.push_back(&sums.total(k));
    backend.take_volume_totals(totals);
  }
  sums.clear_lanes();
}

}  // namespace emcryo::em
