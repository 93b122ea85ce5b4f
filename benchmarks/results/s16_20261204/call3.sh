#!/usr/bin/env bash
# Session 16 call 3 (one H200): where the host time of an eager training step goes now that eager steps keep
# PyTorch's modules (SFMAMBA_TRAIN_KERNELS=auto): cProfile of sf_mamba_tiny's training step, bs 128, bf16, fused AdamW.
set -uo pipefail
P=/opt/torch/.venv/bin/python3; [ -x $P ] || P=python3
export PYTHONPATH=src
timeout 150 $P benchmarks/models/host_profile.py --model sf_mamba_tiny --batch 128 --train --opt adamw-fused \
  --cprofile --top 45 --out $OUT/cprofile_train.txt > $OUT/cprofile.log 2>&1; echo "rc $?"
head -3 $OUT/cprofile_train.txt; grep -v Warning $OUT/cprofile.log | tail -5
