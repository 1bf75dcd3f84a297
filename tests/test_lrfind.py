"""`vgg lr-find`'s suggestion (``training.lrfind.advise``): on synthetic curves with known answers, on two recorded
digit-scan curves, and end to end through the CLI. The issue of 2026-12-07: the steepest slope of a lagging
exponential average, taken anywhere before the minimum, suggested 1.6e-06 where the loss fell between 1e-4 and
1e-2, with "rate at the lowest loss / 10: 0.1" beside it and no warning."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, make_colour_dataset, run_cli
from vgg_cli.training.health import Baseline
from vgg_cli.training.lrfind import advice_lines, advise, denoise, range_rates, smooth, suggest

TEN_DIGITS = Baseline(prior_loss=math.log(10), chance_accuracy=0.1, n_classes=10)  # guessing 10 balanced classes

# Per-step losses recorded on 2026-12-07 by `vgg lr-find` (100 steps, 1e-7 to 1) on the digit scans
# (`scripts/make_sample_data.py --kind digits --part train --size 48`), data.image_size=48, model.weights=none,
# head only, train.seed=3: the tester's case. The old rule said 3.1e-06 here and "rate at the lowest loss / 10: 0.1".
REPORTED = [6.45, 8.72, 9.91, 6.68, 7.77, 7.62, 7.64, 6.79, 9.65, 8.30, 7.52, 9.28, 8.56, 8.85, 7.70, 9.06, 9.32, 7.37,
            7.80, 7.72, 7.64, 5.74, 5.81, 9.67, 7.64, 8.56, 8.06, 7.09, 8.68, 8.03, 7.35, 8.34, 7.09, 7.58, 6.75, 9.98,
            7.45, 9.24, 6.61, 8.95, 8.86, 7.37, 9.64, 6.40, 7.21, 7.11, 6.45, 7.20, 4.76, 6.54, 6.52, 5.92, 6.01, 6.52,
            6.85, 5.81, 5.79, 5.66, 6.11, 6.50, 5.34, 5.03, 4.99, 3.57, 4.10, 3.19, 3.58, 3.15, 3.23, 2.56, 2.76, 2.60,
            2.71, 2.63, 2.49, 2.44, 2.26, 2.38, 2.33, 2.49, 2.37, 2.33, 2.31, 2.30, 2.31, 2.31, 2.30, 2.32, 2.31, 2.30,
            2.31, 2.31, 2.29, 2.31, 2.29, 2.34, 2.35, 2.37, 2.42, 2.32]
# The same digits, size 32, head only, with a backbone pretrained on the held-out digits (docs/lr-find.md), seed 1;
# 92 steps of 100 from 1e-7 to 1 (it diverged at 0.27). 3 epochs at 0.0015 score as auto's 0.001 does.
PRETRAINED_HEAD = [5.36, 3.99, 5.20, 4.23, 4.35, 4.04, 4.35, 4.47, 5.64, 5.07, 4.53, 4.16, 5.04, 5.41, 4.63, 5.66, 4.81,
                   3.98, 4.66, 4.86, 5.22, 4.44, 4.80, 4.64, 5.29, 5.01, 4.11, 5.65, 5.11, 4.93, 4.08, 5.42, 4.69,
                   4.33, 5.17, 4.68, 4.67, 5.00, 4.15, 5.08, 4.39, 6.63, 3.99, 3.92, 3.81, 4.59, 3.25, 4.81, 3.46,
                   4.41, 3.92, 2.93, 3.30, 3.11, 3.24, 2.68, 2.11, 1.76, 2.06, 1.69, 2.00, 1.73, 0.81, 1.49, 0.73,
                   0.78, 0.54, 0.33, 0.47, 0.15, 0.18, 0.13, 0.14, 0.56, 0.38, 0.27, 0.36, 0.28, 1.51, 0.45, 1.53,
                   0.47, 0.15, 0.71, 0.37, 2.65, 4.30, 6.01, 7.77, 12.89, 35.78, 33.76]


def noisy_fall(seed: int, steps: int = 100, level: float = 7.0, floor: float = 0.5, fall=(1e-4, 1e-2),
               blow_up: float = 0.05, noise: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The reported shape: flat, heavy-tailed noise from 1e-7, a fall from ``level`` to ``floor`` across ``fall``
    (log-linear), then a blow-up past ``blow_up``, cut where the range test would stop (4x the minimum)."""
    rng = np.random.default_rng(seed)
    rates = range_rates(1e-7, 1.0, steps)
    x, lo, hi = np.log10(rates), math.log10(fall[0]), math.log10(fall[1])
    clean = level - (level - floor) * np.clip((x - lo) / (hi - lo), 0, 1)
    clean = clean + np.where(rates > blow_up, (np.log10(rates / blow_up) * 40) ** 2, 0)
    losses = np.clip(clean + noise * rng.standard_t(3, steps) * np.sqrt(clean / level), 0.01, None)
    ema = np.asarray(smooth(list(losses)))
    stop = next((i + 1 for i in range(10, steps) if ema[i] > 4 * ema[: i + 1].min()), steps)
    return rates[:stop], losses[:stop]


@pytest.mark.parametrize("seed", range(12))
def test_the_suggestion_lies_in_the_fall_never_in_the_flat_noise_before_it(seed):
    rates, losses = noisy_fall(seed)
    advice = advise(rates, losses)
    assert advice.rate is not None, advice.reason
    assert 1e-4 <= advice.rate <= 1e-2
    lo, hi = advice.falls
    assert lo <= advice.rate <= hi and lo >= 3e-5  # the fall found starts where the loss starts to fall
    assert suggest(rates, losses) == (advice.rate, advice.min_div10)  # the old two-number API gives the same


def test_the_reported_curve_no_longer_suggests_a_rate_in_its_flat_noise():
    rates = range_rates(1e-7, 1.0, 100)
    advice = advise(rates, REPORTED)  # without knowing the classes: the fall counts
    assert 3e-4 <= advice.rate <= 1e-2
    assert 10 ** -1.5 <= advice.rate / advice.min_div10 <= 10 ** 1.5  # and agrees with the lowest loss / 10
    # knowing 10 classes: the loss only fell to ln 10 (the random backbone's head became less over-confident and
    # learnt nothing in 100 steps), so there is no rate to suggest, and the reason says what to do
    advice = advise(rates, REPORTED, TEN_DIGITS)
    assert advice.rate is None and advice.falls is None
    assert "guessing the class shares" in advice.reason and "2.303 = ln 10" in advice.reason
    assert "--steps 300" in advice.reason and "learning_rate=auto" in advice.reason
    first, second = advice_lines(advice)
    assert first.startswith("suggested learning rate: none: the loss fell from")
    assert second.startswith("rate at the lowest loss / 10: ") and "(not advised" in second


def test_a_pretrained_head_gets_a_rate_in_its_fall():
    rates = range_rates(1e-7, 1.0, 100)[: len(PRETRAINED_HEAD)]
    advice = advise(rates, PRETRAINED_HEAD, TEN_DIGITS)
    assert 5e-4 <= advice.rate <= 3e-3 and not advice.warnings  # auto is 1e-3 for head-only training
    lo, hi = advice.falls
    assert 3e-5 <= lo <= advice.rate <= hi <= 1e-2
    what = "below what guessing scores" if advice.from_guessing else "which falls"
    first, second = advice_lines(advice)
    assert first == (f"suggested learning rate: {advice.rate:.2g} (steepest fall of the loss, {what} from {lo:.2g} "
                     f"to {hi:.2g}): train.optimizer.learning_rate={advice.rate:.2g}")
    assert second == f"rate at the lowest loss / 10: {advice.min_div10:.2g}"  # 0.001: agrees, so no note
    assert advise(rates, PRETRAINED_HEAD).rate == pytest.approx(advice.rate, rel=0.5)  # without the classes


def two_stage(below: float, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A new head's over-confidence unlearnt at 1e-6..1e-5 (4.5 to ln 10, steep), then learning at 1e-4..1e-3
    (ln 10 down to ``below``), then a blow-up; ``noise``: of each step."""
    rates = range_rates(1e-7, 1.0, 100)
    x = np.log10(rates)
    guess = math.log(10)
    loss = guess + (4.5 - guess) / (1 + np.exp((x + 5.5) * 8)) - (guess - below) / (1 + np.exp(-(x + 3.5) * 4))
    loss = loss + np.where(x > -2, (x + 2) ** 2 * 20, 0) + noise * np.random.default_rng(0).normal(size=100)
    return rates, loss


def test_a_fall_clearly_below_guessing_counts_from_the_guessing_loss():
    rates, loss = two_stage(below=0.5)
    advice = advise(rates, loss, TEN_DIGITS)
    assert advice.from_guessing and 1e-4 <= advice.rate <= 1e-3  # the learning, not the over-confidence
    assert advice.falls[0] > 1e-5
    assert advise(rates, loss).rate < 1e-5  # without the classes, the steeper first fall wins


def test_a_fall_only_just_below_guessing_counts_whole():
    rates, loss = two_stage(below=2.0)  # 0.3 under ln 10: under the stall level (2.07), not clearly (noise 0.3)
    advice = advise(rates, loss, Baseline(math.log(10), 0.1, 10))
    assert not advice.from_guessing and advice.rate is not None and advice.rate < 1e-5


@pytest.mark.parametrize("steps", [30, 100, 300])
def test_a_clean_fall_is_found_where_it_is_steepest_whatever_the_number_of_steps(steps):
    rates = range_rates(1e-6, 1.0, steps)
    x = np.log10(rates)
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3))  # falls fastest at 1e-3, never rises
    advice = advise(rates, loss)
    assert advice.rate == pytest.approx(1e-3, rel=0.3)  # the denoising is centred: no lag to the right
    assert advice.falls[0] < 1e-3 < advice.falls[1]
    # flat after its fall, the curve is lowest (by a hair) at its last step: rate at the lowest loss / 10 = 0.1,
    # the number of the report; it is named as far off and the suggestion is the one to use
    assert advice.min_div10 == pytest.approx(0.1)
    assert any("orders of magnitude above the suggested" in w for w in advice.warnings)
    assert not any("still falling" in w for w in advice.warnings)


@pytest.mark.parametrize("seed", range(40))
def test_noise_alone_gives_no_suggestion_and_says_why(seed):
    rng = np.random.default_rng(seed)
    steps = (20, 60, 100, 300)[seed % 4]
    rates = range_rates(1e-7, 1.0, steps)
    losses = 2.3 + 0.5 * rng.standard_t(3, steps) if seed % 2 else 2.3 * np.exp(rng.normal(0, 0.2, steps))
    advice = advise(rates, losses)
    assert advice.rate is None and advice.falls is None, advice
    assert advice.reason.startswith(("the loss did not fall meaningfully", "the loss only rose"))
    assert "--start" in advice.reason and ("--steps" in advice.reason or "check the data" in advice.reason)


def test_a_loss_that_only_rises_gives_no_suggestion():
    rates = range_rates(1e-4, 10.0, 60)
    losses = 1.0 + np.linspace(0, 3, 60) ** 2
    advice = advise(rates, losses)
    assert advice.rate is None
    assert advice.reason.startswith("the loss only rose") and "lower --start (now 0.0001)" in advice.reason


def test_a_small_fall_next_to_a_large_loss_is_no_fall():
    rates = range_rates(1e-6, 1.0, 100)
    losses = 5.0 - 0.2 * (np.log10(rates) > -3)  # a clean 4% step: not noise, but not a fall worth a rate
    advice = advise(rates, losses)
    assert advice.rate is None and "(4%;" in advice.reason


def test_a_lowest_loss_far_past_the_fall_is_named_and_not_advised():
    rates = range_rates(1e-7, 1.0, 100)
    x = np.log10(rates)
    rng = np.random.default_rng(1)
    losses = 2.5 - 2.0 / (1 + np.exp(-(x + 5) * 4)) + 0.02 * rng.normal(size=100)  # falls at 1e-5, flat after
    losses[-3] = 0.3  # the flat floor's lowest step, by noise, at the end of the range
    advice = advise(rates, losses)
    assert advice.rate == pytest.approx(1e-5, rel=0.5)
    assert advice.min_div10 > 30 * advice.rate
    (warning,) = [w for w in advice.warnings if "orders of magnitude above" in w]
    assert "the suggestion is the one used" in warning
    assert "noise decides where its lowest point lies" in warning and "train 3 epochs with each" in warning
    assert advice_lines(advice)[1].endswith("(not used: far above the suggestion; see the warning)")


def test_a_fall_cut_off_by_start_or_end_is_warned_about():
    rates = range_rates(1e-3, 1e-1, 60)
    losses = 3.0 - 2.5 * np.linspace(0, 1, 60)  # falling from the first step to the last
    advice = advise(rates, losses)
    assert advice.rate is not None
    text = " ".join(advice.warnings)
    assert "already falling at --start (0.001)" in text and "still falling at the last rate tried (0.1)" in text


def test_non_finite_losses_are_left_out_and_too_few_finite_ones_give_a_reason():
    rates, losses = noisy_fall(0)
    losses = np.append(losses, np.nan)
    rates = range_rates(1e-7, 1.0, 100)[: len(losses)]
    assert advise(rates, losses).rate == advise(rates[:-1], losses[:-1]).rate
    advice = advise(rates[:4], [1.0, 0.5, np.inf, np.nan])
    assert advice.rate is None and advice.min_div10 is None and "finite" in advice.reason


def test_denoise_keeps_a_clean_curve_and_removes_a_spike():
    line = np.linspace(5, 1, 50)
    inner = slice(5, -5)  # the windows are cut short at the ends (5 of 50 steps: a window of 5 either side)
    assert denoise(line)[inner] == pytest.approx(line[inner], abs=1e-9)  # its own running median and mean
    spiked = line.copy()
    spiked[20] = 50
    assert np.abs(denoise(spiked) - line)[inner].max() < 0.1  # a spike of 45 moves it by less than a step (0.08)


@pytest.mark.slow
def test_lr_find_writes_its_files_and_suggests_a_rate_where_the_loss_falls(tmp_path):
    data = make_colour_dataset(tmp_path / "photos", per_class=12, seed=3)
    out_dir = tmp_path / "lr"
    code, out, err = run_cli(["lr-find", f"data.train_dir={data}", f"data.image_size={SIZE}", "model.weights=none",
                              "model.head.dropout=0.0", "train.batch_size=8", f"output.dir={tmp_path / 'runs'}",
                              "--steps", "60", "--start", "1e-6", "--end", "10", "--out", str(out_dir), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert json.loads((out_dir / "lr_find.json").read_text()) == result
    rows = list(csv.DictReader((out_dir / "lr_find.csv").open()))
    assert len(rows) == result["steps"] >= 10
    assert list(rows[0]) == ["step", "learning_rate", "loss", "smoothed_loss", "denoised_loss"]
    with Image.open(out_dir / "lr_find.png") as img:
        assert img.format == "PNG" and img.size[0] > 400
    rate, (lo, hi) = result["suggested_learning_rate"], result["falling_region"]
    assert lo <= rate <= hi and result["no_suggestion_reason"] is None
    rates = np.array([float(r["learning_rate"]) for r in rows])
    denoised = np.array([float(r["denoised_loss"]) for r in rows])
    at = {v: int(np.argmin(np.abs(np.log(rates / v)))) for v in (lo, rate, hi)}
    fallen = denoised[at[lo]] - denoised[at[hi]]
    assert fallen > 0.1 * denoised[at[lo]]  # the region the suggestion lies in is one where the loss falls
    assert denoised[at[lo]] >= denoised[at[rate]] > denoised[at[hi]]  # (at the start when it is steepest there)
    assert result["advice"][0].startswith(f"suggested learning rate: {rate:.2g} (steepest fall of the loss")
    assert result["advice"][1].startswith("rate at the lowest loss / 10: ")
    assert result["min_loss_rate_div10"] is not None and "steepest" in result["rule"]
    assert not (tmp_path / "runs" / "latest").exists()  # nothing was added to the runs
    # the sweep trains the head training will: its standardisation fitted first (model.head.norm auto, head only)
    assert "head standardisation: fitted on 29 training images' pooled features" in err


def test_lr_find_suggestion_is_the_steepest_fall():
    from vgg_cli.training.lrfind import range_rates, smooth, suggest

    rates = range_rates(1e-6, 1.0, 100)
    x = np.log10(rates)
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) ** 2 * 5, 0)  # falls fastest at 1e-3
    steepest, at_min = suggest(rates, list(loss))
    assert steepest == pytest.approx(1e-3, rel=0.25)
    assert at_min == pytest.approx(rates[int(np.argmin(loss))] / 10)
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected from the first step
