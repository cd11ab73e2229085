"""The CLI with the CNN tokenizers: ``convert vqgan|retok`` (official fixture weights, overrides for
the hard-coded widths), then ``info``/``encode``/``decode``/``reconstruct`` on the converted
directory, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from visualtok import load
from visualtok.cli import main
from visualtok.image.retok import ReTok
from visualtok.image.vqgan import VQGAN

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "vqgan": ("llamagen_vq", "vq_tiny", ["channels=32"], VQGAN),
    "retok": ("retok", "retok_tiny", ["channels=32", "num_res_blocks=2", "encoder_width=64",
                                      "encoder_depth=2", "encoder_heads=4", "decoder_width=48",
                                      "decoder_depth=3", "decoder_heads=3"], ReTok),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    family = request.param
    folder, variant, sets, cls = CASES[family]
    d = shared_path("fixtures", folder, variant)
    tmp = tmp_path_factory.mktemp(family)
    cfg = tmp / "official_config.json"
    cfg.write_text(json.dumps(json.loads((d / "fixture.json").read_text())["config"]))
    out = tmp / "converted"
    argv = ["convert", family, str(d / "official_state_dict.safetensors"), "--config", str(cfg),
            "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    return family, d, out, cls, tmp


def test_convert_then_info_encode_decode_reconstruct(converted, capsys):
    family, d, out, cls, tmp = converted
    model = load(out)
    assert isinstance(model, cls)
    io = load_file(str(d / "io.safetensors"))
    assert torch.equal(model.encode((io["input"] + 1) / 2).reshape(-1), io["indices"])
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == cls.__name__ and info["token_shape"] == list(model.token_shape)
    photo = shared_path("data", "images")
    image = sorted(p for p in photo.rglob("*") if p.suffix.lower() in (".png", ".jpg"))[0]
    codes = tmp / "codes.safetensors"
    assert main(["encode", str(image), "--model", str(out), "--out", str(codes)]) == 0
    stored = load_file(str(codes))["codes"]
    assert stored.shape == (1, *model.token_shape, 1)
    png = tmp / "decoded.png"
    assert main(["decode", str(codes), "--out", str(png)]) == 0  # the model recorded with codes
    assert png.stat().st_size > 0
    assert main(["reconstruct", str(image), "--model", str(out), "--out", str(tmp / "rec")]) == 0
    assert "PSNR" in capsys.readouterr().out


def test_cli_errors_are_one_line(converted, capsys):
    family, d, _, _, tmp = converted
    other = "retok" if family == "vqgan" else "vqgan"
    code = main(["convert", other, str(d / "official_state_dict.safetensors"), "--preset",
                 f"{other}_tiny", "--out", str(tmp / "wrong")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"a {family} checkpoint" in err and f"visualtok convert {family}" in err
    assert main(["convert", family, str(tmp / "missing.pt"), "--preset", f"{family}_tiny",
                 "--out", str(tmp / "x")]) == 2
    assert "not found" in capsys.readouterr().err
