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
- One reference per hypothesis here; the brevity penalty's r is then simply its length.

chrF (sacreBLEU's defaults: character 6-grams, beta 2) reads the raw strings; `tokenize` does not
apply to it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from nltk.translate.bleu_score import corpus_bleu
from sacrebleu.metrics import BLEU, CHRF

from pipeline.data import read_lines
from pipeline.errors import ConfigError, InputError
from pipeline.progress import log

# sacreBLEU warns about tokenised-looking input on every call; with tokenize=none that is the point.
logging.getLogger("sacrebleu").setLevel(logging.ERROR)

TOKENIZERS = tuple(BLEU.TOKENIZERS)  # 'none', '13a', 'intl', 'char', 'zh', 'ja-mecab', ...
MAX_ORDER = 4


def score(hypotheses: list[str], references: list[str], tokenize: str = "none") -> dict[str, Any]:
    """Score line-aligned hypotheses against one reference each; return a JSON-ready report.

    `bleu` is nltk's corpus BLEU and `sacrebleu` sacreBLEU's, both 0-100 on the same tokens;
    `precisions` (0-100, n = 1..4), `counts`, `totals`, `brevity_penalty`, `length_ratio`,
    `hyp_len` and `ref_len` are the components; `signature` is sacreBLEU's.
    """
    if len(hypotheses) != len(references):
        raise InputError(f"{len(hypotheses)} hypotheses but {len(references)} references",
                         hint="each hypothesis needs exactly one reference, line by line")
    if not hypotheses:
        raise InputError("nothing to score: no hypotheses and no references")

    metric = _bleu_metric(tokenize)
    sacre = metric.corpus_score(hypotheses, [references])

    def tokens(line: str) -> list[str]:
        return metric.tokenizer(line.rstrip()).split()  # what sacreBLEU does before counting

    nltk_bleu = _nltk_bleu([tokens(h) for h in hypotheses], [tokens(r) for r in references])
    chrf_metric = CHRF()
    chrf = chrf_metric.corpus_score(hypotheses, [references])

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
    }


def score_files(hypotheses: str | Path, references: str | Path, tokenize: str = "none") -> dict[str, Any]:
    """`score` for two line-aligned UTF-8 files (`-` reads stdin for one of them)."""
    hyps, refs = list(read_lines(hypotheses)), list(read_lines(references))
    if len(hyps) != len(refs):
        raise InputError(f"{hypotheses} has {len(hyps)} lines but {references} has {len(refs)}",
                         hint="hypotheses and references must be line-aligned")
    report = score(hyps, refs, tokenize)
    report.update(hypotheses=str(hypotheses), references=str(references))
    return report


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


def _nltk_bleu(hypotheses: list[list[str]], references: list[list[str]]) -> float:
    """nltk's corpus BLEU, uniform weights over n = 1..4, no smoothing."""
    with warnings.catch_warnings():
        # Without smoothing nltk warns when an order has no match; `score` logs that itself.
        warnings.simplefilter("ignore", UserWarning)
        value = corpus_bleu([[ref] for ref in references], hypotheses,
                            weights=(1 / MAX_ORDER,) * MAX_ORDER)
    return float(value)
