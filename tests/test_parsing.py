"""Tests of the face parsers (interpddpm.parsing): the small toy-face parser and BiSeNet."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Iterator

import pytest
import torch

from interpddpm import parsing
from interpddpm.parsing import (
    BISENET_CLASSES,
    CELEBAMASK_TO_TOY,
    BiSeNet,
    BiSeNetParser,
    BiSeNetWeightsNotAvailableError,
    FaceParser,
    ParserFileError,
    concept_iou,
    confusion_matrix,
    evaluate_parser,
    get_parser,
    iou_from_confusion,
    load_bisenet,
    load_parser,
    merge_celebamask_labels,
    save_parser,
    train_parser,
)
from interpddpm.toyfaces import LABELS, N_CLASSES, ToyFaces


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Training runs on one thread: these small convolutions gain little from a second one, and
    on a shared runner a second thread mostly adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _parser(seed: int = 0) -> FaceParser:
    torch.manual_seed(seed)
    return FaceParser(size=32)


def _images(b: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


# --------------------------------------------------------------------------- FaceParser


@pytest.mark.parametrize("size", [32, 64])
def test_face_parser_shapes(size: int) -> None:
    parser = _parser()
    x = _images(2, size)
    assert parser(x).shape == (2, N_CLASSES, size, size)
    labels = parser.predict(x)
    assert labels.shape == (2, size, size) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < N_CLASSES
    features = parser.encode(x)
    assert features.shape == (2, parser.feature_dim)
    assert 64 <= parser.feature_dim <= 256


def test_face_parser_size_is_compact() -> None:
    n = sum(p.numel() for p in _parser().parameters())
    assert 50_000 <= n <= 200_000


def test_predict_and_encode_are_deterministic_per_image() -> None:
    parser = _parser().train()
    x = _images(4)
    assert torch.equal(parser.predict(x), parser.predict(x))
    assert torch.equal(parser.encode(x), parser.encode(x))
    assert parser.training  # the mode is restored
    # GroupNorm: an image's outputs do not depend on the rest of the batch.
    # (in float64: float32 kernels reduce in another order for another batch shape)
    parser64, x64 = copy.deepcopy(parser).double(), x.double()
    alone = torch.cat([parser64.encode(x64[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(alone, parser64.encode(x64), rtol=1e-10, atol=1e-10)
    assert torch.equal(parser.predict(x, flip=False), parser(x).argmax(1))


def test_predict_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        _parser().predict(torch.zeros(3, 32, 32))


# --------------------------------------------------------------------------- IoU


def test_confusion_iou_and_concepts() -> None:
    target = torch.tensor([[0, 0, 6, 7], [7, 7, 3, 3]])
    pred = torch.tensor([[0, 7, 7, 7], [7, 6, 3, 0]])
    conf = confusion_matrix(pred, target)
    assert conf.sum() == 8 and conf[6, 7] == 1 and conf[0, 7] == 1
    iou = iou_from_confusion(conf)
    assert iou[0].item() == pytest.approx(1 / 3)  # inter 1, union 2 + 2 - 1
    assert iou[3].item() == pytest.approx(1 / 2)
    assert iou[7].item() == pytest.approx(2 / 5)
    assert math.isnan(iou[5].item())  # absent from both maps
    # mouth = {6, 7}: the 6 <-> 7 swaps count as correct; only the background pixel predicted
    # as lips is wrong: inter 4, union 5.
    assert concept_iou(conf, (6, 7)) == pytest.approx(4 / 5)


def test_evaluate_parser_with_an_oracle() -> None:
    data = ToyFaces(32, length=8, seed=1000)

    class Oracle:
        def predict(self, images: torch.Tensor) -> torch.Tensor:
            return data.batch(range(len(images)))[1]

    result = evaluate_parser(Oracle(), 32, n=8, batch_size=8)
    assert set(result["class_iou"]) == set(LABELS)
    assert set(result["concept_iou"]) >= {"eyes", "nose", "mouth"}
    assert result["concept_iou"]["mouth"] == 1.0 and result["pixel_accuracy"] == 1.0


# --------------------------------------------------------------------------- training


def test_augmentation_keeps_labels_exact() -> None:
    images, labels = ToyFaces(32, length=6, seed=3).batch(range(6))
    g = torch.Generator().manual_seed(0)
    _, aug = parsing._augment(images, labels, g, max_shift=2)
    pad = torch.nn.functional.pad(labels[:, None].float(), (2, 2, 2, 2), mode="replicate")
    for i in range(6):  # each label map is a flipped and/or shifted copy of the original
        candidates = [
            m[dy : dy + 32, dx : dx + 32].long()
            for m in (pad[i, 0], pad[i, 0].flip(-1))
            for dy in range(5)
            for dx in range(5)
        ]
        assert any(torch.equal(aug[i], c) for c in candidates)


def test_short_training_learns_the_small_parts(one_thread: None) -> None:
    # The full run (defaults) reaches IoU ~0.9; a short one must already be far above chance.
    parser, history = train_parser(32, steps=300, n_train=256, eval_n=128, progress=False, seed=0)
    assert len(history["loss"]) == 300
    assert history["loss"][-1] < history["loss"][0]
    concepts = history["eval"]["concept_iou"]
    for concept in ("eyes", "nose", "mouth"):
        assert concepts[concept] > 0.6, (concept, concepts)  # about 0.75-0.8 here
    assert history["eval"]["seed"] == 1000  # held-out stream, disjoint from training


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path) -> None:
    parser = _parser(1)
    path = save_parser(parser, tmp_path / "p.safetensors", extra={"note": "test"})
    loaded = load_parser(path)
    x = _images(2)
    assert torch.equal(loaded(x), parser.eval()(x))
    assert loaded.config == parser.config and not loaded.training
    info = json.loads((tmp_path / "p.json").read_text())
    assert info["config"] == parser.config and info["note"] == "test"
    assert not list(tmp_path.glob("*.tmp"))  # temporary files are gone


def test_load_parser_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_parser(tmp_path / "missing.safetensors")
    path = save_parser(_parser(), tmp_path / "p.safetensors")
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ParserFileError, match="truncated.safetensors"):
        load_parser(bad)
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ParserFileError):
        load_parser(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(bad))  # valid safetensors, not a parser
    with pytest.raises(ParserFileError, match="not a face parser"):
        load_parser(bad)


def test_get_parser_caches_and_recovers(tmp_path, monkeypatch) -> None:
    kwargs = dict(steps=2, n_train=8, eval_n=0, progress=False)
    first = get_parser(32, tmp_path, **kwargs)
    path = tmp_path / "parser-32.safetensors"
    assert path.is_file() and (tmp_path / "parser-32.json").is_file()

    def no_training(*args, **kw):
        raise AssertionError("the cached parser should have been reused")

    with monkeypatch.context() as m:
        m.setattr(parsing, "train_parser", no_training)
        again = get_parser(32, tmp_path, **kwargs)
    x = _images(2)
    assert torch.equal(again(x), first(x))

    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ParserFileError):
        get_parser(32, tmp_path, on_corrupt="raise", **kwargs)
    with pytest.warns(RuntimeWarning, match="retraining"):
        get_parser(32, tmp_path, **kwargs)
    load_parser(path)  # replaced by a valid file


# --------------------------------------------------------------------------- BiSeNet


def test_merge_table() -> None:
    assert len(BISENET_CLASSES) == 19 and CELEBAMASK_TO_TOY.shape == (19,)
    expected = {
        "background": "background",
        "skin": "skin",
        "l_brow": "eyebrows",
        "r_brow": "eyebrows",
        "l_eye": "eyes",
        "r_eye": "eyes",
        "eye_g": "eyes",
        "l_ear": "ears",
        "r_ear": "ears",
        "ear_r": "ears",
        "nose": "nose",
        "mouth": "mouth",
        "u_lip": "lips",
        "l_lip": "lips",
        "neck": "neck",
        "neck_l": "neck",
        "cloth": "cloth",
        "hair": "hair",
        "hat": "hat",
    }
    for k, name in enumerate(BISENET_CLASSES):
        assert LABELS[int(CELEBAMASK_TO_TOY[k])] == expected[name]
    assert set(CELEBAMASK_TO_TOY.tolist()) == set(range(N_CLASSES))  # every toy class reachable
    labels = torch.arange(19).view(1, 19)
    assert torch.equal(merge_celebamask_labels(labels)[0], CELEBAMASK_TO_TOY)


@pytest.fixture(scope="module")
def bisenet() -> BiSeNet:
    torch.manual_seed(0)
    return BiSeNet(19).eval()


def test_bisenet_state_dict_keys(bisenet: BiSeNet) -> None:
    keys = set(bisenet.state_dict())
    for key in (  # names of the published face-parsing.PyTorch checkpoint
        "cp.resnet.conv1.weight",
        "cp.resnet.bn1.running_mean",
        "cp.resnet.layer1.0.conv1.weight",
        "cp.resnet.layer2.0.downsample.0.weight",
        "cp.resnet.layer2.0.downsample.1.weight",
        "cp.resnet.layer4.1.bn2.bias",
        "cp.arm16.conv.conv.weight",
        "cp.arm16.conv.bn.weight",
        "cp.arm16.conv_atten.weight",
        "cp.arm16.bn_atten.running_var",
        "cp.arm32.conv.conv.weight",
        "cp.conv_head32.conv.weight",
        "cp.conv_head16.bn.weight",
        "cp.conv_avg.conv.weight",
        "ffm.convblk.conv.weight",
        "ffm.conv1.weight",
        "ffm.conv2.weight",
        "conv_out.conv.conv.weight",
        "conv_out.conv_out.weight",
        "conv_out16.conv_out.weight",
        "conv_out32.conv.bn.weight",
    ):
        assert key in keys, key
    assert not any(k.startswith(("sp.", "cp.resnet.fc")) for k in keys)
    assert bisenet.state_dict()["conv_out.conv_out.weight"].shape == (19, 256, 1, 1)
    assert bisenet.state_dict()["cp.arm32.conv.conv.weight"].shape == (128, 512, 3, 3)


def test_bisenet_checkpoint_round_trip(bisenet: BiSeNet, tmp_path) -> None:
    state = bisenet.state_dict()
    torch.save(state, tmp_path / "79999_iter.pth")
    for source in (tmp_path / "79999_iter.pth", tmp_path):  # a file, or a folder holding it
        loaded = load_bisenet(source).state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    # DataParallel prefixes and missing BatchNorm counters (old checkpoints) are accepted.
    old = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    loaded = load_bisenet(tmp_path / "old.pth").state_dict()
    assert torch.equal(loaded["ffm.conv1.weight"], state["ffm.conv1.weight"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    loaded = load_bisenet(tmp_path / "b.safetensors").state_dict()
    assert torch.equal(loaded["cp.resnet.conv1.weight"], state["cp.resnet.conv1.weight"])


def test_bisenet_bad_sources(bisenet: BiSeNet, tmp_path) -> None:
    torch.save({"conv_out.conv_out.weight": torch.zeros(19, 256, 1, 1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_bisenet(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="79999_iter.pth"):
        load_bisenet(tmp_path)  # a folder without the checkpoint
    with pytest.raises(FileNotFoundError):
        load_bisenet(tmp_path / "nowhere" / "79999_iter.pth")
    # Hub id, offline and not cached: a clear error naming the repo and the file.
    with pytest.raises(BiSeNetWeightsNotAvailableError) as info:
        load_bisenet("nobody-here/no-such-bisenet", local_files_only=True)
    message = str(info.value)
    assert "nobody-here/no-such-bisenet" in message and "79999_iter.pth" in message
    assert "hf download" in message


def test_bisenet_forward_shapes(bisenet: BiSeNet) -> None:
    with torch.no_grad():
        outs = bisenet(torch.randn(1, 3, 128, 128))
    assert [tuple(o.shape) for o in outs] == [(1, 19, 128, 128)] * 3


@pytest.mark.parametrize("size", [64, 128])
def test_bisenet_parser_predict(bisenet: BiSeNet, size: int) -> None:
    parser = BiSeNetParser(bisenet, input_size=128)
    x = _images(2, size)
    with torch.no_grad():
        logp = parser(x)
    assert logp.shape == (2, N_CLASSES, size, size)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(2, size, size), atol=1e-4, rtol=0)
    labels = parser.predict(x, batch_size=1)
    assert labels.shape == (2, size, size) and labels.dtype == torch.int64
    assert torch.equal(labels, logp.argmax(1))
    assert 0 <= int(labels.min()) and int(labels.max()) < N_CLASSES


def test_bisenet_parser_merges_probabilities(bisenet: BiSeNet) -> None:
    """The merged probabilities are sums over the 19 classes (checked at the internal size)."""
    parser = BiSeNetParser(bisenet, input_size=64)
    x = _images(1, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = parser(x).exp()
        norm = ((x + 1) / 2 - parser.mean) / parser.std
        probs = bisenet(norm)[0].softmax(1)
    eyes = probs[:, [4, 5, 6]].sum(1)  # l_eye, r_eye, eye_g
    torch.testing.assert_close(merged[:, 3], eyes, atol=1e-5, rtol=1e-4)
