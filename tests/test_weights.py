"""The one grammar of weight sources (tusss.weights.parse_weight_source) and the one state-dict hash
(tusss.weights.state_dict_hash) as every user sees them: the CLI, tusss-engine's --weights, the SAM weights id
of mask-cache keys, DBAClip.weights_id and engine manifests."""

from __future__ import annotations

import hashlib
from copy import deepcopy as copy_module

import pytest
import torch

from tusss.errors import InputError
from tusss.weights import canonical_weight_source, parse_weight_source, state_dict_hash


def test_weight_source_grammar():
    assert [parse_weight_source(s) for s in ("random", "RANDOM", "none", "None", None)] == [None] * 5
    assert parse_weight_source("official") == parse_weight_source("OpenAI") == "official"
    assert parse_weight_source("openai", official="openai") == parse_weight_source("official", official="openai")
    assert parse_weight_source("ckpt/Random.pt") == "ckpt/Random.pt"  # a path is passed through unchanged
    assert canonical_weight_source("none") == "random" and canonical_weight_source("openai") == "official"
    with pytest.raises(InputError, match="empty weight source"):
        parse_weight_source("  ")


def test_engine_weights_use_the_same_grammar():
    from tusss.engine.models import parse_weights

    assert parse_weights("none") == ("random", "random")
    assert parse_weights("openai") == ("official", "official")
    assert parse_weights("sam=None,clip=openai") == ("random", "official")
    assert parse_weights("a.pth,b.pt") == ("a.pth", "b.pt")
    with pytest.raises(InputError):
        parse_weights("sam=x,vit=y")


def test_cli_parses_weights_with_the_library_grammar(monkeypatch):
    # the CLI builds CLIP through parse_weight_source: 'none' and 'official' are accepted like 'random'/'openai'
    import tusss.cli.common as common

    seen = []
    monkeypatch.setattr("tusss.clip.model.DBAClip.from_pretrained",
                        classmethod(lambda cls, model, weights=None, **k: seen.append(weights)))  # fmt: skip
    for w in ("none", "random", "official", "openai", "x.pt"):
        common.build_clip("tusss-tiny", w, "reference", "cpu", None, 0)
    assert seen == [None, None, "openai", "openai", "x.pt"]


def _naive_hash(*modules: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for mod in modules:
        for k in sorted(mod.state_dict()):
            t = mod.state_dict()[k].detach().contiguous()
            h.update(f"{k}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(bytes(t.flatten().view(torch.uint8).tolist()))
    return h.hexdigest()


def test_state_dict_hash_and_its_users():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    assert state_dict_hash(net) == _naive_hash(net)
    copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    copy.load_state_dict(net.state_dict())
    assert state_dict_hash(copy) == state_dict_hash(net)
    with torch.no_grad():
        copy[0].weight[0, 0] = torch.nextafter(copy[0].weight[0, 0], torch.tensor(1.0))
    assert state_dict_hash(copy) != state_dict_hash(net)  # one ulp of one weight
    half = copy_module(net).to(torch.bfloat16)  # a dtype numpy cannot hold
    assert state_dict_hash(half) == _naive_hash(half) != state_dict_hash(net)
    # its users: the engine manifest, SAM's random weights id (mask-cache keys), DBAClip.weights_id
    from tusss.export.onnx_io import state_dict_hash as engine_hash
    from tusss.masks.sam_registry import state_dict_id

    assert engine_hash is state_dict_hash
    assert state_dict_id(net) == "random:" + _naive_hash(net)[:16]


def test_dbaclip_weights_id_is_the_state_dict_hash():
    from tusss.clip.model import DBAClip

    torch.manual_seed(0)
    clip = DBAClip.from_pretrained("tusss-tiny", weights=None)
    assert clip.weights_id == _naive_hash(clip.model)
