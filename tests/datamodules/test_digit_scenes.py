import pytest
import torch

from datamodules.digit_scenes import MASK_THRESHOLD, compose_scene, digit_pool, make_scenes
from lit_distill.errors import ConfigError


@pytest.fixture(scope="module")
def pool():
    return digit_pool("train")


def test_pools_are_disjoint_and_cover_digits():
    train, val = digit_pool("train"), digit_pool("val")
    assert len(train.labels) + len(val.labels) == 1797
    assert len(val.labels) == round(1797 * 0.2)
    flat_train = {tuple(x.flatten().tolist()) for x in train.images}
    assert not any(tuple(x.flatten().tolist()) in flat_train for x in val.images[:50])
    assert set(val.labels.tolist()) == set(range(10))


def test_scene_shapes_mask_and_objects_agree(pool):
    scenes = make_scenes(20, pool, seed=3, canvas_size=48, digit_size=(12, 20), num_digits=(1, 3))
    for scene in scenes:
        assert scene.image.shape == (3, 48, 48) and scene.image.dtype == torch.float32
        assert 0.0 <= scene.image.min() and scene.image.max() <= 1.0
        assert scene.mask.shape == (48, 48) and scene.mask.dtype == torch.long
        assert 1 <= len(scene.objects) <= 3
        present = set(scene.mask.unique().tolist()) - {0}
        assert present <= {o.digit + 1 for o in scene.objects}
        for o in scene.objects:  # every digit pixel lies inside a box of that digit
            box = scene.mask[o.top:o.top + o.size, o.left:o.left + o.size]
            assert (box == o.digit + 1).sum() == (scene.mask == o.digit + 1).sum() or \
                sum(p.digit == o.digit for p in scene.objects) > 1


def test_boxes_do_not_overlap(pool):
    for scene in make_scenes(30, pool, seed=1, num_digits=(4, 4)):
        boxes = scene.objects
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert (a.top + a.size <= b.top or b.top + b.size <= a.top
                        or a.left + a.size <= b.left or b.left + b.size <= a.left)


def test_scenes_are_seeded_and_prefix_stable(pool):
    a = make_scenes(5, pool, seed=7)
    b = make_scenes(8, pool, seed=7)
    for x, y in zip(a, b, strict=False):
        assert torch.equal(x.image, y.image) and torch.equal(x.mask, y.mask) and x.objects == y.objects
    c = make_scenes(5, pool, seed=8)
    assert not torch.equal(a[0].image, c[0].image)


def test_mask_marks_bright_glyph_pixels(pool):
    scene = compose_scene(pool, torch.Generator().manual_seed(0), noise_std=0.0, num_digits=(1, 1))
    (obj,) = scene.objects
    fraction = (scene.mask > 0).float().sum() / obj.size**2
    assert 0.05 < fraction < 0.9  # a glyph, neither empty nor the whole box
    assert MASK_THRESHOLD > 0


@pytest.mark.parametrize("kwargs", [{"num_digits": (0, 2)}, {"num_digits": (3, 2)},
                                    {"digit_size": (2, 8)}, {"canvas_size": 16, "digit_size": (8, 20)}])
def test_bad_arguments_are_config_errors(pool, kwargs):
    with pytest.raises(ConfigError):
        compose_scene(pool, torch.Generator().manual_seed(0), **kwargs)


def test_overlap_contrast_and_clutter_make_harder_scenes(pool):
    kwargs = {"canvas_size": 48, "digit_size": (12, 21), "num_digits": (3, 4)}
    easy = make_scenes(40, pool, seed=5, **kwargs)
    hard = make_scenes(40, pool, seed=5, max_overlap=0.5, contrast=(0.1, 0.2), clutter=2, noise_std=0.0, **kwargs)

    def overlapping(scene):
        boxes = [(o.top, o.left, o.size) for o in scene.objects]
        return any(min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[2], b[1] + b[2]) > max(a[1], b[1])
                   for i, a in enumerate(boxes) for b in boxes[i + 1:])

    assert not any(overlapping(s) for s in easy) and sum(overlapping(s) for s in hard) >= 10
    for scene in hard:
        background = scene.image[:, scene.mask == 0]
        if (scene.mask > 0).any():  # glyph pixels differ from the background by at most the contrast
            step = (scene.image[:, scene.mask > 0] - background.median(1).values[:, None]).abs().amax(0)
            assert step.max() <= 0.2 + 1e-5
    # clutter: fragments painted but labelled background, so the background is not one colour
    unlabelled_strokes = sum(bool((s.image[:, s.mask == 0].std(1) > 0.01).any()) for s in hard)
    assert unlabelled_strokes >= 30


def test_a_later_digit_covers_an_earlier_one_in_the_mask(pool):
    for scene in make_scenes(60, pool, seed=2, num_digits=(4, 4), max_overlap=1.0):
        last = scene.objects[-1]
        box = scene.mask[last.top:last.top + last.size, last.left:last.left + last.size]
        assert (box == last.digit + 1).any()


@pytest.mark.parametrize("kwargs", [{"max_overlap": 1.5}, {"contrast": (0.0, 0.2)}, {"contrast": (0.3, 0.2)},
                                    {"clutter": -1}])
def test_bad_hard_scene_arguments_are_config_errors(pool, kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        compose_scene(pool, torch.Generator().manual_seed(0), **kwargs)
