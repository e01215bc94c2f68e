"""Summarise benchmarks/results/*.json as docs/results.md (tables of the measured figures).

python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
OUT = Path(__file__).parent.parent / "docs" / "results.md"
TASKS = ("mnist", "animals", "digits")


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def section(title: str, intro: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A results section: its title, what was measured, the table."""
    return [f"## {title}", "", intro, "", *table(columns, rows), ""]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def core(r: dict) -> list[str]:
    env = r["environment"]
    out = [
        "## Core loop (issue 2): `benchmarks/offline_core.py`",
        "",
        f"Offline base (EfficientNet-Lite0, 64 px, heads fitted on {r['head_shots']} examples per "
        f"class), {r['epochs']:g} epoch per module, {env['cores']} CPU cores ({env['cpu']}), "
        f"torch {env['versions']['torch']}. Test accuracy %, normalised % in brackets.",
        "",
        "| model | " + " | ".join(TASKS) + " |",
        "|---|" + "---|" * len(TASKS),
        "| base | " + " | ".join(pct(r["base_accuracy"][t]) for t in TASKS) + " |",
    ]
    for mode in ("nonlinear", "tangent"):
        m = r[mode]
        for name, row in m["modules"].items():
            out.append(f"| {name} | " + " | ".join(pct(row[t]["accuracy"]) for t in TASKS) + " |")
        add = m["add_all"]
        out.append(
            f"| add all, {mode}, alpha {m['alpha_search']['best_alpha']:g} (val) | "
            + " | ".join(f"{pct(add[t]['accuracy'])} ({pct(add[t]['normalized'])})" for t in TASKS)
            + " |"
        )
        for name, row in m["negate_alpha_1"].items():
            out.append(
                f"| negate {name} (alpha 1) | "
                + " | ".join(pct(row[t]["accuracy"]) for t in TASKS)
                + " |"
            )
    cost = r["step_cost"]
    out += [
        "",
        f"Training step (batch {cost['batch_size']}): nonlinear "
        f"{cost['nonlinear']['seconds_per_step']:.3f} s, tangent "
        f"{cost['tangent']['seconds_per_step']:.3f} s: **{cost['ratio_time']:.2f}x** the time; "
        f"peak memory above the start {cost['nonlinear']['peak_rss_above_start'] / 2**20:.0f} MiB "
        f"vs {cost['tangent']['peak_rss_above_start'] / 2**20:.0f} MiB: "
        f"**{cost['ratio_memory']:.2f}x**.",
        "",
    ]
    return out


def merging(r: dict) -> list[str]:
    out = [
        "## Merging methods (issue 4): `benchmarks/offline_merging.py`",
        "",
        "Alpha searched on validation; test accuracy %, normalised % in brackets.",
        "",
        "| mode | method | alpha | " + " | ".join(TASKS) + " | mean normalised |",
        "|---|---|---|" + "---|" * (len(TASKS) + 1),
    ]
    for mode, rows in r["modes"].items():
        for method, row in rows.items():
            if method == "disentanglement":
                continue
            out.append(
                f"| {mode} | {method} | {row['alpha']:g} | "
                + " | ".join(
                    f"{pct(row['accuracy'][t])} ({pct(row['normalized'][t])})" for t in TASKS
                )
                + f" | {pct(row['mean_normalized'])} |"
            )
    out += [""]
    for mode, rows in r["modes"].items():
        d = rows.get("disentanglement")
        if d:
            out += [
                f"Disentanglement of mnist and digits, {mode}: mean error "
                f"{d['mean_error']:.3f} over the grid.",
                "",
                f"![{mode}]({Path(d['png']).name})",
                "",
            ]
    return out


def second_order(r: dict) -> list[str]:
    out = [
        "## Training modes as a pool grows (issue 3): `benchmarks/offline_second_order.py`",
        "",
        f"Modules trained one after another (mnist, animals, digits), {r['epochs']:g} epoch each; "
        f"Fisher over {r['fisher_examples']} examples per task. Test accuracy %; normalised "
        "by each task's own module of the same mode.",
        "",
        "| mode | single-task (own module) | mean: acc / normalised | sum at best alpha: "
        "alpha, acc / normalised |",
        "|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        single = ", ".join(
            f"{n.rsplit('-', 1)[0]} {pct(v['accuracy'])}" for n, v in m["modules"].items()
        )
        mean, sm = m["mean"], m["sum"]
        out.append(
            f"| {mode} | {single} | {pct(mean['mean_accuracy'])} / "
            f"{pct(mean['mean_normalized'])} | {sm['alpha']:g}, {pct(sm['mean_accuracy'])} / "
            f"{pct(sm['mean_normalized'])} |"
        )
    out += [
        "",
        "`forget digits-MODE`: both compositions rebuilt from mnist and animals "
        "(test accuracy, before -> after):",
        "",
        "| mode | composition | mnist | animals | digits |",
        "|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        for kind in ("mean", "sum"):
            before, after = m[kind]["tasks"], m["forget_digits"][kind]
            cells = " | ".join(
                f"{pct(before[t]['accuracy'])} -> {pct(after[t]['accuracy'])}"
                for t in ("mnist", "animals", "digits")
            )
            out.append(f"| {mode} | {kind} | {cells} |")
    out += [""]
    quiet = r.get("fisher_cost_quiet")
    if quiet:
        ratios = ", ".join(f"{t} {c['ratio_fisher_to_epoch']:.2f}x" for t, c in quiet.items())
        out += [
            f"Fisher pass (sampled, 1 label per example) vs one training epoch over the same "
            f"{next(iter(quiet.values()))['examples']} examples, measured alone: {ratios}.",
            "",
        ]
    return out


def ddp(r: dict) -> list[str]:
    s = r["seconds_per_step"]
    return [
        "## Data parallel (issue 8): `benchmarks/ddp_scaling.py`",
        "",
        f"Global batch {r['global_batch']}: "
        + ", ".join(f"{k} process(es) {v:.3f} s/step" for k, v in s.items())
        + f"; speed-up **{r['speedup']:.2f}x**.",
        "",
    ]


def streaming(r: dict) -> list[str]:
    mib = r["module_bytes"] / 2**20
    return [
        "## Streaming composition (issue 6): `benchmarks/streaming.py`",
        "",
        f"{r['modules']} random modules of {r['base']} image-tower size "
        f"({r['parameters_per_module'] / 1e6:.1f}M parameters, {mib:.0f} MiB each in fp32), "
        "files in the page cache, each measurement in a fresh interpreter; medians.",
        "",
        "| | seconds | peak RSS above baseline / one module |",
        "|---|---|---|",
        f"| `compose` (sum, streamed) | {r['compose_seconds']:.2f} | "
        f"**{r['compose_peak_over_module']:.3f}x** |",
        f"| `compose` with ordinary writes (page cache), not direct I/O | "
        f"{r['compose_ordinary_seconds']:.2f} | |",
        f"| plain read-and-sum (`load_file`, add) | {r['plain_seconds']:.2f} | "
        f"{r['plain_peak_over_module']:.2f}x |",
        f"| plain read-and-sum, then `save_file` + fsync | {r['plain_save_seconds']:.2f} | |",
        f"| writing one module's bytes + fsync (the disk) | "
        f"{r['disk_write_module_seconds']:.2f} | |",
        f"| `forget` (rebuilds the {r['modules']}-module composition from "
        f"{r['modules'] - 1}) | {r['runs']['forget'][0]['seconds']:.2f} | "
        f"{r['forget_peak_over_module']:.3f}x |",
        f"| `export` of the composition (above the loaded base) | "
        f"{r['runs']['export'][0]['seconds']:.2f} | {r['export_peak_over_module']:.3f}x |",
        "",
        f"Speed of `compose` relative to the plain read-and-sum: "
        f"**{r['speed_ratio_compose_vs_plain']:.2f}x**; relative to read-and-sum-and-save: "
        f"**{r['speed_ratio_compose_vs_plain_save']:.2f}x** (compose also validates every "
        "value, hashes its output, and fsyncs it before the pool commits). Direct I/O makes "
        f"compose **{r['speed_ratio_direct_vs_ordinary_writes']:.2f}x** as fast as ordinary "
        "writes.",
        "",
    ]


def compact(r: dict) -> list[str]:
    out = [
        "## Compact modules (issue 6): `benchmarks/compact.py`",
        "",
        "The three offline modules of each mode re-stored with `compact`, composed by sum at "
        "the alpha picked on validation; test accuracy %, normalised against the dense "
        "modules' own accuracy.",
        "",
        "| mode | storage | size vs dense fp32 (%) | alpha | mean acc | mean normalised | "
        "points lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        for key, v in m["settings"].items():
            out.append(
                f"| {mode} | {key} | {pct(v['size_ratio'])} | {v['alpha']:g} | "
                f"{pct(v['mean_accuracy'])} | {pct(v['mean_normalized_to_dense'])} | "
                f"{v['normalized_points_lost']:+.2f} |"
            )
    return out + [""]


def tangent_cost(r: dict) -> list[str]:
    out = [
        "## Tangent training cost (issue 6): `benchmarks/tangent_cost.py`",
        "",
        "Per training step at the same batch, each variant in a fresh interpreter, the "
        "variants taking turns, medians; ratios against nonlinear training of the whole tower. "
        "`tangent` is modpool's (one dual-number pass without a graph, then the base's "
        "backward); `(autograd-jvp)` is the direct way it replaced (autograd through "
        "`torch.func.jvp`): the before and after. `(contiguous)`: the offline base with "
        "contiguous inputs, as before it fed its convolutions channels-last ones.",
        "",
        "| base | batch | variant | trained params | s/step | peak MiB | time ratio | "
        "memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, b in r["bases"].items():
        for key, v in b.items():
            if not isinstance(v, dict):
                continue
            out.append(
                f"| {base} | {b['batch_size']} | {key} | {v['trained_parameters'] / 1e6:.2f}M | "
                f"{v['seconds_per_step']:.3f} | {v['peak_rss_above_start'] / 2**20:.0f} | "
                f"{v.get('ratio_time', 1.0):.2f}x | {v.get('ratio_memory', 1.0):.2f}x |"
            )
    return out + [""]


def last_blocks(r: dict) -> list[str]:
    out = [
        "## Linearising only the last blocks (issue 6): `benchmarks/offline_last_blocks.py`",
        "",
        f"Offline base and tasks, {r['epochs']:g} epoch per module; sum of the three at the "
        "alpha picked on validation; test accuracy %.",
        "",
        "| variant | trained params | single-task | sum: alpha, mean acc / normalised |",
        "|---|---|---|---|",
    ]
    for key, v in r["variants"].items():
        single = ", ".join(f"{t} {pct(a)}" for t, a in v["single_task"].items())
        s = v["sum"]
        out.append(
            f"| {key} | {v['trained_parameters'] / 1e6:.2f}M | {single} | {s['alpha']:g}, "
            f"{pct(s['mean_accuracy'])} / {pct(s['mean_normalized'])} |"
        )
    return out + [""]


def inference_cost(r: dict) -> list[str]:
    out = [
        "## Inference cost vs number of modules (issue 6): `benchmarks/inference_cost.py`",
        "",
        "Seconds per batch; the models take turns; 'another module' is a second single module "
        "measured alongside, to show the noise of the machine.",
        "",
        "| base | batch | kind | one module | eight modules | ratio | another module / one |",
        "|---|---|---|---|---|---|---|",
    ]
    for base, b in r["bases"].items():
        for kind in ("nonlinear", "tangent"):
            v = b[kind]
            out.append(
                f"| {base} | {b['batch_size']} | {kind} | {v['one_module']:.4f} | "
                f"{v['eight_modules']:.4f} | **{v['ratio_eight_vs_one']:.3f}x** | "
                f"{v['ratio_another_vs_one']:.3f}x |"
            )
    return out + [""]


def import_memory(r: dict) -> list[str]:
    rows = [
        [
            row["format"],
            f"{row['checkpoint_bytes'] / 2**20:.0f}",
            f"{row['seconds']:.1f}",
            f"{row['peak_above_base_over_size']:.2f}x",
            f"{row['peak_total_over_size']:.2f}x",
        ]
        for row in r["rows"]
    ]
    columns = ["format", "size MiB", "seconds", "peak above the base", "whole process"]
    return section(
        "Importing checkpoints (issue 15): `benchmarks/import_memory.py`",
        f"A ViT-B/32-size fine-tuned checkpoint of `{r['base']}`, imported in a fresh "
        "interpreter that has loaded the base. Peak RSS above that, and the whole process's "
        "peak, as ratios to the checkpoint's size.",
        columns,
        rows,
    )


def merge_speed(r: dict) -> list[str]:
    rows = [
        [
            row["method"],
            f"{row['seconds']:.2f}",
            _spread(r["runs"][row["method"]]),
            f"{row['time_over_sum']:.1f}x",
            f"{row['peak_over_module']:.2f}x",
        ]
        for row in r["rows"]
    ]
    return section(
        "Merge methods, speed and memory (issue 16): `benchmarks/merge_speed.py`",
        f"One compose of {r['modules']} random ViT-B/32-size modules "
        f"({r['module_bytes'] / 2**20:.0f} MiB each), fresh interpreter, page cache warm; "
        f"medians; SVDs on {r['device']}.",
        ["method", "seconds", "rounds, s", "time / sum", "peak / one module"],
        rows,
    )


def _spread(runs: list[dict]) -> str:
    """Every round's time: how noisy the machine was."""
    return ", ".join(f"{run['seconds']:.1f}" for run in runs)


def methods(r: dict) -> list[str]:
    tasks = r["tasks"]
    columns = ["mode", "method", "alpha", "grid", *tasks, "mean", "mean normalised"]
    rows = [
        [
            mode,
            f"{method} (task-aware)" if row["task_aware"] else method,
            f"{row['alpha']:g}",
            _grid(row.get("grid")),
            *(f"{pct(row['accuracy'][t])} ({pct(row['normalized'][t])})" for t in tasks),
            pct(row["mean_accuracy"]),
            pct(row["mean_normalized"]),
            f"{row['compose_seconds']:.2f}",
            f"{row['compose_peak_bytes'] / 2**20:.0f}",
        ]
        for mode, by_method in r["modes"].items()
        for method, row in by_method.items()
        if method != "single"
    ]
    return section(
        "Every merge method on the same modules (issue 16): `benchmarks/methods.py`",
        f"Base `{r['pool_base']}`; alpha (and, for tall/consensus, each task's lambda) chosen "
        "on validation; test accuracy %, normalised % in brackets; compose time and peak RSS "
        "of the final compose. The SVD methods use `matrices=conv` on this convolutional base.",
        [*columns, "compose s", "peak MiB"],
        rows,
    )


def _grid(grid: list[float] | None) -> str:
    """The alpha grid a row searched: the method's own unless the run gave one."""
    if not grid:
        return "method's own"
    return f"{grid[0]:g} to {grid[-1]:g} ({len(grid)} points)"


def _chance_iou(a: str, b: str, kept: dict[str, float]) -> float:
    """The IoU two independent random masks of these kept fractions would have: pq/(p+q-pq)."""
    p, q = kept[a], kept[b]
    return p * q / (p + q - p * q)


def _specialisation(a: dict) -> str:
    """The paper's question in two numbers: does removing X's exclusive weights hurt X only
    (specialisation), and do masks overlap more than chance (reuse)?"""
    none, names = a["removal"]["none"], list(a["removal"]["none"])
    kept = {name: v["total"] for name, v in a["kept"].items()}
    drop = {(x, y): 100 * (none[y] - a["removal"][x][y]) for x in names for y in names}
    own = [drop[x, x] for x in names]
    others = [drop[x, y] for x in names for y in names if x != y]
    ratios = [v["iou"] / _chance_iou(*p.split("|"), kept) for p, v in a["pairs"].items()]
    return (
        f"Removing the weights exclusive to X costs X {sum(own) / len(own):.2f} points on "
        f"average and each other task {sum(others) / len(others):.2f}; the masks' IoU is "
        f"{min(ratios):.1f}x to {max(ratios):.1f}x that of independent masks of their sizes."
    )


def masks(r: dict) -> list[str]:
    cfg = r["config"]
    length = f"{cfg['steps']} steps" if cfg["steps"] else f"{cfg['epochs']:g} epochs"
    rows = [
        [
            name,
            pct(row["kept"]),
            pct(row["accuracy_full"]),
            pct(row["accuracy_masked"]),
            f"{row['points_lost']:+.2f}",
            f"{row['bytes_full'] / 1024:.0f} / {row['bytes_masked'] / 1024:.0f}",
        ]
        for name, row in r["modules"].items()
    ]
    columns = ["module", "kept %", "accuracy full", "accuracy masked", "points lost"]
    out = section(
        "Weight masks (issue 17): `benchmarks/masks.py`",
        f"beta {cfg['beta']:g}, {length}, Adam lr {cfg['lr']:g}; test accuracy %.",
        [*columns, "file KiB full / masked"],
        rows,
    )
    for label in ("compose_full", "compose_masked"):
        row = r.get(label)
        if row:
            out.append(
                f"\n{label.replace('_', ' ')} (sum, alpha {row['alpha']:g}): mean accuracy "
                f"{pct(row['mean_accuracy'])}%"
            )
    for key, title, figure in (
        ("analysis", "masks over modules", "masks.png"),
        ("base_analysis", "masks over the base", "masks-base.png"),
    ):
        a = r.get(key)
        if not a:
            continue
        out += ["", f"IoU and shared fraction, {title}:", ""]
        kept = {name: v["total"] for name, v in a["kept"].items()}
        out += [
            f"- {pair}: IoU {pct(v['iou'])}%, shared {pct(v['shared'])}% (independent masks "
            f"of these sizes: IoU {pct(_chance_iou(*pair.split('|'), kept))}%)"
            for pair, v in a["pairs"].items()
        ]
        names = list(a["removal"]["none"])
        rows = [[x, *(pct(accs[n]) for n in names)] for x, accs in a["removal"].items()]
        out += ["", *table(["removed (exclusive to)", *names], rows), "", _specialisation(a)]
        out += ["", f"![{title}: IoU and removal matrix]({figure})"]
    return out + [""]


def compartments(r: dict) -> list[str]:
    models = (
        ("all_rights", "every source module (all rights)"),
        ("union_data", "modules trained on the union of the data"),
        ("part0_only", "part-0 modules only (rights: part0)"),
    )
    out = section(
        "Compartments (issue 18): `benchmarks/compartments.py`",
        f"Each offline task's training data split into {r['sources']} sources; modules "
        "composed by sum at the alpha validation picks; test accuracy %.",
        ["model", "alpha", "mean accuracy"],
        [
            [label, f"{r[k]['alpha']:g}", pct(r[k]["mean_accuracy"])]
            for k, label in models
            if k in r
        ],
    )
    if "gap_points" in r:
        out.append(f"\nUnion minus compartments: {r['gap_points']:+.2f} points.")
    if "forget_source" in r:
        f = r["forget_source"]
        out.append(
            f"\n`forget --source` ({', '.join(f['modules'])}): {f['seconds']:.2f} s, rebuilt "
            f"{', '.join(f['rebuilt']) or 'nothing'}."
        )
    if "attribution" in r:
        shares = [[t, pct(v["own_module_largest_share"])] for t, v in r["attribution"].items()]
        out += ["", *table(["task", "own module has the largest share %"], shares)]
    if "linearity" in r:
        rows = [
            [
                name,
                pct(v["gap"]["1.0"]),
                pct(v["agreement"]["1.0"]),
                pct(v["normalized_in_sum"]),
                f"{v['mean_disentanglement_error']:.3f}",
            ]
            for name, v in r["linearity"].items()
        ]
        columns = ["module", "gap at alpha 1 %", "agreement at alpha 1 %"]
        columns += ["normalised in the sum %", "mean disentanglement error"]
        out += ["", *table(columns, rows)]
    return out + [""]


def main() -> None:
    lines = [
        "# Measured results",
        "",
        "Generated by `python benchmarks/report.py` from "
        "`benchmarks/results/*.json`, which also record the hardware and library versions.",
        "",
    ]
    for name, fn in (
        ("offline_core", core),
        ("offline_merging", merging),
        ("offline_second_order", second_order),
        ("ddp_scaling", ddp),
        ("streaming", streaming),
        ("compact", compact),
        ("tangent_cost", tangent_cost),
        ("offline_last_blocks", last_blocks),
        ("inference_cost", inference_cost),
        ("import_memory", import_memory),
        ("merge_speed", merge_speed),
        ("methods", methods),
        ("masks", masks),
        ("compartments", compartments),
    ):
        result = load(name)
        if result:
            lines += fn(result)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
