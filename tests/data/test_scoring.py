import numpy as np
import pytest

from lavin_jax.data import scoring

SIZE = 16


def batch(frame):
    """One example of one frame, [1, 1, H, W, 3], as the metrics take them."""
    return np.asarray(frame, np.float32)[None, None]


def labels_frame(labels):
    return batch(scoring.labels_to_image(labels))


def labels_clip(labels):
    """One example of palette labels [T, H, W], [1, T, H, W, 3]."""
    return scoring.labels_to_image(labels)[None]


def score_labels(metric, prediction, target):
    """METRICS[metric] of one frame of predicted and one of target palette labels."""
    return scoring.METRICS[metric](labels_frame(prediction), labels_frame(target))


# ---------------------------------------------------------------------------------------------
# Encodings


def test_labels_round_trip_and_decode_to_the_nearest_palette_colour():
    labels = np.arange(256).reshape(16, 16)
    np.testing.assert_array_equal(scoring.image_to_labels(scoring.labels_to_image(labels)), labels)
    colours = np.random.default_rng(0).uniform(-1, 1, (500, 3)).astype(np.float32)
    nearest = ((colours[:, None] - scoring.PALETTE) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(scoring.image_to_labels(colours), nearest)
    np.testing.assert_array_equal(scoring.labels_to_image(labels), scoring.PALETTE[labels])


def test_panoptic_labels_keep_the_class_in_their_low_bits():
    classes, instances = np.meshgrid(np.arange(8), np.arange(32), indexing="ij")
    labels = scoring.panoptic_labels(classes, instances)
    assert len(np.unique(labels)) == 256
    np.testing.assert_array_equal(labels % scoring.PANOPTIC_CLASSES, classes)
    # Instance 0 is its class's semantic colour.
    np.testing.assert_array_equal(scoring.panoptic_labels(np.arange(8), 0), np.arange(8))
    with pytest.raises(ValueError, match=r"instances \[32\] must lie in \[0, 32\)"):
        scoring.panoptic_labels(1, 32)
    with pytest.raises(ValueError, match=r"classes \[8\] must lie in \[0, 8\)"):
        scoring.panoptic_labels(8, 0)


def test_depth_and_flow_round_trip():
    depth = np.random.default_rng(0).uniform(0, 10, (4, SIZE, SIZE))
    image = scoring.depth_to_image(depth, 10.0)
    assert image.shape == (*depth.shape, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[..., 0], image[..., 2])  # gray
    np.testing.assert_allclose(scoring.image_to_depth(image, 10.0), depth, atol=1e-5)
    # Within MAX_FLOW of the sides, 1.6 and 3.2 pixels.
    flow = np.random.default_rng(1).uniform(-1.5, 1.5, (2, SIZE, 2 * SIZE, 2))
    image = scoring.flow_to_image(flow)
    np.testing.assert_allclose(scoring.image_to_flow(image), flow, atol=1e-5)
    np.testing.assert_array_equal(image[..., 2], 1.0)  # the flow is known everywhere
    np.testing.assert_allclose(image[0, 0, 0, :2], flow[0, 0, 0] / [3.2, 1.6], rtol=1e-5)


def test_a_drawn_box_decodes_to_itself_on_any_image():
    for seed in range(5):
        image = np.random.default_rng(seed).uniform(-1, 1, (64, 64, 3)).astype(np.float32)
        for box in [(0, 0, 63, 63), (5, 7, 20, 9), (30, 30, 30, 30)]:
            drawn = scoring.draw_box(image, box)
            assert scoring.image_to_box(drawn) == box
            assert drawn.min() >= -1.0 and drawn.max() <= 1.0
    # The nearest an image at BOX_CONTRAST comes to the box colour is not a box.
    nearest = np.tile(scoring.BOX_CONTRAST * np.float32(scoring.BOX_COLOUR), (8, 8, 1))
    assert scoring.image_to_box(nearest) is None


def test_a_mask_box_spans_its_true_pixels():
    mask = np.zeros((8, 10), bool)
    assert scoring.mask_to_box(mask) is None
    mask[2, 7] = mask[5, 3] = True
    assert scoring.mask_to_box(mask) == (2, 3, 5, 7)


# ---------------------------------------------------------------------------------------------
# Metrics: hand-made cases with known answers


def test_psnr_and_ssim():
    target = batch(np.zeros((SIZE, SIZE, 3)))
    # An error of 0.2 in [-1, 1] is 0.1 in [0, 1]: a squared error of 0.01, 20 dB.
    scores = scoring.METRICS["image"](target + 0.2, target)
    assert scores["psnr"] == pytest.approx(20.0, abs=1e-4)
    perfect = scoring.METRICS["image"](target, target)
    assert perfect == {"psnr": 100.0, "ssim": pytest.approx(1.0, abs=1e-6)}
    # Predictions are clipped to [-1, 1]: overshooting a saturated target costs nothing.
    assert scoring.METRICS["image"](target + 5.0, target + 1.0)["psnr"] == 100.0
    noisy = target + np.random.default_rng(0).normal(0, 0.3, target.shape).astype(np.float32)
    assert scoring.METRICS["image"](noisy, target + 0.0)["ssim"] < 0.5


def test_miou_of_a_half_wrong_segmentation():
    target = np.ones((SIZE, SIZE), int)
    target[:, SIZE // 2 :] = 2
    # All class 1: IoU(1) = 1/2 (right on half, claims all), IoU(2) = 0.
    assert score_labels("segmentation", np.ones_like(target), target) == {"miou": 0.25}
    # A quarter of class 2 wrongly labelled 3: IoU(1) = 1, IoU(2) = 3/4, IoU(3) = 0.
    prediction = target.copy()
    prediction[: SIZE // 4, SIZE // 2 :] = 3
    assert score_labels("segmentation", prediction, target)["miou"] == pytest.approx(1.75 / 3)


def test_panoptic_quality_of_a_shifted_and_a_misclassified_segment():
    target = np.zeros((SIZE, SIZE), int)
    target[:, :8] = scoring.panoptic_labels(1, 0)  # left half: class 1, background (class 0) right
    prediction = np.zeros_like(target)
    prediction[:, :10] = scoring.panoptic_labels(1, 1)  # another instance number is no matter
    # Segment IoU 8/10, background IoU 6/8, both matched: PQ per class 0.8 and 0.75.
    assert score_labels("panoptic", prediction, target)["pq"] == pytest.approx(0.775)
    prediction[:, :10] = scoring.panoptic_labels(2, 0)
    # Class 2 matches nothing: class 1 has a miss (0), class 2 a false segment (0), background 0.75.
    assert score_labels("panoptic", prediction, target)["pq"] == pytest.approx(0.25)
    # Two instances of one class (8 and 2 columns) predicted as one segment: it matches the larger
    # (IoU 0.8) and the smaller is missed, PQ 0.8 / (1 + 1/2) for class 1; background 1.
    target[:, 8:10] = scoring.panoptic_labels(1, 1)
    prediction[:, :10] = scoring.panoptic_labels(1, 0)
    assert score_labels("panoptic", prediction, target)["pq"] == pytest.approx((0.8 / 1.5 + 1.0) / 2)


def test_depth_off_by_ten_percent():
    depth = np.random.default_rng(0).uniform(1.0, 5.0, (SIZE, SIZE))
    target = batch(scoring.depth_to_image(depth, 10.0))
    scores = scoring.METRICS["depth"](batch(scoring.depth_to_image(1.1 * depth, 10.0)), target)
    assert scores["absrel"] == pytest.approx(0.1, abs=1e-5) and scores["delta1"] == 1.0
    scores = scoring.METRICS["depth"](batch(scoring.depth_to_image(1.3 * depth, 10.0)), target)
    assert scores["delta1"] == 0.0
    # Pixels without a target depth (black) do not count, whatever is predicted there.
    depth[:, : SIZE // 2] = 0.0
    prediction = scoring.depth_to_image(1.1 * depth, 10.0)
    prediction[:, : SIZE // 2] = 1.0
    scores = scoring.METRICS["depth"](batch(prediction), batch(scoring.depth_to_image(depth, 10.0)))
    assert scores["absrel"] == pytest.approx(0.1, abs=1e-5) and scores["delta1"] == 1.0


@pytest.mark.parametrize("degrees, within", [(30.0, 0.0), (10.0, 1.0)])
def test_normals_turned_by_a_known_angle(degrees, within):
    angle = np.radians(degrees)
    target = np.zeros((SIZE, SIZE, 3), np.float32)
    target[..., 2] = 1.0
    turned = np.zeros_like(target)
    turned[..., 0], turned[..., 2] = np.sin(angle), np.cos(angle)
    turned[:, : SIZE // 2] *= 0.5  # scale does not matter: predictions are normalised
    scores = scoring.METRICS["normals"](batch(turned), batch(target))
    assert scores["mean_angle"] == pytest.approx(degrees, abs=1e-4) and scores["within_11_25"] == within


def test_edges_f1():
    target = -np.ones((SIZE, SIZE, 3), np.float32)
    target[0, :10] = 1.0  # 10 edge pixels
    prediction = -np.ones_like(target)
    prediction[0, :5] = prediction[1, :5] = 1.0  # 5 found, 5 missed, 5 false
    assert scoring.METRICS["edges"](batch(prediction), batch(target)) == {"f1": 0.5}
    blank = batch(-np.ones_like(target))
    assert scoring.METRICS["edges"](blank, blank) == {"f1": 1.0}


@pytest.mark.parametrize("shift, pck", [(3, 1.0), (4, 0.5)])
def test_pck_counts_joints_within_a_tenth_of_the_side(shift, pck):
    size = 32  # threshold 3.2 pixels
    target = np.zeros((size, size), int)
    target[5:7, 5:7], target[20:22, 10:12] = 1, 2
    prediction = np.zeros_like(target)
    prediction[5:7, 5:7], prediction[20 + shift : 22 + shift, 10:12] = 1, 2
    assert score_labels("keypoints", prediction, target) == {"pck": pck}
    prediction[prediction == 2] = 0  # a joint the prediction lacks is missed
    assert score_labels("keypoints", prediction, target) == {"pck": 0.5}


def test_box_iou_of_two_overlapping_boxes():
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    a, b = (0, 0, 9, 9), (5, 5, 14, 14)  # 100 pixels each, overlapping in 25
    scores = scoring.METRICS["boxes"](batch(scoring.draw_box(image, a)), batch(scoring.draw_box(image, b)))
    assert scores["box_iou"] == pytest.approx(25 / 175)
    assert scoring.box_iou(a, a) == 1.0 and scoring.box_iou(None, None) == 1.0
    assert scoring.box_iou(a, None) == 0.0


def test_epe_of_a_constant_flow_error():
    size = 64  # flow up to 6.4 pixels
    flow = np.random.default_rng(0).uniform(-2, 2, (size, size, 2))
    target = scoring.flow_to_image(flow)
    target[:8, :, 2] = -1.0  # flow unknown there
    prediction = scoring.flow_to_image(flow + [3.0, 4.0])
    prediction[:8] = 1.0  # pixels without a target flow do not count
    scores = scoring.METRICS["flow"](batch(prediction), batch(target))
    assert scores["epe"] == pytest.approx(5.0, abs=1e-4)


def test_scores_are_means_over_examples_and_box_iou_over_frames():
    target = np.ones((SIZE, SIZE), int)
    target[:, SIZE // 2 :] = 2
    predictions = np.concatenate([labels_frame(target), labels_frame(np.ones_like(target))])  # 1, 0.25
    targets = np.concatenate([labels_frame(target)] * 2)
    assert scoring.METRICS["segmentation"](predictions, targets) == {"miou": 0.625}
    # Boxes: one frame of two right.
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    clip = np.stack([scoring.draw_box(image, (1, 1, 5, 5)), scoring.draw_box(image, (2, 2, 8, 8))])[None]
    wrong = clip.copy()
    wrong[0, 1] = scoring.draw_box(image, (10, 10, 12, 12))
    assert scoring.METRICS["boxes"](wrong, clip) == {"box_iou": 0.5}


def test_segmentation_and_panoptic_pool_an_examples_frames():
    half = np.ones((SIZE, SIZE), int)
    half[:, SIZE // 2 :] = 2
    # Frame 0 right, frame 1 all class 1: pooled, IoU(1) = 384 / 512 and IoU(2) = 0, not the mean of
    # the frames' mIoUs, 1 and 0.25.
    target = np.stack([np.ones_like(half), half])
    prediction = np.ones_like(target)
    score = scoring.METRICS["segmentation"](labels_clip(prediction), labels_clip(target))
    assert score == {"miou": 0.375}
    # A segment is a label in one frame. Frame 0 right, frame 1 with the class-1 half predicted as
    # class 2 and 2 columns wider: class 1 has 2 segments, 1 matched (IoU 1) and 1 missed, PQ 1 / 1.5;
    # class 2 one false segment, PQ 0; the background 2 matches (IoU 1 and 6/8), PQ 0.875. The
    # frames' mean PQ would be (1 + 0.25) / 2.
    target = np.zeros((2, SIZE, SIZE), int)
    target[:, :, :8] = scoring.panoptic_labels(1, 0)
    prediction = target.copy()
    prediction[1, :, :10] = scoring.panoptic_labels(2, 0)
    score = scoring.METRICS["panoptic"](labels_clip(prediction), labels_clip(target))
    assert score["pq"] == pytest.approx((1 / 1.5 + 0 + 0.875) / 3)


@pytest.mark.parametrize("metric", list(scoring.METRICS))
def test_metrics_refuse_mismatched_shapes(metric):
    frames = np.zeros((2, 1, SIZE, SIZE, 3), np.float32)
    message = r"prediction \(2, 1, 16, 8, 3\) and target \(2, 1, 16, 16, 3\) must share"
    with pytest.raises(ValueError, match=message):
        scoring.METRICS[metric](frames[:, :, :, :8], frames)
    with pytest.raises(ValueError, match=r"must share one shape \[N, T, H, W, 3\]"):
        scoring.METRICS[metric](frames[0], frames[0])
