// AdamW against torch.optim.AdamW, gradient clipping against clip_grad_norm_, learning-rate
// schedules at known steps, and NaN/Inf detection messages.
#include <doctest/doctest.h>

#include <bitdistill/bitdistill.hpp>

#include "fixtures/losses/fixture_file.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

using namespace bitdistill;
using bitdistill::test::check_all_close;
using bitdistill::test::check_close;
using bitdistill::test::FixtureFile;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void copy_into(Tensor<float>& target, const Tensor<float>& source) {
    REQUIRE(target.numel() == source.numel());
    std::copy(source.begin(), source.end(), target.begin());
}

/// A matrix with weight decay and a vector without, as the fixture's two parameter groups.
struct TwoParams {
    Tensor<float> matrix{Shape{3, 4}};
    Tensor<float> matrix_grad{Shape{3, 4}};
    Tensor<float> vector{Shape{5}};
    Tensor<float> vector_grad{Shape{5}};

    std::vector<ParamRef> refs() {
        return {{"matrix", matrix.view(), matrix_grad.view(), true},
                {"vector", vector.view(), vector_grad.view(), false}};
    }
};

AdamWConfig fixture_config(const FixtureFile& fixture) {
    AdamWConfig config;
    config.beta1 = fixture.scalar("beta1");
    config.beta2 = fixture.scalar("beta2");
    config.eps = fixture.scalar("eps");
    config.weight_decay = fixture.scalar("weight_decay");
    return config;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// AdamW

TEST_CASE("AdamW matches torch.optim.AdamW") {
    FixtureFile fixture("adamw.txt");
    TwoParams params;
    copy_into(params.matrix, fixture.tensor("initial.matrix"));
    copy_into(params.vector, fixture.tensor("initial.vector"));
    AdamW optimizer(params.refs(), fixture_config(fixture));

    const std::vector<double>& learning_rates = fixture.values("learning_rates");
    for (std::size_t i = 0; i < learning_rates.size(); ++i) {
        const std::string step = "step" + std::to_string(i + 1);
        CAPTURE(step);
        copy_into(params.matrix_grad, fixture.tensor(step + ".grad.matrix"));
        copy_into(params.vector_grad, fixture.tensor(step + ".grad.vector"));
        optimizer.step(static_cast<float>(learning_rates[i]));
        // Both sides run in float32; the order of operations differs slightly, so allow a
        // few ulps of the parameter values (of order 1).
        check_all_close(params.matrix, fixture.values(step + ".matrix"), 1e-6, 1e-6, step + " matrix");
        check_all_close(params.vector, fixture.values(step + ".vector"), 1e-6, 1e-6, step + " vector");
    }
    CHECK(optimizer.step_count() == static_cast<std::int64_t>(learning_rates.size()));
    check_all_close(optimizer.first_moment(0), fixture.values("final.exp_avg.matrix"), 1e-7, 1e-6, "exp_avg");
    check_all_close(optimizer.second_moment(0), fixture.values("final.exp_avg_sq.matrix"), 1e-8, 1e-6,
                    "exp_avg_sq");
}

TEST_CASE("AdamW decays only decay parameters") {
    // With a zero gradient both moments stay zero, so the Adam part of the update is zero
    // and only the decoupled decay w <- w * (1 - lr * weight_decay) remains.
    TwoParams params;
    std::fill(params.matrix.begin(), params.matrix.end(), 2.0f);
    std::fill(params.vector.begin(), params.vector.end(), 2.0f);
    AdamWConfig config;
    config.weight_decay = 0.5;
    AdamW optimizer(params.refs(), config);
    optimizer.step(0.1f);
    for (float value : params.matrix) CHECK(value == doctest::Approx(2.0f * (1.0f - 0.1f * 0.5f)));
    for (float value : params.vector) CHECK(value == 2.0f);
}

TEST_CASE("AdamW first step moves by about lr") {
    // After bias correction, step 1 moves each element by lr * g / (|g| + eps) = lr * sign(g).
    TwoParams params;
    for (std::int64_t i = 0; i < params.vector.numel(); ++i) params.vector_grad[i] = (i % 2 == 0) ? 3.0f : -0.5f;
    AdamW optimizer(params.refs(), AdamWConfig{});
    optimizer.step(0.01f);
    for (std::int64_t i = 0; i < params.vector.numel(); ++i)
        CHECK(params.vector[i] == doctest::Approx(i % 2 == 0 ? -0.01 : 0.01).epsilon(1e-5));
}

TEST_CASE("AdamW step allocates nothing") {
    TwoParams params;
    std::fill(params.matrix_grad.begin(), params.matrix_grad.end(), 0.25f);
    AdamW optimizer(params.refs());
    const std::uint64_t allocations = buffer_allocations();
    for (int i = 0; i < 3; ++i) optimizer.step(1e-3f);
    CHECK(buffer_allocations() == allocations);
}

TEST_CASE("AdamW state round trip continues identically") {
    FixtureFile fixture("adamw.txt");
    TwoParams original;
    copy_into(original.matrix, fixture.tensor("initial.matrix"));
    copy_into(original.vector, fixture.tensor("initial.vector"));
    TwoParams restored = original;
    AdamW first(original.refs(), fixture_config(fixture));
    AdamW second(restored.refs(), fixture_config(fixture));

    auto load_grads = [&](TwoParams& params, int step) {
        copy_into(params.matrix_grad, fixture.tensor("step" + std::to_string(step) + ".grad.matrix"));
        copy_into(params.vector_grad, fixture.tensor("step" + std::to_string(step) + ".grad.vector"));
    };
    for (int step = 1; step <= 2; ++step) {
        load_grads(original, step);
        first.step(1e-2f);
    }
    // The second optimizer takes the first one's parameters and state, as after a
    // checkpoint reload, then both run the same two steps.
    copy_into(restored.matrix, original.matrix);
    copy_into(restored.vector, original.vector);
    second.load_state(first.save_state());
    CHECK(second.step_count() == 2);
    for (int step = 3; step <= 4; ++step) {
        load_grads(original, step);
        load_grads(restored, step);
        first.step(5e-3f);
        second.step(5e-3f);
    }
    for (std::int64_t i = 0; i < original.matrix.numel(); ++i) CHECK(original.matrix[i] == restored.matrix[i]);
    for (std::int64_t i = 0; i < original.vector.numel(); ++i) CHECK(original.vector[i] == restored.vector[i]);
}

TEST_CASE("AdamW load_state matches parameters by name") {
    TwoParams params;
    AdamW optimizer(params.refs());
    AdamWState state = optimizer.save_state();
    std::swap(state.names[0], state.names[1]);
    std::swap(state.first_moments[0], state.first_moments[1]);
    std::swap(state.second_moments[0], state.second_moments[1]);
    state.first_moments[1][0] = 0.5f;  // "matrix" is now entry 1
    state.step_count = 9;
    optimizer.load_state(state);
    CHECK(optimizer.first_moment(optimizer.index_of("matrix"))[0] == 0.5f);
    CHECK(optimizer.step_count() == 9);
}

TEST_CASE("AdamW load_state rejects mismatched state") {
    TwoParams params;
    AdamW optimizer(params.refs());
    AdamWState renamed = optimizer.save_state();
    renamed.names[1] = "bias";
    try {
        optimizer.load_state(renamed);
        FAIL("expected std::invalid_argument for a missing parameter");
    } catch (const std::invalid_argument& error) {
        CHECK(contains(error.what(), "'vector' is missing"));
    }
    AdamWState resized = optimizer.save_state();
    resized.second_moments[0].pop_back();
    CHECK_THROWS_AS(optimizer.load_state(resized), std::invalid_argument);
    AdamWState shorter = optimizer.save_state();
    shorter.names.pop_back();
    shorter.first_moments.pop_back();
    shorter.second_moments.pop_back();
    CHECK_THROWS_AS(optimizer.load_state(shorter), std::invalid_argument);
}

TEST_CASE("AdamW rejects bad parameters and settings") {
    TwoParams params;
    std::vector<ParamRef> duplicate = params.refs();
    duplicate[1].name = "matrix";
    CHECK_THROWS_AS(AdamW{duplicate}, std::invalid_argument);

    Tensor<float> wrong_grad(Shape{4, 3});
    std::vector<ParamRef> mismatched{{"matrix", params.matrix.view(), wrong_grad.view(), true}};
    CHECK_THROWS_AS(AdamW{mismatched}, shape_error);

    AdamWConfig bad_beta;
    bad_beta.beta2 = 1.0;
    CHECK_THROWS_AS((AdamW{params.refs(), bad_beta}), std::invalid_argument);

    AdamW optimizer(params.refs());
    CHECK_THROWS_AS(optimizer.step(std::numeric_limits<float>::quiet_NaN()), std::invalid_argument);
    CHECK_THROWS_AS((void)optimizer.index_of("missing"), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// Learning-rate schedules

TEST_CASE("learning_rate_at warmup then cosine") {
    // 100 steps, 10 of warmup, peak 1e-3.
    CHECK(learning_rate_at(0, 100, 10, 1e-3f) == 0.0f);
    CHECK(learning_rate_at(5, 100, 10, 1e-3f) == doctest::Approx(5e-4));
    CHECK(learning_rate_at(10, 100, 10, 1e-3f) == doctest::Approx(1e-3));
    // Halfway through the decay (step 55 of 10..100) the cosine factor is 0.5.
    CHECK(learning_rate_at(55, 100, 10, 1e-3f) == doctest::Approx(5e-4));
    // A quarter of the way: 0.5 * (1 + cos(pi / 4)).
    const double quarter = 0.5 * (1.0 + std::cos(std::numbers::pi / 4.0));
    CHECK(learning_rate_at(32, 100, 10, 1e-3f) == doctest::Approx(1e-3 * quarter).epsilon(1e-5));
    CHECK(learning_rate_at(100, 100, 10, 1e-3f) == doctest::Approx(0.0).epsilon(1e-9));
    // Past the end the final rate is kept.
    CHECK(learning_rate_at(150, 100, 10, 1e-3f) == doctest::Approx(0.0).epsilon(1e-9));
}

TEST_CASE("learning_rate_at linear and constant") {
    CHECK(learning_rate_at(3, 20, 4, 2e-3f, ScheduleKind::linear) == doctest::Approx(1.5e-3));
    CHECK(learning_rate_at(12, 20, 4, 2e-3f, ScheduleKind::linear) == doctest::Approx(1e-3));
    CHECK(learning_rate_at(20, 20, 4, 2e-3f, ScheduleKind::linear) == 0.0f);
    CHECK(learning_rate_at(2, 20, 4, 2e-3f, ScheduleKind::constant) == doctest::Approx(1e-3));
    CHECK(learning_rate_at(19, 20, 4, 2e-3f, ScheduleKind::constant) == doctest::Approx(2e-3));
}

TEST_CASE("learning_rate_at honours min_lr_ratio") {
    CHECK(learning_rate_at(100, 100, 0, 1e-3f, ScheduleKind::cosine, 0.1f) == doctest::Approx(1e-4));
    CHECK(learning_rate_at(50, 100, 0, 1e-3f, ScheduleKind::cosine, 0.1f) == doctest::Approx(5.5e-4));
    CHECK(learning_rate_at(50, 100, 0, 1e-3f, ScheduleKind::linear, 0.2f) == doctest::Approx(6e-4));
    // No warmup: the first step runs at the peak rate.
    CHECK(learning_rate_at(0, 100, 0, 1e-3f) == doctest::Approx(1e-3));
}

TEST_CASE("learning_rate_at rejects bad arguments") {
    CHECK_THROWS_AS((void)learning_rate_at(-1, 100, 10, 1e-3f), std::invalid_argument);
    CHECK_THROWS_AS((void)learning_rate_at(0, 0, 0, 1e-3f), std::invalid_argument);
    CHECK_THROWS_AS((void)learning_rate_at(0, 100, 101, 1e-3f), std::invalid_argument);
    CHECK_THROWS_AS((void)learning_rate_at(0, 100, 10, -1e-3f), std::invalid_argument);
    CHECK_THROWS_AS((void)learning_rate_at(0, 100, 10, 1e-3f, ScheduleKind::cosine, 1.5f), std::invalid_argument);
}

TEST_CASE("warmup_steps_for rounds up") {
    CHECK(warmup_steps_for(1000, 0.05) == 50);
    CHECK(warmup_steps_for(10, 0.05) == 1);
    CHECK(warmup_steps_for(10, 0.0) == 0);
    CHECK_THROWS_AS((void)warmup_steps_for(10, 1.5), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// Gradient clipping

TEST_CASE("clip_grad_norm matches torch clip_grad_norm_") {
    FixtureFile fixture("adamw.txt");
    for (std::string name : {"clip_small", "clip_large"}) {
        CAPTURE(name);
        TwoParams params;
        copy_into(params.matrix_grad, fixture.tensor(name + ".grad.matrix"));
        copy_into(params.vector_grad, fixture.tensor(name + ".grad.vector"));
        const std::vector<ParamRef> refs = params.refs();
        const float norm = clip_grad_norm(refs, static_cast<float>(fixture.scalar(name + ".max_norm")));
        check_close(norm, fixture.scalar(name + ".norm"), 1e-6, 1e-6, name + " norm");
        check_all_close(params.matrix_grad, fixture.values(name + ".clipped.matrix"), 1e-7, 1e-6, name + " matrix");
        check_all_close(params.vector_grad, fixture.values(name + ".clipped.vector"), 1e-7, 1e-6, name + " vector");
    }
}

TEST_CASE("clip_grad_norm scales to max_norm") {
    // Norm 1.5 = |(0.9, 1.2)|; clipping to 1 scales by 1 / (1.5 + 1e-6).
    TwoParams params;
    params.vector_grad[0] = 0.9f;
    params.vector_grad[1] = 1.2f;
    const std::vector<ParamRef> refs = params.refs();
    CHECK(clip_grad_norm(refs, 1.0f) == doctest::Approx(1.5));
    CHECK(params.vector_grad[0] == doctest::Approx(0.6).epsilon(1e-5));
    CHECK(params.vector_grad[1] == doctest::Approx(0.8).epsilon(1e-5));
    // Below the limit nothing changes.
    CHECK(clip_grad_norm(refs, 2.0f) == doctest::Approx(1.0).epsilon(1e-5));
    CHECK(params.vector_grad[0] == doctest::Approx(0.6).epsilon(1e-5));
}

TEST_CASE("clip_grad_norm leaves non-finite gradients alone") {
    TwoParams params;
    std::fill(params.matrix_grad.begin(), params.matrix_grad.end(), 10.0f);
    params.vector_grad[2] = std::numeric_limits<float>::infinity();
    const std::vector<ParamRef> refs = params.refs();
    CHECK(std::isinf(clip_grad_norm(refs, 1.0f)));
    CHECK(params.matrix_grad[0] == 10.0f);
    CHECK_THROWS_AS((void)clip_grad_norm(refs, 0.0f), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------
// NaN/Inf detection

TEST_CASE("check_finite names step, tensor, index and value") {
    Tensor<float> values(Shape{2, 3}, 1.0f);
    CHECK_NOTHROW(check_finite(7, "layers.0.wq.grad", values.view()));

    values(1, 2) = std::numeric_limits<float>::quiet_NaN();
    try {
        check_finite(7, "layers.0.wq.grad", values.view());
        FAIL("expected numeric_error for NaN");
    } catch (const numeric_error& error) {
        const std::string message = error.what();
        CHECK(contains(message, "step 7"));
        CHECK(contains(message, "'layers.0.wq.grad'"));
        CHECK(contains(message, "nan"));
        CHECK(contains(message, "index 5"));
        CHECK(contains(message, "row 1, column 2"));
    }

    values(1, 2) = 1.0f;
    values(0, 1) = -std::numeric_limits<float>::infinity();
    try {
        check_finite(12, "logits", values.view());
        FAIL("expected numeric_error for -Inf");
    } catch (const numeric_error& error) {
        const std::string message = error.what();
        CHECK(contains(message, "step 12"));
        CHECK(contains(message, "'logits'"));
        CHECK(contains(message, "-inf"));
        CHECK(contains(message, "index 1"));
    }
}

TEST_CASE("check_finite on a loss value") {
    CHECK_NOTHROW(check_finite(3, "loss", 2.5f));
    try {
        check_finite(3, "loss", std::numeric_limits<float>::infinity());
        FAIL("expected numeric_error for Inf");
    } catch (const numeric_error& error) {
        CHECK(contains(error.what(), "step 3"));
        CHECK(contains(error.what(), "loss"));
        CHECK(contains(error.what(), "inf"));
    }
}

TEST_CASE("check_loss_and_gradients finds the bad gradient") {
    TwoParams params;
    const std::vector<ParamRef> refs = params.refs();
    CHECK_NOTHROW(check_loss_and_gradients(1, 0.5f, refs));
    CHECK_THROWS_AS(check_loss_and_gradients(1, std::numeric_limits<float>::quiet_NaN(), refs), numeric_error);

    params.vector_grad[4] = std::numeric_limits<float>::quiet_NaN();
    try {
        check_loss_and_gradients(40, 0.5f, refs);
        FAIL("expected numeric_error for a NaN gradient");
    } catch (const numeric_error& error) {
        const std::string message = error.what();
        CHECK(contains(message, "step 40"));
        CHECK(contains(message, "'vector.grad'"));
        CHECK(contains(message, "index 4"));
        CHECK(contains(message, "nan"));
    }
}
