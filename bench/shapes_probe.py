"""What the frozen image features hold about a shapes scene: a linear probe, the ceiling issue 15 asks
to measure before reading any retrieval figure.

BLIP-2's offline recipe retrieves held-out shapes scenes from EfficientNet-Lite0's last feature map
(7 x 7 tokens of 1,280 channels, the features every Q-Former recipe reads, uncropped as stage 1
sees them). A scene's retrieval group is the multiset of its objects' (size, colour, shape). This
probe asks whether those features determine the group:

- one linear map, shared by the 49 token positions, reads each token and predicts whether an
  object's centre falls in that cell, and if so its colour, shape and size (a dense linear probe:
  it has no way to combine tokens, and it has never seen the held-out colour-shape pairs together,
  so predicting them needs colour and shape read separately);
- a scene's predicted group is the multiset of its occupied cells' predictions; it is right when it
  equals the true group exactly (two objects whose centres share a cell count as a miss), and
  "at the true cells" when the object positions are given and only the attributes are read;
- the objects of a held-out colour-shape pair are scored on their own (all three attributes, and
  their colour), and so is the colour of the other objects (training pairs) in the same scenes.

Trained on the 4,000 training scenes the recipes use, scored on the 1,000 held-out scenes
(``bench/_recipes.shapes``: every held-out scene holds a colour-shape pair never seen in training).
Several seeds (initialisation and batch order); mean and standard deviation (n-1).

Run: ``python bench/shapes_probe.py [--seeds 3] [--epochs 40] [--hidden 0] [--pixels | --before-head] [--features F.npz] [--threads 2]``. Prints one table and
the minutes: 3.6 on a 2-core CPU for the linear probe (2.9 of them computing the features, which
``--features`` keeps), 6.4 for the MLP on kept features.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmkit.data.shapes import COLOURS, HELD_OUT, SHAPES, SIZES, Scene, make_scenes, render
from vlmkit.models.image_encoders import load_image_encoder

GRID = 7  # EfficientNet-Lite0's feature map at 224 pixels


def features(scenes: list[Scene], batch: int = 64, *, before_head: bool = False) -> torch.Tensor:
    """(N, 49, 1280) frozen features, as the Q-Former recipes read them; or, ``before_head``, the
    (N, 49, 320) output of the last block, before the 1x1 head convolution makes the 1280
    (``efficientnet-lite0-blocks``)."""
    encoder = load_image_encoder("efficientnet-lite0-blocks" if before_head else "efficientnet-lite0")
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(scenes), batch):
            chunks.append(encoder(encoder.preprocess([render(s) for s in scenes[start : start + batch]])).float())
    return torch.cat(chunks)


def pixel_features(scenes: list[Scene]) -> torch.Tensor:
    """(N, 49, 300) the control: each cell's own pixels (the image resized to 70 x 70, 10 x 10 x RGB a
    cell), so the probe reads colour from the pixels rather than from the frozen features."""
    rows = []
    for scene in scenes:
        pixels = np.asarray(render(scene).convert("RGB").resize((GRID * 10, GRID * 10)), dtype=np.float32) / 255.0
        cells = pixels.reshape(GRID, 10, GRID, 10, 3).transpose(0, 2, 1, 3, 4).reshape(GRID * GRID, 300)
        rows.append(torch.from_numpy(cells))
    return torch.stack(rows)


def targets(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per cell: occupied (N, 49) and (colour, shape, size) indices (N, 49, 3), -100 where empty;
    and how many scenes have two object centres in one cell."""
    occupied = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    labels = torch.full((len(scenes), GRID * GRID, 3), -100, dtype=torch.long)
    shared = 0
    for i, scene in enumerate(scenes):
        cells = Counter()
        for o in scene.objects:
            cell = min(GRID - 1, o.y * GRID // scene.image_size) * GRID + min(GRID - 1, o.x * GRID // scene.image_size)
            cells[cell] += 1
            occupied[i, cell] = 1
            labels[i, cell] = torch.tensor([COLOURS.index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size)])
        shared += any(n > 1 for n in cells.values())
    return occupied, labels, shared


class Probe(nn.Module):
    """Per token: linear (``hidden`` 0), or one hidden layer of ``hidden`` GELU units."""

    def __init__(self, width: int, hidden: int = 0) -> None:
        super().__init__()
        outputs = 2 + len(COLOURS) + len(SHAPES) + len(SIZES)
        if hidden:
            self.head: nn.Module = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, outputs))
        else:
            self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.head(x)  # (B, 49, 2 + C + S + Z)
        edges = np.cumsum([2, len(COLOURS), len(SHAPES)])
        return out[..., : edges[0]], out[..., edges[0] : edges[1]], out[..., edges[1] : edges[2]], out[..., edges[2] :]


def train(x: torch.Tensor, occupied: torch.Tensor, labels: torch.Tensor, *, seed: int, epochs: int, hidden: int) -> Probe:
    torch.manual_seed(seed)
    probe = Probe(x.shape[-1], hidden)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=order).split(128):
            occ, colour, shape, size = probe(x[rows])
            loss = loss_fn(occ.flatten(0, 1), occupied[rows].flatten())
            for logits, k in ((colour, 0), (shape, 1), (size, 2)):
                loss = loss + loss_fn(logits.flatten(0, 1), labels[rows][..., k].flatten())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return probe.eval()


def score(probe: Probe, x: torch.Tensor, scenes: list[Scene], occupied: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        occ, colour, shape, size = probe(x)
    cell_occ = occ.argmax(-1)  # (N, 49)
    pred = torch.stack([colour.argmax(-1), shape.argmax(-1), size.argmax(-1)], dim=-1)  # (N, 49, 3)
    exact = exact_at_true_cells = 0
    held_right = held_total = held_colour_right = other_total = other_colour_right = 0

    def group(i: int, cells: torch.Tensor) -> list[tuple[str, str, str]]:
        return sorted((SIZES[int(pred[i, c, 2])], COLOURS[int(pred[i, c, 0])], SHAPES[int(pred[i, c, 1])])
                      for c in torch.nonzero(cells).flatten().tolist())

    for i, scene in enumerate(scenes):
        truth = sorted((o.size, o.colour, o.shape) for o in scene.objects)
        exact += group(i, cell_occ[i]) == truth
        exact_at_true_cells += group(i, occupied[i]) == truth
        for c in torch.nonzero(occupied[i]).flatten().tolist():
            colour, shape = COLOURS[int(labels[i, c, 0])], SHAPES[int(labels[i, c, 1])]
            if (colour, shape) in HELD_OUT:
                held_total += 1
                held_right += bool(cell_occ[i, c] == 1 and torch.equal(pred[i, c], labels[i, c]))
                held_colour_right += int(pred[i, c, 0]) == int(labels[i, c, 0])
            else:
                other_total += 1
                other_colour_right += int(pred[i, c, 0]) == int(labels[i, c, 0])
    mask = occupied == 1
    return {
        "group exact %": 100.0 * exact / len(scenes),
        "group exact at the true cells %": 100.0 * exact_at_true_cells / len(scenes),
        "cell occupancy %": 100.0 * float((cell_occ == occupied).float().mean()),
        "colour %": 100.0 * float((pred[..., 0] == labels[..., 0])[mask].float().mean()),
        "shape %": 100.0 * float((pred[..., 1] == labels[..., 1])[mask].float().mean()),
        "size %": 100.0 * float((pred[..., 2] == labels[..., 2])[mask].float().mean()),
        "held-out pair objects %": 100.0 * held_right / held_total if held_total else float("nan"),
        "their colour %": 100.0 * held_colour_right / held_total if held_total else float("nan"),
        "other objects' colour %": 100.0 * other_colour_right / other_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", help="an .npz file to keep the frozen features in between runs (same --train/--test)")
    parser.add_argument("--before-head", action="store_true", help="probe the last block's 320 channels, before the head convolution")
    parser.add_argument("--pixels", action="store_true", help="the control: probe each cell's pixels instead of the features")
    parser.add_argument("--hidden", type=int, default=0, help="hidden units of an MLP probe (default 0: linear)")
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    train_scenes, test_scenes = make_scenes(args.train, 0, "train"), make_scenes(args.test, 0, "test")
    if args.pixels:
        x_train, x_test = pixel_features(train_scenes), pixel_features(test_scenes)
    elif args.features and Path(args.features).is_file():
        saved = np.load(args.features)
        x_train, x_test = torch.from_numpy(saved["train"]), torch.from_numpy(saved["test"])
    else:
        x_train = features(train_scenes, before_head=args.before_head)
        x_test = features(test_scenes, before_head=args.before_head)
        if args.features:
            np.savez(args.features, train=x_train.numpy(), test=x_test.numpy())
    mean, std = x_train.mean(dim=(0, 1)), x_train.std(dim=(0, 1)).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    occ_train, lab_train, _ = targets(train_scenes)
    occ_test, lab_test, shared = targets(test_scenes)
    encoded = (time.perf_counter() - began) / 60
    rows: dict[str, dict[str, list[float]]] = {"held-out scenes": {}, "training scenes": {}}
    for seed in range(args.seeds):
        probe = train(x_train, occ_train, lab_train, seed=seed, epochs=args.epochs, hidden=args.hidden)
        for name, figures in (("held-out scenes", score(probe, x_test, test_scenes, occ_test, lab_test)),
                              ("training scenes", score(probe, x_train, train_scenes, occ_train, lab_train))):
            for key, value in figures.items():
                rows[name].setdefault(key, []).append(value)
    keys = list(rows["held-out scenes"])
    kind = f"MLP probe ({args.hidden} hidden units)" if args.hidden else "linear probe"
    source = "each cell's pixels (control)" if args.pixels else "frozen EfficientNet-Lite0 tokens"
    if args.before_head and not args.pixels:
        source += " before the head convolution (320 channels)"
    print(f"{kind} on {source}; {args.train} training / {args.test} held-out shapes scenes; "
          f"{args.seeds} seeds, {args.epochs} epochs; mean ± sd (n-1)")
    print(f"held-out scenes with two object centres in one cell (a miss by construction): {shared} of {args.test}\n")
    print("| scenes | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, figures in rows.items():
        cells = []
        for key in keys:
            values = figures[key]
            if any(np.isnan(values)):
                cells.append("n/a")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nminutes: {(time.perf_counter() - began) / 60:.1f} (features {encoded:.1f})")


if __name__ == "__main__":
    main()
