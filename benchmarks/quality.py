"""Translation quality benchmark: train the shipped configs and ablations, evaluate, tabulate.

    python benchmarks/quality.py                      # every job (many hours on 2 cores)
    python benchmarks/quality.py --only ja-en,en-ja   # some of them
    python benchmarks/quality.py --budget 40          # each training stopped after 40 minutes
    python benchmarks/quality.py --only "ja-en, LSTM" --epochs 4   # an ablation row: 4 epochs
    python benchmarks/quality.py --only "en-ja, seed 2,en-ja, ensemble of 2 seeds"  # 2 runs ensembled

Each job is `python cli.py pipeline` on a config (a shipped one, or the default with a few keys
changed, for the ablations) in its own run directory under --runs, then `python cli.py evaluate`
on the test set with greedy search and beam 5 (beam 10 too for the default); an ensemble job
evaluates its member jobs' runs together (`cli.py evaluate --run A --run B`). Finished stages
are skipped by the pipeline's own up-to-date check, so an interrupted benchmark resumes where it
stopped. Figures per job: BLEU (nltk and sacreBLEU, with the signature), chrF, the dev BLEU
curve by wall time, seconds per stage, training tokens/s, decoding sentences/s. For the default
job it also scores, on test, the best checkpoint (by dev BLEU) that training had reached after
--at-minutes, comparable with a peer trained for that long, and with --at-epochs the best
checkpoint of the first N epochs (needs every epoch's checkpoint, which this script asks for).
`--epochs N` trains each job for N epochs without checkpoint averaging, the ablation table's
setting: its rows compare with the default job's first N epochs, which are what a run of N
epochs does as long as the learning rate was not lowered within them (history.csv shows it; for
the shipped config it first drops after epoch 8).
Results go to --json and into BENCHMARKS.md between the `<!-- quality -->` markers. Progress on
stderr.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.artifacts import write_json_atomic  # noqa: E402  (after the path and TF settings above)

# name -> (base config, overrides by section, beams to evaluate)
JOBS: dict[str, tuple[str, dict[str, dict[str, Any]], tuple[int, ...]]] = {
    "ja-en": ("configs/enja.toml", {"train": {"keep_checkpoints": 0}}, (1, 5, 10)),
    "en-ja": ("configs/en2ja.toml", {}, (1, 5)),
    "en-ja, seed 2": ("configs/en2ja.toml", {"train": {"seed": 2}}, (1, 5)),
    "tatoeba ja-en": ("configs/tatoeba_jaen.toml", {}, (1, 5)),
    "ja-en, random embeddings": ("configs/enja.toml", {"train": {"pretrained": False}}, (1, 5)),
    "ja-en, LSTM": ("configs/enja.toml", {"model": {"cell": "lstm"}}, (1, 5)),
    "ja-en, 2 encoder layers": ("configs/enja.toml", {"model": {"layers": 2}}, (1, 5)),
    "ja-en, no label smoothing": ("configs/enja.toml", {"train": {"label_smoothing": 0.0}}, (1, 5)),
}
# name -> (member jobs, beams to evaluate): their runs' models ensembled at translate time; the
# members are trained by their own jobs (which come first in the default order)
ENSEMBLES: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "en-ja, ensemble of 2 seeds": (("en-ja", "en-ja, seed 2"), (1, 5, 10)),
}
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def log(message: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def to_toml(config: dict[str, Any]) -> str:
    """The flat TOML the pipeline configs use: top-level keys, then one table per section."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        return repr(v)

    lines = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, dict) and v is not None]
    for section, table in config.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def label(name: str, epochs: int | None) -> str:
    """The key of a job's results: its name, and the epoch cap when there is one."""
    return f"{name}, {epochs} epochs" if epochs else name


def job_names(only: str) -> list[str]:
    """The jobs of a comma-separated list; names hold commas too ("ja-en, LSTM"), so at each place
    the longest run of pieces that spells a job is taken."""
    pieces, names, i = only.split(","), [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            if (name := ",".join(pieces[i:j]).strip()) in JOBS or name in ENSEMBLES:
                names.append(name)
                i = j
                break
        else:
            raise SystemExit(f"error: unknown job {pieces[i].strip()!r}; jobs: {'; '.join([*JOBS, *ENSEMBLES])}")
    return names


def job_config(name: str, runs: Path, budget: float | None, epochs: int | None = None) -> dict[str, Any]:
    base, overrides, _ = JOBS[name]
    with open(ROOT / base, "rb") as f:
        config = tomllib.load(f)
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    if budget:
        config.setdefault("train", {})["time_budget"] = budget
    if epochs:
        config.setdefault("train", {}).update(epochs=epochs, average_checkpoints=0)
    config["run"] = str(runs / slug(label(name, epochs)))
    return config


def cli(*args: str) -> dict[str, Any]:
    """Run `python cli.py ARGS`, stderr passed through; its stdout is JSON."""
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.PIPE, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"`python cli.py {' '.join(args)}` failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)


def dev_curve(run: Path) -> list[dict[str, float]]:
    path = run / "train" / "history.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [{"epoch": int(row["epoch"]) + 1, "elapsed_min": round(float(row["elapsed_s"]) / 60, 1),
                 "dev_bleu": round(float(row["val_bleu"]), 2), "tok_per_s": round(float(row["train_tok_per_s"]))}
                for row in csv.DictReader(f)]


def best_within(run: Path, config: dict[str, Any], beams: tuple[int, ...], minutes: float = 0.0,
                epochs: int = 0) -> dict[str, Any] | None:
    """Test BLEU of the best checkpoint (by dev BLEU) among the epochs finished within `minutes` of
    training, or among the first `epochs`."""
    from pipeline.artifacts import Run
    from pipeline.bleu import score
    from pipeline.config import DecodeConfig
    from pipeline.data import read_parallel
    from pipeline.translate import Translator

    curve = [p for p in dev_curve(run) if p["elapsed_min"] <= minutes or p["epoch"] <= epochs]
    if not curve or (epochs and len(curve) < epochs):
        return None
    best = max(curve, key=lambda p: p["dev_bleu"])
    checkpoint = run / "train" / "checkpoints" / f"epoch-{best['epoch']:03d}.weights.h5"
    if not checkpoint.is_file():
        log(f"{checkpoint} is gone (train with keep_checkpoints = 0 to keep every epoch)")
        return None
    translator = Translator.load(Run.at(run), needed_by="quality benchmark")
    translator.model.load_weights(checkpoint)
    pairs = list(read_parallel(ROOT / config["data"]["test_src"], ROOT / config["data"]["test_tgt"]))
    result = {"minutes": minutes, "epochs": epochs, "epoch": best["epoch"], "elapsed_min": best["elapsed_min"],
              "dev_bleu": best["dev_bleu"], "curve": [p["dev_bleu"] for p in curve]}
    for beam in beams:
        decode = DecodeConfig(strategy="beam" if beam > 1 else "greedy", beam=beam)
        hyps = [h.text for h in translator.translate([s for s, _ in pairs], decode)]
        scores = score(hyps, [t for _, t in pairs], tokenize=config["evaluate"]["tokenize"])
        result[f"beam{beam}"] = {"bleu": round(scores["bleu"], 2), "sacrebleu": round(scores["sacrebleu"], 2)}
    return result


def evaluate(runs: list[Path], src: str, ref: str, tokenize: str, beam: int) -> dict[str, Any]:
    search = ["--greedy"] if beam == 1 else ["--beam", str(beam)]
    report = cli("evaluate", *[a for run in runs for a in ("--run", str(run))], "--src", src, "--ref", ref,
                 "--tokenize", tokenize, "--json", *search)
    return {k: report[k] for k in ("bleu", "sacrebleu", "signature", "chrf", "decode_s", "sentences_per_s")}


def run_ensemble(name: str, runs: Path, results: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    """Test figures of the member jobs' runs ensembled; each member must have finished training."""
    members, beams = ENSEMBLES[name]
    configs = [job_config(m, runs, None, epochs) for m in members]
    dirs = [Path(c["run"]) if Path(c["run"]).is_absolute() else ROOT / c["run"] for c in configs]
    for member, run in zip(members, dirs):
        if not (run / "train" / "manifest.json").is_file():
            raise SystemExit(f"error: {name} needs the run of job {member!r} ({run}); train that job first")
    data, tokenize = configs[0]["data"], configs[0]["evaluate"]["tokenize"]
    result: dict[str, Any] = {"members": list(members), "epochs_cap": epochs, "test": {}}
    result["train_min"] = sum(results.get(label(m, epochs), {}).get("stage_seconds", {}).get("train", 0)
                              for m in members) / 60
    for beam in beams:
        log(f"{name}: evaluate, beam {beam}")
        result["test"][f"beam{beam}"] = evaluate(dirs, data["test_src"], data["test_tgt"], tokenize, beam)
    result["date"] = time.strftime("%Y-%m-%d")
    return result


def run_job(name: str, runs: Path, budget: float | None, minutes: float, previous: dict[str, Any],
            collect: bool = False, epochs: int | None = None, at_epochs: int = 0) -> dict[str, Any]:
    config = job_config(name, runs, budget, epochs)
    run = Path(config["run"])
    if not run.is_absolute():
        run = ROOT / run
    config_path = run.parent / f"{run.name}.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(to_toml(config), encoding="utf-8")
    seconds = dict(previous.get("stage_seconds", {}))
    if collect:  # figures of the run as it stands, trained earlier
        if not (run / "train" / "manifest.json").is_file():
            raise SystemExit(f"error: {run} has no finished training to collect; run the job first")
        log(f"{name}: collecting {run} as it stands")
        summary = {"stages": {}}
    else:
        log(f"{name}: python cli.py pipeline --config {config_path}")
        summary = cli("pipeline", "--config", str(config_path))
    for stage, info in summary["stages"].items():
        if info["status"] == "ran":
            seconds[stage] = info["seconds"]
    train_report = json.loads((run / "train" / "manifest.json").read_text())["report"]
    result: dict[str, Any] = {
        "config": str(config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path),
        "base": JOBS[name][0], "overrides": JOBS[name][1], "budget_min": budget, "epochs_cap": epochs,
        "stage_seconds": seconds, "train": train_report, "dev_curve": dev_curve(run), "test": {},
    }
    data, tokenize = config["data"], config["evaluate"]["tokenize"]
    test_src = data.get("test_src") or str(run / "split" / "test.src")
    test_ref = data.get("test_tgt") or str(run / "split" / "test.tgt")
    for beam in JOBS[name][2]:
        log(f"{name}: evaluate, beam {beam}")
        result["test"][f"beam{beam}"] = evaluate([run], test_src, test_ref, tokenize, beam)
    if name == "ja-en" and not epochs:
        if minutes:
            result["at_minutes"] = best_within(run, config, (1, 5), minutes=minutes)
        if at_epochs:
            result["at_epochs"] = best_within(run, config, (1, 5, 10), epochs=at_epochs)
    result["date"] = time.strftime("%Y-%m-%d")
    return result


def markdown(results: dict[str, Any]) -> str:
    full = {n: r for n, r in results.items() if not r.get("epochs_cap")}
    capped = {n: r for n, r in results.items() if r.get("epochs_cap")}
    rows = ["| job | test BLEU greedy | beam 5 | beam 10 | chrF (beam 5) | best dev BLEU (epoch) | epochs | "
            "train min | median tok/s | greedy / beam-5 sent/s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in full.items():
        test, train = r["test"], r.get("train")
        b10 = test.get("beam10", {}).get("sacrebleu", "")
        if train is None:  # an ensemble: no training of its own
            rows.append(f"| {name} ({' + '.join(r['members'])}) | {test['beam1']['sacrebleu']} | "
                        f"{test['beam5']['sacrebleu']} | {b10} | {test['beam5']['chrf']} | | | "
                        f"{r['train_min']:.0f} (members) | | "
                        f"{test['beam1']['sentences_per_s']:.0f} / {test['beam5']['sentences_per_s']:.0f} |")
            continue
        avg = " (averaged)" if (train.get("average") or {}).get("kept") else ""
        rows.append(
            f"| {name} | {test['beam1']['sacrebleu']} | {test['beam5']['sacrebleu']} | {b10} | "
            f"{test['beam5']['chrf']} | {train['best_dev_bleu']:.2f} ({train['best_epoch']}){avg} | "
            f"{train['epochs_run']} | {r['stage_seconds'].get('train', train['wall_s']) / 60:.0f} | "
            f"{train['median_train_tok_per_s']:.0f} | "
            f"{test['beam1']['sentences_per_s']:.0f} / {test['beam5']['sentences_per_s']:.0f} |")
    out = ["BLEU is sacreBLEU's (nltk's corpus BLEU on the same tokens agrees to 0.01; both are in the "
           "JSON), signatures:", ""]
    for sig in sorted({t["signature"] for r in results.values() for t in r["test"].values()}):
        out.append(f"- `{sig}`")
    out += ["", *rows]
    for name, r in full.items():
        if r.get("at_minutes"):
            a = r["at_minutes"]
            out += ["", f"{name} after {a['minutes']:.0f} minutes of training: the best checkpoint by then (epoch "
                        f"{a['epoch']}, finished at {a['elapsed_min']} min, dev BLEU {a['dev_bleu']}) scores "
                        f"{a['beam1']['sacrebleu']} greedy, {a['beam5']['sacrebleu']} beam 5 on test."]
        if "dev_curve" not in r:
            continue
        curve = ", ".join(f"{p['dev_bleu']} ({p['elapsed_min']:.0f}′)" for p in r["dev_curve"])
        out += ["", f"{name}, dev BLEU (greedy) by epoch (minutes since training began): {curve}"]
    for epochs in sorted({r["epochs_cap"] for r in capped.values()}):
        out += ["", *ablation_table(epochs, full.get("ja-en", {}).get("at_epochs"),
                                    {n: r for n, r in capped.items() if r["epochs_cap"] == epochs})]
    return "\n".join(out) + "\n"


def ablation_table(epochs: int, default: dict[str, Any] | None, rows: dict[str, Any]) -> list[str]:
    """One row per job trained for `epochs` epochs, under the default's own first `epochs` epochs."""
    out = [f"Ablations, each trained for {epochs} epochs (no checkpoint averaging; test BLEU of the best "
           "epoch by dev BLEU):", "",
           "| setting | test BLEU greedy | beam 5 | beam 10 | dev BLEU (epoch) | dev BLEU by epoch |",
           "|---|---|---|---|---|---|"]
    if default and default.get("epochs") == epochs:
        out.append(f"| default (ja-en: word2vec embeddings, GRU, 1 encoder layer, label smoothing 0.1) | "
                   f"{default['beam1']['sacrebleu']} | {default['beam5']['sacrebleu']} | "
                   f"{default['beam10']['sacrebleu']} | {default['dev_bleu']} ({default['epoch']}) | "
                   f"{', '.join(str(p) for p in default.get('curve', []))} |")
    for name, r in rows.items():
        test, train = r["test"], r["train"]
        curve = ", ".join(str(p["dev_bleu"]) for p in r["dev_curve"])
        out.append(f"| {name.removesuffix(f', {epochs} epochs')} | {test['beam1']['sacrebleu']} | "
                   f"{test['beam5']['sacrebleu']} | {test.get('beam10', {}).get('sacrebleu', '')} | "
                   f"{train['best_dev_bleu']:.2f} ({train['best_epoch']}) | {curve} |")
    return out


def save_results(path: Path, mine: dict[str, Any]) -> dict[str, Any]:
    """Merge this process's results into the JSON file and return the whole of it. The file is
    re-read under a lock, so two benchmarks running side by side (two trainings, one core each)
    keep each other's jobs instead of the last writer's alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results.update(mine)
        write_json_atomic(path, results)
    return results


def update_benchmarks_md(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += ("\n" if text else "") + "## Quality\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"Comma-separated jobs; default all: {'; '.join([*JOBS, *ENSEMBLES])}.")
    parser.add_argument("--runs", type=Path, default=ROOT / "saved_models" / "quality", help="Where run dirs go.")
    parser.add_argument("--budget", type=float, default=None, help="Stop each training after this many minutes.")
    parser.add_argument("--at-minutes", type=float, default=40.0,
                        help="Also score the default job's best checkpoint within this much training (0: off).")
    parser.add_argument("--epochs", type=int, default=None,
                        help="Train each job for this many epochs, without averaging (the ablation setting).")
    parser.add_argument("--at-epochs", type=int, default=0,
                        help="Also score the default job's best checkpoint of its first N epochs (0: off).")
    parser.add_argument("--collect", action="store_true",
                        help="Do not train: evaluate and tabulate the run directories as they stand.")
    parser.add_argument("--stage-seconds", type=json.loads, default=None,
                        help="With --collect: the stage times of the earlier run, as JSON.")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="File whose quality section is rewritten ('-': print it instead).")
    args = parser.parse_args()

    names = job_names(args.only) if args.only else [*JOBS, *([] if args.epochs else ENSEMBLES)]
    if args.epochs and (ensembles := [n for n in names if n in ENSEMBLES]):
        parser.error(f"--epochs is for trained jobs, not the ensemble {ensembles[0]!r}")
    results, mine = save_results(args.json, {}), {}
    for name in names:
        key = label(name, args.epochs)
        previous = results.get(key, {})
        if args.stage_seconds:
            previous = {**previous, "stage_seconds": args.stage_seconds}
        if name in ENSEMBLES:
            mine[key] = run_ensemble(name, args.runs.resolve(), save_results(args.json, mine), args.epochs)
        else:
            mine[key] = run_job(name, args.runs.resolve(), args.budget, args.at_minutes, previous,
                                args.collect, args.epochs, args.at_epochs)
        results = save_results(args.json, mine)  # after each job
    order = [label(n, e) for e in (None, *sorted({r.get("epochs_cap") or 0 for r in results.values()} - {0}))
             for n in [*JOBS, *ENSEMBLES]]
    section = markdown({n: results[n] for n in order if n in results})
    if str(args.markdown) == "-":
        sys.stdout.write(section)
    else:
        update_benchmarks_md(args.markdown, section)
        log(f"wrote {args.json} and the quality section of {args.markdown}")
    print(json.dumps({label(n, args.epochs): {b: t["sacrebleu"] for b, t in results[label(n, args.epochs)]["test"].items()}
                      for n in names}, indent=2))


if __name__ == "__main__":
    main()
