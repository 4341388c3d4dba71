"""The digit gate: a small network beside the classifier (model.DigitGate) that tells digits from what is no digit
(letters.non_digit_pictures), trained by train.train_digit_gate, exported as the SavedModel's digit_probability, and
read by predict.read, which answers "?" for a piece it refuses (unless it passes most of the piece's picture). The
classifier itself is left as it was."""
import os
import signal

import numpy as np
import pytest

import letters
import predict
from test_predict import draw, sure_of

TRAINED_ON = 400  # of the real_digits fixture's 500: the gate learns these, the other 100 it never sees


@pytest.fixture(scope="module")
def trained_gate(real_digits):
    """A gate trained briefly on TRAINED_ON real digits against as many generated pictures of no digit."""
    import tensorflow as tf
    import train
    from model import DigitGate
    images, _ = real_digits
    tf.random.set_seed(0)
    gate = DigitGate(seed=0)
    train.train_digit_gate(gate, images[:TRAINED_ON], letters.non_digit_pictures(TRAINED_ON, seed=0), seed=0,
                           epochs=100)
    return gate


def digit_probability(gate, images):
    import tensorflow as tf
    return tf.sigmoid(gate(tf.constant(images))).numpy()


def test_the_gate_passes_real_digits_it_never_saw(trained_gate, real_digits):
    images, _ = real_digits
    assert np.mean(digit_probability(trained_gate, images[TRAINED_ON:]) >= 0.5) >= 0.95


def test_the_gate_refuses_pictures_of_no_digit_it_never_saw(trained_gate):
    """Fresh draws of each kind but scribbles, which are at times shaped like a digit (a random hook is a 6)."""
    rng = np.random.default_rng(1)
    others = np.concatenate([make(rng, 50) for kind, make in letters.NON_DIGIT_KINDS.items() if kind != "scribbles"])
    assert np.mean(digit_probability(trained_gate, others[..., None]) < 0.5) >= 0.85


def test_ctrl_c_ends_the_gates_training_after_the_step_it_came_in_and_says_so(real_digits, monkeypatch):
    import train
    from model import DigitGate
    images, _ = real_digits

    def remnants_then_ctrl_c(*args):  # called as the first step is traced, so Ctrl-C comes during that step
        os.kill(os.getpid(), signal.SIGINT)  # the training's own handler takes it
        return photo_remnants(*args)
    photo_remnants = train.photo_remnants
    monkeypatch.setattr(train, "photo_remnants", remnants_then_ctrl_c)
    with pytest.raises(train.TrainingInterrupted, match="^interrupted by Ctrl-C while training the digit gate$"):
        train.train_digit_gate(DigitGate(seed=0), images[:64], letters.non_digit_pictures(64, seed=0), seed=0,
                               epochs=50)


def test_each_kind_of_no_digit_is_28x28_in_0_1_with_ink_but_the_blanks(real_digits):
    rng = np.random.default_rng(0)
    for kind, make in letters.NON_DIGIT_KINDS.items():
        pictures = make(rng, 16)
        assert pictures.shape == (16, 28, 28) and pictures.dtype == np.float32, kind
        assert pictures.min() >= 0 and pictures.max() <= 1, kind
        inked = pictures.max(axis=(1, 2)) > 0.5
        assert inked.all() or (kind == "noise" and inked.sum() == 16 - 16 // 8), kind


def test_non_digit_pictures_hold_every_font_letter_letter_copies_times_and_n_more():
    fonts = letters.letter_pictures()[0]
    pictures = letters.non_digit_pictures(40, seed=3)
    assert pictures.shape == (letters.LETTER_COPIES * len(fonts) + 40, 28, 28, 1)
    for copy in range(letters.LETTER_COPIES):
        np.testing.assert_array_equal(pictures[copy * len(fonts):(copy + 1) * len(fonts)], fonts)


# ---- the SavedModel ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_gate, real_digits):
    """(the SavedModel with the gate, the same without it) of one untrained classifier."""
    from ensemble import export_saved_model
    from model import DigitNet
    images, labels = real_digits
    network = DigitNet(seed=1)  # untrained: the gate must leave whatever it says as it is
    root = tmp_path_factory.mktemp("gate")
    export_saved_model([network], str(root / "with"), images[:TRAINED_ON], labels[:TRAINED_ON], gate=trained_gate)
    export_saved_model([network], str(root / "without"), images[:TRAINED_ON], labels[:TRAINED_ON])
    return root / "with", root / "without"


def test_the_saved_model_answers_the_gates_digit_probability_for_each_picture(exported, trained_gate, real_digits):
    images, _ = real_digits
    said = predict.load_classifier(str(exported[0]))(images[TRAINED_ON:, ..., 0])
    np.testing.assert_allclose(said["digit_probability"], digit_probability(trained_gate, images[TRAINED_ON:]),
                               atol=1e-5)


def test_the_gate_leaves_the_classifiers_probabilities_and_novelty_as_they_were(exported, real_digits):
    images, _ = real_digits
    gated, alone = (predict.load_classifier(str(path))(images[TRAINED_ON:, ..., 0]) for path in exported)
    np.testing.assert_array_equal(gated["probabilities"], alone["probabilities"])
    np.testing.assert_array_equal(gated["novelty"], alone["novelty"])


def test_a_model_exported_without_the_gate_still_loads_says_so_and_refuses_nothing_for_it(exported, real_digits,
                                                                                          capsys):
    images, _ = real_digits
    said = predict.load_classifier(str(exported[1]))(images[:5, ..., 0])
    assert "has no digit gate" in capsys.readouterr().err
    np.testing.assert_array_equal(said["digit_probability"], np.ones(5))


# ---- predict.read -------------------------------------------------------------------------------------------

def gated(classify, digit_probability):
    """classify, with the gate saying digit_probability(picture index) of each picture."""
    def with_gate(pictures):
        said = np.array([digit_probability(i) for i in range(len(pictures))], np.float32)
        return {**classify(pictures), "digit_probability": said}
    return with_gate


def test_a_sure_familiar_digit_the_gate_refuses_is_answered_with_a_question_mark(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    reading = predict.read(tmp_path / "seven.png", gated(sure_of(lambda i: 7), lambda i: 0.02))
    assert reading.digits == "?" and reading.details.startswith("no digit: not a digit to the digit gate"), \
        reading.details


def test_the_gates_limit_is_inclusive(tmp_path):
    draw(7).save(tmp_path / "seven.png")
    at_the_limit = gated(sure_of(lambda i: 7), lambda i: predict.MIN_DIGIT_PROBABILITY)
    assert predict.read(tmp_path / "seven.png", at_the_limit).digits == "7"
    stricter = float(np.nextafter(np.float32(predict.MIN_DIGIT_PROBABILITY), np.float32(1)))
    assert predict.read(tmp_path / "seven.png", at_the_limit, min_digit_probability=stricter).digits == "?"


def test_a_number_whose_one_piece_the_gate_doubts_is_still_read_whole(real_digits, tmp_path):
    from test_predict import on_paper, picture
    images, _ = real_digits
    picture(on_paper(list(images[[7, 1, 3], :, :, 0]), size=(1100, 450), height=250)).save(tmp_path / "number.png")
    reading = predict.read(tmp_path / "number.png", gated(sure_of(lambda i: 4), lambda i: 0.02 if i == 1 else 0.99))
    assert reading.digits == "444", reading.details


def judged_by_the_gate(pictures, digit_probability):
    """predict.judged's answer for the first of these pictures, one per gate probability, the model sure (0.95) they
    are 4s."""
    pictures = pictures[:len(digit_probability), ..., 0]
    return predict.judged(pictures, gated(sure_of(lambda i: 4), lambda i: digit_probability[i])(pictures))


def test_a_piece_the_gate_doubts_beside_one_it_passes_is_a_question_mark_half_is_not_most(real_digits):
    assert judged_by_the_gate(real_digits[0], [0.99, 0.02]).digits == "4?"


def test_a_picture_whose_pieces_the_gate_mostly_doubts_keeps_them_as_question_marks(real_digits):
    assert judged_by_the_gate(real_digits[0], [0.02, 0.99, 0.02]).digits == "?4?"


def test_a_picture_of_several_pieces_all_doubted_by_the_gate_is_refused_and_says_why(real_digits):
    below_the_limit = [share * predict.MIN_DIGIT_PROBABILITY for share in (0.1, 0.4, 0.7, 0.99)]
    reading = judged_by_the_gate(real_digits[0], below_the_limit)
    assert reading.digits == "?" and reading.details.startswith("no digit: not a digit to the digit gate"), \
        reading.details


def test_the_gates_majority_does_not_answer_a_piece_the_model_is_unsure_of(real_digits):
    pictures = real_digits[0][:3, ..., 0]
    said = gated(sure_of(lambda i: 4), lambda i: 0.02 if i == 1 else 0.99)(pictures)
    said["probabilities"][1] = 0.1
    assert predict.judged(pictures, said).digits == "4?4"


def test_the_benchmark_answers_a_picture_as_predict_judges_it(real_digits):
    """benchmarks/photos.py answers the same readings at several limits without predict.read: it must judge as
    predict.judged does."""
    from benchmarks import photos
    for gate in ([0.99, 0.02, 0.99], [0.99, 0.02], [0.02, 0.99, 0.02], [0.02], [0.02, 0.1]):
        assert photos.answer([[4, 0.95, 0.5, g] for g in gate]) == judged_by_the_gate(real_digits[0], gate).digits, gate


# ---- what the gate is trained on ---------------------------------------------------------------------------

def test_photo_remnants_at_chance_0_leave_the_digits_as_they_were(real_digits):
    import tensorflow as tf
    from tools import photo_remnants, random_generator
    images = real_digits[0][:20]
    np.testing.assert_array_equal(photo_remnants(tf.constant(images), random_generator(0), chance=0.0), images)


def test_photo_remnants_at_chance_1_draw_a_paper_line_across_each_digit_and_thicken_it(real_digits):
    import tensorflow as tf
    from tools import photo_remnants, random_generator
    images = real_digits[0][:20]
    left = photo_remnants(tf.constant(images), random_generator(0), chance=1.0).numpy()[..., 0]
    inked = left >= 0.2
    assert np.all(np.maximum(inked.sum(axis=2).max(axis=1), inked.sum(axis=1).max(axis=1)) >= 20)
    assert np.mean(left > 0.5) > 1.3 * np.mean(images > 0.5)


def test_remade_digits_are_the_digits_made_28x28_again_as_a_photos_are(real_digits):
    images = real_digits[0][:30]
    remade = letters.remade_digits(images, 30, seed=0)
    assert remade.shape == (30, 28, 28, 1) and remade.min() >= 0 and remade.max() == 1
    likeness = np.corrcoef(remade.reshape(30, -1), images.reshape(30, -1))[:30, 30:]
    assert np.all(likeness.max(axis=1) > 0.7)  # each is one of the digits, a little changed


def test_the_gate_reads_the_inks_shape_alone_not_its_shade_or_soft_edges(real_digits):
    """How a picture was made 28x28 (MNIST's antialiasing, photo.to_mnist's) is no sign of a digit."""
    import tensorflow as tf
    from model import INK, DigitGate
    images = real_digits[0][:20]
    gate = DigitGate(seed=0)  # any weights
    crisp = np.float32(images > INK)
    np.testing.assert_allclose(gate(tf.constant(images)).numpy(), gate(tf.constant(crisp)).numpy(), atol=1e-6)
