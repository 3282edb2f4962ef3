#!/usr/bin/env bash
# 2 GPUs: the same train-heads command, data-parallel through `accelerate launch` (plain text data,
# so no generation step), then one GPU for comparison. Expects /root/smollm2.gguf.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
cat search/haystack.txt docs/*.md README.md heads/prompts.jsonl > /root/text.txt
args=(train-heads --model smollm2-135m --data /root/text.txt --steps 200 --batch-size 16 --seq-len 512
      --num-heads 4 --checkpoint-every 100 --warmup 20)
nvidia-smi -L
t0=$(date +%s)
accelerate launch --multi_gpu --num_processes 2 --mixed_precision no "$(which accel)" "${args[@]}" \
  --output "$OUT/pack-2gpu.safetensors" 2>&1 | grep -v "━" | tail -15
t1=$(date +%s)
accel "${args[@]}" --output /root/pack-1gpu.safetensors 2>&1 | grep -v "━" | tail -12
t2=$(date +%s)
python3 - "$OUT/pack-2gpu.safetensors" /root/pack-1gpu.safetensors $((t1 - t0)) $((t2 - t1)) <<'PY' > "$OUT/multigpu.json"
import json, sys
from accel.runtime.pack import load_pack
from accel.bench.common import environment
rows = []
for path, wall in zip(sys.argv[1:3], sys.argv[3:5]):
    m = load_pack(path).provenance["train_heads"]["metrics"]
    rows.append({"pack": path, "world_size": m.get("world_size"), "tokens_per_s": m["tokens_per_s"],
                 "train_wall_s": m["train_wall_s"], "command_wall_s": int(wall), "top1": m["top1"]})
print(json.dumps({"env": environment("bash scripts/gpu/train_multigpu.sh"), "rows": rows}, indent=1))
PY
cat "$OUT/multigpu.json"
