#!/usr/bin/env bash
# The gFID protocol of eval/README.md, run as written (CPU, 1 thread per job).
set -euo pipefail
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/../.."
( python train/make_patches.py ../shared/data/images runs/kodak_gen128 --size 128 \
      --scales 0.3125 0.625 --stride 32 --exclude debian_wallpapers gcompris mdn_cc0 pypi_samples \
  && python eval/gfid.py make-ref runs/kodak_gen128 --out runs/ref/kodak_gen128.npz --no-progress ) > runs/gfid_ref.log 2>&1 &
( python eval/sample.py --gpt gpt_photo128 --tokenizer titok_photo128 --num-samples 2048 \
      --cfg-scale 2.0 --top-k 200 --no-png --out runs/samples_gpt_photo128 ) > runs/gfid_sample_trained.log 2>&1 &
wait
python -c "import visualtok; visualtok.create_model('gpt_photo128').save_pretrained('runs/gpt0')"
python eval/sample.py --gpt runs/gpt0 --tokenizer titok_photo128 --num-samples 2048 \
    --cfg-scale 2.0 --top-k 200 --no-png --out runs/samples_gpt0 > runs/gfid_sample_gpt0.log 2>&1 &
python eval/gfid.py runs/samples_gpt_photo128/samples.npz --reference runs/ref/kodak_gen128.npz \
    --bootstrap 100 --out runs/gfid_gpt_photo128 --no-progress > runs/gfid_eval_trained.log 2>&1 &
wait
python eval/gfid.py runs/samples_gpt0/samples.npz --reference runs/ref/kodak_gen128.npz \
    --bootstrap 100 --out runs/gfid_gpt0 --no-progress > runs/gfid_eval_gpt0.log 2>&1
echo done
