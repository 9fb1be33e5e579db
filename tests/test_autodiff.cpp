// Gradient checks of every autodiff op against central differences, plus the tape's
// bookkeeping (gradient accumulation, reuse of buffers, errors).
#include <doctest/doctest.h>

#include <bitdistill/autodiff/ops_activation.hpp>
#include <bitdistill/autodiff/ops_attention.hpp>
#include <bitdistill/autodiff/ops_basic.hpp>
#include <bitdistill/autodiff/ops_embedding.hpp>
#include <bitdistill/autodiff/ops_heads.hpp>
#include <bitdistill/autodiff/ops_loss.hpp>
#include <bitdistill/autodiff/ops_norm.hpp>
#include <bitdistill/autodiff/ops_rope.hpp>

#include "test_autodiff_support.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

using namespace bitdistill;
using namespace bitdistill::autodiff;
using test_support::Leaf;
using test_support::random_tensor;
using test_support::require_gradients;

TEST_CASE("add and multiply gradients") {
    std::vector<Leaf> leaves{{"a", random_tensor(Shape{3, 5}, 1)}, {"b", random_tensor(Shape{3, 5}, 2)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return multiply(t, add(t, v[0], v[1]), v[1]);
    });
}

TEST_CASE("same var used twice") {
    // x * x + x: the second use of a Var must add to the first one's gradient.
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{4, 3}, 3)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return add(t, multiply(t, v[0], v[0]), v[0]);
    });
}

TEST_CASE("scale, sum and mean_square gradients") {
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{2, 7}, 4)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return add(t, sum(t, scale(t, v[0], -2.5f)), mean_square(t, v[0]));
    });
}

TEST_CASE("reshape and transpose gradients") {
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{6, 4}, 5)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        Var r = reshape(t, v[0], Shape{3, 8});
        return transpose(t, r);
    });
}

TEST_CASE("select_rows gradients with a repeated row") {
    static const std::vector<std::int32_t> rows{4, 0, 4, 2};
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{5, 3}, 63)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) { return select_rows(t, v[0], rows); });
}

TEST_CASE("select_rows rejects a row outside the input") {
    Tensor<float> x(Shape{3, 2});
    Tape tape;
    const std::vector<std::int32_t> rows{1, 3};
    CHECK_THROWS_AS(select_rows(tape, tape.constant(x.view()), rows), std::invalid_argument);
}

TEST_CASE("matmul and linear gradients") {
    std::vector<Leaf> leaves{{"a", random_tensor(Shape{5, 6}, 6)},
                             {"b", random_tensor(Shape{6, 3}, 7)},
                             {"w", random_tensor(Shape{4, 3}, 8)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return linear(t, matmul(t, v[0], v[1]), v[2]);
    });
}

TEST_CASE("linear matches a naive product") {
    Tensor<float> x = random_tensor(Shape{37, 19}, 9);
    Tensor<float> w = random_tensor(Shape{23, 19}, 10);
    Tape tape;
    Var y = linear(tape, tape.constant(x.view()), tape.constant(w.view()));
    auto values = tape.value(y);
    for (std::int64_t i = 0; i < 37; ++i)
        for (std::int64_t o = 0; o < 23; ++o) {
            double expected = 0.0;
            for (std::int64_t j = 0; j < 19; ++j) expected += static_cast<double>(x(i, j)) * w(o, j);
            CHECK(values(i, o) == doctest::Approx(expected).epsilon(1e-5));
        }
}

TEST_CASE("gemm splits rows over threads") {
    // Large enough for the row split; both thread counts must give the same product.
    Tensor<float> a = random_tensor(Shape{200, 300}, 11);
    Tensor<float> b = random_tensor(Shape{300, 150}, 12);
    Tensor<float> c1(Shape{200, 150});
    Tensor<float> c2(Shape{200, 150});
    set_num_threads(1);
    gemm(Trans::no, Trans::no, 200, 150, 300, 1.0f, a.data(), 300, b.data(), 150, false, c1.data(), 150);
    set_num_threads(2);
    gemm(Trans::no, Trans::no, 200, 150, 300, 1.0f, a.data(), 300, b.data(), 150, false, c2.data(), 150);
    set_num_threads(1);
    for (std::int64_t i = 0; i < c1.numel(); ++i) CHECK(c1[i] == doctest::Approx(c2[i]).epsilon(1e-5));
    double expected = 0.0;
    for (std::int64_t j = 0; j < 300; ++j) expected += static_cast<double>(a(199, j)) * b(j, 149);
    CHECK(c2(199, 149) == doctest::Approx(expected).epsilon(1e-4));
}

TEST_CASE("gemm kernels match a naive product") {
    // Every transpose pair, edge sizes that are not multiples of the tiles, several depth
    // blocks, alpha and accumulation; on each instruction set this CPU runs.
    struct Case {
        std::int64_t m, n, k;
    };
    const Case cases[] = {{1, 1, 1}, {13, 33, 7}, {25, 70, 300}, {100, 530, 20}};
    const Isa best = detected_isa();
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512vnni}) {
        if (!isa_supported(isa)) continue;
        force_isa(isa);
        for (const Case& c : cases)
            for (Trans ta : {Trans::no, Trans::yes})
                for (Trans tb : {Trans::no, Trans::yes})
                    for (bool accumulate : {false, true}) {
                        const Tensor<float> a = random_tensor(ta == Trans::no ? Shape{c.m, c.k} : Shape{c.k, c.m}, 50);
                        const Tensor<float> b = random_tensor(tb == Trans::no ? Shape{c.k, c.n} : Shape{c.n, c.k}, 51);
                        Tensor<float> out = random_tensor(Shape{c.m, c.n}, 52);
                        const Tensor<float> initial = out;
                        gemm(ta, tb, c.m, c.n, c.k, 0.5f, a.data(), a.cols(), b.data(), b.cols(), accumulate,
                             out.data(), c.n);
                        double max_error = 0.0;
                        for (std::int64_t i = 0; i < c.m; ++i)
                            for (std::int64_t j = 0; j < c.n; ++j) {
                                double expected = accumulate ? initial(i, j) : 0.0;
                                for (std::int64_t p = 0; p < c.k; ++p) {
                                    const double av = ta == Trans::no ? a(i, p) : a(p, i);
                                    const double bv = tb == Trans::no ? b(p, j) : b(j, p);
                                    expected += 0.5 * av * bv;
                                }
                                max_error = std::max(max_error, std::abs(expected - out(i, j)));
                            }
                        INFO("isa " << isa_name(isa) << ", m " << c.m << ", n " << c.n << ", k " << c.k
                                    << ", transposes " << (ta == Trans::yes) << (tb == Trans::yes)
                                    << ", accumulate " << accumulate);
                        CHECK(max_error <= 1e-5 * static_cast<double>(c.k));
                    }
    }
    force_isa(best);
}

TEST_CASE("split and merge of heads") {
    const HeadLayout layout{2, 3, 4, 5};
    const Tensor<float> x = random_tensor(Shape{6, 20}, 64);
    Tape tape;
    Var heads = split_heads(tape, tape.constant(x.view()), layout);
    CHECK(tape.shape(heads) == Shape{24, 5});
    // Token 2 of sequence 1, head 3, element 4 sits in row (1 * 4 + 3) * 3 + 2 = 23.
    CHECK(tape.value(heads)(23, 4) == x(5, 19));
    CHECK(tape.value(heads)(3, 0) == x(0, 5));
    Var back = merge_heads(tape, heads, layout);
    for (std::int64_t i = 0; i < x.numel(); ++i) CHECK(tape.value(back)[i] == x[i]);
}

TEST_CASE("split and merge gradients") {
    const HeadLayout layout{2, 3, 2, 4};
    std::vector<Leaf> leaves{{"tokens", random_tensor(Shape{6, 8}, 65)}, {"heads", random_tensor(Shape{12, 4}, 66)}};
    require_gradients(leaves, [layout](Tape& t, const std::vector<Var>& v) {
        return add(t, multiply(t, split_heads(t, v[0], layout), v[1]), split_heads(t, merge_heads(t, v[1], layout), layout));
    });
}

TEST_CASE("silu and swiglu gradients") {
    std::vector<Leaf> leaves{{"gate", random_tensor(Shape{4, 6}, 13, -3.0f, 3.0f)},
                             {"up", random_tensor(Shape{4, 6}, 14)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return add(t, swiglu(t, v[0], v[1]), silu(t, v[1]));
    });
}

TEST_CASE("softmax and log_softmax gradients") {
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{3, 9}, 15, -2.0f, 2.0f)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return add(t, softmax(t, v[0]), log_softmax(t, v[0]));
    });
}

TEST_CASE("softmax rows sum to one") {
    Tensor<float> x = random_tensor(Shape{4, 11}, 16, -30.0f, 30.0f);
    Tape tape;
    Var y = softmax(tape, tape.constant(x.view()));
    Var z = log_softmax(tape, tape.constant(x.view()));
    for (std::int64_t r = 0; r < 4; ++r) {
        double total = 0.0;
        for (std::int64_t j = 0; j < 11; ++j) {
            total += tape.value(y)(r, j);
            CHECK(std::exp(tape.value(z)(r, j)) == doctest::Approx(tape.value(y)(r, j)).epsilon(1e-4));
        }
        CHECK(total == doctest::Approx(1.0).epsilon(1e-5));
    }
}

TEST_CASE("rmsnorm gradients with and without gain") {
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{5, 8}, 17)}, {"gain", random_tensor(Shape{8}, 18, 0.5f, 1.5f)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return add(t, rmsnorm(t, v[0], v[1], 1e-5f), rmsnorm(t, v[0], Var{}, 1e-8f));
    });
}

TEST_CASE("rmsnorm per head groups") {
    // Width 4 groups inside rows of 12: the per-head q/k norm of Qwen3.
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{3, 12}, 19)}, {"gain", random_tensor(Shape{4}, 20, 0.5f, 1.5f)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) { return rmsnorm(t, v[0], v[1], 1e-6f); });
}

TEST_CASE("rmsnorm value") {
    Tensor<float> x(Shape{1, 4});
    x[0] = 1.0f; x[1] = -2.0f; x[2] = 3.0f; x[3] = -4.0f;
    Tape tape;
    Var y = rmsnorm(tape, tape.constant(x.view()), Var{}, 0.0f);
    const double rms = std::sqrt((1.0 + 4.0 + 9.0 + 16.0) / 4.0);
    for (int j = 0; j < 4; ++j) CHECK(tape.value(y)[j] == doctest::Approx(x[j] / rms).epsilon(1e-6));
}

TEST_CASE("rope gradients") {
    std::vector<Leaf> leaves{{"x", random_tensor(Shape{2 * 5, 3 * 6}, 21)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) { return rope(t, v[0], 5, 6, 10000.0f); });
}

TEST_CASE("rope rotates interleaved pairs") {
    // Position 1, head_dim 4, theta 100: pair 0 turns by 1 rad, pair 1 by 100^(-1/2) rad.
    Tensor<float> x(Shape{2, 4}, 1.0f);
    Tape tape;
    Var y = rope(tape, tape.constant(x.view()), 2, 4, 100.0f);
    auto out = tape.value(y);
    for (int j = 0; j < 4; ++j) CHECK(out(0, j) == 1.0f);
    CHECK(out(1, 0) == doctest::Approx(std::cos(1.0) - std::sin(1.0)));
    CHECK(out(1, 1) == doctest::Approx(std::sin(1.0) + std::cos(1.0)));
    CHECK(out(1, 2) == doctest::Approx(std::cos(0.1) - std::sin(0.1)));
    CHECK(out(1, 3) == doctest::Approx(std::sin(0.1) + std::cos(0.1)));
}

TEST_CASE("attention gradients with grouped heads") {
    const AttentionShape s{2, 5, 4, 2, 6};
    std::vector<Leaf> leaves{{"q", random_tensor(Shape{10, 24}, 22)},
                             {"k", random_tensor(Shape{10, 12}, 23)},
                             {"v", random_tensor(Shape{10, 12}, 24)}};
    bitdistill::GradCheckOptions options;
    options.step = 1e-2;
    require_gradients(leaves, [s](Tape& t, const std::vector<Var>& v) { return attention(t, v[0], v[1], v[2], s); }, options);
}

TEST_CASE("attention gradients with a padding mask") {
    // The second sequence is padded after 3 tokens; its padded keys get no attention.
    const AttentionShape s{2, 5, 2, 1, 4};
    static const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    std::vector<Leaf> leaves{{"q", random_tensor(Shape{10, 8}, 25)},
                             {"k", random_tensor(Shape{10, 4}, 26)},
                             {"v", random_tensor(Shape{10, 4}, 27)}};
    require_gradients(leaves, [s](Tape& t, const std::vector<Var>& v) {
        return attention(t, v[0], v[1], v[2], s, mask);
    });
}

TEST_CASE("attention matches a naive loop") {
    const AttentionShape s{2, 4, 4, 2, 3};
    const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 0, 0};
    Tensor<float> q = random_tensor(Shape{8, 12}, 28);
    Tensor<float> k = random_tensor(Shape{8, 6}, 29);
    Tensor<float> v = random_tensor(Shape{8, 6}, 30);
    Tape tape;
    Var y = attention(tape, tape.constant(q.view()), tape.constant(k.view()), tape.constant(v.view()), s, mask);
    auto out = tape.value(y);
    const double scale = 1.0 / std::sqrt(3.0);
    for (int b = 0; b < 2; ++b)
        for (int h = 0; h < 4; ++h) {
            const int kv = h / 2;
            for (int i = 0; i < 4; ++i) {
                std::vector<double> weights(4, 0.0);
                double max_score = -1e300;
                for (int j = 0; j <= i; ++j) {
                    if (mask[b * 4 + j] == 0) continue;
                    double score = 0.0;
                    for (int d = 0; d < 3; ++d) score += q(b * 4 + i, h * 3 + d) * k(b * 4 + j, kv * 3 + d);
                    weights[j] = score * scale;
                    max_score = std::max(max_score, weights[j]);
                }
                double total = 0.0;
                for (int j = 0; j <= i; ++j) {
                    weights[j] = mask[b * 4 + j] != 0 ? std::exp(weights[j] - max_score) : 0.0;
                    total += weights[j];
                }
                for (int d = 0; d < 3; ++d) {
                    double expected = 0.0;
                    for (int j = 0; j <= i; ++j) expected += weights[j] / total * v(b * 4 + j, kv * 3 + d);
                    CHECK(out(b * 4 + i, h * 3 + d) == doctest::Approx(expected).epsilon(1e-5));
                }
            }
        }
}

TEST_CASE("attention across causal row blocks") {
    // 100 tokens span three row blocks of the causal products (48, 48 and 4 rows).
    const AttentionShape s{1, 100, 2, 1, 4};
    std::vector<std::uint8_t> mask(100, 1);
    for (int i = 90; i < 100; ++i) mask[i] = 0;
    Tensor<float> q = random_tensor(Shape{100, 8}, 60, -2.0f, 2.0f);
    Tensor<float> k = random_tensor(Shape{100, 4}, 61, -2.0f, 2.0f);
    Tensor<float> v = random_tensor(Shape{100, 4}, 62);
    Tape tape;
    Var y = attention(tape, tape.constant(q.view()), tape.constant(k.view()), tape.constant(v.view()), s, mask);
    for (int h = 0; h < 2; ++h)
        for (int i : {0, 47, 48, 60, 95, 96, 99}) {
            std::vector<double> weights(100, 0.0);
            double max_score = -1e300;
            for (int j = 0; j <= i; ++j) {
                if (mask[j] == 0) continue;
                double score = 0.0;
                for (int d = 0; d < 4; ++d) score += q(i, h * 4 + d) * k(j, d);
                weights[j] = score / 2.0;
                max_score = std::max(max_score, weights[j]);
            }
            double total = 0.0;
            for (int j = 0; j <= i; ++j) {
                weights[j] = mask[j] != 0 ? std::exp(weights[j] - max_score) : 0.0;
                total += weights[j];
            }
            for (int d = 0; d < 4; ++d) {
                double expected = 0.0;
                for (int j = 0; j <= i; ++j) expected += weights[j] / total * v(j, d);
                CHECK(tape.value(y)(i, h * 4 + d) == doctest::Approx(expected).epsilon(1e-5));
            }
        }

    static const std::vector<std::uint8_t> static_mask = mask;
    std::vector<Leaf> leaves{{"q", q}, {"k", k}, {"v", v}};
    bitdistill::GradCheckOptions options;
    options.step = 1e-2;
    options.max_elements_per_input = test_support::small_scale() ? 16 : 48;
    require_gradients(leaves, [s](Tape& t, const std::vector<Var>& vars) {
        return attention(t, vars[0], vars[1], vars[2], s, static_mask);
    }, options);
}

TEST_CASE("attention row without keys is zero") {
    // Left padding: the first query of the sequence has no real key at or before it.
    const AttentionShape s{1, 3, 1, 1, 2};
    const std::vector<std::uint8_t> mask{0, 1, 1};
    Tensor<float> q = random_tensor(Shape{3, 2}, 31);
    Tape tape;
    Var x = tape.constant(q.view());
    Var y = attention(tape, x, x, x, s, mask);
    CHECK(tape.value(y)(0, 0) == 0.0f);
    CHECK(tape.value(y)(0, 1) == 0.0f);
    CHECK(tape.value(y)(1, 0) == doctest::Approx(q(1, 0)));
}

TEST_CASE("embedding gradients with repeated ids") {
    static const std::vector<std::int32_t> ids{3, 0, 3, 2, 3};
    std::vector<Leaf> leaves{{"table", random_tensor(Shape{5, 4}, 32)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) { return embedding(t, v[0], ids); });
}

TEST_CASE("embedding rejects an id outside the vocabulary") {
    Tensor<float> table(Shape{4, 2});
    Tape tape;
    const std::vector<std::int32_t> ids{1, 4};
    CHECK_THROWS_AS(embedding(tape, tape.constant(table.view()), ids), std::invalid_argument);
}

TEST_CASE("cross_entropy gradients with ignored targets") {
    static const std::vector<std::int32_t> targets{2, ignored_target, 0, 4};
    std::vector<Leaf> leaves{{"logits", random_tensor(Shape{4, 5}, 33, -2.0f, 2.0f)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return scale(t, cross_entropy(t, v[0], targets), 3.0f);
    });
}

TEST_CASE("logits_distillation gradients with a mask") {
    static const Tensor<float> teacher = random_tensor(Shape{4, 6}, 34, -3.0f, 3.0f);
    static const std::vector<std::uint8_t> mask{1, 0, 1, 1};
    std::vector<Leaf> leaves{{"student", random_tensor(Shape{4, 6}, 35, -3.0f, 3.0f)}};
    require_gradients(leaves, [](Tape& t, const std::vector<Var>& v) {
        return logits_distillation(t, v[0], teacher.view(), 2.0f, mask);
    });
}

TEST_CASE("attention relation distillation gradients") {
    static const Tensor<float> tq = random_tensor(Shape{6, 8}, 36);
    static const Tensor<float> tk = random_tensor(Shape{6, 4}, 37);
    static const Tensor<float> tv = random_tensor(Shape{6, 4}, 38);
    static const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 0};
    static AttentionRelationWorkspace workspace;
    std::vector<Leaf> leaves{{"q", random_tensor(Shape{6, 8}, 39)},
                             {"k", random_tensor(Shape{6, 4}, 40)},
                             {"v", random_tensor(Shape{6, 4}, 41)}};
    AttentionRelationOptions options;
    options.relation_heads = 2;
    require_gradients(leaves, [options](Tape& t, const std::vector<Var>& v) {
        const AttentionQkv teacher{tq.view(), tk.view(), tv.view()};
        return attention_relation_distillation(t, v[0], v[1], v[2], teacher, 2, 3, mask, options, workspace);
    });
}

TEST_CASE("parameter gradients accumulate across backward passes") {
    Tensor<float> w = random_tensor(Shape{3}, 42);
    Tensor<float> g(Shape{3});
    Tape tape;
    for (int pass = 0; pass < 2; ++pass) {
        tape.reset();
        Var x = tape.parameter(w.view(), g.view());
        tape.backward(sum(tape, scale(tape, x, 2.0f)));
    }
    for (int j = 0; j < 3; ++j) CHECK(g[j] == 4.0f);
}

TEST_CASE("gradients stop at constants") {
    Tensor<float> a = random_tensor(Shape{2, 2}, 43);
    Tape tape;
    Var c = tape.constant(a.view());
    Var y = sum(tape, multiply(tape, c, c));
    CHECK_FALSE(tape.requires_grad(y));
    CHECK_NOTHROW(tape.backward(y));
}

TEST_CASE("disabled gradients record no backward") {
    Tensor<float> w = random_tensor(Shape{2, 2}, 44);
    Tensor<float> g(Shape{2, 2});
    Tape tape;
    tape.set_grad_enabled(false);
    Var x = tape.parameter(w.view(), g.view());
    Var y = sum(tape, x);
    CHECK_FALSE(tape.requires_grad(y));
}

TEST_CASE("backward rejects a non-scalar loss") {
    Tensor<float> w(Shape{2, 2});
    Tensor<float> g(Shape{2, 2});
    Tape tape;
    Var x = tape.parameter(w.view(), g.view());
    CHECK_THROWS_AS(tape.backward(scale(tape, x, 1.0f)), shape_error);
}

TEST_CASE("stale var is rejected") {
    Tensor<float> w(Shape{2});
    Tape tape;
    Var x = tape.constant(w.view());
    tape.reset();
    CHECK_THROWS_AS((void)tape.value(x), std::invalid_argument);
}

TEST_CASE("shape mismatch names both shapes") {
    Tensor<float> a(Shape{2, 3});
    Tensor<float> b(Shape{3, 2});
    Tape tape;
    try {
        (void)add(tape, tape.constant(a.view()), tape.constant(b.view()));
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        CHECK(std::string(error.what()).find("[2, 3]") != std::string::npos);
        CHECK(std::string(error.what()).find("[3, 2]") != std::string::npos);
    }
}
