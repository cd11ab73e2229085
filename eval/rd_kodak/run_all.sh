# The three equal-budget runs of eval/README.md, one after the other (one core each, niced), then
# the Kodak evaluation and the joint table. Safe to rerun: finished models are skipped and an
# interrupted one resumes from its last checkpoint.
# Steps = 400 CPU-s (6.7 minutes of one core) / CPU-s per step, measured at 1 thread on this machine
# (retok 1.07, titok 0.30, vqgan 0.91 CPU-s per step; ~4 s of start-up each).
cd "$(dirname "$0")/../.."
for spec in retok:360 vqgan:440 titok:1320; do
  m=${spec%%:*}; n=${spec##*:}
  old=""; [ "$m" = retok ] && old="--set optim.lr=1.0e-3"  # the recipe's rate when the table was made
  [ -f runs/rd/$m/model/config.json ] || bash eval/rd_kodak/train.sh "$m" "$n" $old
done
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
for m in retok titok vqgan; do
  nice -n 10 python3 eval/rate_distortion.py runs/rd/$m/model ../shared/data/images/kodak --no-fid \
      --batch-size 24 --device cpu --out runs/rd/eval/$m
done
nice -n 10 python3 eval/rd_compare.py runs/rd/eval/{retok,titok,vqgan}/results.json \
    --labels "ReTok (retok_tiny),TiTok nested (titok_tiny),VQGAN f16 (vqgan_tiny)" \
    --title "Kodak (24 photos, 64x64), ~400 CPU-s each" --out eval/rd_kodak
