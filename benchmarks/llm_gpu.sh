#!/usr/bin/env bash
# The language-model checks that need a GPU, in one command on a lent machine:
#   1. generalized JSD against TRL's loss and Liger-Kernel's fused linear JSD, at the issue's CPU
#      sizes (fp32) and at Liger's published size (bf16, B*T 8192, hidden 4096, vocabulary 128,256);
#   2. the memory table of the token-level loss (the fused chunked path);
#   3. the planner's estimate against the CUDA allocator's peak of real runs (3 architectures);
#   4. generation tokens/s (transformers; vLLM is not carried: its wheel pins its own torch);
#   5. QLoRA students on CUDA (bitsandbytes' CUDA kernels): the stories260K LoRA recipe over an nf4
#      and an int8 base, bits per byte beside the unquantised run.
#
# Here, once per checkout (the machine there has torch, transformers, peft, accelerate, triton, but
# not these; ../shared/assets does not travel):
#     bash benchmarks/llm_gpu.sh prepare
# There (the device tool): command "bash benchmarks/llm_gpu.sh", carry [".whl", ".assets"],
# timeout_s 600 (the steps' own limits add up to 565 s); the tables come back in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    mkdir -p .git/info .assets
    for p in /.whl/ /.assets/; do grep -qx "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        liger-kernel==0.8.5 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2 \
        pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.7.0 || exit 1
    src="${DISTILL_ASSETS:-../shared/assets}"
    cp -r "$src/stories260K" "$src/text" .assets/ || exit 1
    du -sh .whl .assets
    exit 0
fi

: "${OUT:?run this on the device machine, where OUT is set}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH="$PWD/src:/tmp/site" DISTILL_ASSETS="$PWD/.assets" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/device.txt"
step() { echo "== $1"; shift; timeout "$@" || echo "(failed or timed out: $?)"; }
step "peers, fp32" 110 python3 benchmarks/llm.py peers --out-file "$OUT/peers_fp32.md"
step "peers, Liger's size" 120 python3 benchmarks/llm.py peers --vocabs 128256 --batches 8 --seq 1024 --dim 4096 \
    --chunk 1024 --dtype bf16 --out-file "$OUT/peers_liger.md"
step "memory" 60 python3 benchmarks/llm.py memory --out-file "$OUT/memory.md"
step "planner" 150 python3 benchmarks/llm_plan.py --device cuda --types llama qwen3 gemma2 --hidden 1024 768 \
    --layers 8 --vocab 32768 --seq 1024 --out-file "$OUT/plan_cuda.md"
step "generation" 50 python3 benchmarks/llm.py generation --batches 8 32 128 --prompts 128 --no-vllm \
    --out-file "$OUT/generation.md"
for q in none nf4 int8; do  # about 10 s each
    step "qlora $q" 25 python3 -m distill.cli.main run recipes/llm/stories_lora.yaml engine.device=cuda \
        output_dir=/tmp/qlora cache_dir=/tmp/qlora_cache name=stories-$q \
        $([ $q = none ] || echo student.lora.quantize=$q) 2>&1 | grep -E "bits/byte|Error|error" | tee -a "$OUT/qlora.txt"
done
