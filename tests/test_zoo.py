"""Models by name: torchvision and timm networks through config checks, pooling, projected
gradients and paired training (tiny, on the CPU)."""
import warnings

import numpy as np
import pytest
import torch
from trak.utils import vectorize

from conftest import completed
from workflow import artifacts
from workflow.attribution.features import margin
from workflow.attribution.projection.factored import FactoredProjector
from workflow.attribution.projection.gradients import per_example_output
from workflow.config import ConfigError, resolve
from workflow.model import classifier, train, zoo

VIT = {"arch": "timm:vit_tiny_patch16_224",
       "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}}
MOBILENET = {"arch": "torchvision:mobilenet_v3_small", "kwargs": {"width_mult": 0.25}}    # depthwise, SE blocks
SHUFFLENET = {"arch": "torchvision:shufflenet_v2_x0_5", "kwargs": {}}                      # grouped, channel shuffle
FAMILIES = {"vit": VIT, "mobilenet": MOBILENET, "shufflenet": SHUFFLENET}
PROBED = {"vit": "blocks.0", "mobilenet": "features.3", "shufflenet": "stage3"}


def model(spec, seed=0):
    torch.manual_seed(seed)
    net = zoo.build({**spec, "num_classes": 10, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}).eval()
    with torch.no_grad():   # BatchNorm statistics away from 0/1, so the hook formulas are really exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net


def config(spec, **extra):
    return {"experiment": "t", "dataset": {"name": "synthetic"}, "concepts": [{"name": "hilo", "kind": "planted"}],
            "model": {"arch": spec["arch"], "kwargs": spec["kwargs"]}, **extra}


@pytest.mark.parametrize("family", FAMILIES)
def test_projected_gradients_match_exact_per_example_gradients_projected_by_the_same_map(family):
    """The fidelity test of the factored projector, per family: its hook path (plus vmap for
    class tokens and position embeddings) equals projecting vmap's exact per-example gradients,
    for the classification margin and for a probe-like readout of a pooled layer."""
    net = model(FAMILIES[family])
    p = FactoredProjector(net, 256, 3)
    assert p.per_example == (["net.cls_token", "net.pos_embed"] if family == "vit" else [])
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 3, 32, 32, generator=g), torch.randint(0, 10, (5,), generator=g)
    layer = PROBED[family]
    w = torch.randn(net.pooled(x, [layer])[layer].shape[1], generator=g)
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    for fn, aux in ((lambda m, xb, yb: margin(m(xb), yb), (y,)), (lambda m, xb: m.pooled(xb, [layer])[layer] @ w, ())):
        fast, out = p.featurize(net, fn, x, 7, aux)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exact = torch.func.vmap(torch.func.grad(per_example_output(net, fn)),
                                    in_dims=(None, None, 0) + (0,) * len(aux))(params, buffers, x, *aux)
        assert sum(float(v.abs().sum()) for v in exact.values()) > 0      # the check is not vacuous
        torch.testing.assert_close(fast, p.project(vectorize(exact, device="cpu"), 7), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out, fn(net, x, *aux).detach(), rtol=1e-5, atol=1e-6)


def test_auto_takes_the_hooks_where_they_see_every_parameter_else_one_vmap_pass():
    from workflow.attribution.projection import factory

    assert factory.resolve("auto", model(MOBILENET), "cpu") == "factored"
    assert factory.resolve("auto", model(SHUFFLENET), "cpu") == "factored"
    assert factory.resolve("auto", model(VIT), "cpu") == "sparse"          # its class token and position embedding
    forced = factory.make("factored", model(VIT), 64, 0, "cpu")
    assert forced.projector.per_example == ["net.cls_token", "net.pos_embed"]


def test_pooling_follows_the_output_shape():
    h = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    torch.testing.assert_close(classifier.pool(h), h.mean((2, 3)))
    tokens = torch.randn(2, 5, 8)                                      # 1 class token + 4 patches
    torch.testing.assert_close(classifier.pool(tokens, "mean", 1, 4), tokens[:, 1:].mean(1))
    torch.testing.assert_close(classifier.pool(tokens, "cls", 1, 4), tokens[:, 0])
    torch.testing.assert_close(classifier.pool(tokens[:, 1:], "mean", 1, 4), tokens[:, 1:].mean(1))  # patches only
    with pytest.raises(ValueError, match="no class token"):
        classifier.pool(tokens, "cls", 0, None)
    net = model(VIT)
    x = torch.rand(2, 3, 32, 32)
    seq = net.layer_outputs(x, ["blocks.1"])["blocks.1"]
    assert seq.shape == (2, 1 + 16, 32)
    net.token_pool = "cls"
    torch.testing.assert_close(net.pooled(x, ["blocks.1"])["blocks.1"], seq[:, 0])
    out = net.layer_outputs(x, ["blocks.0", "logits"])
    torch.testing.assert_close(out["logits"], net(x))


def test_defaults_and_config_errors_name_the_key():
    vit = resolve(config(VIT))
    assert vit["layers"] == ["blocks.0", "blocks.1"]
    deep = resolve(config({**VIT, "kwargs": {**VIT["kwargs"], "depth": 12}}))
    assert deep["layers"] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]        # every 3rd block
    assert resolve(config(SHUFFLENET))["layers"] == ["conv1", "stage2", "stage3", "stage4", "conv5"]
    assert resolve(config(MOBILENET))["layers"][-1] == "features.12"
    assert resolve(config({"arch": "torchvision:resnet18", "kwargs": {}}))["layers"] == \
        ["layer1", "layer2", "layer3", "layer4"]
    assert resolve({k: v for k, v in config(VIT).items() if k != "model"})["layers"] == \
        ["stem", "layer1", "layer2", "layer3", "layer4"]                      # resnet18 as always
    cases = [
        ({"model": {"arch": "timm:vit_tiny_patch16_2244"}}, r"model.arch: timm has no model 'vit_tiny_patch16_2244' "
                                                            r"\(did you mean vit_tiny_patch16_224"),
        ({"model": {"arch": "keras:vgg"}}, r"model.arch: 'keras:vgg' does not match"),
        ({"model": {"arch": VIT["arch"], "kwargs": {"bogus": 1}}}, r"model.kwargs: timm:vit_tiny_patch16_224 rejects"),
        ({"model": VIT, "layers": ["blocks.9"]}, r"layers: 'blocks.9' is not a module of timm:vit_tiny_patch16_224 "
                                                 r"\(closest: blocks.1, blocks.0.*its modules: patch_embed"),
        ({"model": SHUFFLENET, "activations": {"token_pool": "cls"}}, r"activations.token_pool: .* has no class token"),
        ({"layers": ["layer9"]}, r"layers: 'layer9' is not a layer of resnet18"),
        ({"model": {"kwargs": {"depth": 2}}}, r"model.kwargs: resnet18 takes none"),
        ({"model": {**VIT, "weights": "/nonexistent.pt"}}, r"model.weights: file not found: /nonexistent.pt"),
        ({"model": VIT, "train": {"optimizer": "adamw"}, "attribution": {"estimators": ["trak", "metagradient"]}},
         r"train.optimizer: the metagradient estimator replays sgd"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            resolve({**config(VIT), "model": {"arch": "resnet18"}, **extra})


def test_local_weights_start_training_and_a_different_head_keeps_its_initialisation(tmp_path, caplog):
    source = model(VIT, seed=1)
    torch.save(source.net.state_dict(), tmp_path / "w.pt")
    info = {"num_classes": 4, "image_size": 32, "pixel_mean": [0.5] * 3, "pixel_std": [0.25] * 3}
    torch.manual_seed(0)
    with caplog.at_level("INFO"):
        started = train.make_model(info, {"arch": VIT["arch"], "kwargs": VIT["kwargs"], "weights": str(tmp_path / "w.pt")})
    assert torch.equal(started.net.blocks[1].mlp.fc1.weight, source.net.blocks[1].mlp.fc1.weight)
    assert started.net.head.weight.shape == (4, 32)                        # 4 classes here, 10 in the file
    assert "keep their initialisation (head.bias, head.weight)" in caplog.text


def tiny_base(tmp_path, spec, n=40, **train_cfg):
    from workflow.data import build as data

    cfg = completed({"seed": 0, "dataset": {"name": "synthetic", "image_size": 32,
                                            "synthetic": {"n_train": n, "n_test": 8, "planted_fraction": 0.3}}})
    data.build_base(cfg, tmp_path / "base.h5")
    return completed({"seed": 0, "model": {"arch": spec["arch"], "kwargs": spec["kwargs"]},
                      "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, "device": "cpu", "checkpoint_every": 1,
                                **train_cfg}})


@pytest.mark.parametrize("family,recipe", [("vit", {"optimizer": "adamw", "schedule": "cosine", "weight_decay": 0.05}),
                                           ("mobilenet", {}), ("shufflenet", {})])
def test_zero_removal_reproduces_the_base_weights_bit_for_bit(tmp_path, family, recipe):
    """Per family: a twin that removes nothing is its base run bit for bit, from scratch and
    resumed from the base run's epoch-1 state (optimizer state included: Adam's moments);
    removing two images is a different run."""
    tcfg = tiny_base(tmp_path, FAMILIES[family], **recipe)
    d = tmp_path
    train.train_member(d / "base.h5", d / "base_m0.h5", 0, tcfg)
    train.train_member(d / "base.h5", d / "none_m0.h5", 0, tcfg, train_indices=np.arange(40))
    train.train_member(d / "base.h5", d / "spawn_m0.h5", 0, tcfg, train_indices=np.arange(40), spawn=(d / "base_m0.h5", 1))
    train.train_member(d / "base.h5", d / "two_m0.h5", 0, tcfg, train_indices=np.setdiff1d(np.arange(40), [3, 30]))
    base, none, spawned, two = (artifacts.model_state(d / f"{c}_m0.h5")[1] for c in ("base", "none", "spawn", "two"))
    assert all(np.array_equal(base[k], none[k]) and np.array_equal(base[k], spawned[k]) for k in base)
    assert not all(np.array_equal(base[k], two[k]) for k in base)
    if recipe:
        assert any(k.endswith(":exp_avg_sq") for k in artifacts.optimizer_state(d / "base_m0.h5", "epoch_0001"))


def test_dropout_and_stochastic_depth_are_off_unless_kept():
    spec = {**VIT, "kwargs": {**VIT["kwargs"], "drop_rate": 0.3, "drop_path_rate": 0.2}}
    arch = {**spec, "num_classes": 10, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    off = zoo.build(arch).train()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(off(x), off(x))                            # train mode, yet deterministic
    kept = zoo.build({**arch, "keep_dropout": True}).train()
    assert not torch.equal(kept(x), kept(x))


E2E = {"vit": ({**VIT, "kwargs": {**VIT["kwargs"], "patch_size": 4}},
               {"optimizer": "adamw", "schedule": "cosine", "lr": 0.002, "weight_decay": 0.05, "decay_norms": False}),
       "mobilenet": (MOBILENET, {})}


@pytest.mark.e2e
@pytest.mark.parametrize("family", E2E)
def test_a_zoo_model_runs_the_whole_dag(tmp_path, family):
    """A timm ViT (adamw, cosine) and a torchvision MobileNetV3 (depthwise convolutions):
    train, activations at the family's default layers, probes, TRAK, ablate, retrain
    (resumed after epoch 1, optimizer state included), validate, compare, report."""
    import h5py
    import yaml

    from conftest import TINY, run_snakemake, write_config

    spec, recipe = E2E[family]
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg.update(experiment=family, model={"arch": spec["arch"], "kwargs": spec["kwargs"]}, ensemble={"size": 2})
    del cfg["layers"]                                          # the family's defaults
    cfg["train"].update(epochs=2, checkpoint_every=1, **recipe)
    cfg["trak"].update(checkpoints=["final"], shards=1)
    cfg["attribution"] = {"estimators": ["trak"]}
    cfg["ablation"].update(controls=["random", "matched"], estimators=["trak"], spawn_epoch=1)
    cfg["lds"] = {"fractions": []}
    write_config(tmp_path, cfg)
    run_snakemake(tmp_path, "--cores", "2", timeout=900)
    res = tmp_path / "results" / family
    layers = {"vit": ["blocks.0", "blocks.1"], "mobilenet": ["features.0", "features.3", "features.6", "features.9",
                                                             "features.12"]}[family]
    with h5py.File(res / "base" / "models" / "m0.h5") as f:
        assert yaml.safe_load(f.attrs["arch"])["arch"] == spec["arch"]
        assert ("timm" in yaml.safe_load(f.attrs["versions"])) == (family == "vit")   # its code defines the network
        if family == "vit":
            assert any(k.endswith(":exp_avg") for k in f["optimizer/epoch_0001"])
    with h5py.File(res / "base" / "probes" / "hilo.h5") as f:
        assert f["heldout_bal_acc"].shape == (2, len(layers))
        assert set(f["m0"].keys()) == set(layers)
        width = f[f"m0/{layers[-1]}"].attrs["n_channels"]
    assert width == {"vit": 32, "mobilenet": 144}[family]      # embed_dim; 576 x width_mult
    with h5py.File(res / "base" / "trak" / "features" / "m0_final.h5") as f:
        # auto: hooks where they see every parameter, else one vmap pass for all (no parameter dropped)
        assert f.attrs["projector"] == {"vit": "SparseJLProjector", "mobilenet": "FactoredProjector"}[family]
    for condition in ("top-hilo", "random", "matched-hilo"):
        assert (res / condition / "models" / "m1.h5").exists()
    assert (res / "validate" / "hilo.txt").read_text().startswith("hilo: ")
    assert "hilo" in (res / "compare" / "verdicts.txt").read_text()
    assert (res / "report" / "index.html").stat().st_size > 1000


def test_the_schema_names_exactly_the_optimizer_and_schedule_registries():
    from workflow.config import schema

    t = schema()["properties"]["train"]["properties"]
    assert t["optimizer"]["enum"] == list(train.OPTIMIZERS) and t["schedule"]["enum"] == list(train.SCHEDULES)
    assert t["optimizer"]["default"] == "sgd" and t["schedule"]["default"] == "onecycle"   # resnet18's recipe
