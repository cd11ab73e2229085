"""Build the 16 kHz mono speech set that ``codec_speech16k`` trains on, with whole sources held out.

    bash ../shared/tools/fetch_debian_media.sh runs/debian --all
    python train/make_speech16k.py --shared ../shared/data/audio --debian runs/debian/x \
        --out runs/speech16k

Train: LJ Speech subset (one speaker), the spoken Tux Paint stamp names/descriptions, KLettres
letters and KTuberling words, in every language except Greek. Test (held out, never trained on):
the three LibriSpeech speakers, the JFK clip and all Greek recordings (Tux Paint, KLettres,
KTuberling). FSDD is left out: it is 8 kHz narrowband. Files are resampled to 16 kHz PCM-16 wav;
``test.txt`` / ``train.txt`` list the sources. ``test_eval/`` links the evaluation subset: every
LibriSpeech and JFK file and every 40th Greek recording (sorted), about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm


def _load16k(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz (polyphase resampling: fast for 44.1/48/22.05 kHz sources)."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    wav = data.mean(axis=1)
    if sr != 16000:
        g = math.gcd(sr, 16000)
        wav = resample_poly(wav, 16000 // g, sr // g).astype(np.float32)
    return wav

HELD_OUT_LANGUAGE = "el"  # Greek: every Debian recording in it is test-only
_LANG = re.compile(r"_(?:desc_)?([a-z]{2})\.ogg$")


def _debian(root: Path) -> list[tuple[Path, str]]:
    """(file, language) for the spoken Debian recordings (sound effects and music skipped)."""
    out = []
    for p in sorted((root / "tuxpaint-stamps-default").rglob("*.ogg")):
        m = _LANG.search(p.name)
        if m:
            out.append((p, m.group(1)))
    for pkg, sub in (("klettres-data", "usr/share/klettres"),
                     ("ktuberling-data", "usr/share/ktuberling/sounds")):
        base = root / pkg / sub
        for p in sorted(base.rglob("*")):
            if p.suffix.lower() in (".ogg", ".wav", ".opus", ".flac"):
                out.append((p, p.relative_to(base).parts[0].split("@")[0]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", required=True, help="../shared/data/audio")
    ap.add_argument("--debian", required=True, help="OUT_DIR/x of fetch_debian_media.sh")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    shared, out = Path(a.shared), Path(a.out)
    jobs: list[tuple[Path, str, str]] = []  # (source, split, name)
    for p in sorted((shared / "ljspeech_subset").glob("*.wav")):
        jobs.append((p, "train", f"ljspeech/{p.stem}"))
    for p in sorted((shared / "librispeech_samples").glob("*.ogg")):
        jobs.append((p, "test", f"librispeech/{p.stem}"))
    jobs.append((shared / "misc" / "jfk.flac", "test", "jfk/jfk"))
    for p, lang in _debian(Path(a.debian)):
        pkg = p.relative_to(a.debian).parts[0]
        split = "test" if lang == HELD_OUT_LANGUAGE else "train"
        jobs.append((p, split, f"{pkg}/{lang}/{p.parent.name}_{p.stem}"))
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for src, split, name in tqdm(jobs, desc="resample to 16 kHz"):
        dst = out / split / f"{name}.wav"
        if not dst.exists():
            wav = _load16k(src)
            if wav.size < 1600:  # under 0.1 s: nothing to learn or measure
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(dst), np.clip(wav, -1, 1), 16000, subtype="PCM_16")
        lists[split].append(f"{name}\t{src}")
    sub = out / "test_eval"
    greek = [n for n in (r.split("\t")[0] for r in lists["test"]) if "/el/" in n]
    keep = [n for n in (r.split("\t")[0] for r in lists["test"]) if "/el/" not in n]
    for name in keep + sorted(greek)[::40]:
        link = sub / f"{name}.wav"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((out / "test" / f"{name}.wav").resolve())
    for split, rows in lists.items():
        (out / f"{split}.txt").write_text("\n".join(rows) + "\n")
        print(f"{split}: {len(rows)} files")


if __name__ == "__main__":
    main()
