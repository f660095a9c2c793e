import dataclasses
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcgraph.zoo.causal_dit import CausalDiTConfig
from mcgraph.zoo.scenes import LABEL_LENGTH, LABEL_VOCAB_SIZE
from mcgraph.zoo.weights import (
    BUNDLED_WEIGHTS,
    WeightsError,
    build_reference,
    load_reference,
    read_metadata,
    save_reference,
)

TINY = CausalDiTConfig(dim=24, num_heads=2, num_layers=1, ffn_dim=32, context_dim=8, freq_dim=16,
                       label_vocab_size=LABEL_VOCAB_SIZE, label_length=LABEL_LENGTH)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model, enc = build_reference(TINY)
    path = tmp_path / "w.safetensors"
    save_reference(path, model, enc, info={"step": 7})
    return path, model, enc


def test_round_trip(saved):
    path, model, enc = saved
    m2, e2 = load_reference(path, expected=TINY)
    assert m2.config == TINY
    for a, b in ((model, m2), (enc, e2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not m2.training and not e2.training
    assert read_metadata(path)["info"] == {"step": 7}


def test_config_mismatch_names_the_field(saved):
    path, _, _ = saved
    with pytest.raises(WeightsError, match="'num_layers'"):
        load_reference(path, expected=dataclasses.replace(TINY, num_layers=2))


def test_wrong_tensor_shape_names_the_tensor(saved, tmp_path):
    path, _, _ = saved
    tensors = load_file(str(path))
    tensors["dit.proj_out.bias"] = torch.zeros(5)
    meta = {k: json.dumps(v) for k, v in read_metadata(path).items()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match=r"dit\.proj_out\.bias has shape \(5,\)"):
        load_reference(bad)


def test_missing_tensor_and_missing_config(saved, tmp_path):
    path, _, _ = saved
    tensors = load_file(str(path))
    meta = {k: json.dumps(v) for k, v in read_metadata(path).items()}
    del tensors["labels.positions"]
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="missing tensors.*positions"):
        load_reference(tmp_path / "missing.safetensors")
    save_file(load_file(str(path)), str(tmp_path / "nometa.safetensors"))
    with pytest.raises(WeightsError, match="config"):
        load_reference(tmp_path / "nometa.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_reference(tmp_path / "nope.safetensors")


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="bundled weights not written yet (training)")
def test_bundled_weights_load():
    model, enc = load_reference()
    cfg = model.config
    assert (cfg.label_vocab_size, cfg.label_length) == (LABEL_VOCAB_SIZE, LABEL_LENGTH)
    x = torch.randn(1, cfg.in_channels, 2 * cfg.causal_block_size, 16, 16)
    with torch.no_grad():
        out = model(x, torch.full((1, x.shape[2]), 500.0), enc(torch.zeros(1, LABEL_LENGTH, dtype=torch.long)))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("damage, problem", [
    (lambda data: b"", r"is empty \(0 bytes\)"),
    (lambda data: data[: len(data) // 2], r"\(\d+ bytes\) is not a readable safetensors file: .*incomplete"),
    (lambda data: data[:20], r"\(20 bytes\) is not a readable safetensors file"),
    (lambda data: b"\x07not weights\n" * 100, r"\(1300 bytes\) is not a readable safetensors file"),
])
def test_an_unreadable_file_names_the_file_and_the_problem(saved, tmp_path, damage, problem):
    path, _, _ = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage(path.read_bytes()))
    for load in (load_reference, read_metadata):
        with pytest.raises(WeightsError, match=rf"^{re.escape(str(bad))}.*{problem}.*truncated or corrupt"):
            load(bad)


def test_a_directory_is_not_a_weights_file(tmp_path):
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(tmp_path))} is a directory"):
        load_reference(tmp_path)


def test_bad_metadata_names_the_file(saved, tmp_path):
    path, _, _ = saved
    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "json.safetensors"), metadata={"config": "{not json"})
    with pytest.raises(WeightsError, match=r"json\.safetensors: metadata 'config' is not valid JSON"):
        load_reference(tmp_path / "json.safetensors")
    config = dict(read_metadata(path)["config"], no_such_field=1)
    save_file(tensors, str(tmp_path / "field.safetensors"), metadata={"config": json.dumps(config)})
    with pytest.raises(WeightsError, match=r"field\.safetensors: its config does not fit CausalDiTConfig.*no_such_field"):
        load_reference(tmp_path / "field.safetensors")


def test_unexpected_tensor_is_named(saved, tmp_path):
    path, _, _ = saved
    tensors = load_file(str(path))
    tensors["dit.extra.weight"] = torch.zeros(2)
    meta = {k: json.dumps(v) for k, v in read_metadata(path).items()}
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"extra\.safetensors: missing tensors \[\], unexpected tensors \['extra.weight'\]"):
        load_reference(tmp_path / "extra.safetensors")


def test_weights_errors_are_mcgraph_errors():
    from mcgraph.errors import McGraphError

    assert issubclass(WeightsError, McGraphError) and issubclass(WeightsError, RuntimeError)
