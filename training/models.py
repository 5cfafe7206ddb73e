"""Network registry: every model ends in global average pooling + one linear layer, so its CAM is exact.

All networks take one-channel (or ``in_channels``) images ``(N, C, H, W)`` float32 and return logits
``(N, K)``. They expose

* ``features(x)`` -> ``(N, F, h, w)``: the last feature map (after its activation), computed by the
  sub-module named :data:`FEATURE_LAYER`;
* ``classifier``: the ``nn.Linear(F, K)`` applied to the spatial mean of that map.

Hence ``logits = classifier(features(x).mean((2, 3)))`` and the class activation map (Zhou et al.,
"Learning Deep Features for Discriminative Localization", CVPR 2016) is ``classifier`` applied at every
location of the feature map; its spatial mean equals the logit. ``monai.visualize.CAM(model,
target_layers=FEATURE_LAYER, fc_layers=CLASSIFIER_LAYER)`` computes the same map.

Example
-------
>>> model = build_model("compact", num_classes=2)
>>> model(torch.zeros(1, 1, 224, 224)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FEATURE_LAYER",
    "CLASSIFIER_LAYER",
    "CAMNet",
    "CompactCNN",
    "MonaiResNet",
    "MonaiDenseNet121",
    "MODELS",
    "build_model",
    "load_weights",
    "class_activation_maps",
]

#: Name of the module whose output is the last feature map (the CAM's target layer).
FEATURE_LAYER = "feature_act"
#: Name of the final linear layer.
CLASSIFIER_LAYER = "classifier"


class CAMNet(nn.Module):
    """Base class: ``forward(x) = classifier(mean_hw(features(x)))``.

    Subclasses define :meth:`backbone` (``(N, C, H, W)`` -> pre-activation feature map), a module named
    ``feature_act`` (the activation producing the final map) and ``classifier`` (``nn.Linear``).
    """

    feature_act: nn.Module
    classifier: nn.Linear
    #: Total down-sampling factor from input to the feature map (e.g. 32: 224 -> 7).
    stride: int = 32

    def backbone(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, float32 ``(N, F, H / stride, W / stride)``."""
        return self.feature_act(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))

    def ood_blocks(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Feature maps whose spatial means feed the out-of-distribution detector: ``(name, (N, F_l, h, w))``.

        The default is the last feature map only (the penultimate layer, what the classifier sees);
        networks with named stages add them (Lee et al. 2018's feature ensemble). The last entry is always
        the penultimate layer.
        """
        return [("penultimate", self.features(x))]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(N, K)``, CAMs ``(N, K, h, w)`` and pooled features ``(N, D)`` from one pass.

        ``features`` concatenates the spatial means of :meth:`ood_blocks` (``D = sum F_l``); its last block
        is the penultimate layer, so ``logits == classifier(features[:, -F:])``.
        """
        blocks = self.ood_blocks(x)
        feats = blocks[-1][1]
        logits = self.classifier(feats.mean(dim=(2, 3)))
        cam = torch.einsum("kf,nfhw->nkhw", self.classifier.weight, feats) + self.classifier.bias[None, :, None, None]
        pooled = torch.cat([b.mean(dim=(2, 3)) for _, b in blocks], dim=1)
        return logits, cam, pooled

    def ood_block_sizes(self, channels: int, height: int, width: int) -> list[tuple[str, int]]:
        """``(name, F_l)`` of :meth:`ood_blocks` for an input of that shape (one dry pass on CPU)."""
        with torch.no_grad():
            was = self.training
            self.eval()
            blocks = self.ood_blocks(torch.zeros(1, channels, height, width))
            self.train(was)
        return [(name, int(b.shape[1])) for name, b in blocks]

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, K)`` and class activation maps ``(N, K, h, w)`` from one pass.

        ``cam[n, k] = W[k] . F[n, :, y, x] + b[k]``: the classifier applied at each location of the
        feature map, so ``cam.mean((2, 3)) == logits`` (up to rounding).
        """
        feats = self.features(x)
        logits = self.classifier(feats.mean(dim=(2, 3)))
        w = self.classifier.weight  # (K, F)
        cam = torch.einsum("kf,nfhw->nkhw", w, feats) + self.classifier.bias[None, :, None, None]
        return logits, cam


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    """Basic residual block (He et al. 2016): two 3x3 convs, projection shortcut on shape change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.short(x))


class CompactCNN(CAMNet):
    """A small residual CNN for CPU training: stem + 4 stages, output stride 32, ~1.2 M parameters.

    Parameters
    ----------
    in_channels, num_classes
        Input channels (1 for grayscale radiographs) and number of classes K.
    widths
        Channels of the stem and the four stages.
    dropout
        Dropout before the classifier (training only; does not change the CAM at inference).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 widths: tuple[int, ...] = (24, 32, 64, 128, 256), dropout: float = 0.2) -> None:
        super().__init__()
        w = widths
        self.stem = _conv_bn(in_channels, w[0], stride=2)
        self.stages = nn.Sequential(*[_ResBlock(w[i], w[i + 1], stride=2) for i in range(len(w) - 1)])
        self.stride = 2 ** len(w)
        self.head = nn.Sequential(nn.Conv2d(w[-1], w[-1], 1, bias=False), nn.BatchNorm2d(w[-1]))
        self.feature_act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(w[-1], num_classes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def ood_blocks(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Each residual stage's output, then the penultimate feature map (see :meth:`CAMNet.ood_blocks`)."""
        out = []
        y = self.stem(x)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            out.append((f"stage{i + 1}", y))
        out.append(("penultimate", self.feature_act(self.head(y))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).mean(dim=(2, 3))))


class MonaiResNet(CAMNet):
    """ResNet-18/34-style network from :class:`monai.networks.nets.ResNet` (2-D, basic blocks).

    MONAI's own pooling/fc are replaced by this class's mean + ``classifier`` (identical maths).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, layers: tuple[int, ...] = (2, 2, 2, 2),
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        from monai.networks.nets import ResNet

        net = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=2,
                     n_input_channels=in_channels, num_classes=num_classes, conv1_t_size=7, conv1_t_stride=2)
        self.net = net
        self.feature_act = nn.Identity()  # layer4 ends in ReLU already
        self.classifier = nn.Linear(widths[-1], num_classes)
        net.fc = None  # type: ignore[assignment]
        self.stride = 32

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class MonaiDenseNet121(CAMNet):
    """DenseNet121 (Huang et al. 2017; CheXNet's architecture, Rajpurkar et al. 2017) from MONAI."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, dropout_prob=dropout)
        self.net = net
        self.feature_act = nn.ReLU()
        self.classifier = nn.Linear(net.class_layers.out.in_features, num_classes)
        net.class_layers = None  # type: ignore[assignment]
        self.stride = 32

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


#: name -> (constructor, one-line description)
MODELS: dict[str, tuple[Callable[..., CAMNet], str]] = {
    "compact": (CompactCNN, "compact residual CNN (~1.2 M parameters), for CPU training"),
    "compact-small": (lambda **kw: CompactCNN(widths=(16, 24, 48, 96, 192), **kw),
                      "smaller compact CNN (~0.5 M parameters)"),
    "compact-tiny": (lambda **kw: CompactCNN(widths=(8, 16, 32, 64), **kw),
                     "tiny compact CNN (output stride 16, ~0.06 M parameters), for tests and small images"),
    "resnet18": (lambda **kw: MonaiResNet(layers=(2, 2, 2, 2), **kw), "ResNet-18 style (MONAI), ~11 M parameters"),
    "resnet10": (lambda **kw: MonaiResNet(layers=(1, 1, 1, 1), **kw), "ResNet-10 style (MONAI), ~5 M parameters"),
    "densenet121": (MonaiDenseNet121, "DenseNet121 (MONAI; CheXNet's architecture), ~7 M parameters"),
}


def build_model(name: str, num_classes: int, in_channels: int = 1, weights: str | Path | None = None,
                **kwargs: object) -> CAMNet:
    """Instantiate a registered network; optionally initialise from a local weights file.

    Parameters
    ----------
    name
        A key of :data:`MODELS`.
    num_classes, in_channels
        K outputs; input channels (1: grayscale).
    weights
        Optional local ``.pt`` file (a state dict, or a checkpoint with ``"model"``); keys that do not
        match in name or shape (e.g. a classifier for another K) are skipped. Nothing is downloaded.

    Raises
    ------
    ValueError
        Unknown ``name``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    model = MODELS[name][0](in_channels=in_channels, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load matching tensors from a local file into ``model``; returns the names that were skipped.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    return sorted(set(own) - set(keep))


def class_activation_maps(model: CAMNet, x: torch.Tensor) -> torch.Tensor:
    """CAMs ``(N, K, h, w)`` float32 of ``model`` (eval mode recommended) for inputs ``x``."""
    return model.forward_with_cam(x)[1]
