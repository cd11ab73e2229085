"""visualtok.metrics: evaluation metrics.

* ``fid``: FID / KID / precision-recall on Inception features, reference statistics (``.npz``);
* ``inception``: the offline TF-2015-12-05 FID Inception and its input protocol, a random test net;
* ``pfid``: pFID (FID of images decoded from perturbed codes, RobusTok);
* ``image``: PSNR, SSIM, LPIPS (only with weights), codebook usage and bits;
* ``audio``: SI-SDR, multi-scale mel and STFT distances, PESQ-wb / STOI (``eval`` extra).

Submodules are imported explicitly (``from visualtok.metrics.fid import ...``) to keep
``import visualtok`` light.
"""
