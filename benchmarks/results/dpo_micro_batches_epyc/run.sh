# The SmolLM2 CPU preset's DPO stage, whole batches of 16 pairs against micro-batches of 4, each a process
# of its own under /usr/bin/time -v (its peak RSS is the DPO stage's: the process only loads SFT and pairs).
# Run from the repository root in the project's virtualenv; B: a scratch folder.
set -x
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
B=${B:-/tmp/dpo_mem}
C="experiment=sentiment_smollm2 reward=token paths.cache_dir=$B/cache"
date
/usr/bin/time -v python -m rto.main $C stage=sft hydra.run.dir=$B/up > $B/sft.log 2>&1; echo sft rc=$?
/usr/bin/time -v python -m rto.main $C stage=pairs hydra.run.dir=$B/up > $B/pairs.log 2>&1; echo pairs rc=$?
date
cp -r $B/up $B/whole; cp -r $B/up $B/micro
/usr/bin/time -v python -m rto.main $C stage=dpo cache.enabled=false hydra.run.dir=$B/micro dpo.micro_batch_size=4 > $B/dpo_micro.log 2>&1; echo micro rc=$?
date
/usr/bin/time -v python -m rto.main $C stage=dpo cache.enabled=false hydra.run.dir=$B/whole > $B/dpo_whole.log 2>&1; echo whole rc=$?
date
