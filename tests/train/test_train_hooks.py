from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.data.calibration import make_loader
from edgecompress.errors import UserError
from edgecompress.train import TrainConfig, seed_everything, train
from edgecompress.train.hooks import TrainHook
from tiny_task import tiny_data, tiny_model


CFG = TrainConfig(epochs=2, lr=0.1, batch_size=16, warmup_epochs=0.5, label_smoothing=0.1, seed=7, restore_best=False)


def run(*, hooks=(), checkpoint_dir=None, on_epoch_end=None, model_seed=0, config=CFG, **kw):
    seed_everything(model_seed)
    model = tiny_model()
    train_ds = tiny_data(96, seed=1)
    train_ds.augment = True  # draws from torch's global RNG, which resume must restore
    tl = make_loader(train_ds, 16, shuffle=True, seed=3)  # 6 steps per epoch
    vl = make_loader(tiny_data(32, seed=2), 32, shuffle=False)
    history = train(model, tl, vl, config, checkpoint_dir=checkpoint_dir, progress=False, on_epoch_end=on_epoch_end, hooks=hooks, **kw)
    return model, history


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Recorder(TrainHook):
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def loss(self, model, x, y, logits, loss):
        self.log.append((self.name, "loss"))
        return loss

    def after_backward(self, model, step):
        assert all(p.grad is not None for p in model.parameters())
        self.log.append((self.name, "after_backward", step))

    def after_step(self, model, step):
        self.log.append((self.name, "after_step", step))


def test_hooks_run_in_order_with_global_steps():
    torch.set_num_threads(1)
    log: list = []

    def criterion(x, y, logits):
        log.append(("criterion",))
        return F.cross_entropy(logits, y, label_smoothing=0.1)

    hooked, _ = run(hooks=[Recorder("a", log), Recorder("b", log)], criterion=criterion)
    per_step = lambda s: [  # noqa: E731
        ("criterion",), ("a", "loss"), ("b", "loss"),
        ("a", "after_backward", s), ("b", "after_backward", s), ("a", "after_step", s), ("b", "after_step", s),
    ]
    assert log == [e for s in range(12) for e in per_step(s)]
    # Hooks that change nothing and a criterion equal to the default give the default run bit for bit.
    plain, _ = run()
    assert same_weights(plain, hooked)


class AddConstant(TrainHook):
    def loss(self, model, x, y, logits, loss):
        return loss + 1.0


def test_loss_hook_terms_are_in_train_loss():
    torch.set_num_threads(1)
    plain_model, plain = run()
    model, hooked = run(hooks=[AddConstant()])
    # A constant has no gradient: same weights, reported loss exactly 1 higher.
    assert same_weights(plain_model, model)
    for p, h in zip(plain.epochs, hooked.epochs):
        assert h.train_loss == pytest.approx(p.train_loss + 1.0, abs=1e-6)
        assert h.val_loss == p.val_loss


class BlowUpGrads(TrainHook):
    """Scales grads by 1e6 after backward; records how far the first step moved the weights."""

    def after_backward(self, model, step):
        if step == 0:
            self.before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad.mul_(1e6)

    def after_step(self, model, step):
        if step == 0:
            self.moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), self.before)))


def test_gradient_clipping_sees_what_after_backward_added():
    torch.set_num_threads(1)
    hook = BlowUpGrads()
    config = TrainConfig(epochs=1, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, batch_size=16, grad_clip=0.01)
    run(hooks=[hook], config=config)
    # Plain SGD moves by lr * (clipped grad norm) = 0.1 * 0.01, whatever the hook's factor.
    assert float(hook.moved) == pytest.approx(0.1 * 0.01, rel=1e-4)


class ZeroChannel(TrainHook):
    """A pruning mask: channel 0 of the first conv stays zero."""

    def after_step(self, model, step):
        with torch.no_grad():
            model[0].weight[0] = 0
            model[0].bias[0] = 0


def test_mask_hook_holds_in_validated_and_best_weights(tmp_path):
    torch.set_num_threads(1)
    config = TrainConfig(**{**CFG.to_dict(), "restore_best": True})
    model, history = run(hooks=[ZeroChannel()], config=config, checkpoint_dir=tmp_path)
    assert history.best_epoch is not None
    assert torch.count_nonzero(model[0].weight[0]) == 0 and model[0].bias[0] == 0
    best = torch.load(tmp_path / "last.pt", weights_only=True)["best_state"]
    assert torch.count_nonzero(best["0.weight"][0]) == 0


class Shrinker(TrainHook):
    """Stateful: an L2 penalty on the logits whose weight decays each step (a schedule)."""

    def __init__(self):
        self.weight = torch.tensor(0.5)
        self.calls = 0

    def loss(self, model, x, y, logits, loss):
        return loss + self.weight * logits.pow(2).mean()

    def after_step(self, model, step):
        assert step == self.calls  # the global step survives the resume too
        self.weight = self.weight * 0.8
        self.calls += 1

    def state_dict(self):
        return {"weight": self.weight.clone(), "calls": self.calls}

    def load_state_dict(self, state):
        self.weight, self.calls = state["weight"].clone(), state["calls"]


def stop_after_first(record):
    if record.epoch == 1:
        raise KeyboardInterrupt


def test_hook_state_is_checkpointed_and_resume_is_exact(tmp_path, capsys):
    torch.set_num_threads(1)
    ref_hook = Shrinker()
    ref_model, ref_history = run(hooks=[ref_hook])
    assert ref_hook.calls == 12 and float(ref_hook.weight) == pytest.approx(0.5 * 0.8**12, rel=1e-5)
    assert not same_weights(ref_model, run()[0])  # the hook really changes training

    with pytest.raises(KeyboardInterrupt):
        run(hooks=[Shrinker()], checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    assert "interrupted after epoch 1/2" in capsys.readouterr().err
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["hook_types"] == [f"{__name__}.Shrinker"]
    assert saved["hooks"][0]["calls"] == 6

    # Fresh hook state and a different init: both must come from the checkpoint.
    hook = Shrinker()
    model, history = run(hooks=[hook], checkpoint_dir=tmp_path, model_seed=123)
    assert history.resumed_from == 1
    assert hook.calls == 12 and torch.equal(hook.weight, ref_hook.weight)
    assert [r.train_loss for r in history.epochs] == [r.train_loss for r in ref_history.epochs]
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_uses_the_saved_hook_state(tmp_path):
    torch.set_num_threads(1)
    ref_model, _ = run(hooks=[Shrinker()])
    with pytest.raises(KeyboardInterrupt):
        run(hooks=[Shrinker()], checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    # Tamper with the saved hook state: the resumed run must follow it, so it ends elsewhere.
    path = tmp_path / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["hooks"][0]["weight"] = torch.tensor(0.5)
    torch.save(payload, path)
    model, _ = run(hooks=[Shrinker()], checkpoint_dir=tmp_path)
    assert not same_weights(ref_model, model)


def test_resume_with_other_hooks_is_refused_and_old_checkpoints_load(tmp_path):
    torch.set_num_threads(1)
    with pytest.raises(KeyboardInterrupt):
        run(hooks=[Shrinker()], checkpoint_dir=tmp_path, on_epoch_end=stop_after_first)
    with pytest.raises(UserError, match=r"written with hooks \[.*Shrinker\], this run has \[\]; resume with the same hooks"):
        run(checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match=r"this run has \[.*AddConstant\]"):
        run(hooks=[AddConstant()], checkpoint_dir=tmp_path)

    # A checkpoint written before hooks existed (no hook keys) resumes a hook-less run.
    ref_model, _ = run()
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint_dir=tmp_path, on_epoch_end=stop_after_first, resume=False)
    path = tmp_path / "last.pt"
    payload = torch.load(path, weights_only=True)
    del payload["hooks"], payload["hook_types"]
    torch.save(payload, path)
    model, history = run(checkpoint_dir=tmp_path, model_seed=5)
    assert history.resumed_from == 1 and same_weights(ref_model, model)


def test_hooks_must_be_train_hooks():
    with pytest.raises(TypeError, match="hooks must be TrainHook instances, got function"):
        run(hooks=[lambda *a: None])
