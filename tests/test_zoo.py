import warnings

import pytest
import torch
from safetensors.torch import save_file

from edgeseg.errors import EdgesegError, EdgesegWarning
from edgeseg.zoo.build import checkpoint_entry, create_model, load_checkpoint, save_checkpoint
from edgeseg.zoo.registry import get_entry

NAME = "deeplabv3_mnv2_dm05_voc"


def test_new_classifier_starts_from_matching_pretrained_rows(dm05_model):
    model = create_model(NAME, class_names=("background", "person", "zebra"))
    full = dm05_model.state_dict()
    new = model.state_dict()
    assert new["head.classifier.conv.weight"].shape[0] == 3
    for row, source in ((0, 0), (1, 15)):
        assert torch.equal(new["head.classifier.conv.weight"][row], full["head.classifier.conv.weight"][source])
    assert not torch.equal(new["head.classifier.conv.weight"][2], full["head.classifier.conv.weight"][0])
    assert torch.equal(new["backbone.stem.conv.weight"], full["backbone.stem.conv.weight"])


def test_checkpoint_round_trip_carries_class_names(tmp_path):
    names = ("background", "person")
    model = create_model(NAME, class_names=names)
    entry = get_entry(NAME)
    from dataclasses import replace

    save_checkpoint(model, tmp_path / "m.safetensors", replace(entry, class_names=names), NAME)
    loaded, loaded_entry = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded_entry.class_names == names and loaded_entry.arch["width_mult"] == 0.5
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_foreign_or_broken_checkpoints_are_clear_errors(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(EdgesegError, match="not an edgeseg checkpoint"):
        checkpoint_entry(tmp_path / "foreign.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(EdgesegError, match="not a safetensors checkpoint"):
        checkpoint_entry(tmp_path / "broken.safetensors")
    with pytest.raises(EdgesegError, match="no such file"):
        checkpoint_entry(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("damage", ["flip", "truncate", "zero", "no-digest"])
def test_a_damaged_weights_cache_is_rebuilt_from_the_official_file(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    reference = create_model(NAME).state_dict()
    (cached,) = tmp_path.glob("*.safetensors")
    data = bytearray(cached.read_bytes())
    if damage == "flip":  # a few bytes of weights, past the header
        for offset in (len(data) // 2, len(data) // 2 + 7, len(data) - 5):
            data[offset] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "zero":
        data = bytearray()
    else:
        save_file(reference, str(cached))  # a plain file with no digest: unverifiable
        data = bytearray(cached.read_bytes())
    cached.write_bytes(bytes(data))
    with pytest.warns(EdgesegWarning, match="rebuilding the weights cache"):
        rebuilt = create_model(NAME).state_dict()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgesegWarning)  # the rebuilt cache verifies: no second warning
        create_model(NAME)


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path):
    model = create_model(NAME, class_names=("background", "person"))
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(model, path, get_entry(NAME), NAME)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EdgesegError, match="damaged"):
        load_checkpoint(path)
