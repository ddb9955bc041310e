"""DANP trains a network whose forward runs outside torch: plain numpy, seen only through what
it reports.

The "system" below is a numpy multilayer perceptron with leaky-ReLU units, decorrelating
matrices ``R_l`` and Gaussian node noise that it draws itself (the rule never sees it). Per
training step it runs a reference pass and a noisy pass of a batch and returns, per layer,
the reference pass's decorrelated input ``xh_{l-1} = R_l x_{l-1}`` (B, d), the activities
``a_l = W_l xh_{l-1} + b_l`` of both passes (2, B, n) and both passes' per-sample
cross-entropy (2, B). ``noisynets.observer.Observer("danp", sizes)`` turns that observation
into weight estimates (docs/algorithms.md, "ANP"), ``torch.optim.Adam`` applies them to
parameters that share the numpy arrays' memory, and ``Observer.decorrelate`` updates ``R``.

    python examples/numpy_danp.py                  # 64-256-256-10, 10 epochs, seed 0
    python examples/numpy_danp.py --epochs 3 --seed 1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from noisynets.data import load_dataset
from noisynets.observer import Observer

SLOPE = 0.01  # leaky ReLU


class NumpyMLP:
    """The user's system: weights, biases and ``R`` as numpy arrays, its own noise generator."""

    def __init__(self, sizes: list[int], noise_std: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.W = [rng.standard_normal((n, d)) * np.sqrt(2.0 / d)  # He-normal
                  for d, n in zip(sizes, sizes[1:])]
        self.b = [np.zeros(n) for n in sizes[1:]]
        self.R = [np.eye(d) for d in sizes[:-1]]
        self.noise_std = noise_std
        self.rng = np.random.default_rng(seed + 1)

    def logits(
        self, x: np.ndarray, noisy: np.ndarray | None = None
    ) -> tuple[list, list, np.ndarray]:
        """Passes stacked on axis 0 (``x``: (P, B, d)); ``noisy[p]``: whether pass p is noisy.
        Returns every layer's inputs and activities and the logits."""
        inputs, activity, h = [], [], x
        last = len(self.W) - 1
        for k, (W, b, R) in enumerate(zip(self.W, self.b, self.R)):
            xh = h @ R.T
            a = xh @ W.T + b
            if noisy is not None:
                a = a + noisy[:, None, None] * self.noise_std * self.rng.standard_normal(a.shape)
            inputs.append(xh)
            activity.append(a)
            h = a if k == last else np.where(a > 0, a, SLOPE * a)
        return inputs, activity, h

    def observe(self, x: np.ndarray, y: np.ndarray) -> tuple[list, list, np.ndarray]:
        """What the system reports of a reference and a noisy pass of batch ``(x, y)``."""
        inputs, activity, logits = self.logits(np.stack([x, x]), np.array([0.0, 1.0]))
        return [xh[0] for xh in inputs], activity, cross_entropy(logits, y)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x[None])[2][0].argmax(-1) == y).mean())


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of logits (..., B, C) for labels y (B,)."""
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, np.broadcast_to(y[:, None], log_p.shape[:-1] + (1,)),
                               -1)[..., 0]


def train(hidden: tuple[int, ...] = (256, 256), epochs: int = 10, batch_size: int = 64,
          lr: float = 1e-3, decorrelation_lr: float = 1e-3, noise_std: float = 1e-3,
          seed: int = 0) -> float:
    """Train the numpy system on the digits by DANP through the observer; its test accuracy."""
    data = load_dataset("digits")
    x, y = data.train_x.double().numpy(), data.train_y.numpy()
    sizes = [x.shape[1], *hidden, data.num_classes]
    system = NumpyMLP(sizes, noise_std, seed)
    observer = Observer("danp", sizes, decorrelation_lr=decorrelation_lr)
    # Parameters that share the numpy arrays' memory: Adam's in-place step updates the system.
    params = [torch.nn.Parameter(torch.from_numpy(p)) for pair in zip(system.W, system.b)
              for p in pair]
    optimizer = torch.optim.Adam(params, lr=lr)
    order_rng = np.random.default_rng(seed + 2)
    for _ in range(epochs):
        order = order_rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            record = observer.record(*system.observe(x[batch], y[batch]))
            for (g_w, g_b), w, b in zip(observer.estimate(record), params[::2], params[1::2]):
                w.grad, b.grad = g_w, g_b
            optimizer.step()
            observer.decorrelate(system.R, record)
    return system.accuracy(data.test_x.double().numpy(), data.test_y.numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    accuracy = train(tuple(args.hidden), args.epochs, seed=args.seed)
    print(f"numpy system, DANP through the observer: test accuracy {accuracy:.4f} "
          f"(digits, {args.epochs} epochs, seed {args.seed})")


if __name__ == "__main__":
    main()
