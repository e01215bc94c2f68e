"""The CLI end to end on the tiny open_clip config and on the offline base."""

import json

from conftest import run_cli

FAST = ["--steps", "2", "--batch-size", "8", "--warmup", "1"]


def _ok(args, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out


def test_tiny_clip_workflow(tmp_path, capsys):
    """The mission's own lines, as typed: modules are named after their tasks."""
    p = ["--pool", str(tmp_path / "pool")]
    _ok([*p, "init", "--base", "tiny-clip"], capsys)
    _ok([*p, "finetune", "--task", "digits", *FAST], capsys)
    _ok([*p, "finetune", "--task", "mnist", *FAST], capsys)
    out = _ok([*p, "finetune", "--task", "digits", "--mode", "tangent", *FAST, "--json"], capsys)
    tangent = json.loads(out)
    assert tangent["name"] == "digits-tangent" and tangent["kind"] == "tangent"
    assert tangent["hparams"]["steps_run"] == 2
    listed = json.loads(_ok([*p, "list", "--json"], capsys))
    assert {e["name"] for e in listed} == {"digits", "mnist", "digits-tangent"}
    shown = json.loads(_ok([*p, "show", "mnist", "--json"], capsys))
    assert shown["mode"] == "nonlinear" and shown["task"] == "mnist"
    _ok([*p, "add", "digits", "mnist", "-o", "both", "--alpha", "0.3"], capsys)
    _ok([*p, "compose", "digits", "mnist", "-o", "merged"], capsys)
    _ok(
        [*p, "compose", "digits", "mnist", "-o", "avg", "--method", "mean", "--coef", "mnist=2"],
        capsys,
    )
    rows = json.loads(_ok([*p, "eval", "both", "--json"], capsys))
    assert [r["task"] for r in rows] == ["digits", "mnist"]
    assert all(0 <= r["accuracy"] <= 1 and r["normalized"] is not None for r in rows)
    again = json.loads(_ok([*p, "eval", "both", "--json"], capsys))
    assert all(r["cached"] for r in again)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    rows = json.loads(
        _ok([*p, "eval", "digits-tangent", "--task", "digits", "--split", "val", "--json"], capsys)
    )
    assert rows[0]["normalized"] == 1.0
    forgot = json.loads(_ok([*p, "forget", "mnist", "--json"], capsys))
    assert {r["name"] for r in forgot["rebuilt"]} == {"both", "merged", "avg"}
    shown = json.loads(_ok([*p, "show", "avg", "--json"], capsys))
    assert [i["name"] for i in shown["recipe"]["ingredients"]] == ["digits"]
    assert shown["recipe"]["method"] == "mean"
    assert "forget" in (tmp_path / "pool" / "audit.jsonl").read_text()
    assert "both" in _ok([*p, "list"], capsys)


def test_offline_base_workflow(offline_pool, capsys):
    p = ["--pool", str(offline_pool.root)]
    _ok([*p, "finetune", "--task", "digits", *FAST], capsys)
    _ok([*p, "finetune", "--task", "digits", "--mode", "tangent", "--name", "dt", *FAST], capsys)
    base = json.loads(_ok([*p, "eval", "base", "--task", "digits", "--json"], capsys))[0]
    assert base["accuracy"] > 0.5  # a real pretrained base with a fitted few-shot head
    _ok([*p, "negate", "digits", "-o", "neg", "--alpha", "1"], capsys)
    negated = json.loads(_ok([*p, "eval", "neg", "--json"], capsys))[0]
    module = json.loads(_ok([*p, "eval", "digits", "--json"], capsys))[0]
    assert negated["accuracy"] != module["accuracy"]
    out = _ok([*p, "forget", "digits"], capsys)
    assert "removed neg" in out
    _ok([*p, "show", "dt"], capsys)


def test_help_explains_commands(capsys):
    out = _ok(["--help"], capsys)
    for command in ("init", "finetune", "add", "negate", "compose", "forget", "eval", "demo"):
        assert command in out
    assert "--mode" in _ok(["finetune", "--help"], capsys)
