"""Splits: grouped by patient, stratified, seeded, nested subsets, and the MD5 leak guard."""

import numpy as np
import pytest

from cxr_utils.errors import DataError
from cxr_utils.splits import assert_no_leak, make_splits, patient_id_from_name, split_table, subsample_fraction


@pytest.mark.parametrize("name, patient", [
    ("person123_bacteria_456.jpeg", "person123"),
    ("chest_xray/train/PNEUMONIA/person1_virus_6.jpeg", "person1"),
    ("IM-0001-0001.jpeg", "IM-0001"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
    ("images/00001308_002.png", "00001308"),
    ("scan_17.png", "scan_17.png"),  # unknown scheme: the image (its whole path) is its own group
    ("Person7_bacteria_2.jpeg", "person7"),  # case is ignored, the id is spelled the dataset's way
    ("normal2-im-0771-0001.JPEG", "NORMAL2-IM-0771"),
    ("NORMAL3-IM-0001-0001.jpeg", "NORMAL3-IM-0001"),
    ("test/NORMAL/IM-0115-0001-0002.jpeg", "IM-0115"),
    ("Cancer/a.png", "Cancer/a.png"),  # equal file names in two folders stay two groups
    ("Healthy/a.png", "Healthy/a.png"),
    ("1.2.840.113619.2.55.3.1234.5678", "1.2.840.113619.2.55.3.1234.5678"),  # a UID has no extension
    ("1.2.840.113619.2.55.3.1234.5679", "1.2.840.113619.2.55.3.1234.5679"),
])
def test_patient_id_from_name(name, patient):
    assert patient_id_from_name(name) == patient


def _patients(n_patients=400, seed=0):
    """1-6 images per patient, one label per patient, about 30 % positive."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_patients)
    patient_label = (rng.random(n_patients) < 0.3).astype(int)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], sizes)
    labels = np.repeat(patient_label, sizes)
    return labels, groups


def test_splits_partition_without_shared_patients():
    labels, groups = _patients()
    splits = make_splits(labels, groups, seed=3)
    assert list(splits) == ["train", "val", "test"]
    everything = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    seen = [set(groups[idx]) for idx in splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


def test_splits_are_stratified_to_the_requested_fractions():
    labels, groups = _patients()
    splits = make_splits(labels, groups, fractions=(0.7, 0.15, 0.15), seed=0)
    for c in (0, 1):
        n_c = (labels == c).sum()
        for name, target in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            share = (labels[splits[name]] == c).sum() / n_c
            assert abs(share - target) < 0.01, (name, c, share)


def test_splits_are_fixed_by_the_seed():
    labels, groups = _patients()
    a, b, c = (make_splits(labels, groups, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_splits_without_groups_use_single_images():
    labels = np.array([0] * 80 + [1] * 20)
    splits = make_splits(labels, None, fractions=(0.5, 0.5), names=("train", "test"), seed=0)
    assert [len(v) for v in splits.values()] == [50, 50]
    assert (labels[splits["test"]] == 1).sum() == 10


def test_split_errors_are_clear():
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match="sum to 1"):
        make_splits(labels, None, fractions=(0.7, 0.2, 0.2))
    with pytest.raises(DataError, match="too few"):
        make_splits(labels, ["a", "a", "b", "b"], fractions=(0.4, 0.3, 0.3))


def test_subsample_fractions_are_nested_and_stratified():
    labels, groups = _patients()
    train = make_splits(labels, groups, seed=0)["train"]
    subsets = [subsample_fraction(train, labels, f, seed=1) for f in (0.1, 0.25, 0.5, 1.0)]
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    assert np.array_equal(subsets[-1], np.sort(train))
    positives = (labels[train] == 1).sum()
    assert (labels[subsets[1]] == 1).sum() == round(0.25 * positives)
    assert not np.array_equal(subsets[0], subsample_fraction(train, labels, 0.1, seed=2))


def test_assert_no_leak_counts_the_offending_images():
    train_md5s = [f"{i:032x}" for i in range(100)]
    assert_no_leak([f"{i:032x}" for i in range(100, 150)], train_md5s)
    planted = [f"{i:032x}" for i in range(100, 150)] + train_md5s[7:10]
    with pytest.raises(DataError, match="^3 test image"):
        assert_no_leak(planted, train_md5s)


def test_split_table_counts_classes_and_groups():
    labels = np.array([0, 0, 1, 1, 1])
    groups = np.array(["a", "a", "b", "c", "c"])
    table = split_table({"train": np.array([0, 1, 2]), "test": np.array([3, 4])}, labels,
                        class_names=["normal", "nodule"], groups=groups)
    assert table.loc["train"].tolist() == [3, 2, 1, 2]
    assert table.loc["test"].tolist() == [2, 0, 2, 1]
