"""The unified label space, the relation rule and the restricted evaluation, on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.uniseg.evaluation import SegEvaluator, find_conflicts
from algorithms.uniseg.labels import LabelSpace, lookup, restricted_argmax
from algorithms.uniseg.relations import relation_targets
from framework.data.builtin.seg_label_shift import LABEL_SPACES, RELATIONS, UNIFIED
from framework.metrics.segmentation import MeanIoU

# a miniature manifest: "a" says rider, "b" splits it; "u" is unseen and has a class no one trains
EXTRA = {
    "datasets": ["a", "b", "u"],
    "unseen_datasets": ["u"],
    "label_spaces": {"a": ["sky", "road", "rider"], "b": ["sky", "road", "bicyclist", "motorcyclist"],
                     "u": ["road", "rider", "tunnel"]},
    "dense": {"seg": {"classes": ["sky", "road", "rider", "bicyclist", "motorcyclist", "tunnel"]}},
}


def test_unified_space_is_the_sorted_union_of_training_names_and_merges_only_identical_names():
    space = LabelSpace.from_manifest(EXTRA)
    assert space.names == ["bicyclist", "motorcyclist", "rider", "road", "sky"]  # no "tunnel": u is unseen
    assert space.class_mask().int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 0, 1, 1], [0, 0, 1, 1, 0]]
    assert space.eval_classes("u") == ["road", "rider"]  # names missing from the union are not scored
    assert space.to_unified().tolist() == [4, 3, 2, 0, 1, -1]  # stored ids -> unified; tunnel is void
    assert space.local_index()[1].tolist() == [2, 3, -1, 1, 0]  # unified -> b's own class order
    assert lookup(space.to_unified(), torch.tensor([[5, 2, -1]])).tolist() == [[-1, 2, -1]]


def test_the_builtin_seg_label_shift_space_has_all_29_names_and_three_conflicts():
    extra = {"datasets": ["fine", "coarse", "parts", "unseen"], "unseen_datasets": ["unseen"],
             "label_spaces": LABEL_SPACES, "unified": UNIFIED, "relations": RELATIONS}
    space = LabelSpace.from_manifest(extra)
    assert space.names == sorted(UNIFIED) and space.num_classes == 29
    conflicts = {c.name: (space.datasets[c.seen_in], space.datasets[c.space_of], len(c.parts))
                 for c in find_conflicts(space, RELATIONS)}
    assert conflicts == {"digit": ("fine", "coarse", 10), "animal": ("coarse", "fine", 10),
                         "garment": ("parts", "coarse", 5)}


def test_a_manifest_without_label_spaces_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="extra.label_spaces"):
        LabelSpace.from_manifest({"datasets": ["a"]})


def test_restricted_argmax_never_predicts_a_class_the_target_dataset_lacks():
    torch.manual_seed(0)
    space = LabelSpace.from_manifest(EXTRA)
    mask = space.class_mask()
    logits = torch.randn(6, 5, 4, 4)
    logits[:, 0] += 10.0  # "bicyclist" is everyone's top score, yet a and u do not define it
    domain = torch.tensor([0, 1, 2, 0, 1, 2])
    pred = restricted_argmax(logits, mask[domain])
    for b in range(6):
        assert mask[domain[b]][pred[b]].all(), f"row {b} predicted a class outside its dataset"
    assert (pred[domain == 1] == 0).all()  # b defines it: there it wins
    assert (pred[domain != 1] != 0).all()


def test_relation_rule_reproduces_a_hand_made_statistics_table():
    """Dataset 0 defines {0, 1}; dataset 1 defines {0, 2, 3} (2, 3: finer parts of 1)."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    p = torch.full((2, 4, 4), 0.05)
    p[0, 0] = torch.tensor([0.90, 0.10, 0.02, 0.02])  # background: nothing beats itself
    p[0, 1] = torch.tensor([0.05, 0.80, 0.60, 0.30])  # coarse class: its parts score high but below it
    p[1, 0] = torch.tensor([0.70, 0.20, 0.05, 0.05])
    p[1, 2] = torch.tensor([0.10, 0.55, 0.40, 0.05])  # part: the coarse class scores above it, above tau
    p[1, 3] = torch.tensor([0.12, 0.15, 0.01, 0.10])  # above itself but under tau, and class 0 also under
    pixels = torch.tensor([[50, 20, 0, 0], [40, 0, 10, 5]])  # (1, 1) has no pixels
    p[1, 1] = torch.tensor([0.0, 0.1, 0.9, 0.9])  # ...so these statistics are never used
    got = relation_targets(p, pixels, mask, tau=1 / 6)
    want = torch.tensor([
        [[1, 0, -1, -1], [0, 1, -1, -1], [0, 0, 1, -1], [0, 0, -1, 1]],  # dataset 0: plain null rows
        [[1, -1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, -1, 0, 1]],      # dataset 1: part 2 -> class 1
    ], dtype=torch.int8)
    assert torch.equal(got, want)


def test_conflict_metrics_score_the_super_class_on_the_finer_datasets_pixels():
    """A model perfect in every dataset's own space that never says "rider" on b's bicyclists scores
    conflict IoU 0; one that also scores rider there scores 1."""
    space = LabelSpace.from_manifest({**EXTRA, "relations": {"rider": ["bicyclist", "motorcyclist"]}})
    (conflict,) = find_conflicts(space, {"rider": ["bicyclist", "motorcyclist"]})
    evaluator = SegEvaluator(space, [conflict])
    target = torch.tensor([[[3, 0], [4, 1]]])  # an image of b: road, bicyclist / sky, motorcyclist
    domain, mask = torch.tensor([1]), torch.tensor([True])
    onehot = torch.nn.functional.one_hot(target, 5).permute(0, 3, 1, 2).float() * 10
    for says_rider, want in ((False, 0.0), (True, 1.0)):
        logits = onehot.clone()
        logits[:, 3] += 1.0  # where a's classes cannot tell, "road" is the runner-up
        if says_rider:
            logits[:, 2] = onehot[:, 0] + onehot[:, 1]
        metrics = evaluator.metrics()
        evaluator.update(metrics, logits, target, domain, mask, torch.sigmoid)
        assert metrics["seg/miou_b"].compute() == 1.0
        assert metrics["seg/conflict_iou_rider"].compute() == want
        assert metrics["seg/conflict_p_rider"].compute() == pytest.approx(torch.sigmoid(torch.tensor(want * 10)).item())


def test_mean_iou_matches_a_hand_computed_confusion_and_skips_absent_classes():
    m = MeanIoU(["x", "y", "z"])
    pred = torch.tensor([[0, 0, 1, 1, 0, 0]])
    target = torch.tensor([[0, 1, 1, 1, -1, 0]])
    m.update(pred, target)
    # x: TP 2, FP 1, FN 0 -> 2/3; y: TP 2, FN 1 -> 2/3; z never present nor predicted: left out
    assert m.per_class() == pytest.approx({"x": 2 / 3, "y": 2 / 3, "z": float("nan")}, nan_ok=True)
    assert m.compute() == pytest.approx(2 / 3)
    assert math.isnan(MeanIoU(["x", "y"], scored=["y"]).compute())  # nothing seen yet: no value
