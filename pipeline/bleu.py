"""Corpus BLEU two ways (nltk and sacreBLEU) on the same tokens, plus chrF.

BLEU (Papineni et al., 2002) is the geometric mean of the modified n-gram precisions p_1..p_4,
each summed over the whole corpus (matches clipped by the reference count / hypothesis n-grams),
times the brevity penalty BP = exp(1 - r/c) when the hypotheses are shorter (c < r), else 1:

    BLEU = 100 * BP * (p_1 * p_2 * p_3 * p_4) ** (1/4)

Tokenisation is stated and selectable. `none` splits on whitespace (for corpora that are already
tokenised); any other sacreBLEU tokeniser name (`13a`, `intl`, `char`, ...) is applied to each
string first, then the result is split on whitespace. Both BLEUs see exactly those tokens: the
nltk tokens come from the very tokeniser object sacreBLEU uses.

How the two BLEUs differ, and when:

- Smoothing: none for either. sacreBLEU runs with `smooth_method="none"` (its default, `exp`,
  would invent a precision for an order with no match); nltk runs without a smoothing function.
  When some order has no match at all, BLEU is 0: sacreBLEU returns 0.0, nltk a number below
  1e-70 (it replaces the zero precision by the smallest float). Either way the score is 0.
- Short hypotheses: nltk counts at least one n-gram per sentence and order (its denominator is
  `max(1, count)`), so an empty hypothesis, or one shorter than n tokens, adds a phantom n-gram
  that never matches to nltk's denominator of p_n. sacreBLEU counts the real n-grams only, as
  the paper does. On corpora whose hypotheses all have at least 4 tokens the two agree to
  rounding (tested to 0.01); a few empty or very short hypotheses pull `bleu` (nltk) below
  `sacrebleu`. The components reported (`precisions`, `counts`, `totals`, ...) are sacreBLEU's.
- Several references per hypothesis (a source translated more than once): an n-gram's matches
  are clipped by its largest count in any one reference, and the brevity penalty's r is the
  reference length closest to the hypothesis's (the shorter on a tie), in both libraries, so they
  agree on several references as on one. A hypothesis may have fewer references than others
  (sacreBLEU's `None` padding); its signature then says `nrefs:var`.

chrF (sacreBLEU's defaults: character 6-grams, beta 2) reads the raw strings; `tokenize` does not
apply to it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

from nltk.translate.bleu_score import corpus_bleu
from sacrebleu.metrics import BLEU, CHRF

from pipeline.data import read_lines
from pipeline.errors import ConfigError, InputError
from pipeline.progress import log

# sacreBLEU warns about tokenised-looking input on every call; with tokenize=none that is the point.
logging.getLogger("sacrebleu").setLevel(logging.ERROR)

TOKENIZERS = tuple(BLEU.TOKENIZERS)  # 'none', '13a', 'intl', 'char', 'zh', 'ja-mecab', ...
MAX_ORDER = 4


def score(hypotheses: list[str], references: Sequence[str | Sequence[str]], tokenize: str = "none") -> dict[str, Any]:
    """Score line-aligned hypotheses against their references; return a JSON-ready report.

    `references[i]` is hypothesis i's reference, or the list of its references. `bleu` is nltk's
    corpus BLEU and `sacrebleu` sacreBLEU's, both 0-100 on the same tokens; `precisions` (0-100,
    n = 1..4), `counts`, `totals`, `brevity_penalty`, `length_ratio`, `hyp_len` and `ref_len` are
    the components; `signature` is sacreBLEU's; `references` the most references of a hypothesis.
    """
    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} hypotheses but {len(references)} references",
                         hint="each hypothesis needs its reference(s), line by line")
    if not hypotheses:
        raise InputError("nothing to score: no hypotheses and no references")
    per_hypothesis = [[r] if isinstance(r, str) else list(r) for r in references]
    if not all(per_hypothesis):
        raise InputError(f"hypothesis {[bool(r) for r in per_hypothesis].index(False) + 1} has no reference")
    most = max(len(r) for r in per_hypothesis)
    streams = [[r[k] if k < len(r) else None for r in per_hypothesis] for k in range(most)]  # sacreBLEU's shape

    metric = _bleu_metric(tokenize)
    sacre = metric.corpus_score(hypotheses, streams)

    def tokens(line: str) -> list[str]:
        return metric.tokenizer(line.rstrip()).split()  # what sacreBLEU does before counting

    nltk_bleu = _nltk_bleu([tokens(h) for h in hypotheses], [[tokens(r) for r in refs] for refs in per_hypothesis])
    chrf_metric = CHRF()
    chrf = chrf_metric.corpus_score(hypotheses, streams)

    missing = [n for n, correct in enumerate(sacre.counts, 1) if correct == 0]
    if missing:
        log.warning("no matching %s-grams: BLEU is 0 (no smoothing)", "/".join(map(str, missing)))

    return {
        "bleu": 100.0 * nltk_bleu,
        "sacrebleu": sacre.score,
        "signature": str(metric.get_signature()),
        "tokenize": tokenize,
        "precisions": list(sacre.precisions),
        "counts": list(sacre.counts),
        "totals": list(sacre.totals),
        "brevity_penalty": sacre.bp,
        "length_ratio": sacre.ratio,
        "hyp_len": sacre.sys_len,
        "ref_len": sacre.ref_len,
        "chrf": chrf.score,
        "chrf_signature": str(chrf_metric.get_signature()),
        "sentences": len(hypotheses),
        "references": most,
    }


def score_files(hypotheses: str | Path, references: str | Path | Sequence[str | Path],
                tokenize: str = "none") -> dict[str, Any]:
    """`score` for line-aligned UTF-8 files: the hypotheses and one or more reference files (`-`
    reads stdin for one of them; see `read_references`)."""
    hyps = list(read_lines(hypotheses))
    files = [references] if isinstance(references, (str, Path)) else list(references)
    report = score(hyps, read_references(files, len(hyps), str(hypotheses)), tokenize)
    report.update(hypotheses=str(hypotheses), reference_files=[str(f) for f in files])
    return report


def read_references(files: Sequence[str | Path], lines: int, aligned_with: str) -> list[list[str]]:
    """Each line's references from one or more files line-aligned with `aligned_with` (of `lines`
    lines). The first file has a reference on every line; in the others an empty line means none
    (a sentence with fewer translations than others)."""
    per_line: list[list[str]] = [[] for _ in range(lines)]
    for number, path in enumerate(files):
        refs = list(read_lines(path))
        if len(refs) != lines:
            raise InputError(f"{path} has {len(refs)} lines but {aligned_with} has {lines}",
                             hint="every reference file must be line-aligned with the sentences it scores")
        for line, ref in zip(per_line, refs):
            if number == 0 or ref.strip():
                line.append(ref)
    return per_line


def _bleu_metric(tokenize: str) -> BLEU:
    if tokenize not in TOKENIZERS:
        raise ConfigError(f"unknown BLEU tokenisation {tokenize!r}; choose one of: {', '.join(TOKENIZERS)}")
    try:
        return BLEU(tokenize=tokenize, smooth_method="none")
    except (ImportError, RuntimeError, OSError) as e:
        # ja-mecab/ko-mecab need extras; spm/flores download a model, impossible offline.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"sacreBLEU tokeniser {tokenize!r} is unavailable here: {reason}",
                          hint="use 13a, intl, char or none, or install what it needs") from None


def _nltk_bleu(hypotheses: list[list[str]], references: list[list[list[str]]]) -> float:
    """nltk's corpus BLEU, uniform weights over n = 1..4, no smoothing; each hypothesis's
    references as a list."""
    with warnings.catch_warnings():
        # Without smoothing nltk warns when an order has no match; `score` logs that itself.
        warnings.simplefilter("ignore", UserWarning)
        value = corpus_bleu(references, hypotheses,
                            weights=(1 / MAX_ORDER,) * MAX_ORDER)
    return float(value)
