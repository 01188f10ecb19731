// Checkpoint integers (issue 16): a damaged number is a "damaged checkpoint", never undefined
// behaviour (fuzz/fuzz_checkpoint found "iteration": 1e300 converted with a plain static_cast).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "emcryo/jobs/checkpoint_json.hpp"
#include "emcryo/jobs/class2d.hpp"
#include "emcryo/jobs/refine.hpp"
#include "support/test_support.hpp"

using nlohmann::json;
using namespace emcryo;

TEST(CheckpointJson, IntegersOutOfRangeOrFractionalAreRefused) {
  EXPECT_EQ(json::parse("42").get<int>(), 42);
  EXPECT_EQ(json::parse("42.0").get<int>(), 42);
  EXPECT_EQ(json::parse("-7").get<std::int64_t>(), -7);
  EXPECT_EQ(json::parse("18446744073709551615").get<std::uint64_t>(), UINT64_MAX);
  for (const char* bad : {"1e300", "-1e300", "2147483648", "-2147483649", "2.5", "1e19"})
    EXPECT_THROW((void)json::parse(bad).get<int>(), json::out_of_range) << bad;
  EXPECT_THROW((void)json::parse("-1").get<std::uint64_t>(), json::out_of_range);
  EXPECT_THROW((void)json::parse("1e20").get<std::uint64_t>(), json::out_of_range);
  EXPECT_THROW((void)json::parse("\"3\"").get<int>(), json::type_error);
}

TEST(CheckpointJson, ContinueOnAHugeIterationSaysDamagedCheckpoint) {
  const test::TempDir dir("checkpoint_json");
  test::write_text(dir.path() / "checkpoint.json",
                   test::read_text(std::string(EMCRYO_SOURCE_DIR) + "/fuzz/corpus/checkpoint/regression_iteration_1e300.json"));
  const std::string c2d = test::error_message([&] { (void)jobs::continue_class2d(dir.path().string()); });
  EXPECT_NE(c2d.find("damaged checkpoint"), std::string::npos) << c2d;
  test::write_text(dir.path() / "checkpoint.json", R"({"iteration": -1e300, "options": {}})");
  const std::string refine = test::error_message([&] { (void)jobs::continue_refine(dir.path().string()); });
  EXPECT_NE(refine.find("damaged checkpoint"), std::string::npos) << refine;
}
