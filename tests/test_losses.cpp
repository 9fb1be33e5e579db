// Cross-entropy, logits distillation and attention relation distillation: values and
// gradients against PyTorch references (tests/fixtures/losses, made by
// tests/fixtures/make_loss_fixtures.py) and gradients against central differences.
//
// Fixture tolerances: the C++ losses run in float and the references in float64 from the
// same float32 inputs, so values agree to a few float ulps of the terms involved.
// atol 1e-6 and rtol 1e-5 (1e-4 for the relation gradients) leave a margin of about 10x.
#include <doctest/doctest.h>

#include <bitdistill/bitdistill.hpp>

#include "fixtures/losses/fixture_file.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

using namespace bitdistill;
using bitdistill::test::check_all_close;
using bitdistill::test::check_close;
using bitdistill::test::FixtureFile;

namespace {

Tensor<float> random_tensor(Shape shape, std::mt19937& engine, float scale = 1.0f) {
    Tensor<float> tensor(shape);
    std::normal_distribution<float> normal(0.0f, scale);
    for (float& value : tensor) value = normal(engine);
    return tensor;
}

std::string message_of(const std::exception& error) { return error.what(); }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------------------------------
// cross_entropy

TEST_CASE("cross_entropy matches PyTorch") {
    FixtureFile fixture("cross_entropy.txt");
    for (std::string name : {"basic", "large"}) {
        CAPTURE(name);
        Tensor<float> logits = fixture.tensor(name + ".logits");
        std::vector<std::int32_t> targets = fixture.integers<std::int32_t>(name + ".targets");
        Tensor<float> grad(logits.shape());
        const float loss = cross_entropy(logits, targets, grad);
        check_close(loss, fixture.scalar(name + ".loss"), 1e-6, 1e-5, name + " loss");
        check_all_close(grad, fixture.values(name + ".grad"), 1e-7, 1e-5, name + " gradient");
    }
}

TEST_CASE("cross_entropy gradient passes gradcheck") {
    std::mt19937 engine(11);
    Tensor<float> logits = random_tensor(Shape{5, 7}, engine, 2.0f);
    const std::vector<std::int32_t> targets{3, ignored_target, 0, 6, 2};
    Tensor<float> grad(logits.shape());
    (void)cross_entropy(logits, targets, grad);

    // The float forward pass is accurate to about 1e-7 in the loss. With step 1e-2 that
    // gives about 1e-5 of noise in the difference quotient, against gradients of order 0.1.
    GradCheckOptions options;
    options.step = 1e-2;
    options.atol = 2e-5;
    options.rtol = 1e-3;
    options.max_elements_per_input = 0;
    GradCheckReport report = check_gradients(
        [&] { return static_cast<double>(cross_entropy(logits, targets, TensorView<float>{})); },
        {{"logits", logits.view(), grad.view()}}, options);
    CHECK_MESSAGE(report.passed(), report.to_string());
    CHECK(report.inputs[0].checked == 35);
}

TEST_CASE("cross_entropy with every target ignored is zero") {
    Tensor<float> logits(Shape{3, 4}, 1.5f);
    Tensor<float> grad(logits.shape(), 7.0f);
    const std::vector<std::int32_t> targets(3, ignored_target);
    CHECK(cross_entropy(logits, targets, grad) == 0.0f);
    for (float value : grad) CHECK(value == 0.0f);
}

TEST_CASE("cross_entropy gradient may overwrite the logits") {
    std::mt19937 engine(12);
    Tensor<float> logits = random_tensor(Shape{4, 9}, engine, 3.0f);
    const std::vector<std::int32_t> targets{8, 0, ignored_target, 4};
    Tensor<float> separate(logits.shape());
    const float expected = cross_entropy(logits, targets, separate);

    Tensor<float> in_place = logits;
    const float loss = cross_entropy(in_place.view(), targets, in_place.view());
    CHECK(loss == expected);
    for (std::int64_t i = 0; i < in_place.numel(); ++i) CHECK(in_place[i] == separate[i]);
}

TEST_CASE("cross_entropy value without gradient is the same") {
    std::mt19937 engine(13);
    Tensor<float> logits = random_tensor(Shape{6, 5}, engine);
    const std::vector<std::int32_t> targets{0, 1, 2, 3, 4, 0};
    Tensor<float> grad(logits.shape());
    CHECK(cross_entropy(logits, targets, TensorView<float>{}) == cross_entropy(logits, targets, grad));
}

TEST_CASE("cross_entropy rejects bad targets and shapes") {
    Tensor<float> logits(Shape{3, 4});
    Tensor<float> grad(logits.shape());
    try {
        (void)cross_entropy(logits, std::vector<std::int32_t>{0, 4, 1}, grad);
        FAIL("expected std::invalid_argument for target 4 with 4 classes");
    } catch (const std::invalid_argument& error) {
        CHECK(contains(message_of(error), "target 4"));
        CHECK(contains(message_of(error), "row 1"));
    }
    // -2 is negative but not the ignored value.
    CHECK_THROWS_AS((void)cross_entropy(logits, std::vector<std::int32_t>{0, -2, 1}, grad), std::invalid_argument);
    // One target per row is required.
    CHECK_THROWS_AS((void)cross_entropy(logits, std::vector<std::int32_t>{0, 1}, grad), shape_error);
    // The gradient must have the logits' shape.
    Tensor<float> wrong_grad(Shape{4, 3});
    CHECK_THROWS_AS((void)cross_entropy(logits, std::vector<std::int32_t>{0, 1, 2}, wrong_grad), shape_error);
}

// ---------------------------------------------------------------------------------------
// logits_distillation

TEST_CASE("logits_distillation matches PyTorch") {
    FixtureFile fixture("logits_distillation.txt");
    for (std::string name : {"masked_tau5", "unmasked_tau2"}) {
        CAPTURE(name);
        Tensor<float> teacher = fixture.tensor(name + ".teacher");
        Tensor<float> student = fixture.tensor(name + ".student");
        const auto tau = static_cast<float>(fixture.scalar(name + ".tau"));
        std::vector<std::uint8_t> mask;
        if (fixture.contains(name + ".mask")) mask = fixture.integers<std::uint8_t>(name + ".mask");
        Tensor<float> grad(student.shape());
        const float loss = logits_distillation(teacher, student, tau, mask, grad);
        check_close(loss, fixture.scalar(name + ".loss"), 1e-6, 1e-5, name + " loss");
        check_all_close(grad, fixture.values(name + ".grad"), 1e-7, 1e-5, name + " gradient");
    }
}

TEST_CASE("logits_distillation gradient passes gradcheck") {
    std::mt19937 engine(21);
    Tensor<float> teacher = random_tensor(Shape{6, 10}, engine, 4.0f);
    Tensor<float> student = random_tensor(Shape{6, 10}, engine, 4.0f);
    const std::vector<std::uint8_t> mask{1, 0, 1, 1, 0, 1};
    for (float tau : {default_distillation_temperature, 1.0f}) {
        CAPTURE(tau);
        Tensor<float> grad(student.shape());
        (void)logits_distillation(teacher, student, tau, mask, grad);
        // Step 1e-2 as for cross_entropy; tau^2 scales the loss, so rounding noise in the
        // quotient stays below about 1e-5 against gradients of order 0.1.
        GradCheckOptions options;
        options.step = 1e-2;
        options.atol = 3e-5;
        options.rtol = 1e-3;
        options.max_elements_per_input = 0;
        GradCheckReport report = check_gradients(
            [&] { return static_cast<double>(logits_distillation(teacher, student, tau, mask, TensorView<float>{})); },
            {{"student_logits", student.view(), grad.view()}}, options);
        CHECK_MESSAGE(report.passed(), report.to_string());
    }
}

TEST_CASE("logits_distillation gradient may overwrite the student") {
    std::mt19937 engine(23);
    Tensor<float> teacher = random_tensor(Shape{4, 9}, engine, 3.0f);
    Tensor<float> student = random_tensor(Shape{4, 9}, engine, 3.0f);
    const std::vector<std::uint8_t> mask{1, 1, 0, 1};
    Tensor<float> separate(student.shape());
    const float expected = logits_distillation(teacher, student, 5.0f, mask, separate);

    Tensor<float> in_place = student;
    const float loss = logits_distillation(teacher, in_place.view(), 5.0f, mask, in_place.view());
    CHECK(loss == expected);
    for (std::int64_t i = 0; i < in_place.numel(); ++i) CHECK(in_place[i] == separate[i]);
}

TEST_CASE("logits_distillation of equal logits is zero") {
    std::mt19937 engine(22);
    Tensor<float> logits = random_tensor(Shape{3, 8}, engine, 2.0f);
    Tensor<float> grad(logits.shape(), 1.0f);
    const float loss = logits_distillation(logits, logits, default_distillation_temperature, {}, grad);
    CHECK(std::abs(loss) < 1e-6f);
    for (float value : grad) CHECK(std::abs(value) < 1e-7f);
}

TEST_CASE("logits_distillation with every row masked is zero") {
    Tensor<float> teacher(Shape{2, 3}, 1.0f);
    Tensor<float> student(Shape{2, 3}, -1.0f);
    student[0] = 4.0f;
    Tensor<float> grad(student.shape(), 5.0f);
    const std::vector<std::uint8_t> mask{0, 0};
    CHECK(logits_distillation(teacher, student, 2.0f, mask, grad) == 0.0f);
    for (float value : grad) CHECK(value == 0.0f);
}

TEST_CASE("logits_distillation rejects bad arguments") {
    Tensor<float> teacher(Shape{2, 3});
    Tensor<float> student(Shape{2, 3});
    Tensor<float> grad(Shape{2, 3});
    // tau must be positive.
    CHECK_THROWS_AS((void)logits_distillation(teacher, student, 0.0f, {}, grad), std::invalid_argument);
    // The mask needs one entry per row.
    const std::vector<std::uint8_t> short_mask{1};
    CHECK_THROWS_AS((void)logits_distillation(teacher, student, 5.0f, short_mask, grad), shape_error);
    // Mask entries are 0 or 1.
    const std::vector<std::uint8_t> bad_mask{1, 2};
    CHECK_THROWS_AS((void)logits_distillation(teacher, student, 5.0f, bad_mask, grad), std::invalid_argument);
    // Teacher and student shapes must match.
    Tensor<float> wide_student(Shape{2, 4});
    CHECK_THROWS_AS((void)logits_distillation(teacher, wide_student, 5.0f, {}, TensorView<float>{}), shape_error);
}

// ---------------------------------------------------------------------------------------
// attention_relation_distillation

namespace {

struct QkvTensors {
    Tensor<float> query;
    Tensor<float> key;
    Tensor<float> value;

    [[nodiscard]] AttentionQkv views() const { return {query.view(), key.view(), value.view()}; }
};

QkvTensors random_qkv(std::int64_t tokens, std::int64_t query_width, std::int64_t kv_width, std::mt19937& engine) {
    return {random_tensor(Shape{tokens, query_width}, engine), random_tensor(Shape{tokens, kv_width}, engine),
            random_tensor(Shape{tokens, kv_width}, engine)};
}

QkvTensors zeros_like(const QkvTensors& like) {
    return {Tensor<float>(like.query.shape()), Tensor<float>(like.key.shape()), Tensor<float>(like.value.shape())};
}

AttentionQkvGrad grad_views(QkvTensors& grads) { return {grads.query.view(), grads.key.view(), grads.value.view()}; }

}  // namespace

TEST_CASE("attention_relation matches PyTorch") {
    FixtureFile fixture("attention_relation.txt");
    const auto batch = static_cast<std::int64_t>(fixture.scalar("batch"));
    const auto seq = static_cast<std::int64_t>(fixture.scalar("seq"));
    const std::vector<std::uint8_t> padding_mask = fixture.integers<std::uint8_t>("mask");
    const QkvTensors teacher{fixture.tensor("teacher.query"), fixture.tensor("teacher.key"),
                             fixture.tensor("teacher.value")};
    const QkvTensors student{fixture.tensor("student.query"), fixture.tensor("student.key"),
                             fixture.tensor("student.value")};

    struct Case {
        std::string name;
        RelationVariant variant;
        int heads;
        bool masked;
    };
    const std::vector<Case> cases{{"cosine_heads2_masked", RelationVariant::cosine, 2, true},
                                  {"scaled_dot_heads2_masked", RelationVariant::scaled_dot, 2, true},
                                  {"cosine_heads4_unmasked", RelationVariant::cosine, 4, false},
                                  {"scaled_dot_heads1_unmasked", RelationVariant::scaled_dot, 1, false}};
    for (const Case& c : cases) {
        CAPTURE(c.name);
        AttentionRelationOptions options;
        options.relation_heads = c.heads;
        options.variant = c.variant;
        QkvTensors grads = zeros_like(student);
        const std::span<const std::uint8_t> mask =
            c.masked ? std::span<const std::uint8_t>(padding_mask) : std::span<const std::uint8_t>();
        const AttentionRelationLoss loss = attention_relation_distillation(
            teacher.views(), student.views(), batch, seq, mask, options, grad_views(grads));

        check_close(loss.total, fixture.scalar(c.name + ".loss"), 1e-7, 1e-5, c.name + " loss");
        check_close(loss.query_term, fixture.scalar(c.name + ".query_term"), 1e-7, 1e-5, c.name + " query term");
        check_close(loss.key_term, fixture.scalar(c.name + ".key_term"), 1e-7, 1e-5, c.name + " key term");
        check_close(loss.value_term, fixture.scalar(c.name + ".value_term"), 1e-7, 1e-5, c.name + " value term");
        check_all_close(grads.query, fixture.values(c.name + ".grad_query"), 1e-7, 1e-4, c.name + " query gradient");
        check_all_close(grads.key, fixture.values(c.name + ".grad_key"), 1e-7, 1e-4, c.name + " key gradient");
        check_all_close(grads.value, fixture.values(c.name + ".grad_value"), 1e-7, 1e-4, c.name + " value gradient");
    }
}

TEST_CASE("attention_relation gradient passes gradcheck") {
    struct Case {
        RelationVariant variant;
        int heads;
        float temperature;
        bool masked;
    };
    const std::vector<Case> cases{
        {RelationVariant::cosine, 1, 1.0f, false},      {RelationVariant::cosine, 2, 1.0f, true},
        {RelationVariant::cosine, 4, 0.5f, true},       {RelationVariant::scaled_dot, 1, 1.0f, true},
        {RelationVariant::scaled_dot, 4, 1.0f, false},
    };
    const std::int64_t batch = 2;
    const std::int64_t seq = 6;
    // Second sequence: two padded tokens in the middle and one at the end.
    const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0};
    std::mt19937 engine(31);
    // Teacher and student have different widths, and K/V are narrower than Q (as with
    // grouped-query attention).
    const QkvTensors teacher = random_qkv(batch * seq, 16, 8, engine);
    QkvTensors student = random_qkv(batch * seq, 24, 12, engine);

    for (const Case& c : cases) {
        CAPTURE(static_cast<int>(c.variant));
        CAPTURE(c.heads);
        CAPTURE(c.masked);
        AttentionRelationOptions options;
        options.variant = c.variant;
        options.relation_heads = c.heads;
        options.temperature = c.temperature;
        const std::span<const std::uint8_t> token_mask =
            c.masked ? std::span<const std::uint8_t>(mask) : std::span<const std::uint8_t>();

        QkvTensors grads = zeros_like(student);
        AttentionRelationWorkspace workspace;
        const AttentionRelationLoss loss = attention_relation_distillation(
            teacher.views(), student.views(), batch, seq, token_mask, options, grad_views(grads), workspace);
        CHECK(loss.total > 0.0f);

        // Gradients are of order 1e-5 to 1e-3. With step 1e-2 the quotient differs from them
        // by at most about 3e-7 for cosine (rounding noise) and about 0.5 % for scaled_dot,
        // because its larger relations raise the truncation error. The tolerance leaves 2x to 10x.
        GradCheckOptions check;
        check.step = 1e-2;
        check.atol = 3e-6;
        check.rtol = 1e-2;
        check.max_elements_per_input = 48;
        check.seed = 7;
        GradCheckReport report = check_gradients(
            [&] {
                return static_cast<double>(attention_relation_distillation(teacher.views(), student.views(), batch,
                                                                           seq, token_mask, options, {}, workspace)
                                               .total);
            },
            {{"student.query", student.query.view(), grads.query.view()},
             {"student.key", student.key.view(), grads.key.view()},
             {"student.value", student.value.view(), grads.value.view()}},
            check);
        CHECK_MESSAGE(report.passed(), report.to_string());

        // Padded tokens get no gradient.
        if (c.masked) {
            for (std::size_t token = 0; token < mask.size(); ++token) {
                if (mask[token] != 0) continue;
                for (std::int64_t col = 0; col < grads.query.cols(); ++col)
                    CHECK(grads.query(static_cast<std::int64_t>(token), col) == 0.0f);
            }
        }
    }
}

TEST_CASE("attention_relation of identical inputs is zero") {
    std::mt19937 engine(32);
    const QkvTensors qkv = random_qkv(8, 12, 6, engine);
    QkvTensors grads = zeros_like(qkv);
    AttentionRelationOptions options;
    options.relation_heads = 3;
    const AttentionRelationLoss loss =
        attention_relation_distillation(qkv.views(), qkv.views(), 2, 4, {}, options, grad_views(grads));
    CHECK(std::abs(loss.total) < 1e-6f);
    for (float value : grads.query) CHECK(std::abs(value) < 1e-6f);
}

TEST_CASE("attention_relation cosine ignores token scale") {
    // The cosine variant normalises each token's slice, so scaling a student token by a
    // positive factor changes neither the loss nor the relations.
    std::mt19937 engine(33);
    const QkvTensors teacher = random_qkv(6, 8, 8, engine);
    const QkvTensors student = random_qkv(6, 8, 8, engine);
    QkvTensors scaled{student.query, student.key, student.value};
    for (std::int64_t col = 0; col < 8; ++col) {
        scaled.query(2, col) *= 3.0f;
        scaled.value(5, col) *= 0.25f;
    }
    AttentionRelationOptions options;
    options.relation_heads = 2;
    const float original =
        attention_relation_distillation(teacher.views(), student.views(), 1, 6, {}, options, {}).total;
    const float rescaled =
        attention_relation_distillation(teacher.views(), scaled.views(), 1, 6, {}, options, {}).total;
    CHECK(rescaled == doctest::Approx(original).epsilon(1e-5));

    // The scaled-dot variant has no such invariance.
    options.variant = RelationVariant::scaled_dot;
    const float dot_original =
        attention_relation_distillation(teacher.views(), student.views(), 1, 6, {}, options, {}).total;
    const float dot_rescaled =
        attention_relation_distillation(teacher.views(), scaled.views(), 1, 6, {}, options, {}).total;
    CHECK(dot_rescaled != doctest::Approx(dot_original).epsilon(1e-3));
}

TEST_CASE("attention_relation padding equals unpadded batch") {
    // A padded batch gives the same loss as the same real tokens without padding, when the
    // row count is the same (one sequence, padding at the end).
    std::mt19937 engine(34);
    const QkvTensors teacher = random_qkv(7, 8, 4, engine);
    const QkvTensors student = random_qkv(7, 12, 6, engine);
    const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 0, 0};
    AttentionRelationOptions options;
    options.relation_heads = 2;
    QkvTensors padded_grads = zeros_like(student);
    const float padded = attention_relation_distillation(teacher.views(), student.views(), 1, 7, mask, options,
                                                         grad_views(padded_grads))
                             .total;

    auto first_rows = [](const Tensor<float>& tensor) {
        Tensor<float> result(Shape{5, tensor.cols()});
        std::copy(tensor.data(), tensor.data() + result.numel(), result.data());
        return result;
    };
    const QkvTensors teacher5{first_rows(teacher.query), first_rows(teacher.key), first_rows(teacher.value)};
    const QkvTensors student5{first_rows(student.query), first_rows(student.key), first_rows(student.value)};
    QkvTensors grads5 = zeros_like(student5);
    const float unpadded =
        attention_relation_distillation(teacher5.views(), student5.views(), 1, 5, {}, options, grad_views(grads5))
            .total;
    CHECK(padded == doctest::Approx(unpadded).epsilon(1e-6));
    for (std::int64_t i = 0; i < grads5.key.numel(); ++i)
        CHECK(padded_grads.key[i] == doctest::Approx(grads5.key[i]).epsilon(1e-5));
}

TEST_CASE("attention_relation workspace is reused") {
    std::mt19937 engine(35);
    const QkvTensors teacher = random_qkv(16, 16, 8, engine);
    const QkvTensors student = random_qkv(16, 8, 8, engine);
    QkvTensors grads = zeros_like(student);
    AttentionRelationOptions options;
    options.relation_heads = 2;
    AttentionRelationWorkspace workspace;
    const float first = attention_relation_distillation(teacher.views(), student.views(), 2, 8, {}, options,
                                                        grad_views(grads), workspace)
                            .total;
    const std::uint64_t allocations = buffer_allocations();
    const float second = attention_relation_distillation(teacher.views(), student.views(), 2, 8, {}, options,
                                                         grad_views(grads), workspace)
                             .total;
    CHECK(buffer_allocations() == allocations);
    CHECK(first == second);
}

TEST_CASE("attention_relation is the same on two threads") {
    std::mt19937 engine(38);
    const QkvTensors teacher = random_qkv(3 * 7, 16, 8, engine);
    const QkvTensors student = random_qkv(3 * 7, 8, 8, engine);
    std::vector<std::uint8_t> mask(21, 1);
    mask[6] = 0;
    mask[20] = 0;
    AttentionRelationOptions options;
    options.relation_heads = 4;
    QkvTensors one_thread = zeros_like(student);
    QkvTensors two_threads = zeros_like(student);
    set_num_threads(1);
    const double serial = attention_relation_distillation(teacher.views(), student.views(), 3, 7, mask, options,
                                                          grad_views(one_thread))
                              .total;
    set_num_threads(2);
    const double parallel = attention_relation_distillation(teacher.views(), student.views(), 3, 7, mask, options,
                                                            grad_views(two_threads))
                                .total;
    set_num_threads(1);
    // Each sequence is summed on one thread and the sums are added in sequence order.
    CHECK(serial == parallel);
    for (std::int64_t i = 0; i < one_thread.query.numel(); ++i) CHECK(one_thread.query[i] == two_threads.query[i]);
}

TEST_CASE("attention_relation skips empty gradient views") {
    std::mt19937 engine(36);
    const QkvTensors teacher = random_qkv(4, 8, 8, engine);
    const QkvTensors student = random_qkv(4, 8, 8, engine);
    QkvTensors grads = zeros_like(student);
    AttentionRelationOptions options;
    const float with_all = attention_relation_distillation(teacher.views(), student.views(), 1, 4, {}, options,
                                                           grad_views(grads))
                               .total;
    Tensor<float> value_grad(student.value.shape(), 9.0f);
    const float value_only = attention_relation_distillation(teacher.views(), student.views(), 1, 4, {}, options,
                                                             {{}, {}, value_grad.view()})
                                 .total;
    CHECK(with_all == value_only);
    for (std::int64_t i = 0; i < value_grad.numel(); ++i) CHECK(value_grad[i] == grads.value[i]);
}

TEST_CASE("attention_relation rejects widths relation heads do not divide") {
    std::mt19937 engine(37);
    const QkvTensors teacher = random_qkv(4, 12, 6, engine);
    const QkvTensors student = random_qkv(4, 8, 4, engine);
    AttentionRelationOptions options;
    options.relation_heads = 4;  // divides 12, 8 and 4 but not 6
    try {
        (void)attention_relation_distillation(teacher.views(), student.views(), 1, 4, {}, options, {});
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        CHECK(contains(message_of(error), "relation_heads 4"));
        CHECK(contains(message_of(error), "teacher width 6"));
        CHECK(contains(message_of(error), "student width 4"));
    }
    options.relation_heads = 0;
    CHECK_THROWS_AS((void)attention_relation_distillation(teacher.views(), student.views(), 1, 4, {}, options, {}),
                    std::invalid_argument);
    options.relation_heads = 2;
    // batch * seq must equal the row count.
    CHECK_THROWS_AS((void)attention_relation_distillation(teacher.views(), student.views(), 1, 5, {}, options, {}),
                    shape_error);
    // The mask needs one entry per token.
    const std::vector<std::uint8_t> short_mask{1, 1, 1};
    CHECK_THROWS_AS(
        (void)attention_relation_distillation(teacher.views(), student.views(), 1, 4, short_mask, options, {}),
        shape_error);
}
