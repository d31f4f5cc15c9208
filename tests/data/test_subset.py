import pytest
import torch

from ditlab.data import evaluation_subset


def test_full_set_keeps_order():
    assert torch.equal(evaluation_subset(7, 7), torch.arange(7))


def test_subset_is_seeded_and_unique():
    a, b = evaluation_subset(10_000, 2_000), evaluation_subset(10_000, 2_000)
    assert torch.equal(a, b)
    assert len(a.unique()) == 2_000 and a.min() >= 0 and a.max() < 10_000
    assert not torch.equal(a, evaluation_subset(10_000, 2_000, seed=1))


def test_subset_spreads_over_class_sorted_data():
    # Folders and zips list images class by class: the first 2,000 of CIFAR-10's test split are two
    # classes. The subset must cover all ten roughly evenly.
    labels = torch.arange(10).repeat_interleave(1_000)
    pick = evaluation_subset(10_000, 2_000)
    counts = torch.bincount(labels[pick], minlength=10)
    assert counts.min() >= 150 and counts.max() <= 250
    assert len(labels[pick[:64]].unique()) >= 8  # a sample grid's first rows are not one class


def test_too_many_raises():
    with pytest.raises(ValueError, match="3 images of a set of 2"):
        evaluation_subset(2, 3)
