"""Tests for Tiny-ImageNet (its on-disk layout, written here with PIL in a few classes) and for
``dataset.class_subset`` / ``dataset.image_size`` on every image set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, run_cli
from landscope import data as D
from landscope.config import ConfigError, DatasetConfig, OODConfig
from landscope.data_sources import TINY_IMAGENET_URL, draw_classes
from landscope.errors import DataError

WNIDS = ("n03", "n01", "n04", "n02")  # wnids.txt order; labels follow the sorted order


@pytest.fixture(autouse=True)
def _fresh_cache():
    D.clear_cache()
    yield
    D.clear_cache()


def write_tiny(root: Path, per_class: int = 5, val_per_class: int = 2) -> dict:
    """A Tiny-ImageNet tree in the real layout: wnids.txt, train/<wnid>/images/*.JPEG (plus
    the <wnid>_boxes.txt the real one has), val/images/*.JPEG and val/val_annotations.txt.
    Returns the file of every image and its class, as the reader should see them."""
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in WNIDS))
    out = {"train": [], "val": []}

    def save(path: Path, grey: bool = False) -> None:
        pixels = rng.integers(0, 256, size=(64, 64) if grey else (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="L" if grey else "RGB").save(path, "JPEG", quality=90)

    for w in WNIDS:
        images = base / "train" / w / "images"
        images.mkdir(parents=True)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(per_class):
            save(images / f"{w}_{i}.JPEG", grey=(w == "n02" and i == 0))
            out["train"].append((images / f"{w}_{i}.JPEG", w))
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for j in range(val_per_class * len(WNIDS)):
        w = WNIDS[(3 * j) % len(WNIDS)]  # interleaved classes, as in the real val split
        save(base / "val" / "images" / f"val_{j}.JPEG")
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63\n")
        out["val"].append((base / "val" / "images" / f"val_{j}.JPEG", w))
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return out


def decoded(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def expected(files: list, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8) and labels the reader must give: kept classes relabelled in sorted
    order, files sorted (ImageFolder's order for train, file names for val)."""
    order = sorted(WNIDS)
    keep = [order[c] for c in classes] if classes is not None else order
    rows = sorted((str(p), keep.index(w)) for p, w in files if w in keep)
    x = torch.stack([decoded(Path(p)) for p, _ in rows])
    return x, torch.tensor([y for _, y in rows])


def cfg(root: Path, **kw) -> DatasetConfig:
    kw.setdefault("normalize", False)
    return DatasetConfig(name="tiny_imagenet", data_dir=str(root), **kw)


@pytest.fixture
def tiny(tmp_path):
    return tmp_path, write_tiny(tmp_path)


def test_tiny_imagenet_layout_read_exactly(tiny):
    root, files = tiny
    b = D.load_data(cfg(root))
    assert b.meta == D.DatasetMeta("tiny_imagenet", (3, 64, 64), 4, 20, 8)
    for split, which in ((b.train, "train"), (b.test, "val")):
        x, y = expected(files[which])
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert torch.equal(split.x, x.float() / 255) and torch.equal(split.y, y)
    grey = b.train.x[5]  # n02_0.JPEG: a greyscale JPEG, read as three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert b.test.y.tolist() == [sorted(WNIDS).index(WNIDS[(3 * j) % 4]) for j in
                                 sorted(range(8), key=lambda j: f"val_{j}.JPEG")]


def test_class_subset_reads_only_the_drawn_classes(tiny, monkeypatch):
    import torchvision.datasets.folder as folder

    root, files = tiny
    read = []
    loader = folder.default_loader
    monkeypatch.setattr(folder, "default_loader", lambda p: read.append(p) or loader(p))
    draws = {draw_classes(2, 4, seed) for seed in range(6)}
    assert len(draws) > 1 and all(len(d) == 2 and d == tuple(sorted(d)) for d in draws)
    classes = draw_classes(2, 4, 3)
    b = D.load_data(cfg(root, class_subset=2, seed=3))
    assert b.meta.num_classes == 2 and b.meta.train_size == 10 and b.meta.test_size == 4
    for split, which in ((b.train, "train"), (b.test, "val")):
        x, y = expected(files[which], classes)
        assert torch.equal(split.x, x.float() / 255) and torch.equal(split.y, y)
    wanted = {sorted(WNIDS)[c] for c in classes}
    assert len(read) == 14 and all(Path(p).name.split("_")[0] in wanted or "val_" in p
                                   for p in read)
    again = D.load_data(cfg(root, classes=list(classes)))  # the same as listing them
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.test.y, b.test.y)


def test_image_size_and_subsets(tiny):
    """Seeded subsets as for every dataset (train: generator [seed, 0]; test: [1234, 1]),
    then torchvision's antialiased bilinear resize of the 8-bit images, rounded."""
    from torchvision.transforms.v2.functional import resize

    root, files = tiny
    b = D.load_data(cfg(root, image_size=32, train_size=7, test_size=3, seed=1))
    assert b.meta == D.DatasetMeta("tiny_imagenet", (3, 32, 32), 4, 7, 3)
    for split, which, rng, n, k in ((b.train, "train", [1, 0], 20, 7),
                                    (b.test, "val", [1234, 1], 8, 3)):
        x, y = expected(files[which])
        idx = np.sort(np.random.default_rng(rng).permutation(n)[:k])
        assert torch.equal(split.x, resize(x[idx], [32, 32], antialias=True).float() / 255)
        assert torch.equal(split.y, y[idx])
    other = D.load_data(cfg(root, image_size=32, train_size=7, test_size=3, seed=2))
    assert not torch.equal(other.train.x, b.train.x) and torch.equal(other.test.x, b.test.x)


def test_missing_tiny_imagenet_says_where_to_get_it(tmp_path):
    for download in (False, True):
        c = cfg(tmp_path / "nowhere", download=download)
        for fn in (D.check_available, D.load_data):
            with pytest.raises(DataError) as info:
                fn(c)
            msg = str(info.value)
            assert "\n" not in msg and TINY_IMAGENET_URL in msg
            assert f"{tmp_path}/nowhere/tiny-imagenet-200/wnids.txt is missing" in msg
            assert ("(dataset.download=true)" in msg) == download
    write_tiny(tmp_path / "partial")
    (tmp_path / "partial" / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match="val/val_annotations.txt is missing"):
        D.check_available(cfg(tmp_path / "partial"))


def test_bad_tiny_imagenet_files_are_one_line_errors(tiny):
    root, _ = tiny
    with pytest.raises(DataError) as info:
        D.check_available(cfg(root, class_subset=5))
    assert str(info.value) == "dataset.class_subset must be in 2..4 (got 5)"
    with pytest.raises(DataError, match=r"dataset.classes must list .* in 0..3 \(got \[0, 4\]\)"):
        D.load_data(cfg(root, classes=[0, 4]))
    odd = root / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_9.JPEG"
    Image.new("RGB", (32, 32)).save(odd, "JPEG")
    with pytest.raises(DataError) as info:
        D.load_data(cfg(root))
    assert "\n" not in str(info.value) and f"{odd} is 32x32, expected 64x64" in str(info.value)


def test_tiny_imagenet_ood_split_corrupts_the_val_images(tiny):
    root, _ = tiny
    b = D.load_data(cfg(root, ood=OODConfig(enabled=True, severity=2, size=12)))
    assert b.ood.x.shape == (12, 3, 64, 64) and len(b.ood) == 12
    assert set(b.ood.y.tolist()) <= set(b.test.y.tolist())
    assert not any(torch.equal(b.ood.x[i], t) for i in range(12) for t in b.test.x)


# ----------------------------------------------------------------------------- other image sets


def test_class_subset_and_image_size_on_digits_and_cifar_like(tmp_path):
    full = D.load_data(DatasetConfig(name="digits", data_dir=str(tmp_path), normalize=False))
    classes = draw_classes(3, 10, 5)
    b = D.load_data(DatasetConfig(name="digits", data_dir=str(tmp_path), normalize=False,
                                  class_subset=3, seed=5))
    kept = D.keep_classes(D._Raw(full.train.x, full.train.y, None), classes)
    assert b.meta.num_classes == 3 and torch.equal(b.train.x, kept.data)
    assert torch.equal(b.train.y, kept.targets) and set(b.test.y.tolist()) == {0, 1, 2}
    big = D.load_data(DatasetConfig(name="digits", data_dir=str(tmp_path), image_size=16))
    assert big.meta.input_shape == (1, 16, 16) and big.train.x.shape[1:] == (1, 16, 16)
    like = D.load_data(DatasetConfig(name="cifar_like", data_dir=str(tmp_path), class_subset=4,
                                     seed=2, train_size=50, test_size=20, image_size=16))
    listed = D.load_data(DatasetConfig(name="cifar_like", data_dir=str(tmp_path), seed=2,
                                       classes=list(draw_classes(4, 10, 2)), train_size=50,
                                       test_size=20))
    assert like.meta == D.DatasetMeta("cifar_like", (3, 16, 16), 4, 50, 20)
    assert torch.equal(like.train.y, listed.train.y)


def _validate(overrides):
    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        validate(compose(config_name="config", overrides=overrides, return_hydra_config=True))


@pytest.mark.parametrize("overrides,message", [
    (["dataset.image_size=32"], "dataset.image_size must be null with dataset=mnist1d "
                                "(not an image set) (got 32)"),
    (["dataset=digits", "dataset.image_size=0"], "dataset.image_size must be >= 1 or null"),
    (["dataset=digits", "dataset.class_subset=1"], "dataset.class_subset must be >= 2 or null"),
    (["dataset=quadratic", "model=quadratic", "dataset.class_subset=2"],
     "dataset.class_subset must be null with dataset=quadratic (a synthetic problem)"),
    (["dataset=tiny_imagenet", "dataset.classes=[0,1]"],
     "dataset.class_subset must be null when dataset.classes is set"),
])
def test_bad_class_subset_and_image_size_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        _validate(overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- runner


def test_a_runner_job_on_tiny_imagenet(tmp_path):
    write_tiny(tmp_path / "data")
    args = ["dataset=tiny_imagenet", "model=cnn", "model.width=4", "model.depth=1",
            "train.epochs=1", "probe=none", "landscape=none", "dataset.class_subset=3",
            "dataset.image_size=32", "dataset.ood.enabled=true", "dataset.ood.severity=5",
            f"hydra.run.dir={tmp_path / 'job'}"]
    proc = run_cli(args, tmp_path, data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs_completed"] == 1
    assert result["dataset"] == {"name": "tiny_imagenet", "train_size": 15, "test_size": 6}
    final = result["final"]
    assert {"ood_test_acc", "ood_test_loss"} <= final.keys() and 0 <= final["ood_test_acc"] <= 1

    # without the files: one line naming the path and the URL, exit 2, nothing written
    proc = run_cli([*args[:-1], f"hydra.run.dir={tmp_path / 'job2'}"], tmp_path,
                   data_dir=tmp_path / "empty")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and TINY_IMAGENET_URL in lines[0], lines
    assert lines[0].startswith("error: dataset 'tiny_imagenet' not found")
    assert not (tmp_path / "job2").exists() and not (tmp_path / "outputs").exists()
