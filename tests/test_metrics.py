"""Each metric against figures worked out by hand on tiny arrays (the derivations are in the comments)."""
import math

import cv2
import numpy as np
import pytest

from pipeline.accuracy import metrics
from pipeline.accuracy.agreement import agreement

U8 = np.uint8


def test_mse_mad_sad_by_hand():
    pred = np.array([[255, 0], [51, 102]], U8)
    gt = np.array([[255, 255], [0, 102]], U8)
    # p - g = [0, -1, 0.2, 0]
    assert metrics.mse(pred, gt) == pytest.approx((1 + 0.04) / 4)  # 0.26
    assert metrics.mad(pred, gt) == pytest.approx(1.2 / 4)  # 0.3
    assert metrics.sad(pred, gt) == pytest.approx(1.2 / 1000)


def test_grad_kernel_half_size_is_four_for_sigma_1_4():
    # ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) * 1.4 * 0.01))) = ceil(1.4 * sqrt(6.6995)) = ceil(3.6237) = 4
    g, d, _ = metrics.gauss_kernels(1.4)
    assert len(g) == len(d) == 9


def test_grad_invariances_by_hand():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (12, 10)).astype(U8)
    gt[0, 0], gt[0, 1] = 0, 254  # min 0, max 254: even numbers only below, so gt // 2 keeps every level
    gt = (gt // 2 * 2).astype(U8)
    assert metrics.grad(gt, gt) == 0.0
    # min-max normalisation: half the contrast normalises back to the same image
    assert metrics.grad((gt // 2).astype(U8), gt) == pytest.approx(0.0, abs=1e-12)
    # the negative has the same gradient magnitude everywhere
    assert metrics.grad((255 - gt).astype(U8), gt) == pytest.approx(0.0, abs=1e-12)


def test_grad_of_a_vertical_step_against_a_flat_prediction():
    # gt: 5 rows x 12 columns, 0 left of column 6 and 255 from it; pred flat (gradient 0 after min-max).
    # The kernel is hx[i, j] = G(i) D(j) / N with G(u) = exp(-u^2 / 2s^2) / (s sqrt(2 pi)), D(u) = -u G(u) / s^2,
    # u = -4..4 and N = ||G|| ||D|| (the L2 norm of an outer product). Every row is the same and borders are
    # replicated, so gy = 0 and gx(c) = sum(G) * sum_k D(k) step(c - k) / N, step(x) = 1 for x >= 6 (clamped
    # to 0..11). Grad = 5 * sum_c gx(c)^2 / 1000.
    s = 1.4
    u = np.arange(-4, 5)
    G = np.exp(-u ** 2 / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
    D = -u * G / (s * s)
    N = math.sqrt(np.sum(G ** 2)) * math.sqrt(np.sum(D ** 2))
    gx = []
    for c in range(12):
        total = 0.0
        for k, dk in zip(u, D):
            x = min(max(c - k, 0), 11)
            total += dk * (1.0 if x >= 6 else 0.0)
        gx.append(G.sum() * total / N)
    expected = 5 * sum(v * v for v in gx) / 1000
    gt = np.zeros((5, 12), U8)
    gt[:, 6:] = 255
    pred = np.full((5, 12), 77, U8)
    assert expected > 0
    assert metrics.grad(pred, gt) == pytest.approx(expected, rel=1e-9)


def test_conn_two_components_and_the_015_floor():
    # p = [1, 0, 0, 1], g = [1, 1, 0, 0]: at every threshold (p >= t) & (g >= t) is pixel 0 only, so pixels 1..3
    # leave at t = 0.1 (level 0) and pixel 0 never does (level 1). d_p = [0, 0, 0, 1], d_g = [0, 1, 0, 0];
    # phi_p = [1, 1, 1, 0], phi_g = [1, 0, 1, 1]; sum |diff| = 2 -> 0.002
    pred = np.array([[255, 0, 0, 255]], U8)
    gt = np.array([[255, 255, 0, 0]], U8)
    assert metrics.conn(pred, gt) == pytest.approx(0.002)


def test_conn_thresholds_are_exact_decimals():
    # g = [1, 153/255 = 0.6 exactly]; p = [1, 1]. Pixel 1 is in the component up to t = 0.6 (0.6 >= 0.6, as with
    # MATLAB's 0:0.1:1; np.arange would give 0.6000000000000001 and drop it a step early) and leaves at 0.7:
    # level 0.6. d_p = 0.4 -> phi_p = 0.6; d_g = 0 -> phi_g = 1. Conn = 0.4 / 1000.
    pred = np.array([[255, 255]], U8)
    gt = np.array([[255, 153]], U8)
    assert metrics.conn(pred, gt) == pytest.approx(0.0004)


def test_conn_uses_4_connectivity():
    # p = [[1,0,0],[0,1,1]], g = 1 except g[0,0] = 26/255 = 0.102. With 4-connectivity the largest component of
    # (p >= t) & (g >= t) is {(1,1), (1,2)} at every t; (0,0) is alone, leaves at t = 0.1: level 0, and so do the
    # three zeros of p. (0,0): d_p = 1 -> phi_p 0, d_g = 0.102 < 0.15 -> phi_g 1: diff 1. The zeros of p:
    # phi_p 1, phi_g 0: diff 1 each. The component: diff 0. Sum 4 -> 0.004. (8-connectivity would give 0.0039.)
    pred = np.array([[255, 0, 0], [0, 255, 255]], U8)
    gt = np.array([[26, 255, 255], [255, 255, 255]], U8)
    assert metrics.conn(pred, gt) == pytest.approx(0.004)


def test_miou_accumulates_over_the_dataset():
    # image A: gt fg top row (128 counts as fg), pred fg top-left only (127 is bg): TP 1, FN 1, FP 0, TN 2
    # image B: gt all bg, pred one fg pixel: TP 0, FP 1, FN 0, TN 3
    # summed: TP 1, FP 1, FN 1, TN 5 -> IoU fg 1/3, bg 5/7 -> mIoU 11/21 = 0.5238
    # (the mean of per-image mIoUs would be ((1/2 + 2/3)/2 + (0 + 3/4)/2) / 2 = 0.4792)
    acc = metrics.Accumulator()
    acc.add("a", metrics.image_metrics(np.array([[128, 127], [0, 0]], U8), np.array([[255, 128], [127, 0]], U8)))
    acc.add("b", metrics.image_metrics(np.array([[200, 0], [0, 0]], U8), np.zeros((2, 2), U8)))
    assert acc.confusion() == {"tp": 1, "fp": 1, "fn": 1, "tn": 5}
    summary = acc.summary()
    assert summary["miou"] == pytest.approx(11 / 21)
    assert summary["images"] == 2
    assert summary["mse"] == pytest.approx(np.mean([metrics.mse(np.array([[128, 127], [0, 0]], U8),
                                                                np.array([[255, 128], [127, 0]], U8)),
                                                    (200 / 255) ** 2 / 4]))


def test_agreement_by_hand_per_image_and_over_every_pixel():
    # image A |a - b| = 0, 1, 0, 255 (127 -> 128 and 255 -> 0 change label); image B = 0, 0, 0, 10 (no label change)
    a = [np.array([[0, 127, 128, 255]], U8), np.array([[10, 10, 10, 10]], U8)]
    b = [np.array([[0, 128, 128, 0]], U8), np.array([[10, 10, 10, 20]], U8)]
    got = agreement(a, b)
    assert got.images == 2
    assert got.per_image == (256 / 4 / 255, 10 / 4 / 255) and got.per_image_flips == (0.5, 0.0)
    assert got.mean_abs == 266 / 255 / 8 and got.max_abs == 1.0 and got.flips == 2 / 8
    assert agreement(b, a) == got  # symmetric
    with pytest.raises(ValueError, match="same, non-zero number"):
        agreement(a, b[:1])


def test_tune_sums_up_its_ground_truth_figures_as_evaluate_does():
    from pipeline.tuning import scoring
    preds = [np.array([[128, 127], [0, 0]], U8), np.array([[200, 0], [0, 0]], U8)]
    gts = [np.array([[255, 128], [127, 0]], U8), np.zeros((2, 2), U8)]
    acc = metrics.Accumulator()
    for i, (pred, gt) in enumerate(zip(preds, gts)):
        acc.add(str(i), metrics.image_metrics(pred, gt))
    evaluated = acc.summary()
    tuned = scoring.labelled_means(scoring.ground_truth_figures(preds, gts))
    assert tuned == {key: evaluated[key] for key in ("mse", "mad", "miou")} and tuned["miou"] == 11 / 21


def test_prediction_truncates():
    alpha = np.array([[[[0.0, 0.5, 0.999, 1.0], [0.0039, 0.00393, 0.2, 1.0001]]]], np.float32)
    # 127.5 -> 127, 254.7 -> 254, 0.99 -> 0, 1.002 -> 1, 51.0 -> 51 (or 50 if float32 rounding lands below),
    # 255.03 clipped to 255 rather than wrapping to 0
    pred = metrics.pred_from_alpha(alpha)
    assert pred.shape == (2, 4) and pred.dtype == np.uint8
    assert pred[0].tolist() == [0, 127, 254, 255]
    assert pred[1, :2].tolist() == [0, 1]
    assert pred[1, 2] == int(np.float32(0.2) * np.float32(255))
    assert pred[1, 3] == 255


def test_gt_resize_is_inter_area_to_288x480():
    # 576x960 (W x H) is exactly twice 288x480: INTER_AREA averages each 2x2 block and rounds to nearest.
    matte = np.zeros((960, 576), U8)
    matte[0, 0] = 255  # block (0, 0): 255/4 = 63.75 -> 64
    matte[2:4, 2:4] = [[255, 255], [255, 0]]  # block (1, 1): 191.25 -> 191
    matte[4:6, 4:6] = [[10, 11], [11, 11]]  # block (2, 2): 10.75 -> 11
    gt = metrics.gt_from_matte(matte, 480, 288)
    assert gt.shape == (480, 288)
    assert gt[0, 0] == 64 and gt[1, 1] == 191 and gt[2, 2] == 11 and gt[0, 1] == 0
    # and not INTER_LINEAR, which at an exact 2x would sample 2x2 blocks the same way: use a 3x case to tell
    matte3 = np.zeros((1440, 864), U8)
    matte3[0:3, 0:3] = 90  # block (0,0): 90*9/9 = 90; a bilinear resize would take its centre pixel only
    matte3[0, 0] = 0  # -> 80 with area averaging, 90 at the bilinear sample point (1, 1)
    assert metrics.gt_from_matte(matte3, 480, 288)[0, 0] == 80
    assert cv2.resize(matte3, (288, 480), interpolation=cv2.INTER_LINEAR)[0, 0] == 90
