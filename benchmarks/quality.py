"""Translation quality benchmark: train the shipped configs and ablations, evaluate, tabulate.

    python benchmarks/quality.py                      # every job (many hours on 2 cores)
    python benchmarks/quality.py --only ja-en,en-ja   # some of them
    python benchmarks/quality.py --budget 40          # each training stopped after 40 minutes
    python benchmarks/quality.py --only "ja-en, LSTM" --epochs 4   # an ablation row: 4 epochs
    python benchmarks/quality.py --only "en-ja, seed 2,en-ja, ensemble of 2 seeds"  # 2 runs ensembled
    python benchmarks/quality.py --only "en-ja, 512 wide, distilled from the 512-wide ensemble"

Each job is `python cli.py pipeline` on a shipped config with a few settings overridden on its
command line (`--model.cell lstm`), in its own run directory under --runs (the command is kept in
the results), then `python cli.py evaluate` on the test set greedy, by beam 5 and 10; an ensemble
job evaluates its member jobs' runs together, and a distilled job trains on its teacher
ensemble's translations of the training sources (`python cli.py translate` on the member jobs'
runs, once). The pipeline skips finished stages, so an interrupted benchmark resumes. For
the default job it also scores the best checkpoint (by dev BLEU) reached within --at-minutes of
training (comparable with a peer trained that long) and, with --at-epochs N, within its first N
epochs: the row that `--epochs N` ablations compare with, as long as the learning rate was not
lowered within them (history.csv shows it; for the shipped config it first drops after epoch 8).
Results go to --json and into BENCHMARKS.md between the `<!-- quality -->` markers; the README's
"Benchmarks" says more.
"""

from __future__ import annotations

import csv
import fcntl
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's packages

import typer  # noqa: E402

from benchmarks.bench import ROOT, child, choose, command, json_option, log, num, table  # noqa: E402
from pipeline.artifacts import Run, write_json_atomic  # noqa: E402
from pipeline.config import PipelineConfig, load_pipeline_config  # noqa: E402
from pipeline.errors import ConfigError, StageError  # noqa: E402

# a warm-up of about an epoch, then a half cosine to 0 at the last epoch, every epoch run (no early stop)
COSINE = "--train.lr_schedule cosine --train.warmup_steps 800 --train.patience 20"
KEEP_ALL = "--train.keep_checkpoints 0"  # every epoch's checkpoint kept (--at-epochs, --at-minutes)
NO_SUBWORDS = "--train.subword_alpha 0"  # en2ja_wide.toml's jobs from before it had subword regularisation
BEAMS = (1, 5, 10)  # evaluated: greedy (beam 1), beam 5 and 10

# name -> (base config, its overrides as `python cli.py pipeline --config BASE ...` takes them)
JOBS: dict[str, tuple[str, str]] = {
    "ja-en": ("configs/enja.toml", KEEP_ALL),
    "en-ja": ("configs/en2ja.toml", ""),
    "en-ja, seed 2": ("configs/en2ja.toml", "--train.seed 2"),
    "tatoeba ja-en": ("configs/tatoeba_jaen.toml", ""),
    "tatoeba ja-en, dropout 0.3": ("configs/tatoeba_jaen.toml", "--model.dropout 0.3"),
    "tatoeba ja-en, subword regularisation": ("configs/tatoeba_jaen.toml", "--train.subword_alpha 0.1"),
    "ja-en, bfloat16": ("configs/enja.toml", f"{KEEP_ALL} --train.precision mixed_bfloat16"),
    "ja-en, random embeddings": ("configs/enja.toml", "--train.pretrained false"),
    "ja-en, LSTM": ("configs/enja.toml", "--model.cell lstm"),
    "ja-en, LSTM peephole": ("configs/enja.toml", "--model.cell lstm-peephole"),
    "ja-en, 2 encoder layers": ("configs/enja.toml", "--model.layers 2"),
    "ja-en, no label smoothing": ("configs/enja.toml", "--train.label_smoothing 0.0"),
    "ja-en, subword regularisation": ("configs/enja.toml", "--train.subword_alpha 0.2"),
    "ja-en, dropout 0.3, lr_patience 2": ("configs/enja.toml", "--model.dropout 0.3 --train.lr_patience 2"),
    "en-ja, dropout 0.3": ("configs/en2ja.toml", "--model.dropout 0.3"),
    "ja-en, word dropout 0.1": ("configs/enja.toml", f"--model.word_dropout 0.1 {KEEP_ALL}"),
    "ja-en, cosine schedule": ("configs/enja.toml", f"{KEEP_ALL} {COSINE}"),
    "en-ja, cosine schedule": ("configs/en2ja.toml", COSINE),
    "ja-en, cosine schedule, word dropout 0.1": ("configs/enja.toml", f"--model.word_dropout 0.1 {KEEP_ALL} {COSINE}"),
    "en-ja, cosine schedule, dropout 0.3": ("configs/en2ja.toml", f"--model.dropout 0.3 {COSINE}"),
    # the shipped wide configs: 512 wide everywhere (the pretrained vectors must match the embeddings), dropout 0.3,
    # and COSINE (en2ja's lr_patience, which the cosine course ignores, dropped)
    "en-ja, 512 wide, dropout 0.3, cosine schedule": ("configs/en2ja_wide.toml", NO_SUBWORDS),
    "ja-en, 512 wide, dropout 0.3, cosine schedule": ("configs/enja_wide.toml", KEEP_ALL),
    # the wide en-ja model overfits from epoch 8 (dev loss up, dev BLEU flat): more dropout
    "en-ja, 512 wide, dropout 0.4, cosine schedule": ("configs/en2ja_wide.toml", f"--model.dropout 0.4 {NO_SUBWORDS}"),
    # in both wide en-ja runs greedy dev BLEU and beam-5 test BLEU disagreed by more than the levers' effects:
    # choose the checkpoint by beam-5 dev BLEU, the figure reported (every checkpoint kept, to compare the choices)
    "en-ja, 512 wide, dropout 0.3, cosine schedule, dev beam 5": ("configs/en2ja_wide.toml",
                                                                  f"--train.dev_beam 5 {KEEP_ALL} {NO_SUBWORDS}"),
    # the shipped en2ja_wide config's spread between runs (the 256 default's four runs: 37.27 to 39.93)
    "en-ja, 512 wide, dropout 0.3, cosine schedule, seed 2": ("configs/en2ja_wide.toml",
                                                              f"--train.seed 2 {NO_SUBWORDS}"),
    # Kudo (2018) against the wide model's overfitting, mildly: alpha 0.5 among the 64 best segmentations leaves
    # about half the training sentences as the best segmentation and adds 5% pieces (0.2, tried at 256 wide, changes
    # 95%); the shipped en2ja_wide.toml since it scored 40.18 (then by SentencePiece's sampling among all)
    "en-ja, 512 wide, subword regularisation 0.5": ("configs/en2ja_wide.toml", ""),
    "en-ja, 512 wide, subword regularisation 0.5, seed 2": ("configs/en2ja_wide.toml", "--train.seed 2"),
    # dropout 0.3 was still improving at epoch 20 under the plateau rule: 25 epochs of a cosine course
    "tatoeba ja-en, dropout 0.3, cosine schedule": ("configs/tatoeba_jaen.toml", f"--model.dropout 0.3 {COSINE} "
                                                    "--train.epochs 25 --train.patience 25"),
    "tatoeba ja-en, 512 wide, dropout 0.3": ("configs/tatoeba_jaen_wide.toml", ""),  # 30 epochs
    # Sennrich and Zhang (2019) for small corpora: a smaller vocabulary (Japanese needs 2,012 pieces at
    # least) and word dropout, beside the 0.3 dropout; up to 30 epochs of the plateau rule
    "tatoeba ja-en, dropout 0.3, word dropout 0.1, 2,500 pieces": ("configs/tatoeba_jaen.toml", (
        "--tokenize.vocab_size 2500 --model.dropout 0.3 --model.word_dropout 0.1 --train.epochs 30")),
}
# name -> member jobs: their runs' models ensembled at translate time; the members are trained by
# their own jobs (which come first in the default order)
ENSEMBLES: dict[str, tuple[str, ...]] = {
    "en-ja, ensemble of 2 seeds": ("en-ja", "en-ja, seed 2"),
    "en-ja, 512 wide, ensemble of 2 seeds": ("en-ja, 512 wide, dropout 0.3, cosine schedule",
                                             "en-ja, 512 wide, dropout 0.3, cosine schedule, seed 2"),
}
# name -> (teacher: an ENSEMBLES job, student: a JOBS job): the student's config trained on the teacher's
# beam-5 translations of the training sources instead of their references (sequence-level knowledge
# distillation, Kim and Rush 2016); dev and test keep their references
DISTILLED: dict[str, tuple[str, str]] = {
    "en-ja, 512 wide, distilled from the 512-wide ensemble": ("en-ja, 512 wide, ensemble of 2 seeds",
                                                              "en-ja, 512 wide, dropout 0.3, cosine schedule"),
}
ALL_JOBS = [*JOBS, *ENSEMBLES, *DISTILLED]
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").replace("__", "_")


def label(name: str, epochs: int | None) -> str:
    """The key of a job's results: its name, and the epoch cap when there is one."""
    return f"{name}, {epochs} epochs" if epochs else name


def job_args(name: str, runs: Path, budget: float | None = None, epochs: int | None = None) -> list[str]:
    """`python cli.py pipeline`'s arguments for a trained job (a distilled job: its student's
    config, trained on its teacher's translations): the base config, then the overrides."""
    base, overrides = JOBS[DISTILLED[name][1] if name in DISTILLED else name]
    args = ["--config", str(ROOT / base), *overrides.split(), "--run", str(runs / slug(label(name, epochs)))]
    if budget:
        args += ["--train.time_budget", str(budget)]
    if epochs:
        args += ["--train.epochs", str(epochs), "--train.average_checkpoints", "0"]
    if name in DISTILLED:  # the teacher is the full ensemble, whatever the student's epochs
        suffix = Path(load_pipeline_config(ROOT / base).data.tgt).suffix  # names the language
        args += ["--data.tgt", str(runs / f"{slug(DISTILLED[name][0])}.train{suffix}")]
    return args


def job_config(name: str, runs: Path, budget: float | None = None, epochs: int | None = None) -> PipelineConfig:
    """A trained job's settings as `python cli.py pipeline` reads them from `job_args`."""
    config, *overrides = job_args(name, runs, budget, epochs)[1:]
    return load_pipeline_config(config, overrides)


def cli(*args: Any) -> dict[str, Any]:
    """Run `python cli.py ARGS`, stderr passed through; its stdout is JSON."""
    return json.loads(child([sys.executable, ROOT / "cli.py", *args], f"python cli.py {args[0]}")[0])


def dev_curve(run: Run) -> list[dict[str, float]]:
    path = run.path("train", "history.csv")
    if not path.is_file():
        return []
    with path.open() as f:
        return [{"epoch": int(row["epoch"]) + 1, "elapsed_min": round(float(row["elapsed_s"]) / 60, 1),
                 "dev_bleu": round(float(row["val_bleu"]), 2), "tok_per_s": round(float(row["train_tok_per_s"]))}
                for row in csv.DictReader(f)]


def best_within(run: Run, config: PipelineConfig, beams: tuple[int, ...], minutes: float = 0.0,
                epochs: int = 0) -> dict[str, Any] | None:
    """Test BLEU of the best checkpoint (by dev BLEU) among the epochs finished within `minutes` of
    training, or among the first `epochs`."""
    from pipeline.bleu import score
    from pipeline.config import DecodeConfig
    from pipeline.data import read_parallel
    from pipeline.translate import Translator

    curve = [p for p in dev_curve(run) if p["elapsed_min"] <= minutes or p["epoch"] <= epochs]
    if not curve or (epochs and len(curve) < epochs):
        return None
    best = max(curve, key=lambda p: p["dev_bleu"])
    checkpoint = run.path("train", "checkpoints") / f"epoch-{best['epoch']:03d}.weights.h5"  # as train names it
    if not checkpoint.is_file():
        log.warning("%s is gone (train with keep_checkpoints = 0 to keep every epoch)", checkpoint)
        return None
    translator = Translator.load(run, needed_by="quality benchmark")
    translator.model.load_weights(checkpoint)
    pairs = list(read_parallel(ROOT / config.data.test_src, ROOT / config.data.test_tgt))
    result = {"minutes": minutes, "epochs": epochs, "epoch": best["epoch"], "elapsed_min": best["elapsed_min"],
              "dev_bleu": best["dev_bleu"], "curve": [p["dev_bleu"] for p in curve]}
    for beam in beams:
        decode = DecodeConfig(strategy="beam" if beam > 1 else "greedy", beam=beam)
        hyps = [h.text for h in translator.translate([s for s, _ in pairs], decode)]
        scores = score(hyps, [t for _, t in pairs], tokenize=config.evaluate.tokenize)
        result[f"beam{beam}"] = {"bleu": round(scores["bleu"], 2), "sacrebleu": round(scores["sacrebleu"], 2)}
    return result


def test_scores(runs: list[Run], src: Any, ref: Any, tokenize: str, grouped: bool = False) -> dict[str, Any]:
    """`python cli.py evaluate` of the runs (several: ensembled) by beam, greedy for beam 1;
    `grouped`: each distinct source once, against all its references (`--group-references`)."""
    scores = {}
    for beam in BEAMS:
        report = cli("evaluate", *[a for run in runs for a in ("--run", run.root)], "--src", src, "--ref", ref,
                     "--tokenize", tokenize, "--json", *(["--greedy"] if beam == 1 else ["--beam", beam]),
                     *(["--group-references"] if grouped else []))
        scores[f"beam{beam}"] = {k: report[k] for k in ("bleu", "sacrebleu", "signature", "chrf", "decode_s",
                                                        "sentences_per_s", "sentences")}
    return scores


def trained_members(name: str, runs: Path, epochs: int | None = None) -> list[Run]:
    """The runs of an ensemble's member jobs, each of which must have finished training."""
    member_runs = [Run.at(job_config(m, runs, epochs=epochs).run) for m in ENSEMBLES[name]]
    for member, run in zip(ENSEMBLES[name], member_runs):
        if not run.has("train"):
            raise StageError(f"{name} needs the run of job {member!r} ({run.root}); train that job first")
    return member_runs


def run_ensemble(name: str, runs: Path, results: dict[str, Any], epochs: int | None = None) -> dict[str, Any]:
    """Test figures of the member jobs' runs ensembled; each member must have finished training."""
    members, member_runs = ENSEMBLES[name], trained_members(name, runs, epochs)
    config = job_config(members[0], runs, epochs=epochs)
    return {"members": list(members), "epochs_cap": epochs,
            "test": test_scores(member_runs, config.data.test_src, config.data.test_tgt, config.evaluate.tokenize),
            "train_min": sum(results.get(label(m, epochs), {}).get("stage_seconds", {}).get("train", 0)
                             for m in members) / 60,
            "date": time.strftime("%Y-%m-%d")}


def teacher_translations(name: str, runs: Path, config: PipelineConfig) -> None:
    """Write a distilled job's training targets, `config.data.tgt`: its teacher's beam-5
    translations of the training sources, by `python cli.py translate` (once: a rerun reuses them)."""
    targets = Path(config.data.tgt)
    if targets.is_file():
        return
    members = trained_members(DISTILLED[name][0], runs)
    child([sys.executable, ROOT / "cli.py", "translate", *[a for run in members for a in ("--run", run.root)],
           "--input", config.data.src, "--output", targets, "--beam", 5], "python cli.py translate")


def run_job(name: str, runs: Path, budget: float | None, minutes: float, previous: dict[str, Any],
            collect: bool = False, epochs: int | None = None, at_epochs: int = 0) -> dict[str, Any]:
    args = job_args(name, runs, budget, epochs)
    config = job_config(name, runs, budget, epochs)
    if name in DISTILLED and not collect:
        teacher_translations(name, runs, config)
    run = Run.at(config.run)
    if collect:  # figures of the run as it stands, trained earlier
        log.info("%s: collecting %s as it stands", name, run.root)
        stages = {}
    else:
        stages = cli("pipeline", *args)["stages"]
    seconds = {**previous.get("stage_seconds", {}),
               **{stage: info["seconds"] for stage, info in stages.items() if info["status"] == "ran"}}
    test = (config.data.test_src or run.path("split", "test.src"),
            config.data.test_tgt or run.path("split", "test.tgt"))
    result: dict[str, Any] = {
        "command": shlex.join(["python", "cli.py", "pipeline", *args]),
        "budget_min": budget, "epochs_cap": epochs,
        "stage_seconds": seconds, "train": run.manifest("train", needed_by="benchmarks/quality.py")["report"],
        "dev_curve": dev_curve(run), "dev_beam": config.train.dev_beam,
        "test": test_scores([run], *test, config.evaluate.tokenize),
    }
    if name in DISTILLED:
        result["teacher"] = DISTILLED[name][0]
    if config.split.enabled:  # a test set cut by split: each source with all its translations, one line each
        result["test_grouped"] = test_scores([run], *test, config.evaluate.tokenize, grouped=True)
    if name == "ja-en" and not epochs:
        if minutes:
            result["at_minutes"] = best_within(run, config, (1, 5), minutes=minutes)
        if at_epochs:
            result["at_epochs"] = best_within(run, config, BEAMS, epochs=at_epochs)
    result["date"] = time.strftime("%Y-%m-%d")
    return result


FULL_HEADER = ["job", "test BLEU greedy", "beam 5", "beam 10", "chrF (beam 5)", "best dev BLEU (epoch)", "epochs",
               "train min", "median tok/s", "greedy / beam-5 sent/s"]
ABLATION_HEADER = ["setting", "test BLEU greedy", "beam 5", "beam 10", "dev BLEU (epoch)", "dev BLEU by epoch"]
DEFAULT_SETTING = "default (ja-en: word2vec embeddings, GRU, 1 encoder layer, label smoothing 0.1)"


def markdown(results: dict[str, Any]) -> str:
    full = {n: r for n, r in results.items() if not r.get("epochs_cap")}
    capped = {n: r for n, r in results.items() if r.get("epochs_cap")}
    out = ["BLEU is sacreBLEU's (nltk's corpus BLEU on the same tokens, beside it in the JSON, agrees to 0.01 "
           "where every hypothesis has 4 tokens or more, and is a little lower where some have fewer: "
           "pipeline/bleu.py says why), signatures:", ""]
    out += [f"- `{sig}`" for sig in sorted({t["signature"] for r in results.values() for t in r["test"].values()})]
    out += ["", *table(FULL_HEADER, [full_row(name, r) for name, r in full.items()], markdown=True)]
    for name, r in full.items():
        if a := r.get("at_minutes"):
            out += ["", f"{name} after {a['minutes']:.0f} minutes of training: the best checkpoint by then (epoch "
                        f"{a['epoch']}, finished at {a['elapsed_min']} min, dev BLEU {a['dev_bleu']}) scores "
                        f"{a['beam1']['sacrebleu']} greedy, {a['beam5']['sacrebleu']} beam 5 on test."]
        if g := r.get("test_grouped"):
            one, every = r["test"]["beam5"], g["beam5"]
            out += ["", f"{name} with every reference of a source sentence (`evaluate --group-references`): "
                        f"{every['sacrebleu']} beam 5, {g['beam1']['sacrebleu']} greedy on {every['sentences']} "
                        f"distinct sources (`{every['signature']}`), against {one['sacrebleu']} beam 5 line by "
                        f"line, one reference each, on {one.get('sentences', '?')} lines."]
        if "dev_curve" in r:
            curve = ", ".join(f"{p['dev_bleu']} ({p['elapsed_min']:.0f}′)" for p in r["dev_curve"])
            search = "greedy" if r.get("dev_beam", 1) == 1 else f"beam {r['dev_beam']}"
            out += ["", f"{name}, dev BLEU ({search}) by epoch (minutes since training began): {curve}"]
    for epochs in sorted({r["epochs_cap"] for r in capped.values()}):
        out += ["", f"Ablations, each trained for {epochs} epochs (no checkpoint averaging; test BLEU of the best "
                    "epoch by dev BLEU):", ""]
        rows = [ablation_row(name.removesuffix(f", {epochs} epochs"), r["test"],
                             f"{r['train']['best_dev_bleu']:.2f} ({r['train']['best_epoch']})",
                             [p["dev_bleu"] for p in r["dev_curve"]])
                for name, r in capped.items() if r["epochs_cap"] == epochs]
        default = full.get("ja-en", {}).get("at_epochs")
        if default and default.get("epochs") == epochs:  # the default's own first epochs, above the rows
            rows.insert(0, ablation_row(DEFAULT_SETTING, default, f"{default['dev_bleu']} ({default['epoch']})",
                                        default.get("curve", [])))
        out += table(ABLATION_HEADER, rows, markdown=True)
    return "\n".join(out) + "\n"


def full_row(name: str, r: dict[str, Any]) -> list[str]:
    """A row of the full runs' table: a trained job's, or an ensemble's (no training of its own)."""
    test, train = r["test"], r.get("train")
    b1, b5, b10 = (test.get(f"beam{b}", {}) for b in (1, 5, 10))
    bleu = [b1["sacrebleu"], b5["sacrebleu"], b10.get("sacrebleu", ""), b5["chrf"]]
    speed = f"{num(b1['sentences_per_s'])} / {num(b5['sentences_per_s'])}"
    if train is None:
        return [f"{name} ({' + '.join(r['members'])})", *bleu, "", "", f"{r['train_min']:.0f} (members)", "", speed]
    avg = " (averaged)" if (train.get("average") or {}).get("kept") else ""
    epochs = train.get("epochs", train["epochs_run"])  # all of them; epochs_run: those of the last (resumed) call
    return [name, *bleu, f"{train['best_dev_bleu']:.2f} ({train['best_epoch']}){avg}", epochs,
            f"{r['stage_seconds'].get('train', train['wall_s']) / 60:.0f}",
            num(train["median_train_tok_per_s"]), speed]


def ablation_row(name: str, scores: dict[str, Any], dev: str, curve: list[float]) -> list[str]:
    """A row of an ablation table: test BLEU by beam, the best dev BLEU (epoch) and the dev curve."""
    return [name, *(scores.get(f"beam{b}", {}).get("sacrebleu", "") for b in (1, 5, 10)), dev,
            ", ".join(map(str, curve))]


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


def main(
    only: Optional[str] = typer.Option(None, help=f"Comma-separated jobs; default all: {'; '.join(ALL_JOBS)}."),
    runs: Path = typer.Option(ROOT / "saved_models" / "quality", help="Where run dirs go."),
    budget: Optional[float] = typer.Option(None, help="Stop each training after this many minutes."),
    at_minutes: float = typer.Option(40.0, help="Also score the default job's best checkpoint within this much "
                                                "training (0: off)."),
    epochs: Optional[int] = typer.Option(None, help="Train each job for this many epochs, without averaging "
                                                    "(the ablation setting)."),
    at_epochs: int = typer.Option(0, help="Also score the default job's best checkpoint of its first N epochs "
                                          "(0: off)."),
    collect: bool = typer.Option(False, help="Do not train: evaluate and tabulate the run directories as they stand."),
    stage_seconds: Optional[str] = typer.Option(None, help="With --collect: the stage times of the earlier run, "
                                                           "as JSON."),
    json_path: Path = json_option(ROOT / "benchmarks" / "results" / "quality.json", stdout=False),
    markdown_path: Path = typer.Option(ROOT / "BENCHMARKS.md", "--markdown",
                                       help="File whose quality section is rewritten ('-': print it instead)."),
):
    """Translation quality: train the shipped configs and ablations, evaluate, tabulate."""
    names = choose(only, ALL_JOBS, "job") if only else [*JOBS, *([] if epochs else ENSEMBLES), *DISTILLED]
    if epochs and (ensembles := [n for n in names if n in ENSEMBLES]):
        raise ConfigError(f"--epochs is for trained jobs, not the ensemble {ensembles[0]!r}")
    try:
        stages = json.loads(stage_seconds or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"--stage-seconds is not JSON ({e})") from None
    results, mine = save_results(json_path, {}), {}
    for name in names:
        key = label(name, epochs)
        previous = {**results.get(key, {}), **({"stage_seconds": stages} if stages else {})}
        if name in ENSEMBLES:
            mine[key] = run_ensemble(name, runs.resolve(), save_results(json_path, mine), epochs)
        else:
            mine[key] = run_job(name, runs.resolve(), budget, at_minutes, previous, collect, epochs, at_epochs)
        results = save_results(json_path, mine)  # after each job
    order = [label(n, e) for e in (None, *sorted({r.get("epochs_cap") or 0 for r in results.values()} - {0}))
             for n in ALL_JOBS]
    section = markdown({n: results[n] for n in order if n in results})
    if str(markdown_path) == "-":
        sys.stdout.write(section)
    else:
        update_benchmarks_md(markdown_path, section)
        log.info("wrote %s and the quality section of %s", json_path, markdown_path)
    print(json.dumps({label(n, epochs): {b: t["sacrebleu"] for b, t in results[label(n, epochs)]["test"].items()}
                      for n in names}, indent=2))


if __name__ == "__main__":
    command(main)
