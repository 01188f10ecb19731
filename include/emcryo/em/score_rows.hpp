// The operands of the E-step GEMMs, shared by the 2D and 3D engines (DESIGN §4).
//
// For particle spectrum X, CTF C, noise sigma^2 and template A (all at the listed frequencies),
// -|X - C s_t A|^2 / 2sigma^2 = Re<Y_t, A> - <C^2/2sigma^2, |A|^2> + const, with
// Y_t = conj(X) C s_t / sigma^2 and s_t the phase ramp of shift t. Storing Y_t as the real row
// (Re Y, -Im Y) per frequency and A as (Re A, Im A) makes the cross term one real dot product, so
// all particles x shifts against all templates is one SGEMM, and the norm term is a second one.
// Frequencies are interleaved (not [Re... | Im...]) and the lists are ordered by radius, so the
// first 2F' floats of a row are the same row at a lower frequency limit: a coarse pass reads
// prefixes of the fine rows.
#pragma once
#include <utility>
#include <vector>

#include "emcryo/em/hypotheses.hpp"  // Shift
#include "emcryo/em/projector2d.hpp"
#include "emcryo/em/scoring_backend.hpp"  // ParticleRows

namespace emcryo::em {


/// e^{-2 pi i k.(s + base)/n} at the listed frequencies, one row of list.size() per shift.
std::vector<Complex> shift_ramps(const FrequencyList& list, const std::vector<Shift>& shifts, double base_x = 0,
                                 double base_y = 0);
void shift_ramps(const FrequencyList& list, const std::vector<Shift>& shifts, double base_x, double base_y, Complex* out);

/// One row (Re Y_t, -Im Y_t) x F (2F floats) per ramp. x, ctf, inv_sigma2: F values at the listed
/// frequencies. The same rows, read as complex numbers, are conj(Y): the M-step's data.
void fill_score_rows(const Complex* x, const float* ctf, const float* inv_sigma2, const Complex* ramps, int shifts,
                     int F, float* rows);

/// A particle's `count` rows (2F floats each) from its ParticleRows, as the E-step builds them:
/// the ramp of each row's fine shift, times the ramp of the base shift where it is not zero.
void build_particle_rows(const ParticleRows& p, int count, int F, float* rows);

/// A template as a GEMM row: (Re A, Im A) x F (2F floats), and |A|^2 (F floats) when power is given.
void store_template_row(const Complex* sample, int F, float* row, float* power);

/// Adds |X - C s A|^2 per shell, and one count per frequency, for the noise estimate; A is a
/// template row as stored above. sum and count are indexed by shell.
void add_noise_residual(const FrequencyList& list, const Complex* x, const float* ctf, const Complex* ramp,
                        const float* template_row, double* sum, double* count);

}  // namespace emcryo::em
