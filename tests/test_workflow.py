"""End-to-end: the whole DAG on the tiny config, reruns, bad configs, and a SIGKILL mid-training."""
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import TINY, numbers, run_snakemake, snakemake_cmd, write_config

pytestmark = pytest.mark.e2e
CONCEPTS = [c["name"] for c in TINY["concepts"]]
MEMBERS = range(TINY["ensemble"]["size"])
LAYERS = TINY["layers"]
N_CKPT, N_SHARDS = len(TINY["trak"]["checkpoints"]), TINY["trak"]["shards"]
CONDITIONS = ["top-hilo", "bottom-hilo", "random", "oracle-hilo", "matched-hilo"]  # tiny.yaml ablates hilo only
OTHER_ESTIMATORS = [e for e in TINY["attribution"]["estimators"] if e != "trak"]
N_COND = 1 + len(CONDITIONS)


def job_counts(dry_run_stdout: str) -> dict:
    """{rule: count} from the 'Job stats' table of a dry run."""
    counts = {}
    if "Job stats:" not in dry_run_stdout:
        return counts
    table = dry_run_stdout.split("Job stats:")[1]
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


def test_every_concept_member_and_layer_is_probed(tiny_run):
    res = tiny_run / "results" / "tiny"
    for c in CONCEPTS:
        with h5py.File(res / "base" / "probes" / f"{c}.h5") as f:
            assert f["heldout_bal_acc"].shape == (len(MEMBERS), len(TINY["layers"]))
            assert np.all((f["heldout_bal_acc"][()] >= 0) & (f["heldout_bal_acc"][()] <= 1))
            for m in MEMBERS:
                for layer in TINY["layers"]:
                    g = f[f"m{m}/{layer}"]
                    assert g["coef"].shape == g["mean"].shape == g["scale"].shape
                    assert 1 <= g.attrs["sparsity_k"] <= g.attrs["n_channels"]
    with h5py.File(res / "base" / "models" / "m0.h5") as f:
        assert {"final", "epoch_0001"} <= set(f.keys())  # checkpoint_every: 1
        assert 0 <= f.attrs["test_acc"] <= 1
        assert yaml.safe_load(f.attrs["config"])["train"]["epochs"] == 2
    summary = yaml.safe_load((res / "base" / "summary.json").read_text())
    assert set(summary) == set(CONCEPTS)
    assert all(s["location"] in TINY["layers"] for s in summary.values())
    assert (res / "base" / "summary.png").stat().st_size > 1000
    assert (tiny_run / "logs" / "tiny" / "base" / "train" / "m0.log").read_text().count("epoch") >= 2
    assert not list(res.rglob(".*.tmp-*"))


def test_trak_scores_for_every_concept_and_layer(tiny_run):
    trak = tiny_run / "results" / "tiny" / "base" / "trak"
    n_train = TINY["dataset"]["synthetic"]["n_train"]
    for c in CONCEPTS:
        for layer in LAYERS:
            with h5py.File(trak / "scores" / c / f"{layer}.h5") as f:
                scores = f["per_target"][()]
                assert scores.shape[1] == n_train and 1 <= scores.shape[0] <= TINY["trak"]["max_targets"]
                assert np.isfinite(scores).all() and np.abs(scores).max() > 0
                np.testing.assert_allclose(f["concept_score"][()], scores.mean(0), rtol=1e-4,
                                           atol=1e-6 * np.abs(scores).max())
            e = yaml.safe_load((trak / "scores" / c / f"{layer}.json").read_text())
            assert e["k"] == round(TINY["trak"]["top_fraction"] * n_train) and e["enrichment"] >= 0
        assert (trak / f"top_bottom_{c}.png").stat().st_size > 5000
    with h5py.File(trak / "features" / "m0_final.h5") as f:
        assert f["grads"].shape == (n_train, TINY["trak"]["proj_dim"])
        assert f.attrs["projector"] == "FactoredProjector" and f.attrs["proj_seed"] == 0
    table = yaml.safe_load((trak / "enrichment.json").read_text())
    assert set(table) == set(CONCEPTS)


def test_second_run_does_nothing(tiny_run):
    proc = run_snakemake(tiny_run, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def jobs_after_edit(workdir, tmp_path, section, key, value) -> dict:
    """{rule: count} that `snakemake -n` plans after setting config[section][key] = value."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg[section][key] = value
    edited = tmp_path / "config.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    return job_counts(run_snakemake(workdir, "-n", "--cores", "1", configfile=edited).stdout)


N = len(MEMBERS)
C = len(CONCEPTS)
REPORT = {"compare": 1, "report_html": 1, "all": 1}
VALIDATE = {"validate": C}


def retrain(n_conditions):
    """Jobs that redo n ablated conditions from their training on."""
    return {"train": N * n_conditions, "activations": N * n_conditions, "probes": C * n_conditions,
            "summarize": n_conditions}


def plus(*dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


TRAK = {"featurize": N * N_SHARDS, "gather_features": N, "score": 1, "trak_report": 1}
EST = {"estimate": len(OTHER_ESTIMATORS)}      # one scoring job per other estimator
# each LDS estimator's scores of the targets' margin: models, features and targets, not probes
MARGIN = {"score_margin": len(TINY["lds"]["estimators"])}
SCORED = 3            # the top-k, bottom-k and matched sets
# the LDS stage (tiny.yaml: fractions x subsets twins of member 0): one job per concept, and its twins
N_LDS_F = len(TINY["lds"]["fractions"])
LDS = {"lds": C}
N_LDS = len(TINY["lds"]["fractions"]) * TINY["lds"]["subsets"] * len(TINY["lds"]["members"])
LDS_RETRAIN = {"train": N_LDS, "activations": N_LDS, "lds": C}
EDITS = {
    # probes move the location, so the top-k set is rebuilt and its condition retrained
    "probe edit: probes everywhere, the top-k condition, not other training": (
        ("probes", "sparsity_threshold", 0.9),
        plus({"probes": C * N_COND, "summarize": N_COND, "score": 1, "trak_report": 1, "ablate": SCORED}, EST,
             retrain(SCORED), {"probes": -SCORED * C, "summarize": -SCORED}, REPORT, VALIDATE, LDS)),
    "training edit: every condition and TRAK, not data or the random/oracle sets": (
        ("train", "epochs", 3),
        plus(retrain(N_COND), TRAK, EST, MARGIN, {"ablate": SCORED}, REPORT, VALIDATE, LDS_RETRAIN)),
    "TRAK target edit: scoring and the top-k, bottom-k and matched conditions": (
        ("trak", "max_targets", 5),
        plus({"score": 1, "trak_report": 1, "ablate": SCORED}, EST, MARGIN, retrain(SCORED), REPORT, VALIDATE, LDS)),
    "projector edit: features, scores and the top-k, bottom-k and matched conditions": (
        ("trak", "layer_dim", 4096), plus(TRAK, EST, MARGIN, {"ablate": SCORED}, retrain(SCORED), REPORT, VALIDATE,
                                          LDS)),
    "ablation size: the top-k, bottom-k, random and matched conditions, not the oracle": (
        ("ablation", "fractions", [0.1]), plus({"ablate": SCORED + 1}, retrain(SCORED + 1), REPORT, VALIDATE)),
    "an estimator dropped from the scorecard: the report only (TRAK and the others are their own jobs)": (
        ("attribution", "estimators", [e for e in TINY["attribution"]["estimators"] if e != "similarity"]),
        {"report_html": 1, "all": 1}),
    "equivalence margin: validate and the report only": (("compare", "margin_fraction", 0.5),
                                                         plus({"report_html": 1, "all": 1}, VALIDATE)),
    "interval level: validate, LDS, compare and report only": (("compare", "confidence", 0.9),
                                                               plus(REPORT, VALIDATE, LDS)),
    "thread count: nothing": (("threads", "probes", 2), {}),
    "token pooling on resnet18 (it has no token sequences): the report only (it shows the config)": (
        ("activations", "token_pool", "cls"), {"report_html": 1, "all": 1}),
    "spawn epoch: the retrained twins and the metagradient (it replays from there), not the base run": (
        ("ablation", "spawn_epoch", 1), plus(retrain(N_COND - 1), {"estimate": 1, "score_margin": 1}, REPORT,
                                             VALIDATE, LDS_RETRAIN)),
    "retraining mode: every twin, not the base run or any scoring": (
        ("ablation", "retrain", "masked"), plus(retrain(N_COND - 1), REPORT, VALIDATE, LDS_RETRAIN)),
    "LDS subsets: the new subsets' twins and the LDS stage, nothing else": (
        ("lds", "subsets", TINY["lds"]["subsets"] + 1),
        {"ablate": N_LDS_F, "train": N_LDS_F, "activations": N_LDS_F, "lds": C, "report_html": 1, "all": 1}),
    "validate measure: validate and the report only": (("compare", "validate_measure", "output_targets"),
                                                      plus({"report_html": 1, "all": 1}, VALIDATE)),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_config_edit_reruns_exactly_the_affected_jobs(tiny_run, tmp_path, name):
    edit, expected = EDITS[name]
    assert jobs_after_edit(tiny_run, tmp_path, *edit) == expected


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["dataset"].update(widht=3), r"dataset\.widht: unknown key"),
    (lambda c: c["ensemble"].update(size="three"), r"ensemble\.size: 'three' is not of type 'integer'"),
    (lambda c: c.update(dataset={"name": "imagefolder", "root": "/no/such/imagenet"}),
     r"dataset\.root: directory not found: /no/such/imagenet"),
    (lambda c: c.update(model={"arch": "timm:vit_tiny_patch16_22"}),
     r"model\.arch: timm has no model 'vit_tiny_patch16_22' \(did you mean vit_tiny_patch16_224"),
    (lambda c: c.update(model={"arch": "torchvision:mobilenet_v3_small"}, layers=["features.99"]),
     r"layers: 'features\.99' is not a module of torchvision:mobilenet_v3_small"),
])
def test_bad_config_fails_before_any_job(tmp_path, edit, message):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    edit(cfg)
    write_config(tmp_path, cfg)
    proc = run_snakemake(tmp_path, "--cores", "1", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(message, out), out[-2000:]
    assert "Select jobs" not in out and not (tmp_path / "results").exists()


BASE_TARGETS = ["results/tiny/base/summary.txt", "results/tiny/base/trak/enrichment.json"]


def test_sigkill_mid_training_then_rerun_matches_uninterrupted(tiny_run, tmp_path):
    write_config(tmp_path, TINY)
    proc = subprocess.Popen(snakemake_cmd(tmp_path, "--cores", "1", *BASE_TARGETS), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    models = tmp_path / "results" / "tiny" / "base" / "models"
    logs = tmp_path / "logs" / "tiny" / "base" / "train"
    killed_member, deadline = None, time.time() + 300
    try:
        while killed_member is None and proc.poll() is None and time.time() < deadline:
            for m in MEMBERS:
                log = logs / f"m{m}.log"
                if not (models / f"m{m}.h5").exists() and log.exists() and "epoch 1/" in log.read_text():
                    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its running job, no cleanup
                    killed_member = m
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_member is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_member is not None, "training finished before it could be interrupted"
    assert not (models / f"m{killed_member}.h5").exists()  # no half-written file under the final name
    finished = {m: (models / f"m{m}.h5").stat().st_mtime_ns for m in MEMBERS if (models / f"m{m}.h5").exists()}

    # what a researcher does after a crash: release the stale lock, run again
    # (rerun-incomplete comes from profiles/default)
    run_snakemake(tmp_path, "--unlock", "--cores", "1")
    run_snakemake(tmp_path, "--cores", "2", *BASE_TARGETS)
    for m, mtime in finished.items():  # finished jobs kept, not redone
        assert (models / f"m{m}.h5").stat().st_mtime_ns == mtime
    assert (models / f"m{killed_member}.h5").exists()
    a, b = numbers(tiny_run), numbers(tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_ablated_conditions_are_retrained_with_the_base_seeds(tiny_run):
    res = tiny_run / "results" / "tiny"
    n_train = TINY["dataset"]["synthetic"]["n_train"]
    k = round(TINY["ablation"]["fractions"][0] * n_train)
    sets = {}
    for cond in CONDITIONS:
        with h5py.File(res / "ablation" / f"{cond}.h5") as f:
            sets[cond] = f["removed"][()]
            assert len(f["keep"]) + len(f["removed"]) == n_train and f.attrs["reason"]
        for m in MEMBERS:
            with h5py.File(res / cond / "models" / f"m{m}.h5") as f, \
                    h5py.File(res / "base" / "models" / f"m{m}.h5") as b:
                assert f.attrs["n_train"] == n_train - len(sets[cond])
                assert f.attrs["seed"] == b.attrs["seed"]  # same recipe, same seed as the base member
    assert len(sets["top-hilo"]) == len(sets["bottom-hilo"]) == len(sets["random"]) == k
    assert not np.intersect1d(sets["top-hilo"], sets["bottom-hilo"]).size
    with h5py.File(res / "data" / "probe_hilo.h5") as f:
        truth = f["train_concept_mask"][()]
        assert np.array_equal(sets["oracle-hilo"], np.flatnonzero(truth))
    # matched: as many of the concept's own images as the top-k holds
    assert truth[sets["matched-hilo"]].all() and len(sets["matched-hilo"]) == truth[sets["top-hilo"]].sum()
    verdicts = (res / "compare" / "verdicts.txt").read_text()
    for cond in CONDITIONS:
        assert f"{cond}:" in verdicts
    verdict_lines = re.findall(r"^ [ *] (\w+) +(?:NOT INTERPRETABLE \(.*?\); )?location ", verdicts, re.M)
    assert verdict_lines == CONCEPTS * len(CONDITIONS)


def test_validate_writes_every_field_and_predicts_minus_the_sum_of_removed_scores(tiny_run):
    """Stage 10 on the tiny run: every condition x member has each measured change, and TRAK's
    predicted change is minus the sum of the removed images' stored scores (by hand here)."""
    import json

    from workflow import stats
    from workflow.probing.summary import location_index

    res = tiny_run / "results" / "tiny"
    for concept in CONCEPTS:
        v = json.loads((res / "validate" / f"{concept}.json").read_text())
        assert (res / "validate" / f"{concept}.txt").read_text().startswith(f"{concept}: ")
        loc = v["location"]
        with h5py.File(res / "base" / "probes" / f"{concept}.h5") as f:
            assert loc == LAYERS[location_index(f["heldout_bal_acc"][()])]
        lr = v["layers"][loc]
        assert set(lr["conditions"]) == set(CONDITIONS)
        with h5py.File(res / "base" / "trak" / "scores" / concept / f"{loc}.h5") as f:
            per_target, per_negative = f["per_target"][()], f["per_negative"][()]
            assert len(f["negative_indices"]) == len(per_negative) > 0
        for cond, c in lr["conditions"].items():
            for key in ("output_targets", "selectivity", "output_positives", "output_negatives", "bal_acc", "auc",
                        "twin_correlation"):
                assert len(c["per_member"][key]) == len(MEMBERS) and all(np.isfinite(c["per_member"][key])), key
            for key in ("output_targets", "selectivity", "bal_acc", "auc"):
                ci = c["change"][key]
                assert ci["lo"] <= ci["point"] <= ci["hi"] and ci["mde"] >= 0, (cond, key)
            with h5py.File(res / "ablation" / f"{cond}.h5") as f:
                removed = f["removed"][()]
            by_hand = np.array([-sum(float(row[i]) for i in removed) for row in per_target])
            assert np.allclose(c["predicted"]["per_target"], by_hand, rtol=1e-6, atol=1e-6)
            assert np.isclose(c["predicted"]["mean"], by_hand.mean(), rtol=1e-6, atol=1e-6)   # the per-target check's tolerance
            neg = np.array([-sum(float(row[i]) for i in removed) for row in per_negative])
            assert np.isclose(c["predicted"]["selectivity"], by_hand.mean() - neg.mean())
            assert -1 <= c["agreement"]["pearson"] <= 1 or np.isnan(c["agreement"]["pearson"])
        if concept in TINY["ablation"]["concepts"]:
            names = {f"top-{concept} - random", f"top-{concept} - bottom-{concept}",
                     f"top-{concept} - matched-{concept}"}
            assert set(lr["contrasts"]) == names
            for cst in lr["contrasts"].values():
                for key in ("output_targets", "selectivity", "bal_acc", "auc"):
                    assert cst[key]["n"] == len(MEMBERS) and cst[key]["mde"] >= 0
            main = lr["contrasts"][f"top-{concept} - random"]
            top, rnd = lr["conditions"][f"top-{concept}"], lr["conditions"]["random"]
            d = np.subtract(top["per_member"]["selectivity"], rnd["per_member"]["selectivity"])
            assert np.isclose(main["selectivity"]["point"], d.mean())
            assert main["selectivity"] == stats.paired(top["per_member"]["selectivity"],
                                                      rnd["per_member"]["selectivity"])
            verdict = v["verdict"]
            assert verdict["measure"] == "selectivity"
            assert verdict["outcome"] in ("supported", "no effect", "inconclusive")
            assert verdict["text"].startswith(f"{concept}: {verdict['outcome'].upper()}")
            assert set(verdict["contrasts"]) == {"random", "matched"}
            with h5py.File(res / "ablation" / f"top-{concept}.h5") as f:
                top = f["removed"][()]
            with h5py.File(res / "data" / f"probe_{concept}.h5") as f:
                truth = f["train_concept_mask"][()]
            assert v["doses"]["top"] == truth[top].sum() and v["doses"]["oracle"] == truth.sum()
            d = v["doses"]
            by_hand = (0.25 * abs(v["positive_control"]["selectivity"]["point"]) * abs(d["top"] - d["random"])
                       / abs(d["oracle"] - d["random"]))
            assert np.isclose(verdict["margin"]["value"], by_hand)
            assert set(v["positive_control"]) == {"output_targets", "selectivity", "bal_acc"}
            assert {p["condition"] for pts in v["curves"].values() for p in pts} == \
                {f"top-{concept}", f"bottom-{concept}", "random"}
        else:
            assert lr["contrasts"] == {} and v["verdict"]["outcome"] is None


REPORT_SECTIONS = ["answer", "verdicts", "validation", "scorecard", "lds", "curves", "training", "accuracy", "sparsity", "scores", "enrichment",
                   "images", "config"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def open_in_chromium(index: Path, screenshot: Path) -> dict:
    """Load the page in headless Chromium: section ids, image count, broken images."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs Chromium: `apt-get install chromium` (make test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(index.as_uri(), wait_until="load")
            out = page.evaluate("""() => ({
                sections: Array.from(document.querySelectorAll('section')).map(s => s.id),
                images: document.images.length,
                broken: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)
                             .map(i => i.getAttribute('src')),
                text: document.body.innerText})""")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return out


def test_report_has_every_section_and_no_broken_image_in_chromium(tiny_run, tmp_path):
    import shutil

    report = tiny_run / "results" / "tiny" / "report"
    page = open_in_chromium(report / "index.html", tmp_path / "report.png")
    assert page["sections"] == REPORT_SECTIONS
    assert page["images"] == 6 + len(CONCEPTS) and page["broken"] == []
    for cond in CONDITIONS:
        assert cond in page["text"]
    assert "location" in page["text"] and "planted_fraction" in page["text"]  # verdicts and the config
    assert (tmp_path / "report.png").stat().st_size > 10000
    # the check has teeth: a missing figure is reported as broken
    copy = tmp_path / "copy"
    shutil.copytree(report, copy)
    (copy / "scores.png").unlink()
    assert open_in_chromium(copy / "index.html", tmp_path / "broken.png")["broken"] == ["scores.png"]


def test_probe_stage_gives_the_same_bytes_twice(tiny_run, tmp_path):
    """Every random draw of the probe stage (CV folds, liblinear's shuffle on the L1 path)
    derives from the config's seed: rerunning it on the same activations is byte-identical."""
    import json

    from workflow import cli

    res = tiny_run / "results" / "tiny"
    files = {"input": {"probe_set": str(res / "data" / "probe_hilo.h5"),
                       "activations": {str(m): str(res / "base" / "activations" / f"m{m}" / "hilo.h5")
                                       for m in MEMBERS}},
             "wildcards": {"condition": "base", "concept": "hilo"}}
    params = json.dumps({"seed": TINY["seed"], "layers": LAYERS, "probes": TINY["probes"], "members": list(MEMBERS)})
    outs = []
    for i in range(2):
        out = tmp_path / f"probes{i}.h5"
        job = {**files, "output": {"probes": str(out)}}
        assert cli.main(["probes", "--params", params, "--files", json.dumps(job)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    with h5py.File(tmp_path / "probes0.h5") as a, h5py.File(res / "base" / "probes" / "hilo.h5") as b:
        assert np.array_equal(a["sparsity_k"][()], b["sparsity_k"][()])   # and equal to the workflow's run


TIMINGS = ("cost.json", "margin_cost.json", "scorecard.txt", "index.html")   # CPU seconds measured by the run (the scorecard's cost)


def results_bytes(wd) -> dict:
    """{path under results/: bytes} of a run, but for the files that record its CPU time."""
    root = Path(wd, "results")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in TIMINGS}


def test_a_truncated_intermediate_is_named_and_the_printed_command_rebuilds_it(tiny_run, tmp_path):
    """Followed as a user would: truncate a base model, rerun as before, copy the command the
    error prints, run it, and every file under results/ is byte-identical to the clean run's
    (the model and everything downstream of it were rebuilt, nothing was left stale)."""
    import shlex
    import shutil

    wd = tmp_path / "copy"
    shutil.copytree(tiny_run, wd, symlinks=True)        # keeps mtimes: nothing to redo
    model = wd / "results" / "tiny" / "base" / "models" / "m0.h5"
    raw = model.read_bytes()
    model.write_bytes(raw[: len(raw) // 2])
    proc = run_snakemake(wd, "--cores", "2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # the console names the file, says it was not used and prints the command that rebuilds it
    m = re.search(r"results/tiny/base/models/m0\.h5: corrupt or truncated HDF5 file, not used .*"
                  r"rebuild it and everything downstream of it with: (.*--forcerun results/tiny/base/models/m0\.h5)$",
                  out, re.M)
    assert m, out[-3000:]
    printed = m.group(1)
    assert shlex.split(printed)[:len(snakemake_cmd(wd))] == snakemake_cmd(wd)   # the user's own command line
    assert "--cores 2" in printed
    proc = subprocess.run(printed, shell=True, cwd=wd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert model.read_bytes() == raw
    clean, rebuilt = results_bytes(tiny_run), results_bytes(wd)
    assert clean.keys() == rebuilt.keys()
    assert [k for k in clean if clean[k] != rebuilt[k]] == []
    assert "Nothing to be done" in run_snakemake(wd, "-n", "--cores", "1").stdout


def test_cifar10_runs_end_to_end_from_a_local_pickle_tree(tmp_path):
    """dataset cifar10 from a hand-built tree in torchvision's python-pickle layout
    (data_batch_1..5, test_batch, batches.meta): the whole DAG runs, with a class concept."""
    from conftest import write_cifar

    write_cifar(tmp_path / "cifar", per_batch=24, n_test=80)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg.update(experiment="cifar", dataset={"name": "cifar10", "root": str(tmp_path / "cifar")},
               concepts=[{"name": "vehicles", "kind": "classes", "classes": ["automobile", "truck"]}],
               layers=["layer3", "layer4"], ensemble={"size": 2})
    cfg["probe_set"] = {"size": 32, "heldout_fraction": 0.3}
    cfg["train"].update(epochs=1, checkpoint_every=0)
    cfg["trak"].update(checkpoints=["final"], shards=1, max_targets=4)
    cfg["ablation"].update(concepts=None, controls=["random", "oracle"], estimators=["trak"])
    cfg["attribution"] = {"estimators": ["trak"]}
    cfg["compare"]["max_test_acc_drop"] = 1.0                   # random pixels: nothing to learn
    cfg["lds"] = {"fractions": []}
    write_config(tmp_path, cfg)
    run_snakemake(tmp_path, "--cores", "2")
    res = tmp_path / "results" / "cifar"
    with h5py.File(res / "data" / "base.h5") as f:
        assert f["train/images"].shape == (120, 32, 32, 3) and f["test/images"].shape == (80, 32, 32, 3)
    with h5py.File(res / "data" / "probe_vehicles.h5") as f:
        truth = f["train_concept_mask"][()]
        assert truth.sum() == 5 * sum(i % 10 in (1, 9) for i in range(24))   # automobile, truck: labels i % 10
    with h5py.File(res / "ablation" / "oracle-vehicles.h5") as f:
        assert np.array_equal(f["removed"][()], np.flatnonzero(truth))
    assert (res / "validate" / "vehicles.txt").read_text().startswith("vehicles: ")
    assert (res / "report" / "index.html").stat().st_size > 1000


def test_lds_on_the_tiny_run_writes_every_field(tiny_run):
    """The LDS stage: per concept, fraction and estimator, the LDS per target (mean with its
    interval over targets) and of the selectivity, and the arrays behind them; the predicted
    readout is minus the sum of TRAK's scores over each subset's removed images (by hand)."""
    import json

    from workflow import artifacts
    from workflow.validation.lds import spearman

    res = tiny_run / "results" / "tiny"
    lds_cfg = TINY["lds"]
    for concept in CONCEPTS:
        r = json.loads((res / "lds" / f"{concept}.json").read_text())
        assert (res / "lds" / f"{concept}.txt").read_text().startswith(f"{concept}: LDS on the concept readout")
        assert r["members"] == lds_cfg["members"] and r["n_targets"] > 0
        arrays = artifacts.lds_arrays(res / "lds" / f"{concept}.h5")
        with h5py.File(res / "base" / "trak" / "scores" / concept / f"{r['location']}.h5") as f:
            per_target = f["per_target"][()].astype(np.float64)
        assert set(r["fractions"]) == {f"{f:g}" for f in lds_cfg["fractions"]}
        for frac, e in r["fractions"].items():
            assert e["n_subsets"] == lds_cfg["subsets"]
            assert e["n_removed"] == round(float(frac) * TINY["dataset"]["synthetic"]["n_train"])
            assert set(e["estimators"]) == set(lds_cfg["estimators"])
            removed = [artifacts.ablation(res / "ablation" / f"lds{frac}-s{s:02d}.h5")["removed"]
                       for s in range(lds_cfg["subsets"])]
            by_hand = np.stack([-per_target[:, rm].sum(1) for rm in removed])
            np.testing.assert_allclose(arrays[f"{frac}/trak/predicted"], by_hand, rtol=1e-9, atol=1e-12)
            actual = arrays[f"{frac}/actual_targets"]                      # [M, S, T]
            assert actual.shape == (len(lds_cfg["members"]), lds_cfg["subsets"], r["n_targets"])
            lds_t = arrays[f"{frac}/trak/lds_per_target"]
            np.testing.assert_allclose(lds_t[0], spearman(by_hand.T, actual[0].T), equal_nan=True)
            for est, v in e["estimators"].items():
                if v["per_target"] is not None:
                    assert -1 <= v["per_target"]["point"] <= 1 and v["per_target"]["lo"] <= v["per_target"]["hi"]
                agg = v["aggregate"]
                assert np.isnan(agg["point"]) == (est == "hardest")        # same scores for targets and negatives
            # the literature's LDS: the same targets' classification margin at their class
            assert r["margin"]
            m_scores, m_targets, m_classes = artifacts.margin_scores(
                res / "base" / "attribution" / "trak" / concept / "classification_margin.h5")
            ps = artifacts.probe_set(res / "data" / f"probe_{concept}.h5", images=False)
            np.testing.assert_array_equal(m_classes, ps["classes"][m_targets])
            np.testing.assert_allclose(arrays[f"{frac}/trak/margin_predicted"],
                                       np.stack([-m_scores.astype(np.float64)[:, rm].sum(1) for rm in removed]),
                                       rtol=1e-9, atol=1e-12)
            member = lds_cfg["members"][0]
            logits = artifacts.logits(res / f"lds{frac}-s00" / "activations" / f"m{member}" / f"{concept}.h5")
            z = logits[m_targets].astype(np.float64)
            correct = z[np.arange(len(z)), m_classes]
            z[np.arange(len(z)), m_classes] = -np.inf
            by_hand_margin = correct - np.log(np.exp(z).sum(1))
            np.testing.assert_allclose(arrays[f"{frac}/actual_margins"][0, 0], by_hand_margin, rtol=1e-6)
            for v in e["estimators"].values():
                assert -1 <= v["margin"]["point"] <= 1 and v["margin"]["lo"] <= v["margin"]["hi"]


def test_every_estimator_scores_and_the_scorecard_reports_them(tiny_run):
    """The registry end to end: each other estimator's job writes TRAK's file format for the
    same targets; the report's scorecard has a row per estimator."""
    import json

    from workflow import artifacts

    res = tiny_run / "results" / "tiny"
    n_train = TINY["dataset"]["synthetic"]["n_train"]
    for est in OTHER_ESTIMATORS:
        cost = json.loads((res / "base" / "attribution" / est / "cost.json").read_text())
        assert set(cost["estimators"]) == {est} and cost["estimators"][est] >= 0
        for concept in CONCEPTS:
            loc = artifacts.summary(res / "base" / "summary.json")[concept]["location"]
            for layer in LAYERS:
                path = res / "base" / "attribution" / est / concept / f"{layer}.h5"
                e = json.loads(path.with_suffix(".json").read_text())
                if not e.get("scored", True):      # the metagradient scores the location (and ablation.layers)
                    assert est == "metagradient" and layer != loc and "location" in e["reason"]
                    with pytest.raises(ValueError, match="no scores here"):
                        artifacts.per_target_scores(path)
                    continue
                per_target, targets = artifacts.per_target_scores(path)
                trak_targets = artifacts.per_target_scores(res / "base" / "trak" / "scores" / concept / f"{layer}.h5")[1]
                assert per_target.shape == (len(targets), n_train) and np.array_equal(targets, trak_targets)
                assert np.isfinite(per_target).all()
                assert e["estimator"] == est and e["enrichment"] >= 0
    card = (res / "report" / "scorecard.txt").read_text()
    for est in TINY["attribution"]["estimators"]:
        assert re.search(rf"^  {est} ", card, re.M), card


def test_an_estimators_top_k_is_its_own_condition(tiny_run, tmp_path):
    """ablation.estimators: grad_cos's top-k, bottom-k and matched sets join TRAK's under names
    carrying the estimator; the dry run plans exactly them (and what depends on them), and the
    top-k set removes the k highest grad_cos concept scores at the location. (Retraining them
    is the same rules as TRAK's: the tiny run leaves it out for CI time.)"""
    import shutil

    from workflow import artifacts

    wd = tmp_path / "copy"
    shutil.copytree(tiny_run, wd, symlinks=True)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["ablation"]["estimators"] = ["trak", "grad_cos"]
    write_config(wd, cfg)
    new = ["top~grad_cos-hilo", "bottom~grad_cos-hilo", "matched~grad_cos-hilo"]
    counts = job_counts(run_snakemake(wd, "-n", "--cores", "1").stdout)
    assert counts == plus({"ablate": 3}, retrain(3), REPORT, VALIDATE), counts
    run_snakemake(wd, "--cores", "1", "results/tiny/ablation/top~grad_cos-hilo.h5")
    res = wd / "results" / "tiny"
    loc = artifacts.summary(res / "base" / "summary.json")["hilo"]["location"]
    scores = artifacts.concept_scores(res / "base" / "attribution" / "grad_cos" / "hilo" / f"{loc}.h5")
    k = round(TINY["ablation"]["fractions"][0] * TINY["dataset"]["synthetic"]["n_train"])
    top = artifacts.ablation(res / "ablation" / f"{new[0]}.h5")
    assert set(top["removed"]) == set(np.argsort(-scores, kind="stable")[:k])
    assert "grad_cos concept scores" in top["reason"]


def test_validate_pairs_each_estimators_top_k_with_its_own_controls():
    """validate pairs each estimator's top-k with its own bottom-k and matched sets and the
    shared random one (hand-built conditions)."""
    from workflow.ablation.sets import conditions
    from workflow.validation.validate import contrasts

    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["ablation"]["estimators"] = ["trak", "grad_cos"]
    designs = conditions(cfg)
    per_member = {k: [0.1, 0.2] for k in ("output_targets", "selectivity", "bal_acc", "auc")}
    lr = {"acc_step": 0.01, "conditions": {n: {"per_member": per_member, "predicted": {"selectivity": 0.0, "mean": 0.0}}
                                           for n in designs}}
    got = contrasts(lr, designs, "hilo", "location", 0.95)
    assert set(got) == {f"top{t}-hilo - {o}" for t in ("", "~grad_cos")
                        for o in ("random", f"bottom{t}-hilo", f"matched{t}-hilo")}
    assert got["top~grad_cos-hilo - matched~grad_cos-hilo"]["control_kind"] == "matched"




def test_the_metagradients_top_k_is_retrained_masked_and_judged(tiny_run, tmp_path):
    """The metagradient end to end beside TRAK: with ablation.retrain masked, its top-k,
    bottom-k and matched sets are removed and every twin retrained masked (the
    counterfactual it predicts; zero removal would be the base run bit for bit), and
    validate gives it a three-way verdict of its own with its matched control."""
    import json
    import shutil

    from workflow import artifacts

    wd = tmp_path / "copy"
    shutil.copytree(tiny_run, wd, symlinks=True)
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["ablation"].update(estimators=["trak", "metagradient"], retrain="masked")
    write_config(wd, cfg)
    run_snakemake(wd, "--cores", "2", "results/tiny/validate/hilo.json")
    res = wd / "results" / "tiny"
    top = artifacts.ablation(res / "ablation" / "top~metagradient-hilo.h5")
    assert "metagradient concept scores" in top["reason"]
    log = (wd / "logs" / "tiny" / "top~metagradient-hilo" / "train" / "m0.log").read_text()
    assert f"{TINY['dataset']['synthetic']['n_train']} train images" in log      # masked: every slot kept
    result = json.loads((res / "validate" / "hilo.json").read_text())
    v = result["verdicts"]["metagradient"]
    assert v["condition"] == "top~metagradient-hilo"
    assert v["outcome"] in ("supported", "no effect", "inconclusive")
    assert "matched" in v["by"]
    contrasts = result["layers"][result["location"]]["contrasts"]
    assert "top~metagradient-hilo - matched~metagradient-hilo" in contrasts
