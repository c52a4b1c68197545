// Context lengths: the paper's figures and the padded counts an implementation holds.
#include "model/memory_geometry.h"
#include "tests/test_support.h"

using namespace memoreel;

TEST_SUITE("memory_geometry") {
    TEST_CASE("the paper's figures: 561,600 uncompressed tokens for 60 s, ~5.8k for 20 s at 4x4x2") {
        HistoryGeometry g;  // 832x480, 24 fps, 4x8x8 VAE, 2x2 patches
        g.seconds = 60;
        CHECK(uncompressed_context(g).nominal == doctest::Approx(561600));
        g.seconds = 20;
        const auto c = compressed_context(g, 4, 4, 2);
        CHECK(c.nominal == doctest::Approx(5850));  // 13 x 7.5 x 60
        // Held tokens: 480/16 = 30 token rows padded to 32 -> 8 memory rows; 480 frames are 1 + 479/4 = 120
        // causal latent frames -> 60 groups.
        CHECK(c.latent_frames == 120);
        CHECK(c.grid_h == 8);
        CHECK(c.grid_w == 13);
        CHECK(c.grid_t == 60);
        CHECK(c.padded == 60 * 8 * 13);
    }

    TEST_CASE("rates order the context length as the paper's table does") {
        HistoryGeometry g;
        g.seconds = 20;
        const double r442 = compressed_context(g, 4, 4, 2).nominal;
        const double r222 = compressed_context(g, 2, 2, 2).nominal;
        const double r221 = compressed_context(g, 2, 2, 1).nominal;
        const double r224 = compressed_context(g, 2, 2, 4).nominal;
        const double r228 = compressed_context(g, 2, 2, 8).nominal;
        CHECK(r221 == doctest::Approx(2 * r222));
        CHECK(r222 == doctest::Approx(4 * r442));
        CHECK(r224 == doctest::Approx(r222 / 2));
        CHECK(r228 == doctest::Approx(r222 / 4));
        CHECK(uncompressed_context(g).nominal == doctest::Approx(32 * r442));
    }

    TEST_CASE("the tiny default: 320x192 at 16 fps") {
        HistoryGeometry g{320, 192, 16, 60, 8, 4, 2};
        const auto full = uncompressed_context(g);
        CHECK(full.grid_h == 12);
        CHECK(full.grid_w == 20);
        CHECK(full.latent_frames == 240);
        CHECK(full.padded == 240 * 240);
        const auto mem = compressed_context(g, 4, 4, 2);
        CHECK(mem.grid_h == 3);
        CHECK(mem.grid_w == 5);
        CHECK(mem.padded == 120 * 15);
        CHECK_THROWS_AS(compressed_context(g, 0, 4, 2), std::invalid_argument);
    }
}
