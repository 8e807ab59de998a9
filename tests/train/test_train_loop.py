from __future__ import annotations

import pytest
import torch

from edgecompress.data.calibration import make_loader
from edgecompress.errors import UserError
from edgecompress.train import TrainConfig, evaluate, seed_everything, train
from tiny_task import tiny_data, tiny_model


CFG = TrainConfig(epochs=4, lr=0.1, batch_size=16, warmup_epochs=0.5, label_smoothing=0.1, seed=7, restore_best=False)


def loaders(augment: bool = True):
    train_ds = tiny_data(96, seed=1)
    train_ds.augment = augment  # exercises torch's global RNG, which resume must restore
    return make_loader(train_ds, 16, shuffle=True, seed=3), make_loader(tiny_data(32, seed=2), 32, shuffle=False)


def run(checkpoint_dir=None, on_epoch_end=None, model_seed=0, config=CFG, progress=False, **kw):
    seed_everything(model_seed)
    model = tiny_model()
    tl, vl = loaders()
    history = train(model, tl, vl, config, checkpoint_dir=checkpoint_dir, progress=progress, on_epoch_end=on_epoch_end, **kw)
    return model, history


def strip_seconds(history):
    return [{k: v for k, v in vars(r).items() if k != "seconds"} for r in history.epochs]


def test_learns_and_keeps_best(tmp_path):
    torch.set_num_threads(1)
    seed_everything(0)
    model = tiny_model()
    tl, vl = loaders(augment=False)
    cfg = TrainConfig(epochs=6, lr=0.2, batch_size=16, seed=0, restore_best=True)
    history = train(model, tl, vl, cfg, checkpoint_dir=tmp_path, progress=False)
    assert len(history.epochs) == 6 and history.resumed_from == 0
    tops = [r.val_top1 for r in history.epochs]
    assert history.best_val_top1 == max(tops) >= 0.9
    assert history.best_epoch == tops.index(max(tops)) + 1
    # The model holds the best epoch's weights, not necessarily the last epoch's.
    assert evaluate(model, vl, progress=False).top1 == history.best_val_top1
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert all(torch.equal(saved["best_state"][k], v) for k, v in model.state_dict().items())


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, capsys):
    torch.set_num_threads(1)
    ref_model, ref_history = run()

    def stop_after_two(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, on_epoch_end=stop_after_two)
    err = capsys.readouterr().err
    assert "interrupted after epoch 2/4" in err and "2 finished epoch(s) are saved" in err and "--resume" in err
    # A different init proves the weights come from the checkpoint.
    model, history = run(tmp_path, model_seed=123)
    assert history.resumed_from == 2
    assert strip_seconds(history) == strip_seconds(ref_history)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


class Exploding(torch.utils.data.Dataset):
    """Wraps a dataset and raises KeyboardInterrupt on its Nth batch fetch (a Ctrl-C mid-epoch)."""

    def __init__(self, inner, at_fetch):
        self.inner, self.at_fetch, self.fetches = inner, at_fetch, 0
        self.targets = inner.targets

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def __getitems__(self, idx):
        self.fetches += 1
        if self.fetches == self.at_fetch:
            raise KeyboardInterrupt
        return self.inner.__getitems__(idx)


def test_resume_after_kill_mid_epoch(tmp_path, capsys):
    torch.set_num_threads(1)
    ref_model, ref_history = run()
    seed_everything(0)
    model = tiny_model()
    tl, vl = loaders()
    # 6 batches per epoch: fetch 16 is inside epoch 3.
    tl = make_loader(Exploding(tl.dataset, at_fetch=16), 16, shuffle=True, seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(model, tl, vl, CFG, checkpoint_dir=tmp_path, progress=False)
    assert "interrupted during epoch 3/4" in capsys.readouterr().err
    model, history = run(tmp_path, model_seed=9)
    assert history.resumed_from == 2
    assert strip_seconds(history) == strip_seconds(ref_history)
    for a, b in zip(ref_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_of_finished_run_and_mismatch(tmp_path):
    torch.set_num_threads(1)
    model, history = run(tmp_path)
    again_model, again = run(tmp_path, model_seed=5)
    assert again.resumed_from == 4 and strip_seconds(again) == strip_seconds(history)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again_model.state_dict().values()))
    other = TrainConfig(**{**CFG.to_dict(), "lr": 0.05})
    with pytest.raises(UserError, match=r"lr 0.1 -> 0.05"):
        run(tmp_path, config=other)
    # resume=False starts over and rewrites the checkpoint.
    _, fresh = run(tmp_path, config=other, resume=False)
    assert fresh.resumed_from == 0 and len(fresh.epochs) == 4


def test_corrupt_checkpoint_and_divergence(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read training checkpoint"):
        run(tmp_path)
    with pytest.raises(UserError, match="diverged"):
        run(config=TrainConfig(epochs=1, lr=1e30, batch_size=16, no_decay_1d=False))


def test_adamw_and_grad_clip_run():
    torch.set_num_threads(1)
    _, history = run(config=TrainConfig(epochs=2, lr=0.01, optimizer="adamw", grad_clip=1.0, batch_size=16))
    assert len(history.epochs) == 2 and history.epochs[-1].train_loss < history.epochs[0].train_loss + 0.5


def test_log_lines_without_terminal(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")  # bars off, plain lines on
    torch.set_num_threads(1)
    run(config=TrainConfig(epochs=1, batch_size=16), progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1  step 3/6  loss" in err and "val top1" in err and "\x1b[" not in err
    run(config=TrainConfig(epochs=1, batch_size=16), progress=False)
    assert capsys.readouterr().err == ""
