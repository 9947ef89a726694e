"""The benchmark's report: the machine it ran on, each figure beside the peer's, as text or Markdown."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.bench import ROOT, num, table
from pipeline.errors import ConfigError

PEER_README = "../shared/peer/README.md"
# JoeyNMT 2.3.0 on this project's machine kind (2 cores), from ../shared/peer/README.md.
PUBLISHED = {
    "train_tok_per_s": 1964,
    "greedy_sent_per_s": 414,
    "beam_sent_per_s": 68,
    "word2vec_words_per_s": 400_000,  # gensim 4.4, "~400k effective words/s"
}
PUBLISHED_LABEL = "published, same machine kind"
GOALS = {"train": 2.0, "train_rss_gib": 3.0, "greedy": 2.0, "beam": 3.0, "word2vec": 1.0}
CPU_FEATURES = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "sentencepiece", "gensim")
SECTIONS = ("train", "decode", "w2v", "stream", "export", "workers", "peer")


def about(threads: int, env: dict[str, str]) -> dict[str, Any]:
    """The machine, the code and the settings that the figures depend on."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %z"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpu": next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                     if line.startswith("model name")), None),
        # what the CPU computes natively: bfloat16 (AVX512-BF16, AMX) or not; the figures depend on it
        "cpu_features": sorted(CPU_FEATURES & set(next((line.split(":", 1)[1].split() for line in _read(
            "/proc/cpuinfo").splitlines() if line.startswith("flags")), []))),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": {"intra_op": threads, "inter_op": threads, "gensim_workers": threads,
                    "set_by": "TF_NUM_INTRAOP_THREADS and TF_NUM_INTEROP_THREADS in every measured process, "
                              "and tf.config.threading in benchmarks/measure.py"},
        "environment": {k: env.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")},
        "versions": versions,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_times_start": cpu_times(),
    }


def cpu_times() -> dict[str, int]:
    """The machine's CPU time so far (/proc/stat, in clock ticks): all of it, and the part stolen by
    the hypervisor for other guests, which no load average shows."""
    fields = next((line.split()[1:] for line in _read("/proc/stat").splitlines() if line.startswith("cpu ")), [])
    ticks = [int(x) for x in fields[:8]]
    return {"total": sum(ticks), "steal": ticks[7]} if len(ticks) == 8 else {}


def steal_share(about: dict[str, Any]) -> float | None:
    """The share of the CPU time between the start and the end of a run that the hypervisor gave
    to other guests: a figure taken while it is high is not this machine's speed."""
    start, end = about.get("cpu_times_start") or {}, about.get("cpu_times_end") or {}
    if not (start and end) or end["total"] <= start["total"]:
        return None
    return (end["steal"] - start["steal"]) / (end["total"] - start["total"])


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text()
    return ""


# -- figures ----------------------------------------------------------------------------------------

def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: the project's value, the peer's, their ratio and the goal."""
    rows = []
    peer = results.get("peer") or {}
    train, peer_train = results.get("train") or {}, peer.get("train") or {}
    if train.get("tok_per_s"):
        for name, measured in {"": train, **train.get("precisions", {})}.items():
            rows.append(_row(f"training throughput{name and ', ' + name}", measured["tok_per_s"], "target tok/s",
                             *_peer(peer_train.get("tok_per_s"), "train_tok_per_s"), ratio_goal=GOALS["train"]))
        peer_rss = peer_train.get("process", {}).get("peak_rss_mib")
        rows.append(_row("training peak RSS", train["process"]["peak_rss_mib"] / 1024, "GiB",
                         peer_rss and peer_rss / 1024, "JoeyNMT, this run" if peer_rss else None,
                         below=GOALS["train_rss_gib"]))
    decode = results.get("decode") or {}
    beam = f"beam{(results.get('settings') or {}).get('beam', 5)}"
    if "greedy" in decode:
        for name, key in (("greedy", "greedy_sent_per_s"), (beam, "beam_sent_per_s")):
            measured = peer.get("decode", {}).get(name, {})
            if not _comparable_outputs(measured, decode[name]):
                measured = {}  # a barely trained peer babbles to the length limit: slower for that alone
            rows.append(_row(f"decoding, {name.replace('beam', 'beam ')}", decode[name]["sent_per_s"], "sent/s",
                             *_peer(measured.get("sent_per_s"), key), ratio_goal=GOALS[key.split("_")[0]]))
        mismatches = sum(n for name in ("greedy", beam) for n in decode[name]["mismatches"].values())
        rows.append(_row(f"decoding, outputs differing by batch size (1, 16, {decode[beam].get('batch_size', 64)})",
                         mismatches, "sentences", None, None, equal=0))
    w2v = results.get("w2v") or {}
    if "project" in w2v:
        gensim = w2v.get("gensim", {})
        if "src" in gensim:
            value, label = _words_per_s(gensim), f"gensim {gensim['version']}, this run"
        else:
            value, label = PUBLISHED["word2vec_words_per_s"], f"gensim, {PUBLISHED_LABEL}"
        rows.append(_row("word2vec, both sides", _words_per_s(w2v["project"]), "effective words/s", value, label,
                         ratio_goal=GOALS["word2vec"]))
    return rows


def _comparable_outputs(peer: dict[str, Any], ours: dict[str, Any], tolerance: float = 1.5) -> bool:
    """Decoding speed compares only between models whose outputs are about as long: the peer's
    checkpoint after a few hundred steps writes up to its length limit, so its sentences/s would
    flatter us. Otherwise the published figures (a peer trained 40 minutes) are used."""
    a, b = peer.get("mean_output_words"), ours.get("mean_output_words")
    return bool(a and b) and max(a, b) / min(a, b) <= tolerance


def _peer(measured: float | None, key: str) -> tuple[float, str]:
    return (measured, "JoeyNMT, this run") if measured else (PUBLISHED[key], PUBLISHED_LABEL)


def _words_per_s(sides: dict[str, Any]) -> float:
    """Both sides' effective words over both sides' time: the wall time of the two together where
    they trained at once ("both", the pretrain stage), else the sum of each side's time (gensim's,
    from each side's own rate, which is exact where the reported seconds are rounded)."""
    if "both" in sides:
        return sides["both"]["words_per_second"]
    words = [sides[s]["effective_words"] for s in ("src", "tgt")]
    rates = [sides[s]["words_per_second"] for s in ("src", "tgt")]
    return sum(words) / sum(w / r for w, r in zip(words, rates) if w)


def _row(figure: str, value: float, unit: str, peer: float | None, peer_label: str | None,
         ratio_goal: float | None = None, below: float | None = None, equal: float | None = None) -> dict:
    ratio = value / peer if peer else None
    if ratio_goal is not None:
        goal, met = f">= {ratio_goal:g}x peer", ratio is not None and ratio >= ratio_goal
    elif below is not None:
        goal, met = f"< {below:g} {unit}", value < below
    else:
        goal, met = f"{equal:g}", value == equal
    return {"figure": figure, "value": value, "unit": unit, "peer": peer, "peer_source": peer_label,
            "ratio": ratio, "goal": goal, "met": met}


# -- rendering --------------------------------------------------------------------------------------

STREAM_NOTE = ("Streaming: `python cli.py tokenize`, `pretrain` (one word2vec epoch) and a fixed number of "
               "training steps on the training corpus repeated k times, each a process of its own. In brackets: "
               "time per pair, and peak RSS, relative to the first row. Pretrain's wall time includes starting "
               "TensorFlow and compiling; word2vec's is the training alone. A row naming a commit is that commit's "
               "training steps, measured in the same run (--baseline).")
EXPORT_NOTE = ("Export: `python cli.py translate` as a whole process beside the exported SavedModel in a fresh "
               "`python -I` process with only TensorFlow and tensorflow-text, on the same sentences.")
WORKERS_NOTE = ("Workers: `python cli.py train` in one process and in a cluster of worker processes on this "
                "machine (they share its cores and all-reduce over loopback: the ratio is that overhead).")


def _tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(note, header, rows) of each table the results have."""
    figure_rows = [[r["figure"], f"{num(r['value'])} {r['unit']}",
                    f"{num(r['peer'])} ({r['peer_source']})" if r["peer"] is not None else "-",
                    f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-", r["goal"], "yes" if r["met"] else "no"]
                   for r in results["figures"]]
    out = [("", ["figure", "this project", "peer", "ratio", "goal", "met"], figure_rows)]

    def rss(d: dict) -> str:
        return f"{d['peak_rss_mib']:,.0f} MiB" + (f" ({d['rss_vs_first']:.2f})" if "rss_vs_first" in d else "")

    def wall(d: dict, key: str = "wall_s") -> str:
        return f"{d[key]:.1f} s ({d[f'{key}_per_pair_vs_first']:.2f})"

    stream = results.get("stream") or {}
    rows = []
    for row in stream.get("rows", []):
        t, p, r = row["tokenize"], row["pretrain"], row.get("train")
        rows.append([f"{row['scale']}x", f"{row['pairs']:,}", wall(t), rss(t), wall(p), wall(p, "word2vec_s"), rss(p),
                     *([f"{r['tok_per_s']:,.0f}", rss(r)] if r else ["-", "-"])])
    if b := stream.get("baseline"):
        rows.append([f"{b['scale']}x, commit {b['commit']}", *[""] * 6, f"{b['tok_per_s']:,.0f}", rss(b)])
    out.append((STREAM_NOTE, ["corpus", "pairs", "tokenize wall", "tokenize peak RSS", "pretrain wall",
                              "of which word2vec", "pretrain peak RSS", "train tok/s", "train peak RSS"], rows))

    export = results.get("export") or {}
    n, rows = export.get("sentences"), []
    for name in [k for k in export if isinstance(export[k], dict) and "lines_that_differ" in export[k]]:
        e, wall_s = export[name], export[name]["translate"]["wall_s"]
        end_to_end = export["import_s"] + export["load_s"] + e["first_pass_s"]
        rows.append([name.replace("beam", "beam "), f"{n / wall_s:.1f} sent/s ({wall_s:.1f} s)",
                     f"{n / end_to_end:.1f} sent/s ({end_to_end:.1f} s)", f"{num(n / e['steady_s'])} sent/s",
                     e["lines_that_differ"]])
    out.append((EXPORT_NOTE, [f"{n} test sentences", "`cli.py translate`, whole process", "exported, end to end "
                              "(import + load + first pass)", f"exported, steady (median of {export.get('repeats')} "
                              "passes)", "lines that differ"], rows))

    w = results.get("workers") or {}
    rows = [] if "ratio" not in w else [
        ["one process", w["one_process"]["threads"], num(w["one_process"]["tok_per_s"]), "1.00"],
        [f"{w['cluster']['workers']} workers on 127.0.0.1 (MultiWorkerMirroredStrategy)",
         f"{w['cluster']['threads_each']} each", num(w["cluster"]["tok_per_s"]), f"{w['ratio']:.2f}"]]
    out.append((WORKERS_NOTE, ["training", "TensorFlow threads", "target tok/s", "ratio"], rows))
    return out


def _cpu(about: dict[str, Any]) -> str:
    """The CPU's model, its vector features and whether it computes bfloat16 natively."""
    if (features := about.get("cpu_features")) is None:  # a JSON from before they were recorded
        return str(about["cpu"])
    bf16 = "bfloat16 instructions" if {"avx512_bf16", "amx_bf16"} & set(features) else "no bfloat16 instructions"
    return f"{about['cpu']} ({', '.join(features)}; {bf16})"


def _summary(results: dict[str, Any]) -> list[str]:
    a = results["about"]
    threads = a["threads"]
    lines = [f"{a['date']}, commit {a['commit']}{' (with uncommitted changes)' if a['uncommitted_changes'] else ''}; "
             f"{_cpu(a)}, {a['cpu_count']} cores ({a['usable_cores']} usable); TensorFlow threads "
             f"intra-op {threads['intra_op']}, inter-op {threads['inter_op']}; load average "
             f"{a['load_average_start'][0]:.2f} at the start, {a.get('load_average_end', ['?'])[0]} at the end; "
             f"{a.get('wall_s', 0):.0f} s in all"
             + ("." if (steal := steal_share(a)) is None
                else f"; {steal:.0%} of the CPU time stolen by the hypervisor.")]
    if results["settings"].get("quick"):
        lines.append("QUICK MODE: tiny sizes and a tiny model, a smoke test; these figures say nothing about speed.")
    elif why := not_of_record(results):
        lines.append(f"NOT A RUN OF RECORD: {why}.")
    for name in SECTIONS:
        section = results.get(name) or {}
        lines += [f"{name}: {key}: {section[key]}" for key in ("skipped", "error") if key in section]
        if name == "w2v" and "skipped" in section.get("gensim", {}):
            lines.append(f"w2v: gensim skipped: {section['gensim']['skipped']}")
    return lines


def _details(results: dict[str, Any]) -> list[str]:
    """How each figure was taken, in a line or two."""
    lines = []
    if (train := results.get("train") or {}).get("tok_per_s"):
        rates = train["interval_tok_per_s"]
        lines.append(
            f"training: median of {len(rates)} intervals of {train['interval_steps']} steps (range "
            f"{num(min(rates))}-{num(max(rates))} tok/s) after {train['warmup_steps']} warm-up steps; "
            f"{train['train_pairs']:,} pairs, batches of {train['batch_size']} sentences, "
            f"{train['tokens_per_step']:,.0f} target tokens a step; {train['parameters']:,} parameters (JoeyNMT's: "
            f"4,978,688); {train.get('precision', 'float32')}{' (auto)' * (train.get('precision_setting') == 'auto')}"
            f", TensorFlow's oneDNN "
            f"{('off', 'on')[train['onednn']] if 'onednn' in train else 'not recorded'}; first step, tracing included, "
            f"{train['first_step_s']:.1f} s")
        for name, other in train.get("precisions", {}).items():
            rates = other["interval_tok_per_s"]
            lines.append(f"training in {name}, measured after it, the same way: range {num(min(rates))}-"
                         f"{num(max(rates))} tok/s; peak RSS {other['process']['peak_rss_mib'] / 1024:.2f} GiB")
    decode = results.get("decode") or {}
    for name, d in decode.items():
        if isinstance(d, dict) and "sent_per_s" in d:
            m = d["mismatches"]
            lines.append(
                f"decoding, {name}: {decode['sentences']} sentences in batches of {d['batch_size']}, median of "
                f"{len(d['seconds'])} passes ({', '.join(f'{x:.2f}' for x in d['seconds'])} s) after a first one of "
                f"{d['first_call_s']:.1f} s (tracing); {d['mean_output_words']:.1f} words an output; differing "
                f"outputs: {m['batch_1_vs_default']} of the first {d['batch_1_sentences']} with batches of 1, "
                f"{m['batch_16_vs_default']} with batches of 16, {m['repeats_vs_first']} between passes")
    w2v = results.get("w2v") or {}
    for side in ("src", "tgt") if "project" in w2v else ():
        p, g = w2v["project"][side], w2v.get("gensim", {}).get(side)
        lines.append(f"word2vec, {side}: {p['effective_words']:,} effective words at {p['words_per_second']:,}/s "
                     f"(compiling {p['compile_seconds']:.1f} s, not counted)"
                     + (f"; gensim {g['effective_words']:,} at {g['words_per_second']:,}/s" if g else ""))
    if both := w2v.get("project", {}).get("both"):
        lines.append(f"word2vec: the project trains both sides at once, in two threads, {both['train_seconds']:.1f} s "
                     "of wall time together; gensim trains one side after the other, each with all its workers")
    peer = results.get("peer") or {}
    if (t := peer.get("train") or {}).get("tok_per_s"):
        lines.append(f"JoeyNMT training: median of {len(t['interval_tok_per_s'])} intervals of {t['interval_steps']} "
                     f"steps after a first one left out, {t['steps']} steps in all")
    for name, d in (peer.get("decode") or {}).items():
        if isinstance(d, dict) and "sent_per_s" in d:
            lines.append(f"JoeyNMT decoding, {name}: {peer['decode']['sentences']} sentences in batches of "
                         f"{d['batch_size']}, median of {len(d['seconds'])} passes after a first one of "
                         f"{d['first_call_s']:.1f} s; the checkpoint of its {peer['decode']['checkpoint_steps']} "
                         f"training steps; {d['mean_output_words']:.1f} words an output")
    if "import_s" in (export := results.get("export") or {}):
        lines.append(f"export: `python cli.py export` {export['export']['wall_s']:.1f} s; the exported model, batches "
                     f"of {export['batch_size']} sorted by length: import {export['import_s']:.1f} s, load "
                     f"{export['load_s']:.1f} s; run {export['run']}")
    if "ratio" in (w := results.get("workers") or {}):
        lines.append(f"workers: {w['minutes']:g} min of training each (`train --time-budget`), the figure the "
                     f"chief's history.csv records (the whole cluster's target tokens/s of training proper)")
    return lines


RECORD_LOAD = 0.5  # the most load average at the start that a run of record may have
RECORD_STEAL = 0.1  # the most CPU time stolen by the hypervisor during a run of record


def not_of_record(results: dict[str, Any]) -> str | None:
    """Why these figures may not go into BENCHMARKS.md as a run of record, if they may not."""
    load = results["about"]["load_average_start"][0]
    if results["settings"].get("quick"):
        return "a --quick run is a smoke test"
    if load > RECORD_LOAD:
        return (f"the load average was {load:.2f} at the start, above {RECORD_LOAD}: other work shared the CPU "
                "(wait for an idle machine, `uptime`)")
    if (steal := steal_share(results["about"])) is not None and steal > RECORD_STEAL:
        return (f"the hypervisor gave {steal:.0%} of the CPU time to other guests during the run, above "
                f"{RECORD_STEAL:.0%} (`top`'s st): the machine was not this project's alone")
    return None


def render(results: dict[str, Any], markdown: bool = False) -> str:
    """The figures as aligned plain text for a terminal, or as a section for BENCHMARKS.md (only
    for a run of record: see `not_of_record`)."""
    if markdown and (why := not_of_record(results)):
        raise ConfigError(f"not a run of record, no Markdown section: {why}",
                          hint="the table without --markdown, and the JSON, have the figures")
    if markdown:
        out = ["## Speed and memory", "", "Measured by `python benchmarks/speed.py` (JSON: "
               f"`benchmarks/results/speed.json`). Peer: JoeyNMT 2.3.0 ({PEER_README}).", "",
               *(f"- {line}" for line in _summary(results) + _details(results)), ""]
    else:
        out = _summary(results) + [""] + _details(results) + [""]
    for note, header, rows in _tables(results):
        if rows:
            out += ([note, ""] if markdown else [note]) if note else []
            out += table(header, rows, markdown) + [""]
    return "\n".join(out).rstrip() + "\n"
