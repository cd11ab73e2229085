"""Reconstruction evaluation of an audio codec: SI-SDR, mel / STFT distance, PESQ-wb, STOI,
encode/decode speed, bitrate and per-level code usage, one row per bitrate.

    python eval/audio_codec.py encodec_24khz ../shared/data/audio/ljspeech_subset --out runs/enc24
    python eval/audio_codec.py dac_16khz ../shared/data/audio/librispeech_samples --n-q 2,4,12 \\
        --out runs/dac16
    python eval/audio_codec.py encodec_24khz clips/ --random-init --max-files 2 --out /tmp/smoke

Each file is read at the codec's sample rate and channel count (resampled, mixed or duplicated),
optionally cut to ``--max-seconds``, encoded once with the most codebooks asked for, and decoded
from each prefix of levels (RVQ codes of fewer levels are a prefix). The reference audio itself is
the ceiling row. PESQ (wide-band, 16 kHz) and STOI need the ``eval`` extra; UTMOS, WavLM speaker
similarity and Whisper WER need weights that cannot be had offline and are reported as unavailable.
Speed is "x real time" (seconds of audio per second of compute, batch 1). Writes ``results.json``,
``results.md`` and ``spectrograms.png`` (first file: original and each bitrate).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_results

import visualtok
from visualtok.audio.base import AudioCodec
from visualtok.audio.io import AUDIO_EXTENSIONS, read_audio, save_spectrograms, to_channels
from visualtok.metrics.audio import (
    UNAVAILABLE,
    mel_distance,
    pesq_wb,
    si_sdr,
    stft_distance,
    stoi,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="preset name or checkpoint directory (visualtok.load)")
    ap.add_argument("audio", type=Path, help="audio folder (wav/flac/ogg/mp3, recursive)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-q", default=None,
                    help="comma-separated codebook counts (default: the model's target "
                         "bandwidths for EnCodec, else 1, 2, 4, ... up to all)")
    ap.add_argument("--max-files", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None, help="cut each file to this")
    ap.add_argument("--no-pesq", action="store_true", help="skip PESQ and STOI")
    ap.add_argument("--random-init", action="store_true",
                    help="build the preset with random weights: smoke tests only")
    ap.add_argument("--overrides", default="{}", help="JSON config overrides for --random-init")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--opus", type=float, default=None, metavar="KBPS",
                    help="add a real-codec reference row: the audio through libopus (PyAV) at "
                         "this bitrate")
    return ap.parse_args(argv)


def opus_roundtrip(wav: torch.Tensor, sample_rate: int, kbps: float) -> tuple[torch.Tensor, float]:
    """``[C, T]`` audio through libopus (PyAV, in an in-memory Ogg) at ``kbps`` and back at
    ``sample_rate``, ``[C, T]``; also the bitrate actually written (kbps, container included)."""
    import io

    import av
    import numpy as np

    from visualtok.audio.io import resample

    if "libopus" not in av.codecs_available:
        raise ValueError("--opus needs PyAV built with libopus (av.codecs_available)")
    layout = {1: "mono", 2: "stereo"}.get(wav.shape[0])
    if layout is None:
        raise ValueError(f"--opus handles mono or stereo audio; got {wav.shape[0]} channels")
    pcm = (wav.clamp(-1, 1) * 32767).round().short().numpy().T.reshape(1, -1)  # packed s16
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        st = out.add_stream("libopus", rate=sample_rate)
        st.bit_rate, st.layout = int(kbps * 1000), layout
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = sample_rate
        for packet in [*st.encode(frame), *st.encode(None)]:
            out.mux(packet)
    written = buf.tell() * 8 / (wav.shape[-1] / sample_rate) / 1000
    buf.seek(0)
    with av.open(buf) as inp:
        stream = inp.streams.audio[0]
        y = np.concatenate([f.to_ndarray() for f in inp.decode(stream)], -1)
        rate = stream.codec_context.sample_rate
    y = torch.from_numpy(y.astype(np.float32)).reshape(wav.shape[0], -1)  # decoded planar float
    y = resample(y, rate, sample_rate) if rate != sample_rate else y
    y = y[:, : wav.shape[-1]]
    return torch.nn.functional.pad(y, (0, wav.shape[-1] - y.shape[-1])), written


def _levels_to_eval(model: AudioCodec, spec: str | None) -> list[int]:
    if spec:
        return sorted({int(v) for v in spec.split(",")})
    bands = getattr(model.config, "target_bandwidths", None)
    if bands and hasattr(model, "n_q_for_bandwidth"):
        return sorted({model.n_q_for_bandwidth(b) for b in bands})
    out, q = [], 1
    while q < model.max_codebooks:
        out.append(q)
        q *= 2
    return out + [model.max_codebooks]


def _level_usage(codes: list[torch.Tensor], k: int) -> list[dict]:
    """Per level: used fraction of the K codes and perplexity, over all frames of all files."""
    flat = torch.cat([c.reshape(-1, c.shape[-1]) for c in codes])
    rows = []
    for level in range(flat.shape[1]):
        hist = torch.bincount(flat[:, level], minlength=k).double()
        p = hist[hist > 0] / hist.sum()
        rows.append({"level": level, "usage": float((hist > 0).sum()) / k,
                     "perplexity": float(torch.exp(-(p * p.log()).sum()))})
    return rows


def _fmt(v, digits=3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    cols = ["n_q", "kbps", "SI-SDR (dB)", "mel dist", "STFT dist", "PESQ-wb", "STOI",
            "encode x RT", "decode x RT"]
    lines = [f"# {results['model']} on {results['data']['files']} files "
             f"({results['data']['seconds']:.1f} s)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results["rows"]:
        lines.append("| " + " | ".join([
            str(r["n_q"]) if r["n_q"] is not None else r.get("label", "reference"),
            _fmt(r["kbps"], 2), _fmt(r["si_sdr"], 2), _fmt(r["mel_distance"]),
            _fmt(r["stft_distance"]), _fmt(r.get("pesq_wb")), _fmt(r.get("stoi")),
            _fmt(r.get("encode_x_realtime"), 1), _fmt(r.get("decode_x_realtime"), 1)]) + " |")
    lines += ["", "| level | usage | perplexity |", "|---|---|---|"]
    lines += [f"| {u['level']} | {u['usage']:.3f} | {u['perplexity']:.1f} |"
              for u in results["levels"]]
    lines += ["", "Unavailable (no weights offline): "
              + "; ".join(f"{k}: {v}" for k, v in results["unavailable"].items())]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_init:
        model = visualtok.create_model(args.model, **json.loads(args.overrides))
    else:
        model = visualtok.load(args.model)
    if not isinstance(model, AudioCodec):
        raise TypeError(f"{args.model} is not an audio codec")
    model = model.to(args.device).eval()
    files = sorted(p for p in args.audio.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    files = files[: args.max_files] if args.max_files else files
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {args.audio}")
    levels = _levels_to_eval(model, args.n_q)
    for q in levels:
        model._check_n_q(q)
    sr, top = model.sample_rate, max(levels)
    with_pesq = not args.no_pesq
    sums: dict[int | str | None, dict[str, float]] = {q: {} for q in [None, "opus", *levels]}
    all_codes, seconds, first = [], 0.0, None

    def add(q, key, value):
        sums[q][key] = sums[q].get(key, 0.0) + float(value)

    for path in files:
        wav, _ = read_audio(path, sample_rate=sr)
        wav = to_channels(wav, model.channels)
        if args.max_seconds:
            wav = wav[:, : int(args.max_seconds * sr)]
        wav = wav[None].to(args.device)
        dur = wav.shape[-1] / sr
        seconds += dur
        t0 = time.perf_counter()
        codes = model.encode(wav, sr, n_q=top)
        add(None, "encode_s", time.perf_counter() - t0)
        all_codes.append(codes.codes.cpu())
        decoded = {}
        for q in levels:
            prefix = type(codes)(codes.codes[..., :q], codes.lengths, codes.num_samples,
                                 codes.scales)
            t0 = time.perf_counter()
            y = model.decode(prefix)
            add(q, "decode_s", time.perf_counter() - t0)
            decoded[q] = y
            add(q, "si_sdr", si_sdr(y, wav)[0] * dur)
            add(q, "mel_distance", mel_distance(y, wav, sr)[0] * dur)
            add(q, "stft_distance", stft_distance(y, wav)[0] * dur)
            if with_pesq:
                add(q, "pesq_wb", pesq_wb(y, wav, sr)[0] * dur)
                add(q, "stoi", stoi(y, wav, sr)[0] * dur)
        add(None, "mel_distance", 0.0)
        if with_pesq:
            add(None, "pesq_wb", pesq_wb(wav, wav, sr)[0] * dur)
            add(None, "stoi", stoi(wav, wav, sr)[0] * dur)
        if args.opus:
            y, kbps = opus_roundtrip(wav[0].cpu(), sr, args.opus)
            y = y[None].to(wav.device)
            add("opus", "kbps", kbps * dur)
            add("opus", "si_sdr", si_sdr(y, wav)[0] * dur)
            add("opus", "mel_distance", mel_distance(y, wav, sr)[0] * dur)
            add("opus", "stft_distance", stft_distance(y, wav)[0] * dur)
            if with_pesq:
                add("opus", "pesq_wb", pesq_wb(y, wav, sr)[0] * dur)
                add("opus", "stoi", stoi(y, wav, sr)[0] * dur)
        if first is None:
            first = (wav[0].cpu(), {q: decoded[q][0].cpu() for q in levels})

    enc_speed = seconds / sums[None]["encode_s"]
    rows = [{"n_q": None, "kbps": 16 * sr * model.channels / 1000, "si_sdr": float("inf"),
             "mel_distance": 0.0, "stft_distance": 0.0,
             "pesq_wb": sums[None]["pesq_wb"] / seconds if with_pesq else None,
             "stoi": sums[None]["stoi"] / seconds if with_pesq else None,
             "note": "reference audio (16-bit PCM bitrate): the ceiling"}]
    for q in levels:
        s = sums[q]
        rows.append({
            "n_q": q, "kbps": model.bitrate(q) / 1000,
            "si_sdr": s["si_sdr"] / seconds, "mel_distance": s["mel_distance"] / seconds,
            "stft_distance": s["stft_distance"] / seconds,
            "pesq_wb": s["pesq_wb"] / seconds if with_pesq else None,
            "stoi": s["stoi"] / seconds if with_pesq else None,
            "encode_x_realtime": enc_speed, "decode_x_realtime": seconds / s["decode_s"],
        })
    if args.opus:
        s = sums["opus"]
        rows.append({
            "n_q": None, "label": f"Opus {args.opus:g} kbps", "kbps": s["kbps"] / seconds,
            "si_sdr": s["si_sdr"] / seconds, "mel_distance": s["mel_distance"] / seconds,
            "stft_distance": s["stft_distance"] / seconds,
            "pesq_wb": s["pesq_wb"] / seconds if with_pesq else None,
            "stoi": s["stoi"] / seconds if with_pesq else None,
            "note": "libopus through PyAV (Ogg in memory); kbps = bytes written incl. container"})
    results = {
        "model": str(args.model), "random_init": args.random_init,
        "sample_rate": sr, "channels": model.channels, "frame_rate": model.frame_rate,
        "data": {"root": str(args.audio), "files": len(files), "seconds": seconds},
        "rows": rows, "levels": _level_usage(all_codes, model.codebook_size),
        "unavailable": dict(UNAVAILABLE),
        "notes": "metrics are duration-weighted means over files; encode speed is of the "
                 f"{top}-codebook encode (fewer levels are its prefix)",
        "environment": environment(args.device),
    }
    if not with_pesq:
        results["unavailable"]["pesq_wb/stoi"] = "skipped (--no-pesq)"
    args.out.mkdir(parents=True, exist_ok=True)
    results["json"] = str(write_results(args.out, json.loads(json.dumps(
        results, default=float).replace("Infinity", "null"))))
    (args.out / "results.md").write_text(markdown(results))
    ref, dec = first
    save_spectrograms(args.out / "spectrograms.png", [ref] + [dec[q] for q in levels], sr,
                      ["reference"] + [f"{model.bitrate(q) / 1000:.2f} kbps ({q} codebooks)"
                                       for q in levels])
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
