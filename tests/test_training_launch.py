"""The training loop's shared plumbing (training/launch.py): which batches a resumed run sees, and
checkpoints that survive a stop while saving."""

from __future__ import annotations

import argparse

import pytest
import torch
from accelerate import Accelerator

from geosr.training.launch import checkpoint_to_resume, save_checkpoint, training_batches


class _Epochs(torch.utils.data.Dataset):
    """``n`` items that say which epoch drew them."""

    def __init__(self, n: int = 8) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([self.epoch, i])


def _batches(start: int, count: int, n: int = 8, batch_size: int = 4, accumulation: int = 1) -> list:
    """``count`` batches of a run (new process: a new accelerator and loader) from its step ``start``,
    as ``(epoch, item indices)``."""
    accelerator = Accelerator(gradient_accumulation_steps=accumulation)
    loader = accelerator.prepare(torch.utils.data.DataLoader(_Epochs(n), batch_size=batch_size))
    args = argparse.Namespace(max_train_steps=99, gradient_accumulation_steps=accumulation)
    seen = []
    for batch in training_batches(accelerator, loader, start, args):
        seen.append((int(batch[0, 0]), batch[:, 1].tolist()))
        if len(seen) == count:
            return seen
    return seen


@pytest.mark.parametrize("start", [1, 2, 5])
def test_a_resumed_run_sees_the_batches_the_uninterrupted_run_sees(start):
    """Found by review: accelerate's loader set the dataset's epoch to its own count, 0 in a new
    process: a run resumed at epoch 2 drew epoch 0's crops and degradations again."""
    full = _batches(0, start + 3)
    assert [epoch for epoch, _ in full] == [0, 0, 1, 1, 2, 2, 3, 3][:start + 3]
    assert _batches(start, 3) == full[start:]


def test_a_short_last_accumulation_group_counts_as_an_update():
    """5 batches an epoch, 2 accumulated: accelerate steps the optimizer 3 times an epoch (the last
    group short), so a run resumed after 3 updates begins the next epoch (it began inside this one)."""
    assert _batches(3, 1, n=10, batch_size=2, accumulation=2) == [(1, [0, 1])]


def test_a_stop_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """Found by review: with checkpoints_total_limit 1 the last checkpoint was removed before the new
    one was written; a run stopped while saving kept a partial checkpoint or none, and a resume then
    failed or silently started the stage again at step 0."""
    accelerator = Accelerator()
    accelerator.prepare(torch.nn.Linear(2, 2))
    first = save_checkpoint(accelerator, tmp_path, 250, total_limit=1)
    assert checkpoint_to_resume(tmp_path, "latest") == first

    def killed(path):  # the session ends half-way through the save
        (tmp_path / ".checkpoint-500.partial").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(accelerator, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 500, total_limit=1)
    assert checkpoint_to_resume(tmp_path, "latest") == first and first.is_dir()
    monkeypatch.undo()
    second = save_checkpoint(accelerator, tmp_path, 500, total_limit=1)
    assert checkpoint_to_resume(tmp_path, "latest") == second and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-500"]
