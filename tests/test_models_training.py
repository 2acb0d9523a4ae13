import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import completed

from workflow import artifacts
from workflow.model import checkpoints, train
from workflow.model.resnet import ScalableResNet18, to_input
from workflow.probing.activations import pooled_activations


def test_width_and_stem_adapt():
    small = ScalableResNet18(10, width=8, image_size=32)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
    assert small.fc.in_features == 64 and small.layer4[0].conv1.out_channels == 64
    big = ScalableResNet18(1000, width=64, image_size=224)
    assert big.conv1.kernel_size == (7, 7)
    assert sum(p.numel() for p in big.parameters()) == 11_689_512  # torchvision's resnet18


def test_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = ScalableResNet18(10, width=8, image_size=32)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    before = F.cross_entropy(model(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = F.cross_entropy(model(x), y)
    assert after.item() < before.item()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = ScalableResNet18(10, width=4, image_size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)).eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.bn1.running_mean.uniform_(-0.1, 0.1)
    inter = {1: {k: v.clone() for k, v in model.state_dict().items()}}
    checkpoints.save(tmp_path / "m.h5", model, inter, {"test_acc": 0.5}, {"seed": 0})
    assert artifacts.model_checkpoints(tmp_path / "m.h5") == ["epoch_0001", "final"]
    loaded = checkpoints.load(tmp_path / "m.h5")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert artifacts.model_state(tmp_path / "m.h5", "epoch_0001")[1].keys() == model.state_dict().keys()


def test_pooled_activations_match_forward_hooks():
    torch.manual_seed(2)
    model = ScalableResNet18(10, width=4, image_size=32).eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    layers = ["input", "stem", "layer1", "layer2", "layer3", "layer4"]
    got = pooled_activations(model, images, layers, "cpu", batch_size=3)
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
             for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")]
    x = to_input(images)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    seen["stem"] = seen.pop("maxpool")
    for layer in layers[1:]:
        np.testing.assert_allclose(got[layer], seen[layer].mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["input"], x.mean(dim=(2, 3)).numpy(), rtol=1e-6)
    assert got["layer4"].shape == (7, 32)


def test_augment_is_seeded_and_shape_preserving():
    x = torch.rand(6, 3, 32, 32)
    a = train.augment(x, torch.Generator().manual_seed(0), 2, True)
    b = train.augment(x, torch.Generator().manual_seed(0), 2, True)
    assert a.shape == x.shape and torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_learns_like_cpu(tmp_path):
    from workflow.data import build as data

    cfg = {"seed": 0, "dataset": {"name": "synthetic", "image_size": 32,
                                  "synthetic": {"n_train": 400, "n_test": 200, "planted_fraction": 0.3}}}
    data.build_base(cfg, tmp_path / "base.h5")
    metrics = {}
    for device in ("cpu", "cuda"):
        tcfg = completed({"seed": 0, "model": {"width": 8},
                          "train": {"epochs": 8, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                    "augment_shift": 2, "augment_flip": True, "checkpoint_every": 2,
                                    "device": device}})
        metrics[device] = train.train_member(tmp_path / "base.h5", tmp_path / f"m_{device}.h5", 0, tcfg)
        model = checkpoints.load(tmp_path / f"m_{device}.h5")          # loads on the CPU
        assert next(model.parameters()).device.type == "cpu"
        assert artifacts.model_checkpoints(tmp_path / f"m_{device}.h5") == ["epoch_0002", "epoch_0004", "epoch_0006",
                                                                             "final"]
    # a hard task for 400 images: the loss falls from log(10) = 2.30 (CPU: 2.09), and the GPU run learns at least as
    # well as the CPU one. GPU training is not deterministic: six H100 runs ended at 1.83 to 2.07, so only a GPU run
    # clearly worse than the CPU one fails.
    assert metrics["cuda"]["final_loss"] < np.log(10) - 0.15
    assert metrics["cuda"]["final_loss"] < metrics["cpu"]["final_loss"] + 0.1
