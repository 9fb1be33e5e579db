#!/usr/bin/env bash
# The main job: installs missing Debian packages, builds the SST-2 example in the release
# preset and runs the whole reproduction (tokenizer, pre-training, FP-SFT, BitNet-SFT,
# BitDistill stages 1-3, evaluation). Results go to results/sst2/.
#
# Usage: examples/run_sst2.sh              default run, under 30 minutes on 2 cores
#        examples/run_sst2.sh --full       longer, closer setting (results/sst2_full/)
#        examples/run_sst2.sh --ablation   stage ablation table (results/sst2/ablation.md)
#        examples/run_sst2.sh --help       every option of the sst2 program
set -euo pipefail
cd "$(dirname "$0")/.."

bash cmake/install-deps.sh

cmake --preset release >/dev/null
cmake --build --preset release --target sst2

# Threads that wait for work sleep instead of spinning, so a busy machine (a compiler or
# another job on one of the 2 cores) does not stall every parallel loop.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
build/release/examples/sst2/sst2 "$@"
