"""Audio codec speed, ours vs the official code on identical weights, in one process.

    python benchmarks/bench_audio.py --threads 1 --json /tmp/bench_audio.json
    PYTHONPATH=/path/to/dac-env python benchmarks/bench_audio.py --dac   # + official DAC

* **EnCodec 24 kHz at 6 kbps** (8 codebooks): the ``encodec`` package (the ``oracles`` extra) with
  random weights (every parameter perturbed, codebooks filled from the speech latents), converted
  with our converter; encode and decode of batch 1 x 5 s and batch 8 x 5 s of real speech.
* **DAC 16 kHz** (12 codebooks), when ``descript-audio-codec`` imports (``--dac``; it pulls
  ``descript-audiotools``, so it is not a project dependency): the official ``DAC`` with random
  weights, converted from its state dict and kwargs.

``ours bf16``: our codec under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (convs and LSTM
in bf16, the quantizer in fp32); ``bf16 codes = fp32`` is the share of its codes equal to the
fp32 ones. Speed is "x real time" (seconds of audio per second of wall time, median of
``--repeats`` after a warm-up; the two sides are called alternately, see ``paired_times``).
``codes_equal`` says whether both sides gave identical codes in that run, ``max_abs_diff`` the
largest difference of the audio decoded from those codes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, time_call, write_json  # noqa: E402
from visualtok.audio.io import read_audio  # noqa: E402
from visualtok.convert import convert_checkpoint  # noqa: E402

SPEECH = Path(os.environ.get("VISUALTOK_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SPEECH = SPEECH / "data" / "audio" / "ljspeech_subset"


def speech_batch(batch: int, seconds: float, sample_rate: int) -> torch.Tensor:
    """``[batch, 1, T]``: the first ``batch`` LJ Speech clips, cut or zero-padded to ``seconds``."""
    n = int(seconds * sample_rate)
    out = torch.zeros(batch, 1, n)
    for i, path in enumerate(sorted(SPEECH.glob("*.wav"))[:batch]):
        wav, _ = read_audio(path, sample_rate=sample_rate, channels=1)
        out[i, :, : min(n, wav.shape[-1])] = wav[:, :n]
    return out


def paired_times(ref_fn, ours_fn, repeats: int) -> tuple[float, float]:
    """Median seconds of ``ref_fn`` and ``ours_fn``, called alternately after one warm-up each,
    so that a change in the machine's load hits both sides alike."""
    ref_fn()
    ours_fn()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref_fn()
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours_fn()
        b.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def official_encodec(wav: torch.Tensor, seed: int = 0):
    import encodec

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        emb = m.encoder(wav[:1])
        res = emb.transpose(1, 2).reshape(-1, emb.shape[1])
        for layer in m.quantizer.vq.layers:
            cb = layer._codebook
            pick = torch.randint(res.shape[0], (cb.codebook_size,), generator=g)
            new = 0.5 * res[pick] + res.std(0) * torch.randn(cb.codebook_size, res.shape[1],
                                                             generator=g)
            cb.embed.copy_(new)
            cb.embed_avg.copy_(new)
            cb.inited.fill_(1.0)
            res = res - layer.decode(layer.encode(res.T[None]))[0].T
    m.set_target_bandwidth(6.0)
    return m.eval()


def bench_encodec(batches, seconds, repeats):
    wav1 = speech_batch(1, seconds, 24000)
    ref = official_encodec(wav1)
    ours = convert_checkpoint("encodec", ref.state_dict(), config="encodec_24khz")
    n_q = ours.n_q_for_bandwidth(6.0)
    rows = []
    for b in batches:
        rows.append(_encodec_case(ref, ours, speech_batch(b, seconds, 24000), n_q, b, seconds,
                                  repeats))
    return rows


@torch.no_grad()
def _encodec_case(ref, ours, wav, n_q, b, seconds, repeats):
    frames = ref.encode(wav)
    got = ours.encode(wav, 24000, n_q=n_q)
    equal = torch.equal(got.to_official(), frames[0][0])
    diff = float((ours.decode(got) - ref.decode(frames)[..., : wav.shape[-1]]).abs().max())
    t = {}
    t["ref_enc"], t["ours_enc"] = paired_times(lambda: ref.encode(wav),
                                               lambda: ours.encode(wav, 24000, n_q=n_q), repeats)
    t["ref_dec"], t["ours_dec"] = paired_times(lambda: ref.decode(frames),
                                               lambda: ours.decode(got), repeats)
    row = _row("EnCodec 24 kHz, 6 kbps", b, seconds, t, equal, diff)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the quantizer itself stays fp32
        fast = ours.encode(wav, 24000, n_q=n_q)
        enc_bf16 = time_call(lambda: ours.encode(wav, 24000, n_q=n_q), repeats=repeats)
        dec_bf16 = time_call(lambda: ours.decode(fast), repeats=repeats)
    row.update({"ours bf16 enc xRT": b * seconds / enc_bf16,
                "ours bf16 dec xRT": b * seconds / dec_bf16,
                "bf16 codes = fp32": float((fast.codes == got.codes).float().mean())})
    print(row, flush=True)
    return row


def bench_dac(batches, seconds, repeats):
    import dac

    kwargs = dict(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12,
                  sample_rate=16000)
    torch.manual_seed(0)
    ref = dac.DAC(**kwargs).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    ours = convert_checkpoint("dac", {"state_dict": ref.state_dict(),
                                      "metadata": {"kwargs": kwargs}})
    return [_dac_case(ref, ours, speech_batch(b, seconds, 16000), b, seconds, repeats)
            for b in batches]


@torch.no_grad()
def _dac_case(ref, ours, wav, b, seconds, repeats):
    ref_codes = ref.encode(ref.preprocess(wav, 16000))[1]
    got = ours.encode(wav, 16000)
    equal = torch.equal(got.to_official(), ref_codes)

    def ref_decode():
        return ref.decode(ref.quantizer.from_codes(ref_codes)[0])

    diff = float((ours.decode(got.codes) - ref_decode()).abs().max())
    t = {}
    t["ref_enc"], t["ours_enc"] = paired_times(lambda: ref.encode(ref.preprocess(wav, 16000)),
                                               lambda: ours.encode(wav, 16000), repeats)
    t["ref_dec"], t["ours_dec"] = paired_times(ref_decode, lambda: ours.decode(got.codes),
                                               repeats)
    return _row("DAC 16 kHz, 6 kbps", b, seconds, t, equal, diff)


def _row(name, b, seconds, t, equal, diff):
    audio = b * seconds
    row = {
        "model": name, "batch": f"{b} x {seconds:g} s",
        "ours enc xRT": audio / t["ours_enc"], "ref enc xRT": audio / t["ref_enc"],
        "enc x": t["ref_enc"] / t["ours_enc"],
        "ours dec xRT": audio / t["ours_dec"], "ref dec xRT": audio / t["ref_dec"],
        "dec x": t["ref_dec"] / t["ours_dec"],
        "codes_equal": equal, "max_abs_diff": diff,
    }
    print(row, flush=True)  # progress: each case as soon as it is measured
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dac", action="store_true", help="also the official DAC (must import)")
    ap.add_argument("--no-encodec", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(v) for v in args.batches.split(",")]
    info = machine_info("cpu")
    info["load_average_before"] = os.getloadavg()
    rows = []
    if not args.no_encodec:
        rows += bench_encodec(batches, args.seconds, args.repeats)
    if args.dac:
        rows += bench_dac(batches, args.seconds, args.repeats)
    info["load_average_after"] = os.getloadavg()
    print_table(rows, title="audio codecs: x real time (ours / official, same weights, same run)")
    print(f"\nmachine: {info}")
    write_json(args.json, {"machine": info, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
