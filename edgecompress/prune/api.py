"""`edgecompress prune`: prune (and optionally fine-tune) one model and save it, as one call."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import torch

from edgecompress.errors import UserError


def prune_command(
    loaded,
    input_shape: tuple[int, int, int],
    params: dict[str, Any],
    *,
    device: str = "host",
    out: str | Path,
    force: bool = False,
    finetune_epochs: int = 0,
    kd: bool = True,
    data_dir: str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Prune `loaded.model` with the `prune` step's `params`, fine-tune if asked, write out/model.pt + prune.json.

    Returns the report written to prune.json, with a `summary` list of console lines.
    Bad parameters raise UserError before anything is written.
    """
    from edgecompress.devices import get_device
    from edgecompress.fsutil import atomic_directory, atomic_write_json
    from edgecompress.models.loading import save_checkpoint
    from edgecompress.pipeline.steps import StepContext
    from edgecompress.prune.steps import _prune_config, finetune_step, prune_step

    try:
        _prune_config(params)
    except ValueError as exc:
        raise UserError(f"prune: {exc}") from None
    if finetune_epochs < 0:
        raise UserError(f"--finetune-epochs {finetune_epochs} must be >= 0")
    dev = get_device(device)
    needs_data = finetune_epochs > 0 or params.get("importance") == "taylor"
    splits = None
    if needs_data:
        from edgecompress.data.fashion_mnist import fashion_mnist_splits

        splits = fashion_mnist_splits(input_shape, data_dir=data_dir, val_size=5000, seed=seed)
    model = loaded.model.eval()
    original = copy.deepcopy(model)
    out = Path(out)
    work = out.with_name(f".{out.name}.work")
    ctx = StepContext(input_shape=tuple(input_shape), seed=seed, splits=splits, device=dev, work_dir=work, original=original)
    with atomic_directory(out, force=force) as tmp:
        prune_step(model, params, ctx)
        if finetune_epochs:
            finetune_step(model, {"epochs": finetune_epochs, "kd": {} if kd else False}, ctx)
        model.eval()
        if loaded.arch is not None:
            save_checkpoint(model, tmp / "model.pt", arch_spec=loaded.arch["spec"], arch_kwargs=loaded.arch.get("kwargs", {}),
                            input_shape=input_shape, meta={"pruned": ctx.records["prune"][-1]["config"]})
            saved_as = "edgecompress checkpoint (architecture + pruned shapes)"
        else:  # no architecture to rebuild from: TorchScript keeps the pruned structure
            traced = torch.jit.trace(model, torch.zeros(1, *input_shape))
            traced.save(str(tmp / "model.pt"))
            saved_as = "TorchScript (the source model has no recorded architecture)"
        result = ctx.records["prune"][-1]
        report = {
            "schema": "edgecompress.prune/1",
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"spec": loaded.spec, "arch": loaded.arch, "input_shape": list(input_shape)},
            "device": dev.name,
            "model_file": saved_as,
            "prune": result,
            "finetune": ctx.records.get("finetune", []),
            "summary": [ctx.notes[0]],  # the per-layer lines were printed by the step
        }
        atomic_write_json(tmp / "prune.json", report)
    shutil.rmtree(work, ignore_errors=True)
    return report

