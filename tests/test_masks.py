"""Learned weight masks: the estimator, the storage, what a mask learns, the analysis, and
forgetting a module with its masks."""

import json

import pytest
import torch
from conftest import run_cli

from modpool import ModpoolError, Pool
from modpool.analysis.masks import analyse_masks, exclusive
from modpool.store.encoding import pack_mask, unpack_bits
from modpool.train import MaskConfig, TrainConfig
from modpool.train.masking import gumbel_sigmoid


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_straight_through_estimator_gives_logits_gradients():
    logits = torch.full((1000,), 2.0, requires_grad=True)
    sample = gumbel_sigmoid(logits, 1.0, torch.Generator().manual_seed(0))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}  # hard in the forward
    assert 0.7 < float(sample.detach().mean()) < 0.95  # sigmoid(2) = 0.88 of the weights kept
    (sample * torch.arange(1.0, 1001.0)).sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())  # soft in the backward


def test_bits_round_trip():
    for n in (1, 7, 8, 9, 1001):
        mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
        packed = pack_mask(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-n // 8)
        assert torch.equal(unpack_bits(packed, n), mask)


def module_delta(pool: Pool, seed: int, scale: float = 1e-2) -> dict:
    return {
        n: scale * randn(s, seed * 1000 + i) for i, (n, (s, _)) in enumerate(pool.manifest.items())
    }


def test_masked_modules_store_their_bits(clip_pool):
    from modpool.store.modules import save_masked_module

    delta = module_delta(clip_pool, 0)
    clip_pool.save_module("m", delta, "digits", "nonlinear")
    ones = {n: torch.ones(v.shape, dtype=torch.bool) for n, v in delta.items()}
    meta = {"of": "m", "task": "digits", "stored": "kept"}
    save_masked_module(clip_pool, "m@all", delta, ones, "digits", "nonlinear", "nonlinear", meta)
    back = clip_pool.read("m@all").tensors
    assert all(torch.equal(back[n], delta[n]) for n in delta)  # all ones: the module, bit for bit
    half = {n: randn(v.shape, 7 + i) > 0 for i, (n, v) in enumerate(delta.items())}
    masked = {n: v * half[n] for n, v in delta.items()}
    save_masked_module(clip_pool, "m@half", masked, half, "digits", "nonlinear", "nonlinear", meta)
    with clip_pool.open_artifact("m@half") as opened:
        assert all(torch.equal(opened.stored_mask(n), half[n]) for n in delta)
    assert all(torch.equal(clip_pool.read("m@half").tensors[n], masked[n]) for n in delta)
    full, small = (
        clip_pool.entry("m").path.stat().st_size,
        clip_pool.entry("m@half").path.stat().st_size,
    )
    assert small < 0.6 * full  # half the values plus 1 bit per weight


def test_mask_keeps_a_confined_delta_and_drops_the_rest(clip_pool):
    # a useful delta confined to the last block and the layers after it: the tensors
    # before it are in the module, with zero delta
    cfg = TrainConfig(steps=40, epochs=None, lr=1e-2, batch_size=32, warmup=2, last_blocks=1)
    clip_pool.finetune("digits", cfg, "tuned", show_progress=False)
    tuned = clip_pool.read("tuned").tensors
    confined = {n: tuned.get(n, torch.zeros(s)) for n, (s, _) in clip_pool.manifest.items()}
    clip_pool.save_module("confined", confined, "digits", "nonlinear")
    mask_cfg = MaskConfig(beta=1.0, steps=60, epochs=None, lr=0.05)
    entry = clip_pool.mask("confined", cfg=mask_cfg, show_progress=False)
    assert entry.name == "confined@mask" and entry.meta["mask"]["of"] == "confined"
    kept = entry.meta["mask"]["kept"]
    inside = [kept[n] for n in kept if n in tuned]
    outside = [kept[n] for n in kept if n not in tuned]
    assert len(outside) > 10 and max(outside) < 0.05  # no gradient but beta's: out
    assert sum(inside) / len(inside) > 0.3  # the task needs these
    assert clip_pool.evaluate("confined@mask", ["digits"], "val")[0].accuracy >= 0


def test_mask_resumes_to_the_same_mask(clip_pool, monkeypatch):
    import modpool.train.masking as masking

    clip_pool.save_module("m", module_delta(clip_pool, 1), "digits", "nonlinear")
    cfg = MaskConfig(steps=4, epochs=None, batch_size=16)
    whole = clip_pool.mask("m", output="whole", cfg=cfg, show_progress=False, checkpoint_every=2)

    def stop_at_three(step):
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(masking, "crash_at_step", stop_at_three)
    with pytest.raises(KeyboardInterrupt):
        clip_pool.mask("m", output="cut", cfg=cfg, show_progress=False, checkpoint_every=2)
    assert (clip_pool.root / "checkpoints" / "cut.safetensors").exists()
    monkeypatch.setattr(masking, "crash_at_step", lambda step: None)
    with pytest.raises(ModpoolError, match="--resume"):
        clip_pool.mask("m", output="cut", cfg=cfg, show_progress=False, checkpoint_every=2)
    cut = clip_pool.mask(
        "m", output="cut", cfg=cfg, show_progress=False, checkpoint_every=2, resume=True
    )
    assert cut.meta["mask"]["kept"] == whole.meta["mask"]["kept"]
    a, b = clip_pool.read("whole").tensors, clip_pool.read("cut").tensors
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not (clip_pool.root / "checkpoints" / "cut.safetensors").exists()


def _pattern_masks(pool: Pool, keep_a, keep_b):
    """Two masks with a known pattern: entry i kept by A when keep_a(i), by B when keep_b(i)."""
    from modpool.store.modules import save_masked_module

    masks = {}
    for label, keep, seed in (("a", keep_a, 1), ("b", keep_b, 2)):
        task = "digits" if label == "a" else "mnist"
        delta = module_delta(pool, seed)
        pool.save_module(label, delta, task, "nonlinear")
        mask = {n: keep(torch.arange(v.numel())).reshape(v.shape) for n, v in delta.items()}
        masked = {n: v * mask[n] for n, v in delta.items()}
        meta = {"of": label, "task": task, "stored": "kept"}
        save_masked_module(
            pool, f"{label}@mask", masked, mask, task, "nonlinear", "nonlinear", meta
        )
        masks[label] = mask
    return masks


def test_iou_shared_and_removal_by_hand(clip_pool):
    masks = _pattern_masks(clip_pool, lambda i: i % 4 < 2, lambda i: i % 4 % 2 == 0)
    result = analyse_masks(clip_pool, ["a@mask", "b@mask"], split="val")
    both = sum(int((masks["a"][n] & masks["b"][n]).sum()) for n in masks["a"])
    either = sum(int((masks["a"][n] | masks["b"][n]).sum()) for n in masks["a"])
    kept_a = sum(int(masks["a"][n].sum()) for n in masks["a"])
    pair = result["pairs"]["a@mask|b@mask"]
    assert pair["iou"] == both / either and pair["shared"] == both / kept_a
    tensor = "proj"  # 64 x 64: exactly a quarter of the entries in each class
    assert pair["per_tensor"][tensor] == {"iou": 1 / 3, "shared": 0.5}
    assert result["kept"]["a@mask"]["per_tensor"][tensor] == 0.5
    only_a = exclusive({k + "@mask": v for k, v in masks.items()}, "a@mask", list(masks["a"]))
    assert all(torch.equal(only_a[n], masks["a"][n] & ~masks["b"][n]) for n in only_a)
    removal = result["removal"]
    assert removal["none"]["a@mask"] == clip_pool.evaluate("a", ["digits"], "val")[0].accuracy
    cut = {n: v * ~only_a[n] for n, v in clip_pool.read("a").tensors.items()}
    clip_pool.save_module("a-cut", cut, "digits", "nonlinear")
    assert removal["a@mask"]["a@mask"] == clip_pool.evaluate("a-cut", ["digits"], "val")[0].accuracy
    with pytest.raises(ModpoolError, match="not a mask"):
        analyse_masks(clip_pool, ["a", "b@mask"])


def test_forget_takes_the_masks_and_rebuilds_their_dependants(clip_pool):
    _pattern_masks(clip_pool, lambda i: i % 3 == 0, lambda i: i % 2 == 0)
    clip_pool.compose(["a@mask", "b"], "uses-mask", "sum", 0.5)
    clip_pool.compose(["a", "b"], "uses-module", "tsv", 0.5)
    report = clip_pool.forget("a")
    assert report.masks == ["a@mask"] and not clip_pool.exists("a@mask")
    assert {r["name"] for r in report.rebuilt} == {"uses-mask", "uses-module"}
    clip_pool.compose(["b"], "fresh-sum", "sum", 0.5)
    clip_pool.compose(["b"], "fresh-tsv", "tsv", 0.5)
    for rebuilt, fresh in (("uses-mask", "fresh-sum"), ("uses-module", "fresh-tsv")):
        x, y = clip_pool.read(rebuilt).tensors, clip_pool.read(fresh).tensors
        assert all(torch.equal(x[n], y[n]) for n in x)
    forgets = [r for r in clip_pool.audit_log() if r["action"] == "forget"]
    assert forgets[-1]["masks"] == ["a@mask"]


def test_mask_commands(clip_pool, tmp_path, capsys):
    clip_pool.save_module("digits", module_delta(clip_pool, 3), "digits", "nonlinear")
    clip_pool.save_module("mnist", module_delta(clip_pool, 4), "mnist", "nonlinear")
    p = ["--pool", str(clip_pool.root)]
    fast = ["--steps", "3", "--batch-size", "16"]
    for args in (["digits", *fast], ["mnist", *fast], ["--base", "--task", "digits", *fast]):
        code, out, err = run_cli([*p, "mask", *args], capsys)
        assert code == 0, err
        assert "kept" in out
    assert {"digits@mask", "mnist@mask", "base@digits"} <= {e.name for e in clip_pool.entries()}
    base_mask = clip_pool.entry("base@digits").meta["mask"]
    assert base_mask["of"] == "base" and base_mask["stored"] == "removed"
    code, _, err = run_cli([*p, "mask", "digits@mask"], capsys)
    assert code == 1 and "already a mask" in err
    prefix = tmp_path / "analysis"
    code, out, err = run_cli(
        [*p, "masks", "digits@mask", "mnist@mask", "-o", str(prefix), "--split", "val"], capsys
    )
    assert code == 0, err
    assert "IoU" in out and "removed" in out and "kept fraction" in out
    saved = json.loads(prefix.with_suffix(".json").read_text())
    assert set(saved["removal"]) == {"none", "digits@mask", "mnist@mask"}
    assert prefix.with_suffix(".png").exists()
    code, _, err = run_cli([*p, "masks", "digits@mask", "base@digits"], capsys)
    assert code == 1 and "same kind" in err
