"""Train a config's recipe in PyTorch on the same split, for the wall-time comparison with
`reproduce.py` running the same config in JAX on the same machine.

    python experiments/torch_recipe.py --config=deotte15 --members=2

It does what `mnist_jax.train` does with the config: the first `--members` members, each on its
own random `bagging` fraction of the training split with a fresh shuffle every epoch (the last
partial batch dropped), Adam with the config's b1 / b2 / eps and per-epoch exponential schedule,
the config's random rotation / shift / shear / zoom drawn per image and applied as one bilinear
warp with zero fill (`augment.affine`'s convention; a test checks the two agree), validation
after every epoch and the test split once, at the end. The nets are `torch_peer`'s twins with the
Flax models' Keras init (Glorot-uniform weights, zero biases). Members train one after another on
`--threads` intra-op threads, as a PyTorch user of a 2-core machine would. `train_time_s` sums
the epochs' training loops, as `wall_time_s` in a JAX run's results.json does (validation,
checkpoints and test not counted); `wall_time_s` here runs from the first member's init to the
ensemble's test accuracy. The run's row goes to experiments/results/torch_recipe.json, keyed by
(config, members, epochs); an interrupted run starts again from scratch.
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

import reproduce  # noqa: E402  (its record() keys rows by config, members, epochs and device)
import torch_peer  # noqa: E402
from mnist_jax import config as config_lib, data  # noqa: E402
from mnist_jax.platform import cpu_model  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "torch_recipe.json"
SCHEDULES = ("constant", "exponential")
# Config fields this peer does not mirror, with the value that means "off".
UNSUPPORTED = {"label_smoothing": 0.0, "l1": 0.0, "ema_decay": 0.0, "tta_samples": 0,
               "clean_final_epochs": 0, "compute_dtype": "float32",
               "augment.elastic_alpha": 0.0, "augment.crop": 0, "optim.weight_decay": 0.0,
               "optim.grad_clip": 0.0, "snapshot.cycles": 0, "swa.epochs": 0}


class RecipeError(ValueError):
    """A config this peer cannot mirror; the message names the field."""


def check_supported(config) -> None:
    """Refuse, in one line, a config whose recipe this file would not reproduce faithfully."""
    def refuse(what: str) -> None:
        raise RecipeError(f"torch_recipe: {what}; this peer mirrors adam with a constant or "
                          f"exponential schedule, bagging and rotation / shift / shear / zoom")
    if config.model not in torch_peer.names():
        refuse(f"model {config.model!r} has no PyTorch twin (twins: {', '.join(torch_peer.names())})")
    if config.model_overrides.to_dict() or config.groups.to_dict():
        refuse("model_overrides and groups are not mirrored")
    if config_lib.swept(config):
        refuse(f"a sweep ({', '.join(config_lib.swept(config))}) is not mirrored")
    if config.optim.name != "adam":
        refuse(f"optimizer {config.optim.name!r} is not mirrored")
    if config.optim.schedule.name not in SCHEDULES:
        refuse(f"schedule {config.optim.schedule.name!r} is not mirrored")
    for path, off in UNSUPPORTED.items():
        value = config
        for part in path.split("."):
            value = value[part]
        if value != off:
            refuse(f"{path}={value!r} is not mirrored (only {off!r})")


def affine_theta(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`augment.affine`'s [B, 3, 3] (row, col) inverse maps as `F.affine_grid`'s [B, 2, 3]
    (x, y) thetas in align-corners normalised coordinates."""
    s_r, s_c = (height - 1) / 2, (width - 1) / 2
    m = matrices
    return torch.stack([
        torch.stack([m[:, 1, 1], m[:, 1, 0] * s_r / s_c, m[:, 1, 2] / s_c], -1),
        torch.stack([m[:, 0, 1] * s_c / s_r, m[:, 0, 0], m[:, 0, 2] / s_r], -1)], -2)


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """NCHW images in [0, 1] through `augment.affine`'s inverse maps: bilinear, zero fill."""
    height, width = images.shape[-2:]
    grid = F.affine_grid(affine_theta(matrices, height, width), list(images.shape), align_corners=True)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.clamp_(0.0, 1.0)


def affine_matrices(rotation: torch.Tensor, shift: tuple, shear: torch.Tensor,
                    zoom: tuple) -> torch.Tensor:
    """`augment.affine_matrix` in torch: rotation @ shift @ shear @ zoom, Keras' composition."""
    theta, phi = torch.deg2rad(rotation), torch.deg2rad(shear)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    def mat(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)
    rot = mat((theta.cos(), theta.sin(), zero), (-theta.sin(), theta.cos(), zero), (zero, zero, one))
    move = mat((one, zero, -shift[0]), (zero, one, -shift[1]), (zero, zero, one))
    skew = mat((one, -phi.sin(), zero), (zero, phi.cos(), zero), (zero, zero, one))
    scale = mat((zoom[0], zero, zero), (zero, zoom[1], zero), (zero, zero, one))
    return rot @ move @ skew @ scale


def random_augment(images: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """One uniform [-1, 1] draw per image and parameter, scaled as `augment.build` scales them."""
    if not any(cfg[f] for f in ("rotation", "shift", "shear", "zoom")):
        return images
    batch, _, height, width = images.shape
    u = torch.rand(6, batch, generator=generator) * 2.0 - 1.0
    matrices = affine_matrices(cfg.rotation * u[0], (cfg.shift * height * u[1], cfg.shift * width * u[2]),
                               cfg.shear * u[3], (1.0 + cfg.zoom * u[4], 1.0 + cfg.zoom * u[5]))
    return warp(images, matrices)


def keras_init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases, as the Flax models' `keras_init`."""
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:  # senet's squeeze-excite layers have none
                nn.init.zeros_(layer.bias)
    return model


def to_tensor(split: data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.asarray(split.images, np.float32) / 255.0).permute(0, 3, 1, 2)
    return images.contiguous(), torch.from_numpy(np.asarray(split.labels, np.int64))


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    return torch.cat([F.softmax(model(images[i:i + batch_size]), -1)
                      for i in range(0, len(images), batch_size)])


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).double().mean())


def train_member(config, member: int, train: tuple, val: tuple | None, log) -> tuple[nn.Module, list[float]]:
    """One member's whole recipe; returns the net and its epochs' training-loop times."""
    seed = config.seed + member
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = train
    pool = round(config.bagging * len(labels)) if config.bagging else len(labels)
    bag = torch.randperm(len(labels), generator=generator)[:pool]
    steps = pool // config.batch_size
    if steps == 0:
        raise RecipeError(f"torch_recipe: each member sees {pool} images an epoch, fewer than "
                          f"batch_size={config.batch_size}; train on more images")
    model = keras_init(torch_peer.get(config.model))
    opt = config.optim
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                                 eps=opt.eps)
    decay = opt.schedule.decay_rate if opt.schedule.name == "exponential" else 1.0
    epoch_times = []
    for epoch in range(config.num_epochs):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = opt.learning_rate * decay ** epoch
        model.train()
        order = bag[torch.randperm(pool, generator=generator)[:steps * config.batch_size]]
        total = 0.0
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = random_augment(images[idx], config.augment, generator)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        epoch_times.append(time.perf_counter() - start)
        val_acc = accuracy(probabilities(model, val[0], config.eval_batch_size), val[1]) if val else math.nan
        log(f"member {member} epoch {epoch + 1}/{config.num_epochs}: loss {total / steps:.4f}, "
            f"validation {val_acc:.4f}, {epoch_times[-1]:.1f} s")
    return model, epoch_times


def run(name: str, config, command: str, log=print) -> dict[str, Any]:
    """Train every member, evaluate the ensemble once on test; the JSON row."""
    check_supported(config)
    kw = dict(validation_size=config.validation_size,
              validation_seed=None if config.validation_seed < 0 else config.validation_seed)
    folder = config.data_dir or None
    train_split = data.load(config.dataset, "train", folder, **kw)
    if len(train_split.class_names) != 10:
        raise RecipeError(f"torch_recipe: dataset {config.dataset!r} has "
                          f"{len(train_split.class_names)} classes; the PyTorch twins have 10")
    train = to_tensor(train_split)
    if config.train_subset:
        train = tuple(t[:config.train_subset] for t in train)
    val = to_tensor(data.load(config.dataset, "validation", folder, **kw)) if config.validation_size else None
    test = to_tensor(data.load(config.dataset, "test", folder, **kw))
    start = time.perf_counter()
    test_probs, val_probs, epoch_times = [], [], []
    for member in range(config.num_members):
        model, times = train_member(config, member, train, val, log)
        epoch_times += times
        test_probs.append(probabilities(model, test[0], config.eval_batch_size))
        if val:
            val_probs.append(probabilities(model, val[0], config.eval_batch_size))
    ensemble_test = accuracy(torch.stack(test_probs).mean(0), test[1])
    wall = time.perf_counter() - start
    return {
        "config": name,
        "members": config.num_members,
        "epochs": config.num_epochs,
        "member_test_accuracies": [accuracy(p, test[1]) for p in test_probs],
        "member_val_accuracies": [accuracy(p, val[1]) for p in val_probs],
        "ensemble_test_accuracy": ensemble_test,
        "ensemble_val_accuracy": accuracy(torch.stack(val_probs).mean(0), val[1]) if val else None,
        "train_time_s": float(sum(epoch_times)),
        "wall_time_s": wall,
        "time_per_member_epoch_s": float(np.mean(epoch_times)),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device": f"cpu ({cpu_model()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "command": command,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a config name in configs/ (e.g. deotte15)")
    p.add_argument("--members", type=int, help="train only the first N members")
    p.add_argument("--epochs", type=int, help="train N epochs instead of the recipe's (smoke runs)")
    p.add_argument("--train-subset", type=int, default=0, help="first N training images (smoke runs)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON file that gets the run's row")
    args = p.parse_args(argv)
    try:
        config = config_lib.from_file(REPO / "configs" / f"{args.config}.py")
        for name, value in (("num_members", args.members), ("num_epochs", args.epochs)):
            if value is not None:
                if value < 1:
                    raise RecipeError(f"torch_recipe: --{name.split('_')[1]} must be >= 1, got {value}")
                config[name] = value
        config.train_subset = args.train_subset
        torch.set_num_threads(args.threads)
        command = "python experiments/torch_recipe.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        row = run(args.config, config, command)
    except (RecipeError, config_lib.ConfigError, data.DataError) as e:
        sys.exit(str(e))
    reproduce.record(row, args.out)
    print(f"ensemble test accuracy {row['ensemble_test_accuracy']:.4f}, wall time {row['wall_time_s']:.0f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
