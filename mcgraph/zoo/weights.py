"""Saving and loading the reference model's weights (safetensors, config in the metadata, offline only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from mcgraph.errors import McGraphError
from mcgraph.zoo.causal_dit import CausalDiTConfig, CausalVideoDiT, LabelEncoder
from mcgraph.zoo.scenes import LABEL_LENGTH, LABEL_VOCAB_SIZE

BUNDLED_WEIGHTS = Path(__file__).parent / "weights" / "reference.safetensors"


class WeightsError(McGraphError):
    """Weights file missing, unreadable (empty, truncated, not safetensors), or its config/tensors do not match
    the model being built; the message names the file."""


def _unreadable(path: Path, exc: Exception) -> WeightsError:
    """WeightsError naming the file and why safetensors could not read it."""
    if path.is_dir():
        return WeightsError(f"{path} is a directory, not a weights file")
    size = path.stat().st_size if path.exists() else None
    what = "is empty (0 bytes)" if size == 0 else f"({size} bytes) is not a readable safetensors file"
    return WeightsError(f"{path} {what}: {exc}; truncated or corrupt? Write it again with save_reference "
                        "(or reinstall the package for the bundled weights)")


def build_reference(cfg: CausalDiTConfig | None = None) -> tuple[CausalVideoDiT, LabelEncoder]:
    """A randomly initialised reference DiT and its label encoder."""
    cfg = cfg or CausalDiTConfig(label_vocab_size=LABEL_VOCAB_SIZE, label_length=LABEL_LENGTH)
    return CausalVideoDiT(cfg), LabelEncoder(cfg.label_vocab_size, cfg.label_length, cfg.context_dim)


def save_reference(path: str | Path, model: CausalVideoDiT, encoder: LabelEncoder, info: dict | None = None):
    tensors = {f"dit.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"labels.{k}": v.detach().contiguous() for k, v in encoder.state_dict().items()})
    meta = {"config": json.dumps(model.config.to_dict()), "info": json.dumps(info or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def read_metadata(path: str | Path) -> dict:
    """The file's metadata, each value parsed as JSON; WeightsError naming the file if it cannot be read."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # SafetensorError (header too small / too large / incomplete), OSError
        raise _unreadable(path, exc) from exc
    out = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from None
    return out


def load_reference(
    path: str | Path | None = None, expected: CausalDiTConfig | None = None
) -> tuple[CausalVideoDiT, LabelEncoder]:
    """Load the reference model from a local safetensors file (the bundled one by default).

    Raises `WeightsError` naming the file and the mismatching field or tensor if the stored config differs
    from `expected`, or a tensor is missing, unexpected or of the wrong shape.
    """
    path = Path(path) if path is not None else BUNDLED_WEIGHTS
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    if not path.is_file():
        raise WeightsError(f"reference weights not found at {path} (they ship with the package; reinstall?)")
    meta = read_metadata(path)
    if "config" not in meta:
        raise WeightsError(f"{path}: no 'config' in the safetensors metadata; not a mcgraph reference checkpoint")
    stored = dict(meta["config"])
    if "patch_size" in stored:
        stored["patch_size"] = tuple(stored["patch_size"])
    if expected is not None:
        for key, want in expected.to_dict().items():
            got = stored.get(key)
            if (tuple(got) if isinstance(got, list) else got) != (tuple(want) if isinstance(want, list) else want):
                raise WeightsError(f"{path}: config field {key!r} is {got!r} in the file but {want!r} was expected")
    try:
        cfg = CausalDiTConfig(**stored)
    except TypeError as exc:  # a field this version does not know, or one missing
        raise WeightsError(f"{path}: its config does not fit CausalDiTConfig: {exc}") from None
    model, encoder = build_reference(cfg)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # a header that reads but data that does not (truncated after the header)
        raise _unreadable(path, exc) from exc
    for prefix, module in (("dit.", model), ("labels.", encoder)):
        own = module.state_dict()
        stored_keys = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = sorted(set(own) - set(stored_keys))
        unexpected = sorted(set(stored_keys) - set(own))
        if missing or unexpected:
            raise WeightsError(f"{path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        for k, v in stored_keys.items():
            if v.shape != own[k].shape:
                raise WeightsError(f"{path}: tensor {prefix}{k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
        module.load_state_dict(stored_keys)
    model.eval()
    encoder.eval()
    return model, encoder


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
