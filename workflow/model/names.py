"""The workflow's own ResNet-18's layer names: torch-free, for the config check."""

RESNET18_LAYERS = ("input", "stem", "layer1", "layer2", "layer3", "layer4")
RESNET18_DEFAULT_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")
