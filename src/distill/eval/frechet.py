"""Frechet distance between image sets in the feature space of a classifier the project trains.

    clf = train_feature_classifier(x_train, y_train)     # small convnet on the same data
    scorer = ImageScorer(clf, x_ref)                      # reference statistics of real images
    scorer.score(samples, labels)                         # {"fd": ..., "class_acc": ...}

The distance is FID's formula (Heusel et al. 2017): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)
on the classifier's penultimate features. It is NOT comparable to published FID numbers, which use
Inception-v3 features of 50k natural images; here it only ranks models on the same small data.
`class_acc` is the share of class-conditional samples that the classifier labels as their class.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to features a (N, D) and b (M, D); N, M >= 2."""
    from scipy import linalg

    a64, b64 = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    s_a, s_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise the diagonal
        eye = np.eye(s_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s_a + eye) @ (s_b + eye))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


class FeatureNet(nn.Module):
    """Small convnet for (B, C, H, W) images in [-1, 1]: `features` (B, F) and logits (B, K)."""

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, features), nn.SiLU())
        self.head = nn.Linear(features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_feature_classifier(x: Tensor, y: Tensor, *, num_classes: int = 10, steps: int = 600, batch: int = 128,
                             lr: float = 2e-3, seed: int = 0, noise: float = 0.1) -> FeatureNet:
    """Fit a FeatureNet on (x (N, C, H, W), y (N,)); light Gaussian input noise so that slightly
    imperfect samples are still read by their content. Returned frozen, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = FeatureNet(x.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        xb = x[idx] + noise * torch.randn(x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    return net


class ImageScorer:
    """Fixed reference: the classifier and the features of real images x_ref (N, C, H, W)."""

    def __init__(self, classifier: FeatureNet, x_ref: Tensor, batch: int = 512):
        self.clf, self.batch = classifier, batch
        self.ref = self.features(x_ref)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return torch.cat([self.clf.features(x[i:i + self.batch].float().cpu()) for i in range(0, len(x), self.batch)])

    @torch.no_grad()
    def accuracy(self, x: Tensor, y: Tensor) -> float:
        pred = torch.cat([self.clf(x[i:i + self.batch].float().cpu()).argmax(-1) for i in range(0, len(x), self.batch)])
        return float((pred == y.cpu()).float().mean())

    def score(self, x: Tensor, y: Tensor | None = None) -> dict[str, float]:
        out = {"fd": frechet_distance(self.features(x.clamp(-1, 1)), self.ref)}
        if y is not None:
            out["class_acc"] = self.accuracy(x.clamp(-1, 1), y)
        return out
