"""Audio codec speed, ours vs the official code on identical weights, in one process.

    python benchmarks/bench_audio.py --threads 1 --json /tmp/bench_audio.json
    PYTHONPATH=/path/to/dac-env python benchmarks/bench_audio.py --dac   # + official DAC

* **EnCodec 24 kHz at 6 kbps** (8 codebooks): the ``encodec`` package (the ``oracles`` extra) with
  random weights (every parameter perturbed, codebooks filled from the speech latents), converted
  with our converter; encode and decode of batch 1 x 5 s and batch 8 x 5 s of real speech.
* **DAC 16 kHz** (12 codebooks), when ``descript-audio-codec`` imports (``--dac``; it pulls
  ``descript-audiotools``, so it is not a project dependency): the official ``DAC`` with random
  weights, converted from its state dict and kwargs.

Speed is "x real time" (seconds of audio per second of wall time) and the ratios "x" are
official time / our time, median of ``--repeats`` after a warm-up, the contenders called in
rounds (official, ours, ours bf16, ...; ``time_interleaved``) so that load that comes and goes
hits all alike; "(CPU time)" ratios use the process CPU time per call, the work each side did
whatever share of a core it got (steadier on a loaded machine; meaningful with ``--threads 1``).
``codes_equal`` says whether both sides gave identical codes, ``max_abs_diff`` the largest
difference of the audio decoded from those codes. ``bf16``: our codec under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (convs and LSTM in bf16, the quantizer in fp32),
its ratios against the official fp32; ``bf16 codes = fp32`` is the share of its codes equal to
the fp32 ones (a bf16 decode takes the exact fp32 codes, so fp32 encode + bf16 decode keeps
them all). ``load 1m`` is the 1-minute load average before and after each row.

* **ours** (``--ours``): visualtok's codec (``codec_small`` / ``codec_lm``, causal, random
  weights), batch 1 x ``--seconds`` of real speech: encode and decode offline (one call) against
  streaming in 20 ms chunks (``StreamingEncoder`` fed 320 samples at a time; ``StreamingDecoder``
  fed one frame at a time, 20 ms at 50 Hz, 40 ms at 25 Hz); "stream / offline" is the time ratio
  (goal: at most 1.5), wall and process CPU time (offline and streaming called in alternate
  rounds), ``codes_equal`` whether the streamed codes equal the offline ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, time_interleaved, write_json  # noqa: E402
from benchmarks.official import build_official_dac_16khz  # noqa: E402
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
    return _measure("EnCodec 24 kHz, 6 kbps", b, seconds, repeats, equal, diff,
                    enc=(lambda: ref.encode(wav), lambda: ours.encode(wav, 24000, n_q=n_q)),
                    dec=(lambda: ref.decode(frames), lambda: ours.decode(got)),
                    codes=lambda: ours.encode(wav, 24000, n_q=n_q).codes)


def _bf16(fn):
    """``fn`` under CPU bf16 autocast (convs and LSTM in bf16; the quantizer keeps fp32)."""
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def _measure(name, b, seconds, repeats, equal, diff, enc, dec, codes):
    """Time official, ours and ours-under-bf16 interleaved (wall and process CPU time), encode
    then decode; the bf16 decode takes the fp32 codes, so its codes are the official ones."""
    load = [os.getloadavg()[0]]
    cpu_e, cpu_d = {}, {}
    te = time_interleaved({"ref": enc[0], "ours": enc[1], "bf16": _bf16(enc[1])},
                          repeats=repeats, cpu=cpu_e)
    td = time_interleaved({"ref": dec[0], "ours": dec[1], "bf16": _bf16(dec[1])},
                          repeats=repeats, cpu=cpu_d)
    load.append(os.getloadavg()[0])
    fp32_codes = codes()
    bf16_codes = _bf16(codes)()
    audio = b * seconds
    row = {
        "model": name, "batch": f"{b} x {seconds:g} s",
        "ours enc xRT": audio / te["ours"], "ref enc xRT": audio / te["ref"],
        "enc x": te["ref"] / te["ours"], "enc x (CPU time)": cpu_e["ref"] / cpu_e["ours"],
        "ours dec xRT": audio / td["ours"], "ref dec xRT": audio / td["ref"],
        "dec x": td["ref"] / td["ours"], "dec x (CPU time)": cpu_d["ref"] / cpu_d["ours"],
        "codes_equal": equal, "max_abs_diff": diff,
        "bf16 enc x": te["ref"] / te["bf16"], "bf16 enc x (CPU)": cpu_e["ref"] / cpu_e["bf16"],
        "bf16 dec x": td["ref"] / td["bf16"], "bf16 dec x (CPU)": cpu_d["ref"] / cpu_d["bf16"],
        "bf16 codes = fp32": float((bf16_codes == fp32_codes).float().mean()),
        "load 1m before/after": "/".join(f"{v:.1f}" for v in load),
    }
    print(row, flush=True)  # progress: each case as soon as it is measured
    return row


def bench_dac(batches, seconds, repeats):
    import dac

    ref, ours = build_official_dac_16khz(dac)
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
    return _measure("DAC 16 kHz, 6 kbps", b, seconds, repeats, equal, diff,
                    enc=(lambda: ref.encode(ref.preprocess(wav, 16000)),
                         lambda: ours.encode(wav, 16000)),
                    dec=(ref_decode, lambda: ours.decode(got.codes)),
                    codes=lambda: ours.encode(wav, 16000).codes)


def bench_ours(presets, seconds, repeats):
    return [_ours_case(name, seconds, repeats) for name in presets]


def _ours_case(name, seconds, repeats):
    from visualtok import create_model

    torch.manual_seed(0)
    model = create_model(name, causal=True).eval()
    sr, hop = model.sample_rate, model.hop_length
    wav = speech_batch(1, seconds, sr)
    chunk = sr // 50  # 20 ms
    state = {}

    def offline_enc():
        state["off"] = model.encode(wav, sr).codes

    def stream_enc():
        enc = model.streaming_encoder()
        parts = [enc(wav[..., i : i + chunk]) for i in range(0, wav.shape[-1], chunk)]
        state["str"] = torch.cat(parts + [enc.flush()], 1)

    load = [os.getloadavg()[0]]
    cpu_e, cpu_d = {}, {}
    t = time_interleaved({"off": offline_enc, "str": stream_enc}, repeats=repeats, cpu=cpu_e)
    te_off, te_str = t["off"], t["str"]
    codes = state["off"]

    def offline_dec():
        state["y_off"] = model.decode(codes)

    def stream_dec():
        dec = model.streaming_decoder()
        state["y_str"] = torch.cat([dec(codes[:, f : f + 1]) for f in range(codes.shape[1])],
                                   -1)

    t = time_interleaved({"off": offline_dec, "str": stream_dec}, repeats=repeats, cpu=cpu_d)
    td_off, td_str = t["off"], t["str"]
    load.append(os.getloadavg()[0])
    row = {
        "model": f"{name} (causal, {model.bitrate() / 1000:g} kbps)",
        "batch": f"1 x {seconds:g} s", "enc chunk": f"{chunk} samples",
        "dec chunk": f"1 frame ({1000 * hop / sr:g} ms)",
        "offline enc xRT": seconds / te_off, "stream enc xRT": seconds / te_str,
        "enc stream/offline": te_str / te_off,
        "enc stream/offline (CPU time)": cpu_e["str"] / cpu_e["off"],
        "offline dec xRT": seconds / td_off, "stream dec xRT": seconds / td_str,
        "dec stream/offline": td_str / td_off,
        "dec stream/offline (CPU time)": cpu_d["str"] / cpu_d["off"],
        "codes_equal": bool(torch.equal(state["off"], state["str"])),
        "max_abs_diff": float((state["y_off"] - state["y_str"]).abs().max()),
        "load 1m before/after": "/".join(f"{v:.1f}" for v in load),
    }
    print(row, flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dac", action="store_true", help="also the official DAC (must import)")
    ap.add_argument("--no-encodec", action="store_true")
    ap.add_argument("--ours", action="store_true",
                    help="visualtok's codec: offline vs streaming in 20 ms chunks")
    ap.add_argument("--ours-presets", default="codec_small,codec_lm")
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
    ours = bench_ours(args.ours_presets.split(","), args.seconds, args.repeats) if args.ours else []
    info["load_average_after"] = os.getloadavg()
    if rows:
        print_table(rows, title="audio codecs: x real time (ours / official, same weights, same "
                                "run)")
    if ours:
        print_table(ours, title="visualtok codec: offline vs streaming (20 ms chunks), CPU")
    rows += ours
    print(f"\nmachine: {info}")
    write_json(args.json, {"machine": info, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
