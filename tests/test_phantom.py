"""The synthetic chest-radiograph phantom: determinism, shapes, anatomy and nodule ground truth."""

import numpy as np
import pytest

from cxr_utils import phantom
from cxr_utils.errors import DataError


@pytest.fixture(scope="module")
def set64() -> phantom.PhantomSet:
    return phantom.generate(24, size=64, seed=7)


@pytest.fixture(scope="module")
def pair64() -> tuple[phantom.PhantomSet, phantom.PhantomSet]:
    """The same 16 images rendered with and without their nodules."""
    idx = range(16)
    return (phantom.render(idx, size=64, seed=11),
            phantom.render(idx, size=64, seed=11, with_nodules=False))


def _same(a: phantom.PhantomSet, b: phantom.PhantomSet) -> bool:
    return (a.images.tobytes() == b.images.tobytes() and np.array_equal(a.labels, b.labels)
            and np.array_equal(a.lung_masks, b.lung_masks)
            and np.array_equal(a.mediastinum_masks, b.mediastinum_masks) and a.nodules == b.nodules)


def _centroid_x(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def test_same_seed_gives_identical_bytes(set64):
    assert _same(phantom.generate(24, size=64, seed=7), set64)


def test_different_seed_gives_different_images(set64):
    other = phantom.generate(24, size=64, seed=8)
    assert all(not np.array_equal(a, b) for a, b in zip(other.images, set64.images))


def test_prefix_of_a_larger_set_is_the_smaller_set(set64):
    # 24 images span three render chunks at 64 px; 5 and 19 end inside one
    for n in (5, 19):
        small = phantom.generate(n, size=64, seed=7)
        prefix = phantom.PhantomSet(set64.images[:n], set64.labels[:n], set64.lung_masks[:n],
                                    set64.mediastinum_masks[:n], set64.nodules[:n])
        assert _same(small, prefix)


def test_image_depends_only_on_its_index():
    some = phantom.render([9, 3], size=64, seed=2)
    full = phantom.generate(10, size=64, seed=2)
    assert np.array_equal(some.images, full.images[[9, 3]])
    assert some.nodules == [full.nodules[9], full.nodules[3]]


@pytest.mark.parametrize("size, n", [(64, 3), (100, 2), (128, 2), (256, 1)])
def test_shapes_and_dtypes(size, n):
    s = phantom.generate(n, size=size, seed=0)
    assert s.images.shape == s.lung_masks.shape == s.mediastinum_masks.shape == (n, size, size)
    assert s.images.dtype == np.uint8
    assert s.lung_masks.dtype == s.mediastinum_masks.dtype == np.bool_
    assert s.labels.dtype == np.int64 and s.labels.shape == (n,)
    assert len(s.nodules) == n and s.class_names == phantom.CLASS_NAMES == ("normal", "nodule")
    assert s.images.std() > 20  # not blank: air, lungs and bone span the grey range


def test_lungs_are_darker_than_mediastinum_and_spine(set64):
    mid = set64.images.shape[-1] // 2
    for img, lung, med in zip(set64.images.astype(float), set64.lung_masks, set64.mediastinum_masks):
        rows = np.nonzero(lung.any(axis=1))[0]
        spine = img[rows[0]:rows[-1] + 1, mid - 1:mid + 2]
        assert img[lung].mean() + 30 < img[med].mean()
        assert img[lung].mean() + 30 < spine.mean()


def test_lungs_symmetric_and_heart_to_image_right(set64):
    size = set64.images.shape[-1]
    offsets = []
    for lung, med in zip(set64.lung_masks, set64.mediastinum_masks):
        right_lung, left_lung = lung[:, : size // 2], lung[:, size // 2:]  # patient's right, left
        assert 0.6 < right_lung.sum() / left_lung.sum() < 1.8
        cols = np.nonzero(lung.any(axis=0))[0]
        midline = (cols[0] + cols[-1]) / 2  # halfway between the lateral lung borders
        assert abs(midline - (size - 1) / 2) < 0.1 * size
        rows = np.nonzero(med.any(axis=1))[0]
        heart = med.copy()
        heart[: (rows[0] + rows[-1]) // 2] = False  # lower half of the silhouette
        offsets.append((_centroid_x(heart) - midline) / size)
        assert not (lung & med).any()
    assert min(offsets) > 0 and np.mean(offsets) > 0.03


def test_lung_masks_are_two_sizeable_fields(set64):
    from scipy import ndimage

    for lung in set64.lung_masks:
        labels, count = ndimage.label(lung)
        sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1] / lung.sum()
        assert count >= 2 and sizes[1] > 0.3 and sizes[:2].sum() > 0.98
        assert 0.15 < lung.mean() < 0.5


def test_nodules_only_on_nodule_images_and_inside_lungs(set64):
    size = set64.images.shape[-1]
    for label, nods, lung in zip(set64.labels, set64.nodules, set64.lung_masks):
        assert (1 <= len(nods) <= 3) if label == 1 else nods == []
        for cy, cx, r in nods:
            assert lung[int(round(cy)), int(round(cx))]
            assert 0.03 * size <= r <= 0.065 * size


def test_nodule_image_differs_from_its_normal_counterpart_only_at_nodules(pair64):
    with_, without = pair64
    assert np.array_equal(with_.lung_masks, without.lung_masks) and with_.nodules == without.nodules
    size = with_.images.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    for label, a, b, nods in zip(with_.labels, with_.images, without.images, with_.nodules):
        diff = a.astype(int) - b.astype(int)
        if label == 0:
            assert not diff.any()
            continue
        near = np.zeros((size, size), bool)
        for cy, cx, r in nods:
            disc = np.hypot(yy - cy, xx - cx) <= r
            assert diff[disc].mean() > 3  # brighter where the nodule is
            near |= np.hypot(yy - cy, xx - cx) <= r + 3  # the blur spreads it by up to ~2 px
        assert not diff[~near].any()


def test_nodules_brighter_than_surrounding_lung(pair64):
    with_ = pair64[0]
    size = with_.images.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    contrasts = []
    for img, lung, nods in zip(with_.images.astype(float), with_.lung_masks, with_.nodules):
        for cy, cx, r in nods:
            dist = np.hypot(yy - cy, xx - cx)
            ring = (dist > 1.5 * r) & (dist < 2.5 * r + 1) & lung
            contrasts.append(img[dist <= r].mean() - img[ring].mean())
    contrasts = np.array(contrasts)
    assert len(contrasts) >= 8
    assert np.mean(contrasts > 0) >= 0.75 and contrasts.mean() > 5


def test_nodules_vary_in_size():
    s = phantom.generate(16, size=128, seed=5)
    radii = [r for nods in s.nodules for _, _, r in nods]
    assert max(radii) > 1.5 * min(radii)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_class_balance_follows_nodule_fraction(fraction):
    labels = phantom.labels_for(range(1000), fraction)
    assert abs(labels.sum() - 1000 * fraction) <= 1
    assert abs(labels[:37].sum() - 37 * fraction) <= 1  # evenly spread, not clustered
    s = phantom.generate(10, size=64, seed=0, nodule_fraction=fraction)
    assert np.array_equal(s.labels, labels[:10])


def test_half_fraction_alternates():
    assert phantom.labels_for(range(6), 0.5).tolist() == [0, 1, 0, 1, 0, 1]


def test_progress_bar_does_not_change_the_result(capsys):
    assert _same(phantom.generate(2, seed=4, progress=True), phantom.generate(2, seed=4))


@pytest.mark.parametrize("kwargs", [
    {"n": 0}, {"n": -3}, {"n": 2.5}, {"n": True}, {"n": "4"},
    {"n": 2, "size": 63}, {"n": 2, "size": 257}, {"n": 2, "size": 64.0}, {"n": 2, "size": "64"},
    {"n": 2, "nodule_fraction": -0.1}, {"n": 2, "nodule_fraction": 1.5},
    {"n": 2, "nodule_fraction": "0.5"}, {"n": 2, "seed": -1}, {"n": 2, "seed": 1.5},
])
def test_bad_arguments_raise_one_line_data_error(kwargs):
    with pytest.raises(DataError) as exc:
        phantom.generate(**kwargs)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("phantom:")
