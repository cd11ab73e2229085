"""`visualtok generate`: one PNG per sample and a grid with one row per class, named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import visualtok
from visualtok.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_cli")
    tok = visualtok.create_model("titok_tiny").eval()
    gpt = visualtok.create_model("gpt_tiny", radices=(1024,), num_tokens=32, num_classes=3,
                                 class_names=("cat", "dog", "red fox")).eval()
    return tok.save_pretrained(d / "tok"), gpt.save_pretrained(d / "gpt")


def _row_has_ink(grid: np.ndarray, row: int, h: int, label_w: int, pad: int = 2) -> bool:
    y = pad + row * (h + pad)
    return bool((grid[y : y + h, :label_w] < 128).any())


def test_generate_writes_samples_and_a_class_labelled_grid(tmp_path, tiny_pair, capsys):
    tok, gpt = tiny_pair
    out = tmp_path / "out"
    rc = main(["generate", "--model", str(gpt), "--tokenizer", str(tok), "--labels", "2,0,2",
               "--top-k", "20", "--out", str(out)])
    assert rc == 0
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["000_red_fox.png", "001_cat.png", "002_red_fox.png"]
    assert np.asarray(Image.open(out / "samples" / "001_cat.png")).shape == (64, 64, 3)
    grid = np.asarray(Image.open(out / "samples.png").convert("L"))
    label_w = 8 + 7 * len("red fox")  # save_grid's label column, sized by the longest name
    # rows in order of first appearance: red fox (2 samples), cat (1 sample + white padding)
    assert grid.shape == (2 * 66 + 2, label_w + 2 * 66 + 2)
    assert _row_has_ink(grid, 0, 64, label_w) and _row_has_ink(grid, 1, 64, label_w)
    pad_cell = grid[68 : 68 + 64, label_w + 68 : label_w + 68 + 64]
    assert (pad_cell == 255).all()
    assert "one row per class" in capsys.readouterr().out
    rc = main(["generate", "--model", str(gpt), "--tokenizer", str(tok), "--per-class", "2",
               "--top-k", "20", "--out", str(tmp_path / "pc")])
    assert rc == 0 and len(list((tmp_path / "pc" / "samples").iterdir())) == 6
    grid = np.asarray(Image.open(tmp_path / "pc" / "samples.png"))
    assert grid.shape[0] == 3 * 66 + 2


@pytest.mark.parametrize("argv, match", [
    (["--labels", "0,7"], "out of range"),
    (["--labels", "a,b"], "comma-separated"),
    (["--labels", "0", "--per-class", "1"], "either"),
    (["--per-class", "0"], "per-class"),
])
def test_generate_bad_labels_are_one_line_errors(tmp_path, tiny_pair, capsys, argv, match):
    tok, gpt = tiny_pair
    rc = main(["generate", "--model", str(gpt), "--tokenizer", str(tok), *argv,
               "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0]


def test_class_names_must_name_every_class():
    with pytest.raises(ValueError, match="class_names"):
        visualtok.create_model("gpt_tiny", num_classes=3, class_names=("a", "b"))
    assert visualtok.load("gpt_photo128").config.class_names[1] == "gcompris"
