// SST-2 reproduction of BitNet Distillation at a size that trains on 2 cores: trains on
// sst2/train.tsv and reports accuracy on sst2/dev.tsv for FP-SFT, BitNet-SFT and BitDistill.
// Run with --help for the options; examples/run_sst2.sh builds and runs it.
#include "experiment_main.hpp"

namespace {

using namespace bitdistill;
using namespace bitdistill::pipeline;

/// Returns the default settings, sized to finish in well under 30 minutes on 2 cores.
ExperimentConfig default_config() {
    const std::filesystem::path data = BITDISTILL_EXAMPLE_DATA;
    ExperimentConfig config;
    config.task = "sst2";
    config.figure_name = "SST-2 dev";
    config.format = sst2_format();
    config.prompt = sst2_prompt();
    config.train_tsv = data / "sst2" / "train.tsv";
    config.eval_tsv = data / "sst2" / "dev.tsv";
    config.corpus_files = {data / "corpus" / "wikitext2_valid.tokens.txt", data / "corpus" / "wikitext2_test.tokens.txt",
                           data / "corpus" / "us_inaugural_addresses.txt", data / "corpus" / "us_state_of_the_union.txt"};
    config.output_dir = std::filesystem::path(BITDISTILL_RESULTS_DIR) / "sst2";
    config.work_dir = std::filesystem::path(BITDISTILL_RESULTS_DIR) / "sst2";

    config.tokenizer.vocab_size = 4096;
    config.model.vocab_size = 4096;
    config.model.dim = 192;
    config.model.hidden_dim = 512;
    config.model.n_layers = 3;
    config.model.n_heads = 3;
    config.model.n_kv_heads = 3;
    config.model.max_seq_len = 64;
    config.max_tokens = 64;
    config.lm_window = 64;

    config.pretrain.epochs = 1.5;
    config.pretrain.batch_size = 32;
    config.pretrain.peak_lr = 2e-3f;
    config.fp_sft.epochs = 1.0;
    config.fp_sft.batch_size = 32;
    config.ternary_sft = config.fp_sft;
    config.stage2.epochs = 0.3;
    config.stage2.batch_size = 32;
    config.stage2.peak_lr = 2e-3f;
    // Distil the logits at the label positions only, as for a classifier. Over all positions
    // both LM heads run on every token, which roughly doubles the cost of stage 3.
    config.distillation.positions = DistillPositions::answers;
    config.float_lr_grid = {2.5e-4f};
    config.ternary_lr_grid = {2.5e-3f};
    return config;
}

/// --full: a larger model, twice the pre-training, three times the fine-tuning epochs and a
/// 3-point grid per method chosen on 2,000 held-out training rows.
void apply_full(ExperimentConfig& config) {
    config.model.dim = 256;
    config.model.hidden_dim = 704;
    config.model.n_layers = 4;
    config.model.n_heads = 4;
    config.model.n_kv_heads = 4;
    config.pretrain.epochs = 3.0;
    config.fp_sft.epochs = 3.0;
    config.ternary_sft.epochs = 3.0;
    config.stage2.epochs = 1.0;
    config.float_lr_grid = {2e-4f, 5e-4f, 1e-3f};
    config.ternary_lr_grid = {1e-3f, 2.5e-3f, 5e-3f};
    config.validation_rows = 2000;
}

}  // namespace

int main(int argc, char** argv) {
    return bitdistill::examples::experiment_main(argc, argv, default_config(), apply_full);
}
