"""Streamed, augmented data: image folders read on demand, fresh views every epoch, the same views
on resume, undecodable images skipped, the user's own DataLoader iterated every epoch, and the
augmentation-aware teacher cache replaying exactly the recorded views."""
import numpy as np
import pytest
import torch
from torch import nn

import distill
from distill.data.stream import ImageFolderSource, StreamLoader, TensorSource, ViewDataset
from distill.data.transforms import TransformConfig, ViewTransform, random_resized_box
from distill.errors import CacheMismatchError, ConfigError

pytest.importorskip("torchvision")


@pytest.fixture
def folder(tmp_path):
    """root/train/<class>/*.png and root/val/<class>/*.png of random 12x10 images, 2 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "imgs"


def _views(source, **t):
    cfg = TransformConfig(**{"size": 8, "normalize": "none", **t})
    return ViewDataset(source, ViewTransform(cfg, size=8, mean=None, std=None), seed=3)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [b for b in loader]


def test_image_folder_reads_files_on_demand_and_labels_by_folder(folder):
    src = ImageFolderSource(folder / "train")
    assert src.classes == ["cat", "dog"] and len(src) == 12 and src.labels.tolist() == [0] * 6 + [1] * 6
    img = src.get(0)
    assert (img.width, img.height) == (10, 12)


def test_views_differ_between_epochs_and_repeat_on_resume(folder):
    views = _views(ImageFolderSource(folder / "train"), crop="random_resized", hflip=0.5)
    loader = StreamLoader(views, 4, shuffle=True, seed=0)
    e0, e1 = _epoch(loader, 0), _epoch(loader, 1)
    assert e0[0]["x"].shape == (4, 3, 8, 8)
    assert not torch.equal(torch.cat([b["view"] for b in e0]), torch.cat([b["view"] for b in e1]))
    # a resumed run: the same epoch again, started at batch 1 without reading batch 0
    again = StreamLoader(views, 4, shuffle=True, seed=0)
    again.set_epoch(1)
    again.resume_at(1)
    rest = list(again)
    assert len(rest) == len(e1) - 1
    for a, b in zip(rest, e1[1:]):
        assert torch.equal(a["idx"], b["idx"]) and torch.equal(a["x"], b["x"])


def test_views_are_the_same_with_worker_processes(folder):
    views = _views(ImageFolderSource(folder / "train"), crop="random_resized", auto_augment="trivialaugment")
    a = _epoch(StreamLoader(views, 4, shuffle=True, seed=0), 2)
    b = _epoch(StreamLoader(views, 4, shuffle=True, seed=0, num_workers=2), 2)
    for x, y in zip(a, b):
        assert torch.equal(x["x"], y["x"])


def test_random_resized_box_stays_inside_and_covers_the_scale_range():
    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_box(40, 60, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and 0 <= left and top + h <= 40 and left + w <= 60
        areas.append(h * w / 2400)
    assert 0.18 < min(areas) < 0.3 and max(areas) > 0.85


def test_undecodable_image_is_skipped_and_counted(folder):
    (folder / "train" / "cat" / "0.png").write_bytes(b"not a png")
    views = _views(ImageFolderSource(folder / "train"), crop="center", hflip=0.0)
    got = sum(len(b["idx"]) for b in _epoch(StreamLoader(views, 5, shuffle=False), 0))
    assert got == 11


def test_images_dataset_and_recipe_end_to_end(folder, tiny_recipe, tmp_path):
    r = dict(tiny_recipe)
    r["data"] = {"name": "images", "params": {"root": str(folder), "val_fraction": 0.0}, "batch_size": 4,
                 "transforms": {"size": 8, "crop": "random_resized", "normalize": "imagenet"}}
    r["teacher"] = {"model": {"name": "convnet", "params": {"width": 8, "depth": 2}}, "train": {"epochs": 1}}
    r["student"] = {"model": {"name": "convnet", "params": {"width": 4, "depth": 2}}}
    r["methods"] = [{"name": "kd"}, {"name": "fitnet", "params": {"student_layer": "features.2",
                                                                   "teacher_layer": "features.2"}}]
    r["train"] = {"epochs": 2}
    r["eval"] = {"latency_runs": 2, "val_fraction": 0.25}
    summary = distill.run(r, show_table=False, log=lambda m: None)
    assert summary["data"] == {"name": "images", "train": 8, "test": 4, "val": 4, "labeled_fraction": 1.0, "classes": 2}
    assert summary["best_selected_on"] == "val"


def test_bad_transform_settings_are_named(folder, tiny_recipe):
    r = dict(tiny_recipe)
    r["data"] = {"name": "images", "params": {"root": str(folder)},
                 "transforms": {"size": 8, "normalize": {"mean": [0.5], "std": [0.5]}}}
    with pytest.raises(ConfigError, match="data.transforms.normalize"):
        distill.run(r, show_table=False, log=lambda m: None)


class Tiny(nn.Module):
    def __init__(self, d=16, c=3):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.ReLU())
        self.head = nn.Linear(8, c)

    def forward(self, x):
        return self.head(self.body(x))


class FlipDataset(torch.utils.data.Dataset):
    """Random horizontal flips drawn at every access: a user's augmented data set."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), self.y[i]


def test_distiller_iterates_the_users_loader_every_epoch_and_leaves_no_hooks():
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))
    loader = torch.utils.data.DataLoader(FlipDataset(x, y), batch_size=8, shuffle=True)
    seen = []
    teacher, student = Tiny(), Tiny()
    orig = student.forward
    student.forward = lambda inp: (seen.append(inp.detach().clone()), orig(inp))[1]
    d = distill.Distiller(teacher, student, method="fitnet", student_layer="body.1", teacher_layer="body.1",
                          epochs=2, device="cpu")
    d.fit(loader, loader)
    # calls: setup (1), epoch 0 (4 batches), its evaluation (4), epoch 1 (4), its evaluation (4)
    assert len(seen) == 17
    epoch0, epoch1 = torch.cat(seen[1:5]), torch.cat(seen[9:13])
    assert not torch.equal(epoch0, epoch1)  # a fresh shuffle and fresh flips: nothing was frozen
    assert len(d.history) == 2 and "accuracy" in d.history[-1]
    for m in [*teacher.modules(), *student.modules()]:
        assert not m._forward_hooks and not m._forward_pre_hooks, m


def test_taps_follow_a_module_replaced_after_attaching():
    from distill.families.classifier.common import PENULTIMATE, LayerTaps

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    taps = LayerTaps(net, ["1"])
    net[1] = nn.BatchNorm2d(4)  # what SyncBatchNorm conversion does to a tapped BN layer
    taps.ensure(torch.randn(2, 1, 6, 6))
    out = net(torch.randn(2, 1, 6, 6))
    assert taps.read()[0].shape == (2, 4, 4, 4) and out.shape == (2, 2)
    assert net[1]._forward_hooks  # the hook moved to the new module
    taps.detach()
    assert not net[1]._forward_hooks


def test_penultimate_is_found_by_forward_order():
    from distill.families.classifier.common import PENULTIMATE, LayerTaps

    class HeadFirst(nn.Module):  # the head is registered before the hidden layer it follows
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 2)
            self.hidden = nn.Linear(3, 5)

        def forward(self, x):
            return self.head(torch.relu(self.hidden(x)))

    net = HeadFirst()
    taps = LayerTaps(net, [PENULTIMATE]).ensure(torch.randn(2, 3))
    net(torch.randn(4, 3))
    assert taps.read()[0].shape == (4, 5)  # the head's input, not the hidden layer's


def test_vit_token_features_pair_with_cnn_maps():
    from distill.losses.features import at_loss, tokens_as_map

    tokens = torch.randn(2, 1 + 16, 32)  # class token + 4x4 patches
    m = tokens_as_map(tokens)
    assert m.shape == (2, 32, 4, 4) and torch.equal(m[:, :, 0, 1], tokens[:, 2])
    assert torch.isfinite(at_loss(torch.randn(2, 8, 8, 8), m))


def _digits_views(epochs_seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:40], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[:40])
    cfg = TransformConfig(size=8, crop="random", crop_padding=2, hflip=0.5, normalize="none")
    return ViewDataset(TensorSource(x, y), ViewTransform(cfg, size=8, mean=None, std=None), seed=epochs_seed)


def test_augmentation_aware_cache_replays_the_recorded_views_and_soft_labels(tmp_path):
    from distill.methods.kd import KD
    from distill.families.classifier.view_cache import ViewTeacherCache
    from distill.teacher import Teacher

    torch.manual_seed(0)
    views = _digits_views()
    teacher = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    cache = ViewTeacherCache.build(tmp_path / "c", teacher, views, epochs=2, temperature=4.0, k=10,
                                   dtype="float32", progress=False)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    live, cached = KD(student, teacher, temperature=4.0), KD(student, teacher, temperature=4.0)
    cached.cache = cache
    views.replay = cache.views
    loader = StreamLoader(views, 8, shuffle=True, seed=1)
    for epoch in (0, 1):
        for b in _epoch(loader, epoch):
            assert torch.equal(b["view"], cache.views[b["epoch"], b["idx"]])
            a, c = live(b), cached(b)
            assert abs(float(a["kd"]) - float(c["kd"])) < 1e-5
    # views differ by epoch in the cache; another number of epochs is refused
    assert not torch.equal(cache.views[0], cache.views[1])
    with pytest.raises(CacheMismatchError, match="epochs"):
        ViewTeacherCache.load(tmp_path / "c", ViewTeacherCache.expected_meta(teacher, views, epochs=3,
                                                                             temperature=4.0, k=10, dtype="float32"))


def test_cached_run_with_augmentation_matches_the_live_run(tmp_path, tiny_recipe):
    r = dict(tiny_recipe)
    r["data"] = {"name": "digits", "params": {"layout": "image"}, "batch_size": 64,
                 "transforms": {"crop": "random", "crop_padding": 1, "hflip": 0.5, "normalize": "none"}}
    r["teacher"] = dict(r["teacher"], model={"name": "convnet", "params": {"width": 8, "depth": 2}})
    r["methods"] = [{"name": "kd"}]
    live = distill.run(r, show_table=False, log=lambda m: None)
    logs = []
    r2 = dict(r, teacher=dict(r["teacher"], cache_outputs=True, cache_dtype="float32"))
    cached = distill.run(r2, show_table=False, log=logs.append)
    assert any("recording 2 epochs" in m for m in logs)
    assert abs(live["students"]["kd"]["accuracy"] - cached["students"]["kd"]["accuracy"]) < 1e-6
    # RandAugment cannot be replayed: the run says so and uses the live teacher
    r3 = dict(r2, data=dict(r2["data"], transforms=dict(r2["data"]["transforms"], auto_augment="randaugment")))
    logs.clear()
    distill.run(r3, show_table=False, log=logs.append)
    assert any("cannot be replayed" in m for m in logs)


def test_mixup_and_cutmix_give_soft_labels_drawn_per_batch_and_seed():
    from distill.data.transforms import BatchMix

    views = _digits_views()
    cfg = views.transform.cfg.model_copy(update={"mixup": 0.4, "cutmix": 1.0})
    mix = BatchMix(cfg, 10, seed=0)
    a = _epoch(StreamLoader(views, 8, shuffle=True, seed=0, mix=mix), 0)
    b = _epoch(StreamLoader(views, 8, shuffle=True, seed=0, mix=BatchMix(cfg, 10, seed=0)), 0)
    for x, y in zip(a, b):
        assert x["y"].shape == (8, 10) and torch.allclose(x["y"].sum(-1), torch.ones(8))
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["y"], y["y"])
    assert any(float(bt["y"].max(-1).values.min()) < 1 for bt in a)  # some labels really are mixtures


def test_mixup_recipe_runs_kd_and_refuses_a_hard_label_method(tiny_recipe):
    r = dict(tiny_recipe)
    r["data"] = {"name": "digits", "params": {"layout": "image"}, "batch_size": 64,
                 "transforms": {"crop": "none", "hflip": 0.0, "mixup": 0.2, "normalize": "none"}}
    r["teacher"] = dict(r["teacher"], model={"name": "convnet", "params": {"width": 8, "depth": 2}})
    r["methods"] = [{"name": "kd"}]
    out = distill.run(r, show_table=False, log=lambda m: None)
    assert out["students"]["kd"]["accuracy"] > 20
    with pytest.raises(ConfigError, match="dkd uses labels as class indices"):
        distill.run(dict(r, methods=[{"name": "dkd"}]), show_table=False, log=lambda m: None)


def test_webdataset_shards_are_read_by_offset(folder, tmp_path, tiny_recipe):
    import tarfile

    src = ImageFolderSource(folder / "train")
    for split, ids in (("train", range(0, 8)), ("test", range(8, 12))):
        with tarfile.open(tmp_path / f"{split}-000.tar", "w") as tar:
            for i in ids:
                tar.add(src.files[i], arcname=f"s{i:04d}.png")
                label = tmp_path / "lbl"
                label.write_text(str(int(src.labels[i])))
                tar.add(label, arcname=f"s{i:04d}.cls")
    from distill.data.stream import TarShardSource

    shards = TarShardSource(str(tmp_path / "train-{000..000}.tar"))
    assert len(shards) == 8 and shards.labels.tolist() == src.labels[:8].tolist()
    assert np.array_equal(np.asarray(shards.get(3)), np.asarray(src.get(3)))
    r = dict(tiny_recipe)
    r["data"] = {"name": "webdataset", "params": {"train": str(tmp_path / "train-000.tar"),
                                                  "test": str(tmp_path / "test-000.tar"), "num_classes": 2,
                                                  "val_fraction": 0.25},
                 "batch_size": 4, "transforms": {"size": 8, "crop": "random_resized", "normalize": "none"}}
    r["teacher"] = {"model": {"name": "mlp", "params": {"hidden": [8]}}, "train": {"epochs": 1}}
    r["methods"] = [{"name": "kd"}]
    r["train"] = {"epochs": 1}
    out = distill.run(r, show_table=False, log=lambda m: None)
    assert out["data"]["train"] == 5 and out["data"]["val"] == 3 and out["data"]["test"] == 4


def test_hf_images_from_a_saved_data_set(folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    src = ImageFolderSource(folder / "train")
    imgs = [Image.open(p).convert("RGB") for p in src.files]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    ds = datasets.Dataset.from_dict({"img": imgs, "label": src.labels.tolist()}, features=feats)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(tmp_path / "hf"))
    from distill.data.streamed import hf_images

    b = hf_images(str(tmp_path / "hf"), image_column="img", val_fraction=0.0)
    assert b.num_classes == 2 and b.class_names == ["cat", "dog"] and len(b.train) == 12
    assert np.array_equal(np.asarray(b.train.get(5)), np.asarray(imgs[5]))
    with pytest.raises(ConfigError, match="no column 'image'"):
        hf_images(str(tmp_path / "hf"))
