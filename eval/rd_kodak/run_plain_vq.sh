# The equal-budget runs of run_all.sh with a plain-distance VQ (l2_normalize: false) for all three
# tiny recipes, each otherwise with its own quantizer options; then the Kodak table and plot
# (eval/README.md, "the same budget with a plain-distance VQ"). Safe to rerun, as run_all.sh.
cd "$(dirname "$0")/../.."
export RD_OUT=runs/rd_plain
q() { echo "model.overrides.quantizer={type: vq, codebook_size: 1024, l2_normalize: false, $1}"; }
# ReTok at lr 1e-3, the recipe's rate when the table was made (now 1e-4: run_retok_lr.sh)
[ -f $RD_OUT/retok/model/config.json ] || bash eval/rd_kodak/train.sh retok 360 --set optim.lr=1.0e-3 \
  --set "$(q 'dim: 8, rotation_trick: true, kmeans_init: true, dead_code_threshold: 0.1')"
[ -f $RD_OUT/titok/model/config.json ] || bash eval/rd_kodak/train.sh titok 1320 \
  --set "$(q 'dim: 12')"
[ -f $RD_OUT/vqgan/model/config.json ] || bash eval/rd_kodak/train.sh vqgan 440 \
  --set "$(q 'dim: 8, kmeans_init: true, dead_code_threshold: 0.1')"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
for m in retok titok vqgan; do
  nice -n 10 python3 eval/rate_distortion.py $RD_OUT/$m/model ../shared/data/images/kodak --no-fid \
      --batch-size 24 --device cpu --out $RD_OUT/eval/$m
done
nice -n 10 python3 eval/rd_compare.py $RD_OUT/eval/{retok,titok,vqgan}/results.json \
    --labels "ReTok (retok_tiny),TiTok nested (titok_tiny),VQGAN f16 (vqgan_tiny)" \
    --title "Kodak (24 photos, 64x64), ~400 CPU-s each, plain-distance VQ" \
    --out eval/rd_kodak/plain_vq
