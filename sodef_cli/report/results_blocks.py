"""The results report as blocks: the verdicts first, then per eps a table of robust accuracy (each figure with
its 95% interval, paired differences with McNemar's p), the robustness-vs-eps chart and the cascade bars, then
the setup, notes and masking checks. Reads ``results_data`` only."""

from __future__ import annotations

from .blocks import (
    Block,
    Column,
    Series,
    Table,
    bars,
    chart,
    col,
    heading,
    image,
    kv,
    note,
    table,
    title,
    verdict,
)
from .format import delta, eps_key, fmt_eps, fmt_p, pct_ci, points_ci
from .results import tags as make_tags

__all__ = ["results_blocks"]

_CHECK_STATUS = {True: "FLAG", False: "ok", None: "not run"}
_INTERVALS = (
    "[95% interval]: Wilson for accuracies, Newcombe's paired score interval for {what}; p = exact McNemar test"
)


def results_blocks(data: dict) -> list[Block]:
    """The results report of ``results_data`` as blocks."""
    files = data["files"]
    multi = len(files) > 1
    blocks: list[Block] = [
        title("sodef attack results" + ("" if multi else f": {files[0]['label']}") if files else "sodef attack results")
    ]
    if not files:
        blocks.append(note("no results files given", "warn"))
        return blocks
    tags = make_tags(len(files))
    for tag, fd in zip(tags, files):
        blocks.append(verdict(fd["verdict"]["text"], fd["verdict"]["level"], f"{tag}: {fd['label']}" if multi else ""))
    pairs = [(tag, fd) for tag, fd in zip(tags, files) if fd.get("kind") != "comparison"]
    if pairs:
        blocks += _pair_blocks([fd for _, fd in pairs], [tag for tag, _ in pairs], multi)
    for tag, fd in zip(tags, files):
        if fd.get("kind") == "comparison":
            if multi:
                blocks.append(heading(f"{tag}: {fd['label']}"))
            blocks += _comparison_blocks(fd)
    return blocks


# ----------------------------------------------------------------------------------------------------
# cells


def _cell(
    md: dict | None,
    key: str,
    kinds: dict[str, str],
    *,
    attack: bool = False,
    partial: bool = False,
    pending: bool = False,
) -> tuple[float | None, str]:
    """(value, text) of one figure of one model; † marks a worst case an interrupted run can still lower."""
    if md is None:
        return None, "pending" if pending else "-"
    if attack:
        if key in md["attacks"]:
            v = md["attacks"][key]["accuracy"]
            return v, pct_ci(v, md["attacks"][key].get("accuracy_ci95"), "\n")
        return None, ("pending" if key in md["missing"] else "-")
    v = md.get(key)
    missing_white = any(kinds.get(a) == "white-box" for a in md["missing"])
    mark = (
        "†"
        if partial and (key == "worst_case" and md["missing"] or key == "white_box_direct" and missing_white)
        else ""
    )
    return v, pct_ci(v, md.get(f"{key}_ci95"), "\n", mark)


def _delta_cells(r: dict | None, key: str, bv: float | None, hv: float | None) -> list[str]:
    """The paired difference (points, 95% interval) and its McNemar p-value, when both models have the figure."""
    diff = (r or {}).get("difference", {})
    if bv is None or hv is None or key not in diff:
        return [delta(bv, hv), "-"]
    return [points_ci(diff[key], diff.get(f"{key}_ci95"), "\n"), fmt_p(diff.get(f"{key}_p"))]


def _row_defs(attacks: list[str]) -> list[tuple[str, str, bool]]:
    """(row label, figure key, is an attack?) of an accuracy table, top to bottom."""
    return (
        [("clean accuracy", "clean", False)]
        + [(n, n, True) for n in attacks]
        + [("white-box worst case", "white_box_direct", False), ("worst case", "worst_case", False)]
    )


def _row_style(key: str) -> str:
    return "bold" if key == "worst_case" else ("dim" if key == "white_box_direct" else "")


def _mode_caption(cascade: bool) -> str:
    return (
        "cascade: each attack row is the accuracy after that attack and all above it (cumulative)"
        if cascade
        else "all samples: each attack row is that attack alone on every clean-correct sample"
    )


def _run_at(fd: dict, eps: float) -> dict | None:
    return next((r for r in fd["runs"] if eps_key(r["eps"]) == eps), None)


# ----------------------------------------------------------------------------------------------------
# base-vs-hardened files (schema v1)


def _attack_order(files: list[dict]) -> list[tuple[str, str]]:
    """(name, kind) of every attack in any file, hardened plan order first."""
    names: dict[str, str] = {}
    for fd in files:
        for r in fd["runs"]:
            for m in ("hardened", "base"):
                md = r["models"].get(m)
                if md:
                    for name, a in md["attacks"].items():
                        names.setdefault(name, a.get("kind") or "")
                    for name in md["missing"]:
                        names.setdefault(name, "")
    kinds = {a: k for fd in files for a, k in fd.get("attack_kinds", {}).items()}
    return [(n, k or kinds.get(n, "?")) for n, k in names.items()]


def _pair_table(files: list[dict], tags: list[str], multi: bool, eps: float, norm: str | None) -> Table:
    """Robust accuracy at one eps: base, hardened, delta and p per file (several files: columns tagged A, B, ...
    named in the setup, and no kind line under the attack, to fit 80 columns)."""
    cols: list[Column] = [col("attack", nowrap=True)]
    for tag in tags:
        pre = f"{tag}\n" if multi else ""
        cols += [
            col(f"{pre}base", "right", "value"),
            col(f"{pre}hardened", "right", "value"),
            col(f"{pre}delta", "right", "delta"),
            col(f"{pre}p", "right"),
        ]
    attacks = _attack_order(files)
    kind_of = dict(attacks)
    rows, styles = [], []
    for label, key, is_attack in _row_defs([n for n, _ in attacks]):
        row = [label + (f"\n({kind_of[key]})" if is_attack and kind_of[key] and not multi else "")]
        for fd in files:
            r = _run_at(fd, eps)
            pend = r["pending"] if r else []
            cells = [
                _cell(
                    r["models"].get(m) if r else None,
                    key,
                    fd.get("attack_kinds", {}),
                    attack=is_attack,
                    partial=not fd["complete"],
                    pending=m in pend,
                )
                for m in ("base", "hardened")
            ]
            row += [cells[0][1], cells[1][1], *_delta_cells(r, key, cells[0][0], cells[1][0])]
        rows.append(row)
        styles.append(_row_style(key))
    cascade = {fd["cascade"] for fd in files}
    if len(cascade) == 1:
        caption = _mode_caption(cascade.pop())
    else:
        caption = "mixed modes: " + "; ".join(
            f"{tag}: {'cascade (cumulative rows)' if fd['cascade'] else 'all samples'}" for tag, fd in zip(tags, files)
        )
    caption += "; worst case = correct and robust to every attack; " + _INTERVALS.format(
        what="delta (points, hardened - base, same samples)"
    )
    n_set = {fd["n"] for fd in files}
    n_txt = f", n={n_set.pop()}" if len(n_set) == 1 else ""
    return table(
        f"Robust accuracy at eps = {fmt_eps(eps, norm)}" + (f" ({norm})" if norm else "") + n_txt,
        cols,
        rows,
        caption,
        styles,
    )


def _pair_chart(files: list[dict], tags: list[str], multi: bool, eps_all: list[float], norm: str | None) -> list[Block]:
    if len(eps_all) < 2:
        return []
    series: list[Series] = []
    for tag, fd in zip(tags, files):
        for m in ("base", "hardened"):
            ys = []
            for eps in eps_all:
                r = _run_at(fd, eps)
                md = r["models"].get(m) if r else None
                ys.append(md["worst_case"] if md else None)
            marker = m[0] if not multi else (tag.lower() if m == "base" else tag)
            series.append({"name": m if not multi else f"{tag} {m}", "marker": marker, "ys": ys})
    return [
        chart(
            "Worst-case accuracy vs eps",
            eps_all,
            [fmt_eps(e, norm) for e in eps_all],
            f"eps ({norm})" if norm else "eps",
            series,
        )
    ]


def _pair_checks(fd: dict, tag: str, multi: bool) -> list[Block]:
    """The masking checks of one file, the same outcome at several eps shown once."""
    if not fd["runs"]:
        return []  # the file's note already says there are no results
    merged: dict[tuple, list[str]] = {}
    for r in fd["runs"]:
        for c in r["checks"]:
            key = (_CHECK_STATUS.get(c.get("flagged"), "?"), c.get("name", "?"), c.get("evidence", ""))
            merged.setdefault(key, []).append(fmt_eps(r["eps"], fd["norm"]))
    order = {name: i for i, name in enumerate(dict.fromkeys(k[1] for k in merged))}
    rows = [[", ".join(eps), *key] for key, eps in sorted(merged.items(), key=lambda kv: order[kv[0][1]])]
    name = "Gradient-masking checks" + (f" ({tag}: {fd['label']})" if multi else "")
    if not rows:
        return [heading(name), note("no masking checks yet: they run after each eps finishes", "info")]
    prov = any(r["checks_provisional"] for r in fd["runs"])
    return [
        table(
            name,
            [col("eps"), col("result", role="status"), col("check"), col("evidence")],
            rows,
            "FLAG = the signature of gradient masking was found; the hardened model's robustness is then overstated"
            + ("; some checks are provisional (their eps did not finish)" if prov else ""),
        )
    ]


def _pair_blocks(files: list[dict], tags: list[str], multi: bool) -> list[Block]:
    """Tables, pictures, setup, notes and checks of base-vs-hardened results files (schema v1)."""
    eps_all = sorted({eps_key(r["eps"]) for fd in files for r in fd["runs"]})
    norms = list(dict.fromkeys(fd["norm"] for fd in files))
    norm = norms[0] if len(norms) == 1 else None
    blocks: list[Block] = [_pair_table(files, tags, multi, eps, norm) for eps in eps_all]
    blocks += _pair_chart(files, tags, multi, eps_all, norm)
    blocks += _cascade_bars(
        [
            (f"{tag + ': ' if multi else ''}{m}", fd["runs"][0]["models"].get(m), fd["runs"][0]["eps"], fd["cascade"])
            for tag, fd in zip(tags, files)
            if fd["runs"]
            for m in ("base", "hardened")
        ],
        files[0]["norm"],
    )
    keys = [k for k in files[0]["header"] if k != "results"]
    if multi:
        blocks.append(
            kv(
                "Setup",
                [[k] + [fd["header"].get(k, "-") for fd in files] for k in keys],
                header=[""] + [f"{tag}: {fd['label']}" for tag, fd in zip(tags, files)],
            )
        )
    else:
        blocks.append(kv("Setup", [[k, files[0]["header"][k]] for k in keys]))
    blocks += [note(n["text"], n["level"]) for fd in files for n in fd["notes"]]
    for tag, fd in zip(tags, files):
        blocks += _pair_checks(fd, tag, multi)
    for tag, fd in zip(tags, files):
        blocks += _example_blocks(fd, f"{tag}: " if multi else "")
    return blocks


def _example_blocks(fd: dict, prefix: str) -> list[Block]:
    """``--save-adversarial``: the norms of the saved perturbations per model, eps and attack, and each grid."""
    saved = fd.get("adversarial_examples") or {}
    rows, grids = [], []
    for lab, recs in saved.items():
        for r in recs:
            for attack, nm in r["norms"].items():
                rows.append(
                    [
                        f"{prefix}{lab}",
                        fmt_eps(r["eps"], fd["norm"]),
                        attack,
                        str(nm["count"]),
                        f"{nm['linf_median']:.4f}",
                        f"{nm['linf_max']:.4f}",
                        f"{nm['l2_median']:.3f}",
                        f"{nm['l2_max']:.3f}",
                    ]
                )
            if r.get("grid"):
                grids.append(
                    image(
                        f"Adversarial examples: {prefix}{lab} at eps {fmt_eps(r['eps'], fd['norm'])}",
                        r["grid"],
                        f"the first 16 of {r['saved']} fooled samples (clean, adversarial, perturbation amplified); "
                        f"all in {r['file']} ({r['uint8']} uint8, {r['float32']} float32 where rounding undoes them)",
                    )
                )
    if not rows:  # nothing saved (or no sample fooled)
        return []
    right = lambda name: col(name, "right", "value")  # noqa: E731
    return [
        table(
            "Saved adversarial examples: perturbation norms",
            [col("model"), col("eps"), col("attack"), right("saved"), right("Linf median"), right("Linf max")]
            + [right("L2 median"), right("L2 max")],
            rows,
            "per attack, the perturbations of the examples saved with --save-adversarial (the first attack in "
            "cascade order that fooled each sample), in [0,1] pixel units",
        )
    ] + grids


def _cascade_bars(items: list[tuple], norm: str | None) -> list[Block]:
    """A bar picture per model: robust accuracy after each attack (cumulative in a cascade) and the worst case,
    each with its 95% interval. ``items``: (name, model data, eps, cascade?)."""
    groups = []
    for name, md, eps, _ in items:
        if not md:
            continue
        figures = (
            [{"label": "clean", "value": md["clean"], "ci": md.get("clean_ci95")}]
            + [
                {"label": a, "value": rec["accuracy"], "ci": rec.get("accuracy_ci95")}
                for a, rec in md["attacks"].items()
            ]
            + [{"label": "worst case", "value": md["worst_case"], "ci": md.get("worst_case_ci95")}]
        )
        groups.append({"name": name, "bars": figures, "eps": eps})
    if not groups:
        return []
    at = f" at eps = {fmt_eps(groups[0]['eps'], norm)}" if len({g["eps"] for g in groups}) == 1 else ""
    what = "after each attack of the cascade (cumulative)" if {c for *_, c in items} == {True} else "under each attack"
    return [
        bars(
            f"Robust accuracy {what}{at}",
            groups,
            "bar: accuracy; whisker (html) and [interval] (text): Wilson 95% interval",
        )
    ]


# ----------------------------------------------------------------------------------------------------
# files of several models (schema v2)


def _comparison_table(fd: dict, r: dict, attacks: list[str]) -> Table:
    models, ref = fd["models"], fd["reference"]
    tag = dict(zip(models, fd["tags"]))
    others = [lab for lab in models if lab != ref]
    cols = [col("attack", nowrap=True)] + [col(tag[lab], "right", "value") for lab in models]
    cols += [col(f"{tag[lab]} - {tag[ref]}", "right", "delta") for lab in others]
    rows, styles = [], []
    for label, key, is_attack in _row_defs(attacks):
        row = [label]
        vals = {}
        for lab in models:
            vals[lab], txt = _cell(
                r["models"].get(lab),
                key,
                fd.get("attack_kinds", {}),
                attack=is_attack,
                partial=not fd["complete"],
                pending=lab in r["pending"],
            )
            row.append(txt)
        for lab in others:  # the paired difference, its interval and McNemar's p in one cell
            d, p = _delta_cells({"difference": r["difference"].get(lab, {})}, key, vals[ref], vals[lab])
            row.append(d + ("" if p == "-" else f"\np={p}"))
        rows.append(row)
        styles.append(_row_style(key))
    caption = (
        _mode_caption(fd["cascade"])
        + "; "
        + ", ".join(f"{tag[lab]} = {lab}" for lab in models)
        + f"; reference {tag[ref]}; "
        + _INTERVALS.format(what="differences (points, same samples)")
    )
    return table(
        f"Robust accuracy at eps = {fmt_eps(r['eps'], fd['norm'])} ({fd['norm']}), n={fd['n']}",
        cols,
        rows,
        caption,
        styles,
    )


def _comparison_blocks(fd: dict) -> list[Block]:
    """Tables, pictures, setup, notes and checks of one results file of several models."""
    models, norm = fd["models"], fd["norm"]
    tag = dict(zip(models, fd["tags"]))
    order: dict[str, None] = {}  # rows in the order of the longest plan (an ODE model's), then the others'
    for r in fd["runs"]:
        for lab in sorted(models, key=lambda m: -len((r["models"].get(m) or {}).get("attacks", {}))):
            md = r["models"].get(lab)
            for name in list(md["attacks"]) + list(md["missing"]) if md else []:
                order.setdefault(name)
    blocks: list[Block] = [_comparison_table(fd, r, list(order)) for r in fd["runs"]]
    if fd["runs"]:
        r0 = fd["runs"][0]
        blocks += _cascade_bars(
            [(f"{tag[lab]}: {lab}", r0["models"].get(lab), r0["eps"], fd["cascade"]) for lab in models], norm
        )
    eps_all = [r["eps"] for r in fd["runs"]]
    if len(eps_all) >= 2:
        series: list[Series] = [
            {
                "name": lab,
                "marker": tag[lab],
                "ys": [(r["models"].get(lab) or {}).get("worst_case") for r in fd["runs"]],
            }
            for lab in models
        ]
        blocks.append(
            chart("Worst-case accuracy vs eps", eps_all, [fmt_eps(e, norm) for e in eps_all], f"eps ({norm})", series)
        )
    blocks.append(kv("Setup", [[k, v] for k, v in fd["header"].items() if k != "results"]))
    blocks += [note(n["text"], n["level"]) for n in fd["notes"]]
    blocks += _example_blocks(fd, "")
    merged: dict[tuple, list[str]] = {}
    for r in fd["runs"]:
        for lab in models:
            for c in r["checks"].get(lab, []):
                key = (tag[lab], _CHECK_STATUS.get(c.get("flagged"), "?"), c.get("name", "?"), c.get("evidence", ""))
                merged.setdefault(key, []).append(fmt_eps(r["eps"], norm))
    if merged:
        rows = [[", ".join(eps), *key] for key, eps in merged.items()]
        blocks.append(
            table(
                "Gradient-masking checks",
                [col("eps"), col("model"), col("result", role="status"), col("check"), col("evidence")],
                rows,
                "FLAG = the signature of gradient masking was found; that model's robustness is then overstated",
            )
        )
    return blocks
