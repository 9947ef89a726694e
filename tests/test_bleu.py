"""BLEU: nltk and sacreBLEU agree on the same tokens; hand-counted values; errors."""

from __future__ import annotations

import math
import random
import re

import pytest

from pipeline.bleu import score, score_files
from pipeline.errors import ConfigError, InputError

WORDS = "the a The cat dog sat ran on in mat garden big small red today it's is was , . ! ? (5) 3.5".split()


def _synthetic_corpus(seed: int, pairs: int = 300) -> tuple[list[str], list[str]]:
    """References of 6-20 words; hypotheses keep most words, swap, drop or add some.

    Punctuation is glued to the word before it ("mat," "garden."), as in untokenised text, so
    that `none` and `13a` see different tokens.
    """
    rng = random.Random(seed)
    hyps, refs = [], []
    for _ in range(pairs):
        ref = [rng.choice(WORDS) for _ in range(rng.randint(6, 20))]
        hyp = []
        for word in ref:
            roll = rng.random()
            if roll < 0.65:
                hyp.append(word)
            elif roll < 0.85:
                hyp.append(rng.choice(WORDS))
            elif roll < 0.95:
                continue  # dropped
            else:
                hyp.extend([word, rng.choice(WORDS)])
        while len(_glue(hyp).split()) < 4:  # "normal corpus": each hypothesis has a 4-gram
            hyp.append("the")
        hyps.append(_glue(hyp))
        refs.append(_glue(ref))
    return hyps, refs


def _glue(words: list[str]) -> str:
    return re.sub(r" ([,.!?])", r"\1", " ".join(words))


@pytest.mark.parametrize("tokenize", ["none", "13a", "intl", "char"])
def test_nltk_agrees_with_sacrebleu_on_the_same_tokens(tokenize):
    hyps, refs = _synthetic_corpus(seed=1234)
    report = score(hyps, refs, tokenize=tokenize)
    assert 5 < report["sacrebleu"] < 95  # partial overlap, not a degenerate 0 or 100
    assert report["bleu"] == pytest.approx(report["sacrebleu"], abs=0.01)
    assert report["tokenize"] == tokenize
    assert f"tok:{tokenize}|smooth:none" in report["signature"]


def test_hand_counted_example():
    hyps = ["the cat sat on the mat", "there is a dog in the garden"]
    refs = ["the cat is on the mat", "there is a big dog in the garden today"]
    # Clipped matches / hypothesis n-grams, summed over both sentences:
    #   1-grams: 5/6 + 7/7 = 12/13    2-grams: 3/5 + 5/6 = 8/11
    #   3-grams: 1/4 + 3/5 = 4/9      4-grams: 0/3 + 1/4 = 1/7   ("dog in the garden")
    # Lengths: c = 6 + 7 = 13, r = 6 + 9 = 15, so BP = exp(1 - 15/13).
    precisions = [12 / 13, 8 / 11, 4 / 9, 1 / 7]
    bp = math.exp(1 - 15 / 13)
    expected = 100 * bp * math.prod(precisions) ** (1 / 4)

    report = score(hyps, refs)
    assert report["counts"] == [12, 8, 4, 1]
    assert report["totals"] == [13, 11, 9, 7]
    assert report["precisions"] == pytest.approx([100 * p for p in precisions])
    assert (report["hyp_len"], report["ref_len"]) == (13, 15)
    assert report["brevity_penalty"] == pytest.approx(bp)
    assert report["length_ratio"] == pytest.approx(13 / 15)
    assert report["bleu"] == pytest.approx(expected, abs=1e-9)
    assert report["sacrebleu"] == pytest.approx(expected, abs=1e-9)


def test_perfect_hypotheses_score_100():
    refs = ["the cat is on the mat .", "Hello , world ! How are you ?"]
    report = score(list(refs), refs, tokenize="13a")
    assert report["bleu"] == pytest.approx(100.0)
    assert report["sacrebleu"] == pytest.approx(100.0)
    assert report["chrf"] == pytest.approx(100.0)
    assert report["brevity_penalty"] == 1.0


def test_brevity_penalty_is_exp_one_minus_r_over_c():
    hyps = ["a b c d e f"]  # c = 6, every n-gram matches
    refs = ["a b c d e f g h i j"]  # r = 10
    report = score(hyps, refs)
    assert report["precisions"] == [100.0] * 4
    assert report["brevity_penalty"] == pytest.approx(math.exp(1 - 10 / 6), rel=1e-12)
    assert report["bleu"] == pytest.approx(100 * math.exp(1 - 10 / 6), rel=1e-12)
    assert report["sacrebleu"] == pytest.approx(100 * math.exp(1 - 10 / 6), rel=1e-12)


def test_13a_splits_punctuation_that_none_keeps():
    hyps = ["Hello, world! It's 5 o'clock."]
    refs = ["Hello, world! It is five o'clock."]
    plain = score(hyps, refs, tokenize="none")
    split = score(hyps, refs, tokenize="13a")
    assert (plain["hyp_len"], plain["ref_len"]) == (5, 6)
    # 13a: Hello , world ! It's 5 o'clock .  /  Hello , world ! It is five o'clock .
    assert (split["hyp_len"], split["ref_len"]) == (8, 9)
    assert "tok:13a" in split["signature"] and "tok:none" in plain["signature"]


def test_count_mismatch_names_both_counts():
    with pytest.raises(InputError) as err:
        score(["a b c d", "e f g h"], ["a b c d", "e f g h", "i j k l"])
    assert err.value.message == "2 hypotheses but 3 references"


def test_empty_hypotheses_are_allowed_and_score_zero():
    report = score(["", ""], ["a b c d", "e f g h"])
    assert report["bleu"] == 0.0 and report["sacrebleu"] == 0.0
    assert report["hyp_len"] == 0 and report["brevity_penalty"] == 0.0


def test_documented_difference_on_an_empty_hypothesis():
    # nltk counts one phantom n-gram per order for the empty line (denominator max(1, count));
    # sacreBLEU counts real n-grams only. Both share BP = exp(1 - 10/5).
    report = score(["a b c d e", ""], ["a b c d e", "f g h i j"])
    bp = math.exp(1 - 10 / 5)
    assert report["sacrebleu"] == pytest.approx(100 * bp)
    assert report["bleu"] == pytest.approx(100 * bp * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** (1 / 4))


def test_unknown_tokenisation_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown BLEU tokenisation 'moses'; choose one of: none, zh, 13a"):
        score(["a"], ["a"], tokenize="moses")


def test_score_files_names_both_files_on_mismatch(tmp_path):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a b c d\n", encoding="utf-8")
    ref.write_text("a b c d\ne f g h\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"ref\.txt has 2 lines but .*hyp\.txt has 1"):
        score_files(hyp, ref)
    ref.write_text("a b c d\n", encoding="utf-8")
    assert score_files(hyp, ref)["sacrebleu"] == pytest.approx(100.0)


def test_several_references_agree_between_nltk_and_sacrebleu_and_with_a_hand_count():
    hyps = ["the cat sat on the mat", "a dog runs in the park", "hello there my friend"]
    refs = [["the cat is on the mat", "the cat sat on a mat"],
            ["a dog is running in the park", "the dog runs in a park", "a dog runs through the park"],
            ["hello my friend"]]  # fewer references than the others: sacreBLEU's None padding
    report = score(hyps, refs)
    assert report["bleu"] == pytest.approx(report["sacrebleu"], abs=0.01)
    assert report["references"] == 3 and "nrefs:var" in report["signature"]
    # By hand: unigram matches clipped by the most in any one reference; r the closest length.
    assert report["counts"][0] == 6 + 6 + 3 and report["totals"][0] == 6 + 6 + 4
    assert report["ref_len"] == 6 + 6 + 3
    one = score(hyps, [r[0] for r in refs])
    assert report["sacrebleu"] > one["sacrebleu"]  # more references match more n-grams


def test_reference_files_align_and_an_empty_line_means_none(tmp_path):
    hyp, a, b = tmp_path / "hyp.txt", tmp_path / "a.txt", tmp_path / "b.txt"
    hyp.write_text("a b c d\ne f g h\n", encoding="utf-8")
    a.write_text("a b c x\ne f g h\n", encoding="utf-8")
    b.write_text("a b c d\n\n", encoding="utf-8")
    report = score_files(hyp, [a, b])
    assert report["sacrebleu"] == pytest.approx(100.0) and report["references"] == 2
    assert report["reference_files"] == [str(a), str(b)]
    b.write_text("a b c d\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"b\.txt has 1 lines but .*hyp\.txt has 2"):
        score_files(hyp, [a, b])


def test_nltk_and_sacrebleu_agree_on_random_corpora_with_one_to_three_references():
    """Clipping and the closest reference length over many random cases, ties included."""
    rng = random.Random(1)
    words = "a b c d e f g h".split()

    def sentence(low, high):
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    hyps = [sentence(4, 9) for _ in range(200)]  # >= 4 tokens: no phantom n-grams in nltk's count
    refs = [[sentence(3, 10) for _ in range(rng.randint(1, 3))] for _ in hyps]
    report = score(hyps, refs)
    assert report["sacrebleu"] > 1 and report["bleu"] == pytest.approx(report["sacrebleu"], abs=1e-9)
