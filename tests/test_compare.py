"""Stage 9a: paired t-intervals with detectable effects, verdicts and the failed-to-learn flag."""
import numpy as np

from workflow.report import compare

CFG = {"seed": 0, "confidence": 0.95, "max_test_acc_drop": 0.05}
LAYERS = ["stem", "layer1", "layer2", "layer3"]


def summary(acc, k):
    return {"layers": LAYERS, "acc_per_member": acc, "sparsity_k_per_member": k}


BASE = summary([[0.5, 0.6, 0.95, 0.8], [0.5, 0.62, 0.93, 0.82], [0.5, 0.61, 0.94, 0.79]],
               [[2, 3, 5, 9], [2, 3, 6, 9], [2, 4, 5, 8]])


def test_no_change_reads_no_change_detected():
    c = compare.compare_concept(BASE, BASE, LAYERS, 0.95)
    v = compare.verdict(c, True, "")
    assert not v["any_change"]
    assert v["text"].startswith("location the same: layer2 -> layer2; sparsity no change detected: 5.3 -> 5.3 "
                                "(diff +0.0 [-1.0, +1.0], sign-flip p 1.00, detectable >= 1.3)")
    assert all(r["acc_delta"]["point"] == 0 and r["acc_delta"]["lo"] == r["acc_delta"]["hi"] == 0
               for r in c["per_layer"])


def test_a_noisy_null_states_what_it_could_have_detected():
    noisy = summary([[0.5, 0.6, 0.90, 0.8], [0.5, 0.62, 0.97, 0.82], [0.5, 0.61, 0.93, 0.79]],
                    [[2, 3, 9, 9], [2, 3, 3, 9], [2, 4, 6, 8]])
    v = compare.verdict(compare.compare_concept(BASE, noisy, LAYERS, 0.95), True, "")
    assert not v["sparsity_changed"] and not v["accuracy_changed"]
    mde = float(v["text"].split("sparsity no change detected")[1].split("detectable >= ")[1].split(")")[0])
    assert mde > 5                                   # 3 members with this spread cannot see small changes


def test_a_clear_move_and_a_sparser_concept_are_called_changes_with_enough_members():
    """Every member's location moves up one layer and its sparsity k drops by 4: integer ties.
    3 members cannot establish that (the exact sign-flip test's smallest p is 0.25); 8 can."""
    moved_rows = ([[0.5, 0.6, 0.7, 0.9], [0.5, 0.61, 0.72, 0.92], [0.5, 0.6, 0.71, 0.91]],
                  [[2, 3, 1, 9], [2, 3, 2, 9], [2, 4, 1, 8]])
    c = compare.compare_concept(BASE, summary(*moved_rows), LAYERS, 0.95)
    assert c["location_base"] == "layer2" and c["location_cond"] == "layer3"
    shift = c["location_shift"]
    assert shift["point"] == 1.0 and shift["lo"] < 1.0 < shift["hi"] and shift["p_sign_flip"] == 0.25
    v = compare.verdict(c, True, "")
    assert not v["location_changed"] and not v["sparsity_changed"] and v["accuracy_changed"]
    assert "location moved, not significantly: layer2 -> layer3" in v["text"]

    def times(rows, n):
        return [rows[i % len(rows)] for i in range(n)]

    base8 = summary(times(BASE["acc_per_member"], 8), times(BASE["sparsity_k_per_member"], 8))
    moved8 = summary(times(moved_rows[0], 8), times(moved_rows[1], 8))
    c = compare.compare_concept(base8, moved8, LAYERS, 0.95)
    assert c["location_shift"]["p_sign_flip"] == 2 / 256
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


def test_tied_accuracy_differences_are_not_called_a_change():
    """Every member's held-out balanced accuracy drops by exactly one image's step: the spread
    is 0 and a plain t-interval collapses to a point that "excludes" 0. The spread is floored at
    the rounding error of the accuracy's resolution, as for integer measures."""
    from workflow import stats

    step = stats.balanced_accuracy_step([300, 300])                  # 0.5 / 300
    base = {**BASE, "acc_step": step}
    tied = summary((np.asarray(BASE["acc_per_member"]) - step).tolist(), BASE["sparsity_k_per_member"])
    plain = stats.paired(np.asarray(tied["acc_per_member"])[:, 2], np.asarray(BASE["acc_per_member"])[:, 2])
    assert plain["changed"] and plain["lo"] == plain["hi"]           # the bug: a point "interval"
    c = compare.compare_concept(base, tied, LAYERS, 0.95)
    d = c["per_layer"][2]["acc_delta"]
    assert not d["changed"] and d["lo"] < 0 < d["hi"] and d["sd_floor"] == step * stats.RESOLUTION_SD
    assert "accuracy at layer2 no change detected" in compare.verdict(c, True, "")["text"]
    # a change many steps wide is still called with 3 members
    moved = summary((np.asarray(BASE["acc_per_member"]) - 20 * step).tolist(), BASE["sparsity_k_per_member"])
    assert compare.compare_concept(base, moved, LAYERS, 0.95)["per_layer"][2]["acc_delta"]["changed"]
