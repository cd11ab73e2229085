"""Several tokenizers' rate-distortion on one chart and one table, at equal bits per image.

    python eval/rd_compare.py runs/rd/eval/retok/results.json runs/rd/eval/titok/results.json \
        runs/rd/eval/vqgan/results.json --labels ReTok,TiTok,VQGAN --out eval/rd_kodak

Reads the ``results.json`` of ``eval/rate_distortion.py`` runs (same images, same size). Writes
``rate_distortion.png`` (PSNR and SSIM, plus FID when every run has it, against bits per image:
prefix curves for 1D tokenizers, a single marker for fixed-length ones), ``table.md`` with every
point, and, at each bit count that every run reaches exactly, a row per model (``equal bits``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_cli, write_results  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="results.json of rate_distortion.py")
    ap.add_argument("--labels", default=None, help="comma-separated names (default: the models)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--title", default=None)
    return ap.parse_args(argv)


def load_runs(paths: list[Path], labels: str | None) -> list[dict]:
    runs = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable results.json of rate_distortion.py ({e})"
                             ) from None
        if not isinstance(data, dict) or not data.get("points"):
            raise ValueError(f"{path}: no 'points' (is it a rate_distortion.py results.json?)")
        runs.append(data)
    names = labels.split(",") if labels else [str(r["model"]) for r in runs]
    if len(names) != len(runs):
        raise ValueError(f"--labels gives {len(names)} names for {len(runs)} results")
    sizes = {tuple(r["image_size"]) for r in runs}
    counts = {r["num_samples"] for r in runs}
    if len(sizes) > 1 or len(counts) > 1:
        raise ValueError(f"the runs were evaluated on different sizes {sorted(sizes)} or image "
                         f"counts {sorted(counts)}: not comparable")
    for run, name in zip(runs, names):
        run["label"] = name
    return runs


def equal_bits(runs: list[dict]) -> list[float]:
    """Bit counts that every run has a point at."""
    common = None
    for run in runs:
        bits = {round(p["bits"], 6) for p in run["points"]}
        common = bits if common is None else common & bits
    return sorted(common or ())


def table(runs: list[dict]) -> str:
    fid = all(p.get("fid") is not None for r in runs for p in r["points"])
    head = "| model | tokens | bits / image | PSNR (dB) | SSIM |" + (" FID |" if fid else "")
    sep = "|---|---|---|---|---|" + ("---|" if fid else "")

    def row(run, p):
        line = (f"| {run['label']} | {p['tokens']} | {p['bits']:.0f} | {p['psnr']:.2f} | "
                f"{p['ssim']:.4f} |")
        return line + (f" {p['fid']:.1f} |" if fid else "")

    lines = []
    for b in equal_bits(runs):
        lines += [f"**Equal bits: {b:.0f} bits per image**", "", head, sep]
        lines += [row(r, p) for r in runs for p in r["points"] if round(p["bits"], 6) == b]
        lines.append("")
    lines += ["**All points**", "", head, sep]
    lines += [row(r, p) for r in runs for p in r["points"]]
    n, size = runs[0]["num_samples"], runs[0]["image_size"]
    lines += ["", f"{n} images at {size[0]}x{size[1]} ({runs[0]['images']})."]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["psnr", "ssim"]
    if all(p.get("fid") is not None for r in runs for p in r["points"]):
        metrics.append("fid")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for run in runs:
            bits = [p["bits"] for p in run["points"]]
            ax.plot(bits, [p[m] for p in run["points"]], "o-" if len(bits) > 1 else "s",
                    markersize=5 if len(bits) > 1 else 9, label=run["label"])
        for b in equal_bits(runs):
            ax.axvline(b, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per image")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "fid": "FID"}[m])
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs = load_runs(args.results, args.labels)
    args.out.mkdir(parents=True, exist_ok=True)
    md = table(runs)
    (args.out / "table.md").write_text(md)
    n = runs[0]["num_samples"]
    plot(runs, args.out / "rate_distortion.png",
         args.title or f"rate-distortion, {n} images, {'/'.join(r['label'] for r in runs)}")
    summary = {"runs": [{"label": r["label"], "model": r["model"], "points": r["points"]}
                        for r in runs], "equal_bits": equal_bits(runs),
               "sources": [str(p) for p in args.results]}
    write_results(args.out, summary, "summary.json")
    print(md)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main, "rd_compare.py"))
