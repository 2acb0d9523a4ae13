"""Stage 9a: bootstrap intervals, verdicts and the failed-to-learn flag."""
import numpy as np
import pytest

from workflow.report import compare

CFG = {"seed": 0, "n_boot": 500, "confidence": 0.95, "max_test_acc_drop": 0.05}
LAYERS = ["stem", "layer1", "layer2", "layer3"]


def rng():
    return np.random.default_rng(0)


def test_bootstrap_of_a_constant_is_a_point():
    ci = compare.bootstrap(np.full(5, 0.7), np.mean, 300, 0.95, rng())
    assert ci["lo"] == ci["point"] == ci["hi"] == pytest.approx(0.7)
    assert not compare.excludes_zero(compare.bootstrap(np.zeros((4, 2)), lambda x: x[:, 1].mean() - x[:, 0].mean(),
                                                       300, 0.95, rng()))


def test_bootstrap_interval_contains_the_point_and_narrows_with_more_members():
    r = np.random.default_rng(1)
    small = compare.bootstrap(r.normal(size=5), np.mean, 1000, 0.95, rng())
    large = compare.bootstrap(r.normal(size=500), np.mean, 1000, 0.95, rng())
    assert small["lo"] <= small["point"] <= small["hi"]
    assert large["hi"] - large["lo"] < (small["hi"] - small["lo"]) / 3


def summary(acc, k):
    return {"layers": LAYERS, "acc_per_member": acc, "sparsity_k_per_member": k}


BASE = summary([[0.5, 0.6, 0.95, 0.8], [0.5, 0.62, 0.93, 0.82], [0.5, 0.61, 0.94, 0.79]],
               [[2, 3, 5, 9], [2, 3, 6, 9], [2, 4, 5, 8]])


def test_no_change_reads_unchanged():
    c = compare.compare_concept(BASE, BASE, LAYERS, CFG, rng())
    v = compare.verdict(c, True, "")
    assert not v["any_change"]
    assert v["text"].startswith("location unchanged: layer2 -> layer2; sparsity unchanged: 5 [5,6] -> 5 [5,6]")
    assert all(r["acc_delta"]["point"] == 0 and r["acc_delta"]["lo"] == r["acc_delta"]["hi"] == 0
               for r in c["per_layer"])


def test_a_clear_move_and_a_sparser_concept_are_called_changes():
    moved = summary([[0.5, 0.6, 0.7, 0.9], [0.5, 0.61, 0.72, 0.92], [0.5, 0.6, 0.71, 0.91]],
                    [[2, 3, 1, 9], [2, 3, 2, 9], [2, 4, 1, 8]])
    c = compare.compare_concept(BASE, moved, LAYERS, CFG, rng())
    assert c["location_base"] == "layer2" and c["location_cond"] == "layer3"
    assert c["location_shift"] == {"point": 1.0, "lo": 1.0, "hi": 1.0}
    v = compare.verdict(c, True, "")
    assert v["location_changed"] and v["sparsity_changed"] and v["accuracy_changed"]
    assert "location changed: layer2 -> layer3" in v["text"] and "sparsity changed" in v["text"]


def test_failed_training_is_flagged_and_concept_images_are_left_out_of_the_check():
    n_test = 100
    concept = np.arange(n_test) < 20
    good = {"test_acc": 0.9, "test_correct": np.arange(n_test) % 10 != 0}           # 90% everywhere
    no_concept = {"test_acc": 0.72, "test_correct": (np.arange(n_test) % 10 != 0) & ~concept}  # fails concept only
    bad = {"test_acc": 0.3, "test_correct": np.arange(n_test) % 10 < 3}
    summaries = {"base": {"c": BASE}, "oracle-c": {"c": BASE}, "random": {"c": BASE}}
    metrics = {"base": [good] * 3, "oracle-c": [no_concept] * 3, "random": [bad] * 3}
    info = {"oracle-c": {"kind": "oracle", "concept": "c", "reason": "all"},
            "random": {"kind": "random", "concept": None, "reason": "random"}}
    out = compare.compare(summaries, metrics, info, {"c": concept}, CFG)
    assert out["conditions"]["oracle-c"]["trained_ok"]          # only the removed concept's test images fail
    assert not out["conditions"]["random"]["trained_ok"]
    assert out["conditions"]["random"]["concepts"]["c"]["verdict"]["text"].startswith("NOT INTERPRETABLE")
    text = compare.format_verdicts(out)
    assert "FAILED TO LEARN" in text and "oracle-c" in text
