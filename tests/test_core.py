"""Core contracts: strict configs, CodeLayout, checkpoint format, offline-first loading,
registry."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import visualtok
from visualtok.config import config_from_dict, config_to_dict, load_config
from visualtok.hub import CheckpointError, PretrainedMixin, load, load_state_dict_strict
from visualtok.quantize import CodeLayout, QuantizerConfig
from visualtok.registry import (
    PretrainedRecord,
    create_model,
    get_model_class,
    list_models,
    register_model,
    register_model_class,
)


# ----------------------------------------------------------------------------- configs
@dataclass
class _Inner:
    a: int = 1
    b: tuple[int, ...] = (1, 2)


@dataclass
class _Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: _Inner = field(default_factory=_Inner)


def test_config_round_trip_and_nested():
    cfg = config_from_dict(_Outer, {"name": "y", "lr": 1, "inner": {"b": [3, 4, 5]}})
    assert cfg.inner.b == (3, 4, 5) and isinstance(cfg.lr, float)
    assert config_from_dict(_Outer, config_to_dict(cfg)) == cfg


def test_config_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lrr'\]"):
        config_from_dict(_Outer, {"lrr": 1})
    with pytest.raises(ValueError, match="inner: unknown"):
        config_from_dict(_Outer, {"inner": {"c": 1}})
    p = tmp_path / "c.yaml"
    p.write_text("name: z\nbogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        load_config(_Outer, p)
    with pytest.raises(FileNotFoundError):
        load_config(_Outer, tmp_path / "missing.yaml")


def test_quantizer_config_rejects_options_of_another_family():
    QuantizerConfig(type="fsq", dim=4, levels=(8, 5, 5, 5)).validate()
    with pytest.raises(ValueError, match="does not use option"):
        QuantizerConfig(type="fsq", codebook_size=16).validate()
    with pytest.raises(ValueError, match="quantizer type"):
        QuantizerConfig(type="nope").validate()


# ----------------------------------------------------------------------------- CodeLayout
@pytest.mark.parametrize(
    "radices,kind",
    [((4096,), "vq"), ((1024,) * 8, "rvq"), ((8, 8, 8, 5, 5, 5), "fsq"), ((64,) * 16, "ptq")],
)
def test_layout_ids_round_trip(radices, kind):
    layout = CodeLayout(radices, kind=kind)
    codes = torch.stack([torch.randint(0, r, (3, 7)) for r in radices], -1)
    if layout.flat_vocab is None:
        with pytest.raises(ValueError, match="flat ids"):
            layout.to_ids(codes)
        return
    ids = layout.to_ids(codes)
    assert ids.shape == (3, 7) and int(ids.max()) < layout.flat_vocab
    assert torch.equal(layout.from_ids(ids), codes)


def test_layout_little_endian_and_bits():
    layout = CodeLayout((8, 5), kind="fsq")
    assert layout.to_ids(torch.tensor([[[1, 0]], [[0, 1]]])).flatten().tolist() == [1, 8]
    assert layout.bits_per_token == pytest.approx(3 + 2.321928, abs=1e-5)
    assert CodeLayout((2,) * 128, kind="lfq").flat_vocab is None
    assert CodeLayout((256,) * 16, kind="lfq").bits_per_token == 128


def test_layout_rejects_bad_codes():
    layout = CodeLayout((16, 4), kind="fsq")
    with pytest.raises(ValueError, match="out of range: factor 1"):
        layout.validate(torch.tensor([[[0, 4]]]))
    with pytest.raises(ValueError, match="F=2 factors"):
        layout.validate(torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        layout.validate(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="ids out of range"):
        layout.from_ids(torch.tensor([64]))
    with pytest.raises(ValueError):
        CodeLayout((1, 4))


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class _TinyConfig:
    width: int = 4


class _TinyNet(nn.Module, PretrainedMixin):
    config_class = _TinyConfig

    def __init__(self, config: _TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.lin = nn.Linear(config.width, config.width)
        self.register_buffer("stat", torch.arange(config.width).float())


def _tiny_test_net(**overrides) -> _TinyNet:
    return _TinyNet(config_from_dict(_TinyConfig, overrides))


@pytest.fixture
def tiny_registry():
    """Register ``_TinyNet`` / ``_tiny_test_net`` for one test only and take them out again
    (request it before ``monkeypatch`` so patches of the entry are undone first):
    the global registry is left as it was (no registration at import time)."""
    from visualtok import registry

    register_model_class(_TinyNet)
    record = PretrainedRecord(hub_id="nobody/not-a-repo", sha256="0" * 64)
    register_model(_tiny_test_net, task="test", pretrained=record)
    yield
    registry.MODELS.remove("_tiny_test_net")
    registry.MODEL_CLASSES.remove("_TinyNet")


def test_save_load_bit_exact(tmp_path, tiny_registry):
    net = create_model("_tiny_test_net", width=6)
    out = net.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_class"] == "_TinyNet" and meta["config"] == {"width": 6}
    loaded = load(out)
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_corrupt_or_mismatched_checkpoint_lists_keys(tmp_path, tiny_registry):
    net = create_model("_tiny_test_net")
    d = net.save_pretrained(tmp_path / "ckpt")
    # flipped bytes -> sha256 mismatch
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load(d)
    # mismatched model: keys listed
    other = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(other, net.state_dict())
    msg = str(e.value)
    assert (
        "missing keys: 0.bias, 0.weight" in msg
        and "unexpected keys: lin.bias, lin.weight, stat" in msg
    )
    wide = create_model("_tiny_test_net", width=5)
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: lin.bias: checkpoint \(4,\) vs model \(5,\)"
    ):
        load_state_dict_strict(wide, net.state_dict())
    # truncated safetensors without a recorded hash
    d2 = net.save_pretrained(tmp_path / "ckpt2")
    meta = json.loads((d2 / "config.json").read_text())
    meta.pop("files")
    (d2 / "config.json").write_text(json.dumps(meta))
    (d2 / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load(d2)


def test_config_json_cannot_name_arbitrary_classes(tmp_path, tiny_registry):
    net = create_model("_tiny_test_net")
    d = net.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((d / "config.json").read_text())
    meta["model_class"] = "os.system"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown model class 'os.system'"):
        load(d)
    with pytest.raises(ValueError):
        get_model_class("subprocess.Popen")


def test_offline_load_names_file_and_place(tiny_registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISUALTOK_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError) as e:
        load("_tiny_test_net")
    msg = str(e.value)
    assert "model.safetensors" in msg and str(tmp_path / "w" / "_tiny_test_net") in msg
    assert "nobody/not-a-repo" in msg
    # placed there, the files are checked against the sha256 the registry records ...
    placed = create_model("_tiny_test_net").save_pretrained(tmp_path / "w" / "_tiny_test_net")
    with pytest.raises(CheckpointError, match="sha256 recorded"):
        load("_tiny_test_net")
    # ... and load offline once they match it
    from visualtok import registry
    from visualtok.hub import sha256_file

    entry = registry.MODELS._entries["_tiny_test_net"]
    good = dataclasses.replace(entry.pretrained, sha256=sha256_file(placed / "model.safetensors"))
    monkeypatch.setitem(
        registry.MODELS._entries, "_tiny_test_net", dataclasses.replace(entry, pretrained=good)
    )
    assert isinstance(load("_tiny_test_net"), _TinyNet)


def test_registry_queries(tiny_registry):
    assert "_tiny_test_net" in list_models("_tiny*")
    assert "titok_tiny" in list_models("titok*")
    assert list_models("_tiny*", task="generator") == []
    with pytest.raises(ValueError, match="unknown model"):
        create_model("definitely_not_a_model")
    assert visualtok.__version__



def test_test_registrations_do_not_leak():
    """Without the fixture the test model is unknown: nothing registered it at import time."""
    assert "_tiny_test_net" not in list_models("_tiny*")
    with pytest.raises(ValueError, match="unknown model class"):
        get_model_class("_TinyNet")


def test_atomic_write_replaces_whole_files_and_sweeps_a_killed_writers_temporaries(tmp_path):
    from visualtok.hub import atomic_write

    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    stale = tmp_path / ".model.safetensors.abc123.tmp"  # what a SIGKILLed writer leaves behind
    stale.write_bytes(b"half")
    other = tmp_path / ".config.json.abc123.tmp"  # another file's temporary is not ours to touch
    other.write_bytes(b"x")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"  # a failed write changes nothing
    assert not stale.exists() and other.exists()
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.json.abc123.tmp",
                                                          "model.safetensors"]
