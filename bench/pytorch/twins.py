"""PyTorch twins of facemark's networks and losses, for the side-by-side speed benchmark.

Each twin mirrors the burn 0.22 definition layer for layer (same shapes, kernels, paddings,
biases, normalisation and activations), so that `bench.py` and `facemark bench` time the same
arithmetic. The Rust sources they follow:

* `crates/facemark/src/model/unet.rs`        -> `UNet`
* `crates/facemark/src/model/heatmap_net.rs` -> `HeatmapNet` (U-Net + optional log-prior)
* `crates/facemark/src/heatmap.rs`           -> `heatmap_cross_entropy`, `render_gaussian_targets`
* `crates/facemark/src/decode.rs`            -> `decode_maps` (argmax + sub-pixel parabola)
* `crates/facemark/src/model/resnet.rs`      -> `ResNet` (ResNet18, torchvision layout)
* `crates/facemark/src/recipe.rs`            -> `adam` (burn's AdamConfig defaults, the recipes'
                                                 learning rates)

Comparing parameter counts with the Rust nets
----------------------------------------------
burn's `Module::num_params()` counts the BatchNorm running mean and running variance as well
(they are `RunningState` tensors visited like parameters), while PyTorch keeps them as buffers.
`param_counts(net)` therefore returns both numbers:

* `trainable`  = `sum(p.numel() for p in net.parameters())`
* `burn_equivalent` = trainable + every BatchNorm's running_mean and running_var
  (PyTorch's `num_batches_tracked` counters are left out: burn has none)

`burn_equivalent` must equal `model.num_params()` of the Rust net of the same config, e.g. in a
Rust test or a scratch binary:

    let net = ResNetConfig { points: 68, input_size: 112, ..Default::default() }.init(&device);
    assert_eq!(net.num_params(), 11_249_608);        // resnet.rs already asserts this one
    let unet = UNetConfig { points: 68, base_width: 16, depth: 4, input_size: 112 }.init(&device);
    println!("{}", unet.num_params());               // == UNET_BURN_PARAMS below

Run `python twins.py` to print the counts of every twin.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Expected counts, checked by `python twins.py` (see `param_counts`).
RESNET18_TRAINABLE = 11_240_008  # 1-channel stem, Linear(512, 136)
RESNET18_BURN_PARAMS = 11_249_608  # + 4,800 BatchNorm channels x 2 running statistics
UNET_TRAINABLE = 1_943_428  # base width 16, depth 4, 68 maps (cross-checked by _unet_count)
UNET_BURN_PARAMS = 1_946_372  # + 1,472 BatchNorm channels x 2 running statistics

# burn's BatchNormConfig defaults (epsilon 1e-5, momentum 0.1 with the same meaning as PyTorch's:
# running = (1 - momentum) * running + momentum * batch statistic).
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


# --------------------------------------------------------------------------------------------
# U-Net (unet.rs)
# --------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    """Two 3x3 convolutions (padding 1, no bias), each followed by BatchNorm and ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = batch_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = batch_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class UNet(nn.Module):
    """`[B, 1, H, W] -> [B, points, H, W]` logit maps.

    Encoder levels 0..=depth with widths base_width << level (level 0 takes the 1-channel image);
    2x2 max pooling, stride 2 (burn's MaxPool2dConfig strides default to the kernel size), before
    every level but the first. Decoder, deepest first: ConvTranspose2d(width(l+1) -> width(l),
    kernel 2, stride 2, with bias), concatenate [upsampled, skip] on channels, DoubleConv(2 width(l)
    -> width(l)). Head: 1x1 Conv2d(base_width -> points) with bias. burn's default initialiser
    (Kaiming uniform, gain 1/sqrt(3), fan in) is PyTorch's default conv initialisation, so the
    layers keep PyTorch's own.
    """

    def __init__(self, points: int = 68, base_width: int = 16, depth: int = 4):
        super().__init__()
        self.depth = depth

        def width(level: int) -> int:
            return base_width << level

        self.encoders = nn.ModuleList(
            DoubleConv(1 if level == 0 else width(level - 1), width(level))
            for level in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2, stride=2)
        levels = list(reversed(range(depth)))
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(width(l + 1), width(l), 2, stride=2, bias=True) for l in levels
        )
        self.decoders = nn.ModuleList(DoubleConv(2 * width(l), width(l)) for l in levels)
        self.head = nn.Conv2d(base_width, points, 1, bias=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = []
        x = images
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        skips.pop()  # the bottleneck is x itself
        for up, decoder in zip(self.ups, self.decoders):
            skip = skips.pop()
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class HeatmapNet(nn.Module):
    """heatmap_net.rs: the U-Net's logits plus, optionally, a constant `[1, K, H, W]` log-prior.

    The Rust net builds the prior from the training shapes (ShapePrior::log_maps); for speed only
    its presence matters (one broadcast add, outside autodiff), so the twin fills it with a
    Gaussian log-prior around random mean points (values <= 0, like the real one).
    """

    def __init__(
        self,
        points: int = 68,
        base_width: int = 16,
        depth: int = 4,
        input_size: int = 112,
        shape_prior: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if input_size % (1 << depth):
            raise ValueError(f"input side {input_size} must be a multiple of 2^depth")
        self.unet = UNet(points, base_width, depth)
        if shape_prior:
            g = torch.Generator().manual_seed(seed)
            mean = torch.rand(points, 2, generator=g) * 0.6 + 0.2
            spread = torch.full((points, 2), 0.05)
            centres = (torch.arange(input_size, dtype=torch.float32) + 0.5) / input_size
            dx = (centres[None, None, :] - mean[:, 0, None, None]) / spread[:, 0, None, None]
            dy = (centres[None, :, None] - mean[:, 1, None, None]) / spread[:, 1, None, None]
            log_prior = (-0.5 * (dx * dx + dy * dy)).unsqueeze(0)  # [1, K, H, W]
            # A buffer: a constant, never a parameter, so no gradient flows into it.
            self.register_buffer("log_prior", log_prior.contiguous(), persistent=False)
        else:
            self.log_prior = None

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.unet(images)
        if self.log_prior is not None:
            logits = logits + self.log_prior
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images)

    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """Per-map softmax over pixels (the cross-entropy net's inference output)."""
        logits = self.logits(images)
        b, k, h, w = logits.shape
        return torch.softmax(logits.reshape(b * k, h * w), dim=1).reshape(b, k, h, w)


def heatmap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """heatmap.rs: -sum(target * log_softmax(logits)) per map, averaged over maps and batch."""
    b, k, h, w = logits.shape
    log_p = F.log_softmax(logits.reshape(b * k, h * w), dim=1)
    per_map = -(targets.reshape(b * k, h * w) * log_p).sum(dim=1)
    return per_map.mean()


def render_gaussian_targets(
    points: torch.Tensor, width: int, height: int, sigma_at_224: float = 5.0
) -> torch.Tensor:
    """HeatmapTarget::Gaussian::render for a batch: `points` `[B, K, 2]` as fractions of the
    image; returns `[B, K, H, W]` maps, each a 2-D Gaussian at the point (sigma scaled from 224)
    normalised to sum 1. Like the Rust code it evaluates exp at every pixel (no separable
    shortcut), so the per-step work is comparable."""
    sigma = sigma_at_224 * max(width, height) / 224.0
    two_var = 2.0 * sigma * sigma
    px = points[..., 0, None, None] * width  # [B, K, 1, 1]
    py = points[..., 1, None, None] * height
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5
    d2 = (xs[None, None, None, :] - px) ** 2 + (ys[None, None, :, None] - py) ** 2
    maps = torch.exp(-d2 / two_var)
    sums = maps.sum(dim=(2, 3), keepdim=True)
    return torch.where(sums > 0, maps / sums.clamp_min(1e-30), maps)


def decode_maps(maps: torch.Tensor, subpixel: bool = True) -> torch.Tensor:
    """decode.rs `decode_maps`: `[B, K, H, W]` maps -> `[B, K, 2]` points (fractions): the centre
    of each map's largest pixel, refined by a parabola through the log-values of the peak and its
    neighbours per axis (Decoding::Subpixel, facemark's default)."""
    b, k, h, w = maps.shape
    flat = maps.reshape(b * k, h * w)
    best = flat.argmax(dim=1, keepdim=True)  # [n, 1]
    bx = best.remainder(w)
    by = best.div(w, rounding_mode="floor")
    x = bx.float() + 0.5
    y = by.float() + 0.5
    if subpixel:
        log = (flat.clamp_min(0.0) + 1e-12).log()
        last = h * w - 1
        centre = log.gather(1, best)

        def offset(step: int, inside: torch.Tensor) -> torch.Tensor:
            before = log.gather(1, (best - step).clamp(0, last))
            after = log.gather(1, (best + step).clamp(0, last))
            curvature = before - 2.0 * centre + after
            use_it = inside & (curvature < 0.0)
            vertex = (0.5 * (before - after) / curvature).clamp(-0.5, 0.5)
            return torch.where(use_it, vertex, torch.zeros_like(vertex))

        x = x + offset(1, (bx > 0) & (bx < w - 1))
        y = y + offset(w, (by > 0) & (by < h - 1))
    return torch.cat([x / w, y / h], dim=1).reshape(b, k, 2)


# --------------------------------------------------------------------------------------------
# ResNet18 (resnet.rs)
# --------------------------------------------------------------------------------------------


def conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
    """resnet.rs `conv`: padding k / 2, no bias, Kaiming normal (fan out, ReLU gain)."""
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


class BasicBlock(nn.Module):
    """conv3x3(stride) + BN + ReLU, conv3x3 + BN, add the shortcut (projected by 1x1 conv stride
    + BN when the block strides or changes channels), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = batch_norm(cout)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = batch_norm(cout)
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride), batch_norm(cout))
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """`[B, 1, H, W] -> [B, 2 points]`: stem Conv(1 -> w, 7, stride 2, pad 3, no bias) + BN + ReLU,
    MaxPool(3, stride 2, pad 1), four stages of two BasicBlocks (w, 2w, 4w, 8w; stride 2 at the
    first block of stages 2-4), adaptive average pool to 1x1, flatten, Linear(8w -> 2 points)
    with bias and no final activation. `standardize_input` mirrors the Rust option (off in the
    study recipe that `facemark bench --model ibug68` measures)."""

    def __init__(self, points: int = 68, width: int = 64, standardize_input: bool = False):
        super().__init__()
        w = width
        self.standardize_input = standardize_input
        self.stem_conv = conv(1, w, 7, 2)
        self.stem_norm = batch_norm(w)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks = []
        cin = w
        for stage, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stride = 1 if stage == 0 else 2
            blocks.append(BasicBlock(cin, cout, stride))
            blocks.append(BasicBlock(cout, cout, 1))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # burn's Linear default init equals PyTorch's (Kaiming uniform, bound 1/sqrt(fan_in)).
        self.output = nn.Linear(cin, 2 * points)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.standardize_input:
            images = standardize(images)
        x = F.relu(self.stem_norm(self.stem_conv(images)))
        x = self.stem_pool(x)
        x = self.blocks(x)
        x = torch.flatten(self.pool(x), 1)
        return self.output(x)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """model/mod.rs `standardize`: per image zero mean, unit (population) std + 1e-5."""
    b, c, h, w = images.shape
    flat = images.reshape(b, c * h * w)
    centred = flat - flat.mean(dim=1, keepdim=True)
    std = centred.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-5
    return (centred / std).reshape(b, c, h, w)


# --------------------------------------------------------------------------------------------
# Optimiser and counting
# --------------------------------------------------------------------------------------------

# recipe.rs: the heatmap task trains with Adam 5e-4, the regression tasks with Adam 1e-3.
LR_HEATMAP = 5e-4
LR_REGRESSION = 1e-3


def adam(params, lr: float, impl: str = "default") -> torch.optim.Adam:
    """burn's `AdamConfig::new()`: beta1 0.9, beta2 0.999, epsilon 1e-5 (PyTorch's default is
    1e-8), no weight decay (the study recipes use 0). `impl` "default" keeps PyTorch's own choice
    for CPU tensors (the per-tensor loop); "foreach" or "fused" pick the multi-tensor or fused
    kernels (same arithmetic, fewer dispatches)."""
    if impl not in ("default", "foreach", "fused"):
        raise ValueError(f"unknown Adam implementation {impl!r}")
    kwargs = {} if impl == "default" else {impl: True}
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.0, **kwargs)


def param_counts(net: nn.Module) -> dict:
    trainable = sum(p.numel() for p in net.parameters())
    running = sum(
        m.running_mean.numel() + m.running_var.numel()
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    )
    return {"trainable": trainable, "bn_running": running, "burn_equivalent": trainable + running}


def _unet_count(points: int = 68, base_width: int = 16, depth: int = 4) -> int:
    """The U-Net's trainable parameters by hand, as a cross-check of the module above."""

    def width(level: int) -> int:
        return base_width << level

    def double(cin: int, cout: int) -> int:
        return 9 * cin * cout + 9 * cout * cout + 4 * cout  # two convs, two BN (gamma, beta)

    total = sum(double(1 if l == 0 else width(l - 1), width(l)) for l in range(depth + 1))
    for l in range(depth):
        total += 4 * width(l + 1) * width(l) + width(l)  # ConvTranspose2d 2x2 + bias
        total += double(2 * width(l), width(l))
    total += base_width * points + points  # 1x1 head + bias
    return total


def build(name: str, shape_prior: bool = True) -> tuple[nn.Module, int, float, str]:
    """A named twin: (net, input side, Adam learning rate, loss kind)."""
    if name == "unet112":
        return HeatmapNet(input_size=112, shape_prior=shape_prior), 112, LR_HEATMAP, "heatmap_ce"
    if name == "unet224":
        return HeatmapNet(input_size=224, shape_prior=shape_prior), 224, LR_HEATMAP, "heatmap_ce"
    if name == "resnet112":
        return ResNet(), 112, LR_REGRESSION, "mse"
    if name == "resnet224":
        return ResNet(), 224, LR_REGRESSION, "mse"
    raise ValueError(f"unknown net {name!r}")


NETS = ("unet112", "resnet112", "resnet224", "unet224")


def _main() -> None:
    torch.manual_seed(0)
    for name in NETS:
        net, side, _, _ = build(name)
        counts = param_counts(net)
        net.eval()
        with torch.inference_mode():
            out = net(torch.zeros(2, 1, side, side))
        print(f"{name:10s} input {side:3d}  output {tuple(out.shape)}  {counts}")
    assert _unet_count() == UNET_TRAINABLE, _unet_count()
    unet = param_counts(UNet())
    assert unet["trainable"] == UNET_TRAINABLE and unet["burn_equivalent"] == UNET_BURN_PARAMS, unet
    resnet = param_counts(ResNet())
    assert resnet["trainable"] == RESNET18_TRAINABLE, resnet
    assert resnet["burn_equivalent"] == RESNET18_BURN_PARAMS, resnet
    print("parameter counts match the expected values")


if __name__ == "__main__":
    _main()
