import shutil

import numpy as np
import pytest
from PIL import Image

from edgeseg.data.datasets import load_mask, open_dataset, voc
from edgeseg.data.voc import voc_palette
from edgeseg.errors import EdgesegError


def test_voc_split_reads_masks_as_palette_indices(voc_root):
    dataset = voc(voc_root, "val")
    assert len(dataset) == 166
    sample = dataset.samples[0]
    with Image.open(sample.mask_path) as raw:
        assert raw.mode == "P"
        assert tuple(raw.getpalette()[255 * 3: 256 * 3]) == tuple(voc_palette()[255])
    image, mask = dataset.load(sample)
    assert image.shape[:2] == mask.shape and mask.dtype == np.uint8
    values = set(np.unique(mask).tolist())
    assert 255 in values and values <= set(range(21)) | {255}


def test_train_split_is_separate(voc_root):
    train, val = voc(voc_root, "train"), voc(voc_root, "val")
    assert len(train) == 330
    assert not {s.id for s in train.samples} & {s.id for s in val.samples}


def _copy_voc(voc_root, tmp_path, ids):
    root = tmp_path / "VOC"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for i in ids:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
        shutil.copy(voc_root / "SegmentationClass" / f"{i}.png", root / "SegmentationClass")
    return root


def test_missing_files_are_counted_and_named(voc_root, tmp_path):
    ids = voc(voc_root, "val", limit=2).samples
    root = _copy_voc(voc_root, tmp_path, [s.id for s in ids])
    listed = [s.id for s in ids] + ["2099_000001", "2099_000002", "2099_000003", "2099_000004"]
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(listed) + "\n")
    with pytest.raises(EdgesegError, match=r"8 listed files are missing, e\.g\. .*2099_000001") as info:
        voc(root, "val")
    assert "\n" not in str(info.value)


def test_mask_size_mismatch(voc_root, tmp_path):
    sample = voc(voc_root, "val", limit=1).samples[0]
    root = _copy_voc(voc_root, tmp_path, [sample.id])
    (root / "ImageSets/Segmentation/val.txt").write_text(sample.id)
    mask_path = root / "SegmentationClass" / f"{sample.id}.png"
    with Image.open(mask_path) as mask:
        mask.resize((10, 10)).save(mask_path)
    with pytest.raises(EdgesegError, match="mask is 10x10, image is"):
        voc(root, "val").load(voc(root, "val").samples[0])


def test_rgb_mask_is_rejected(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(EdgesegError, match="mask mode RGB"):
        load_mask(path)


def test_image_mask_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.full((6, 8), 1, np.uint8), mode="L").save(tmp_path / "masks" / "a.png")
    dataset = open_dataset(tmp_path)
    image, mask = dataset.load(dataset.samples[0])
    assert image.shape == (6, 8, 3) and mask.max() == 1


def test_not_a_dataset(tmp_path):
    with pytest.raises(EdgesegError, match="expected images/ and masks/"):
        open_dataset(tmp_path)
    with pytest.raises(EdgesegError, match="no such folder"):
        open_dataset(tmp_path / "nope")


def test_split_folders_and_unknown_splits(tmp_path, voc_root):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        Image.new("RGB", (8, 6)).save(tmp_path / split / "images" / f"{split}.jpg")
        Image.fromarray(np.zeros((6, 8), np.uint8), mode="L").save(tmp_path / split / "masks" / f"{split}.png")
    assert open_dataset(tmp_path, "val").samples[0].id == "val"
    with pytest.raises(EdgesegError, match="no split 'test'; splits here: train, val"):
        open_dataset(tmp_path, "test")
    with pytest.raises(EdgesegError, match="no split 'nope'; splits here: train, val"):
        open_dataset(voc_root, "nope")
