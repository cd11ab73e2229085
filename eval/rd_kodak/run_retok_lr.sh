# The equal-budget ReTok row of run_plain_vq.sh again, with the retok_tiny recipe at lr 1e-4
# (configs/retok_tiny.yaml since the collapse probes; eval/README.md, "ReTok's collapse"), then
# the joint Kodak table and plot beside the TiTok and VQGAN runs of run_plain_vq.sh (their
# results.json, from $RD_PLAIN/eval). Safe to rerun, as run_all.sh.
cd "$(dirname "$0")/../.."
export RD_OUT=${RD_OUT:-runs/rd_plain_lr}
RD_PLAIN=${RD_PLAIN:-runs/rd_plain}
[ -f $RD_OUT/retok/model/config.json ] || bash eval/rd_kodak/train.sh retok 360 \
  --set "model.overrides.quantizer={type: vq, codebook_size: 1024, l2_normalize: false, dim: 8, rotation_trick: true, kmeans_init: true, dead_code_threshold: 0.1}"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
nice -n 10 python3 eval/rate_distortion.py $RD_OUT/retok/model ../shared/data/images/kodak --no-fid \
    --batch-size 24 --device cpu --out $RD_OUT/eval/retok
nice -n 10 python3 eval/rd_compare.py $RD_OUT/eval/retok/results.json \
    $RD_PLAIN/eval/{titok,vqgan}/results.json \
    --labels "ReTok (retok_tiny lr 1e-4),TiTok nested (titok_tiny),VQGAN f16 (vqgan_tiny)" \
    --title "Kodak (24 photos, 64x64), ~400 CPU-s each, plain-distance VQ, ReTok at lr 1e-4" \
    --out eval/rd_kodak/retok_lr1e-4
