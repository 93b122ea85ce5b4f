set -u
export OUT
R=benchmarks/models/run_targets.sh
OUT="$OUT" bash $R setup 2>&1 | tail -2
export PYTHONPATH="src:.bench_deps/ext:.bench_deps:.bench_deps/wheels/mambavision-1.2.0-py3-none-any.whl:.bench_deps/wheels/einops-0.8.1-py3-none-any.whl"
PY=/opt/torch/.venv/bin/python3
C=(-b 128 --img-size 224 --amp --amp-dtype bfloat16 --official-scan mamba_ssm --channels-last)
$PY -m sfmamba.cli.main bench --bench profile --model sf_mamba_tiny mambavision_tiny official:mamba_vision_T "${C[@]}" --num-warm-iter 30 --num-bench-iter 10 --profile-top 40 --cuda-graph --results-file $OUT/profile_graph.json > $OUT/profile_graph.log 2>&1
tail -150 $OUT/profile_graph.log
$PY -m sfmamba.cli.main bench --bench profile --profile-mode train --model sf_mamba_tiny official:mamba_vision_T "${C[@]}" --num-warm-iter 10 --num-bench-iter 5 --profile-top 40 --results-file $OUT/profile_train.json > $OUT/profile_train.log 2>&1
tail -120 $OUT/profile_train.log
$PY -m sfmamba.cli.main bench --bench inference --cuda-graph --model mambavision_base sf_mamba_base official:mamba_vision_B "${C[@]}" --num-warm-iter 30 --num-bench-iter 100 --results-file $OUT/base.json 2>&1 | tail -8
$PY -m sfmamba.cli.main bench --bench inference --cuda-graph --model sf_mamba_tiny sf_mamba_tiny:fold=1 sf_mamba_tiny:aux_tokens=False sf_mamba_tiny:aux_tokens=False,fold=1 "${C[@]}" --num-warm-iter 30 --num-bench-iter 100 --repeats 5 --results-file $OUT/ablation.json 2>&1 | tail -8
