# Equal-budget CPU training for the Kodak rate-distortion table (eval/README.md).
# usage: bash eval/rd_kodak/train.sh {retok|titok|vqgan} STEPS [--set KEY=VALUE ...]  (from anywhere)
# The runs go to $RD_OUT (default runs/rd); extra arguments are passed on to the trainer.
# Rerunning the same command after an interruption resumes from the last checkpoint
# (trainer.resume=auto); cpu_time.txt then has one line per piece, to be summed.
cd "$(dirname "$0")/../.."
OUT=${RD_OUT:-runs/rd}
mkdir -p "$OUT"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
G=../shared/data/images/gcompris
m=$1; n=$2; shift 2; w=$(( (n + 9) / 10 ))  # warm-up: 10% of the steps for every model
case $m in
  retok) cfg=configs/retok_tiny.yaml; extra="--set loss.semantic_weight=0";;
  titok) cfg=configs/titok_tiny_nested.yaml; extra="";;
  vqgan) cfg=configs/vqgan_tiny.yaml; extra="--set model.overrides.encoder_ch_mult=[1,1,2,2,4] --set model.overrides.decoder_ch_mult=[1,1,2,2,4]";;
esac
/usr/bin/time -f "$m steps=$n user=%U sys=%S wall=%e" -a -o "$OUT"/cpu_time.txt \
  nice -n 10 python3 -m visualtok.cli train $cfg --set data.path=$G --set trainer.steps=$n --set optim.warmup_steps=$w \
  --set trainer.output_dir="$OUT"/$m --set trainer.image_every=0 --set trainer.ckpt_every=100 \
  --set trainer.progress=false $extra "$@" >> "$OUT"/$m.log 2>&1
