#!/usr/bin/env python
"""Train the bundled demo model: zoo MobileNetV2 on Fashion-MNIST (28 px, grey).

Writes OUT (an edgecompress checkpoint, loadable with `load_model(OUT)`) and OUT with
suffix .json: the recipe, seed, versions, train time, val/test top-1/top-5 and the
sha256 of OUT. Per-epoch checkpoints go to --work-dir; `--resume` continues a run
that was stopped. The data comes from the Debian package `dataset-fashion-mnist`.

    nice -n 10 .venv/bin/python tools/train_demo_model.py            # the bundled model
    .venv/bin/python tools/train_demo_model.py --resume               # after Ctrl-C
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from edgecompress.versions import installed_version

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "demo" / "fmnist_mobilenetv2.pt"
DEFAULT_WORK_DIR = REPO / "runs" / "demo_train"
MAX_BYTES = 10 * 1024 * 1024  # the bundled file must stay small enough for the repo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--arch", default="mobilenet_v2", help="zoo model to train (e.g. resnet20 for the search benchmarks)")
    p.add_argument("--width-mult", type=float, default=0.5, help="width multiplier")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write (sidecar: same name, .json)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: $EDGECOMPRESS_DATA or the Debian package path)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="per-epoch training checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work-dir")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from torch.utils.data import Subset

    import edgecompress
    from edgecompress.data import fashion_mnist as fm
    from edgecompress.data.calibration import make_loader
    from edgecompress.errors import UserError
    from edgecompress.fsutil import atomic_write_json, sha256_file
    from edgecompress.models import create_model
    from edgecompress.models.loading import save_checkpoint
    from edgecompress.train import TrainConfig, evaluate, seed_everything, train

    torch.set_num_threads(args.threads)
    progress = {"auto": True, "always": "always", "never": False}[args.progress]
    input_shape = (1, 28, 28)
    arch_kwargs = {"num_classes": 10, "in_channels": 1, "width_mult": args.width_mult, "input_size": 28}
    try:
        config = TrainConfig(
            epochs=args.epochs, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay,
            batch_size=args.batch_size, label_smoothing=args.label_smoothing, optimizer="sgd",
            schedule="cosine", warmup_epochs=args.warmup_epochs, seed=args.seed, restore_best=True,
        )
        splits = fm.fashion_mnist_splits(input_shape, args.data_dir, args.val_size, args.seed, augment=not args.no_augment)
        train_set = splits.train
        if args.train_limit is not None:
            train_set = Subset(train_set, range(min(args.train_limit, len(train_set))))
        seed_everything(args.seed)
        model = create_model(args.arch, **arch_kwargs)
        train_loader = make_loader(train_set, config.batch_size, shuffle=True, seed=args.seed)
        val_loader = make_loader(splits.val, 500, shuffle=False)
        test_loader = make_loader(splits.test, 500, shuffle=False)
        if not args.resume and (args.work_dir / "last.pt").exists():
            print(f"starting over: the checkpoint in {args.work_dir} will be replaced (pass --resume to continue it)", file=sys.stderr)
        t0 = time.perf_counter()
        history = train(model, train_loader, val_loader, config, checkpoint_dir=args.work_dir, resume=args.resume, progress=progress)
        val = evaluate(model, val_loader, progress=progress)
        test = evaluate(model, test_loader, progress=progress)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    params = sum(p.numel() for p in model.parameters())
    recipe = {
        "model": f"zoo:{args.arch}",
        "arch_kwargs": arch_kwargs,
        "input_shape": list(input_shape),
        "train": config.to_dict(),
        "augment": None if args.no_augment else "random crop (zero padding 2) + horizontal flip",
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "normalisation": {"mean": [fm.MEAN], "std": [fm.STD], "pixel_scale": "1/255"},
        "val_size": args.val_size,
        "train_size": len(train_set),
        "split_seed": args.seed,
        "eval_batch_size": 500,
        "threads": args.threads,
    }
    metrics = {
        "val": {"top1": val.top1, "top5": val.top5, "loss": val.loss, "n": val.n},
        "test": {"top1": test.top1, "top5": test.top5, "loss": test.loss, "n": test.n},
        "best_epoch": history.best_epoch,
    }
    meta = {
        "dataset": "fashion-mnist",
        "class_names": list(fm.CLASS_NAMES),
        "normalisation": recipe["normalisation"],
        "val_top1": val.top1,
        "test_top1": test.top1,
        "test_top5": test.top5,
        "seed": args.seed,
        "recipe": "tools/train_demo_model.py (see the .json sidecar)",
    }
    out: Path = args.out
    save_checkpoint(model, out, arch_spec=f"zoo:{args.arch}", arch_kwargs=arch_kwargs, input_shape=input_shape, meta=meta)
    size = out.stat().st_size
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": installed_version("torchvision"),
        "edgecompress": edgecompress.__version__,
        "numpy": installed_version("numpy"),
    }
    sidecar = {
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": size,
        "params": params,
        "recipe": recipe,
        "seed": args.seed,
        "metrics": metrics,
        "train_seconds": round(history.seconds, 1),
        "wall_seconds_this_run": round(time.perf_counter() - t0, 1),
        "resumed_from_epoch": history.resumed_from,
        "history": history.to_dict()["epochs"],
        "versions": versions,
        "machine": {"cpu": platform.processor() or platform.machine(), "system": platform.system()},
    }
    atomic_write_json(out.with_suffix(".json"), sidecar)

    print(
        f"\nzoo:{args.arch} width {args.width_mult}: {params:,} params, {size / 1e6:.2f} MB -> {out}\n"
        f"epochs {len(history.epochs)} (best {history.best_epoch}), train time {history.seconds / 60:.1f} min on {args.threads} threads\n"
        f"val  top1 {val.top1:.2%}  top5 {val.top5:.2%}\n"
        f"test top1 {test.top1:.2%}  top5 {test.top5:.2%}\n"
        f"sidecar {out.with_suffix('.json')}"
    )
    if size > MAX_BYTES:
        print(f"error: {out} is {size} bytes, over the {MAX_BYTES}-byte limit for the bundled model; lower --width-mult", file=sys.stderr)
        return 1
    return 0



if __name__ == "__main__":
    sys.exit(main())
