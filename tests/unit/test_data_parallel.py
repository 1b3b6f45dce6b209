"""Data parallel on CPU (gloo), two real processes: BatchNorm running statistics are averaged across the
processes at the end of an epoch, so the model rank 0 saves has statistics over every process's batches."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_bn_model() -> torch.nn.Module:
    """conv -> BN (trains) -> conv -> BN (fixed by the strategy: eval mode) -> BN without running stats."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.BatchNorm2d(4),
        torch.nn.BatchNorm2d(4, track_running_stats=False),
    )
    model.train()
    model[3].eval()
    return model


def _rank(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from tasks.train import average_batch_norm

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = tiny_bn_model()
        generator = torch.Generator().manual_seed(100 + rank)  # each process sees its own shard
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 3, 6, 6, generator=generator) * (1 + rank) + rank)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        averaged = average_batch_norm(model, world)
        torch.save({"before": before, "after": model.state_dict(), "averaged": averaged}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_end_the_epoch_with_the_mean_of_their_running_statistics(tmp_path: Path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_rank, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    assert [r["averaged"] for r in ranks] == [1, 1]  # only the BN layer in training mode
    for key in ("1.running_mean", "1.running_var"):
        first, second = (r["before"][key] for r in ranks)
        assert not torch.allclose(first, second)  # the shards differ, so did the statistics
        for r in ranks:
            torch.testing.assert_close(r["after"][key], (first + second) / 2)
    for key in ("3.running_mean", "3.running_var", "1.num_batches_tracked"):  # fixed layer, step counter
        for r in ranks:
            torch.testing.assert_close(r["after"][key], r["before"][key])
    fresh = tiny_bn_model().state_dict()
    torch.testing.assert_close(ranks[0]["after"]["3.running_mean"], fresh["3.running_mean"])


def test_running_statistics_are_the_live_buffers_the_best_epoch_and_checkpoints_keep():
    """Best-epoch keeping and checkpoints copy these tensors in place: they must be the model's own
    buffers (a copy would keep the last epoch's statistics beside the best epoch's weights)."""
    from tasks.train import running_statistics

    model = tiny_bn_model()
    stats = running_statistics(model)
    # the untracked BatchNorm has no running statistics; the fixed one has them (they must travel too)
    assert set(stats) == {"1.running_mean", "1.running_var", "3.running_mean", "3.running_var"}
    assert stats["1.running_mean"] is model[1].running_mean
    kept = {name: value.clone() for name, value in stats.items()}
    with torch.no_grad():
        model(torch.randn(8, 3, 6, 6) + 3)  # an epoch moves the statistics of the training layer
        assert not torch.equal(model[1].running_mean, kept["1.running_mean"])
        for name, value in kept.items():  # what _keep_best does with the best epoch's copy
            stats[name].copy_(value)
    assert torch.equal(model[1].running_mean, kept["1.running_mean"])
    assert running_statistics(torch.nn.Linear(2, 2)) == {}
