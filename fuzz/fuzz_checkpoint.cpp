// The checkpoint JSON reader of the iterative jobs: `--continue` on a folder whose
// checkpoint.json holds the input must fail with emcryo::Error (damaged checkpoint, missing
// file...) and never crash. The entry points are the public continue_* functions, so this target
// does not depend on where the checkpoint structs live; the scratch folder holds no particles or
// maps, so a parse that succeeds ends at the first file the job opens.
#include <cstdint>
#include <string>

#include "emcryo/jobs/class2d.hpp"
#include "emcryo/jobs/refine.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto& dir = emcryo::fuzz::scratch_dir();
  emcryo::fuzz::write_file(dir / "checkpoint.json", data, size);
  emcryo::fuzz::expect_clean_error([&] { (void)emcryo::jobs::continue_class2d(dir.string()); });
  emcryo::fuzz::expect_clean_error([&] { (void)emcryo::jobs::continue_refine(dir.string()); });
  return 0;
}
