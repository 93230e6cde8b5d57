"""The shipped models: what each is, its features and how it is trained. `make train` trains them all."""

from __future__ import annotations

import dataclasses
from typing import Any

from kws_rpc.audio.features import FeatureConfig
from kws_rpc.lab.listen_data import LISTEN_LABELS
from kws_rpc.model.card import LABELS
from trainers.architectures import bcresnet, cnn, dscnn, resnet, tcresnet
from trainers.augment import AugmentConfig
from trainers.listen import ListenConfig, StreamConfig

# Every server model reads one feature config (49 frames x 40 log-mel bins): the edge computes it once
# per clip sent for the gRPC MFCC payload and once per clip for the MQTT ensemble. (10 MFCCs, the
# reference's choice, cost the little model ~2 points at the same size: the weights do not depend on the
# number of input coefficients, only the compute does.)
SHARED_FEATURES = FeatureConfig(num_mfcc=0, upper_hz=7600.0)
# The shared config with each clip's peak levelled to 0.5 first (kws_rpc.audio.features.normalize_peak).
LEVELLED_FEATURES = FeatureConfig(num_mfcc=0, upper_hz=7600.0, peak_normalize=0.5)
# BC-ResNet's framing (30 ms window, 10 ms hop, 98 frames x 40 log-mel): the little model's (little_h10 beat
# the 49x40 little on val, 18 / 7, McNemar p = 0.043), and a server candidate's (big_h10).
HOP10_FEATURES = FeatureConfig(num_mfcc=0, upper_hz=7600.0, frame_length=480, frame_step=160, fft_length=512)
LITTLE_FEATURES = HOP10_FEATURES
# The three server models (big and the two other ensemble members): their mean is the edge's teacher.
ENSEMBLE_TEACHERS = ("big", "member_cnn", "member_dscnn")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    architecture: str
    params: Any
    feature: FeatureConfig
    epochs: int
    description: str
    batch_size: int = 64
    lr: float = 3e-3
    label_smoothing: float = 0.1
    seed: int = 0
    quantization: str = "float32"  # or "int8": full-integer post-training quantization
    prune_sparsity: float = 0.0  # gradual magnitude pruning of Conv2D/Dense kernels during training ...
    prune_ramp: tuple[int, int] = (0, 0)  # ... from 0 at the first epoch to prune_sparsity at the second
    augment: AugmentConfig = AugmentConfig()
    zlib_budget: int = 0  # bytes after zlib level 9 the exported model must fit (0 = no limit)
    teachers: tuple[str, ...] = ()  # shipped models whose mean probabilities on the same augmented audio,
    distill_weight: float = 0.0  # ... softened by distill_temperature, are blended into the targets with
    distill_temperature: float = 1.0  # ... this weight (distillation)
    output: str = "probabilities"  # or "logits": no softmax layer in the .tflite (see kws_rpc.model.card)
    codec_prob: float = 0.0  # share of training clips whose features go through the mfcc-dct payload's round trip
    init: str = ""  # fine-tune: start from this shipped float model's weights (trainers.from_tflite), not at random
    ema: float = 0.0  # > 0: validate, select and export an exponential moving average of the weights
    # (every weight, batch-norm statistics included), updated after each batch with this decay
    labels: tuple[str, ...] = LABELS  # the model's outputs, in order
    listen: ListenConfig | None = None  # 10-label listening models: silence, unknown and SNR-mixed noise
    # in every epoch, selected on trainers.listen.selection_set (needs labels=LISTEN_LABELS)


# The little recipe on the shared 49x40 features, and the base of the candidates little_long, little_wide
# and little_mix.
LITTLE_H20 = Recipe(
    name="little_h20", architecture="dscnn", feature=SHARED_FEATURES, epochs=50, seed=1,
    params=dscnn.Params(filters=48, blocks=4),
    quantization="int8", zlib_budget=20_000, output="logits",
    teachers=ENSEMBLE_TEACHERS, distill_weight=0.7, distill_temperature=2.0,
    description="Edge model on the servers' features: DS-CNN (48 filters, 4 depthwise-separable blocks) on "
                "49x40 log-mel (40 ms window, 20 ms hop), distilled from the server ensemble, int8 full-integer "
                "with int8 logits out, <= 20,000 bytes after zlib.",
)
# little_h20 on the 98x40 framing, and the base of the little_mix10 candidates.
LITTLE_H10 = dataclasses.replace(
    LITTLE_H20, name="little_h10", feature=LITTLE_FEATURES,
    description="Edge model: DS-CNN (48 filters, 4 depthwise-separable blocks) on 98x40 log-mel (30 ms "
                "window, 10 ms hop), distilled from the server ensemble for 50 epochs, int8 full-integer "
                "with int8 logits out, <= 20,000 bytes after zlib.",
)
# little_h10 trained twice as long with mixup (over three seeds val 97.125 % and test 95.625 % on average,
# against little_h10's 95.83 and 94.42 %).
LITTLE_MIX10 = dataclasses.replace(
    LITTLE_H10, name="little_mix10", epochs=100, augment=AugmentConfig(mixup_prob=0.5), seed=1,
    description="Edge candidate: little_mix's training (100 epochs, half the clips mixed with another and "
                "labelled by the teachers on the mixed audio) on little's 98x40 framing.",
)
# little_mix10 with a fifth depthwise-separable block; its first seed (3) is the little_deep candidate.
LITTLE_DEEP = dataclasses.replace(
    LITTLE_MIX10, name="little_deep", params=dscnn.Params(filters=48, blocks=5), seed=3,
    description="Edge candidate: little's recipe (100 epochs, mixup, distilled) with a fifth "
                "depthwise-separable block (18.1k parameters, +21 %; 4 more frames of receptive field "
                "at the 10 ms hop), int8 full-integer, <= 20,000 bytes after zlib.",
)
# The shipped little: little_deep's seed 2, chosen by a seed rule declared before seeds 1 and 2 were trained
# (docs/models.md); over seeds 1, 2, 3 val 97.625 ± 0.33 % and test 95.667 ± 0.40 %, against little_mix10's
# four runs (seeds 1-3 and seed 1 retrained): val 97.03 % and test 95.47 % on average.
LITTLE = dataclasses.replace(
    LITTLE_DEEP, name="little", seed=2,
    description="Edge model: DS-CNN (48 filters, 5 depthwise-separable blocks, 18.1k parameters) on 98x40 "
                "log-mel (30 ms window, 10 ms hop), distilled from the server ensemble for 100 epochs with half "
                "the clips mixed with another (mixup) and labelled by the teachers on the mixed audio, int8 "
                "full-integer (per-tensor scales: per-channel ones do not fit) with int8 logits out, <= 20,000 "
                "bytes after zlib.",
)
BIG = Recipe(
    name="big", architecture="resnet", feature=SHARED_FEATURES, epochs=30, seed=2,
    params=resnet.Params(stem=32, channels=(48, 96, 128), blocks_per_stage=1),
    description="Server model: residual CNN on 49x40 log-mel. Also ensemble member 1.",
)
# The listening siblings (docs/listen_models.md): 10 outputs (the 8 keywords, _silence_, _unknown_), trained
# on every epoch's fresh silence and unknown clips, with the train portion of the background noise mixed in at
# 0-30 dB SNR (a quarter clean); chosen on a val set of clean, 10 dB and 0 dB clips, val silence and val unknowns.
# Hard labels with label smoothing: the server ensemble knows no silence or unknown to distil from.
LITTLE_LISTEN = dataclasses.replace(
    LITTLE, name="little_listen", labels=LISTEN_LABELS, listen=ListenConfig(), teachers=(), distill_weight=0.0,
    augment=AugmentConfig(), epochs=100, seed=1,
    description="Listening edge model: little's DS-CNN (48 filters, 5 depthwise-separable blocks) on 98x40 log-mel "
                "(30 ms window, 10 ms hop) with 10 outputs (8 keywords, _silence_, _unknown_), trained with hard "
                "labels (smoothing 0.1) on keyword clips mixed with room noise at 0-30 dB SNR, synthetic and "
                "spliced or reversed non-words and silence; int8 full-integer with int8 logits out, <= 20,000 "
                "bytes after zlib.",
)
# little_listen fine-tuned on windows as the streaming detector sees them (docs/listen_models.md, "Training on
# streaming windows"): keyword clips shifted inside the window, partial words as _unknown_, and windows of
# keyword-free train streams, above all those little_listen itself scores a keyword at >= 0.3. A candidate:
# the listener's default stays little_listen.
LITTLE_STREAM = dataclasses.replace(
    LITTLE_LISTEN, name="little_stream", init="little_listen", lr=1e-3, epochs=24, seed=1,
    listen=ListenConfig(stream=StreamConfig()),
    description="Listening edge candidate: little_listen (rebuilt from its int8 .tflite, weights dequantized) "
                "fine-tuned on its listening data plus streaming windows: keyword clips shifted by up to 250 ms "
                "inside the window, partial words (< 45 % of their energy inside) as _unknown_, and 1 s windows of "
                "keyword-free train streams (noise and synthetic train words), mostly those little_listen scores "
                "a keyword at >= 0.3; selected on val clips, val rejections and hard windows of val streams; int8 "
                "full-integer with int8 logits out, <= 20,000 bytes after zlib.",
)
# A second round: little_stream mines its own false accepts on new train streams, and each keyword clip is
# drawn twice an epoch, so that the keywords stay about 70 % of it.
LITTLE_STREAM2 = dataclasses.replace(
    LITTLE_STREAM, name="little_stream2", init="little_stream", seed=2,
    listen=ListenConfig(stream=StreamConfig(miner="little_stream", seed=2, keyword_copies=2)),
    description="Listening edge candidate: little_stream fine-tuned again on its own hard negatives (windows of new "
                "keyword-free train streams it scores a keyword at >= 0.3), with every keyword clip drawn twice an "
                "epoch (shifted and mixed afresh each time) so that keywords stay about 70 % of it; selected as "
                "little_stream; int8 full-integer, <= 20,000 bytes after zlib.",
)
# big's residual CNN, started from the shipped big's weights (its 8 keyword rows kept, two new outputs), then
# trained on the listening data: the clean accuracy is kept and the time goes to noise and rejection.
BIG_LISTEN = dataclasses.replace(
    BIG, name="big_listen", labels=LISTEN_LABELS, listen=ListenConfig(), init="big", lr=1e-3, epochs=30, seed=2,
    description="Listening server model: big's residual CNN on 49x40 log-mel with 10 outputs (8 keywords, _silence_, "
                "_unknown_), started from big's weights and trained on keyword clips mixed with room noise at "
                "0-30 dB SNR, synthetic and spliced or reversed non-words and silence; float32.",
)
# The verifier for a stream: big_listen fine-tuned on what the little fires on. Its hard negatives are the
# windows of keyword-free train streams little_stream scores a keyword at >= 0.3 (the server sees only those),
# a larger share than the little's, with keyword clips shifted as the detector's windows are.
BIG_STREAM = dataclasses.replace(
    BIG_LISTEN, name="big_stream", init="big_listen", lr=3e-4, epochs=10, seed=3,
    listen=ListenConfig(stream=StreamConfig(miner="little_stream", seed=3, hard_share=0.2)),
    description="Listening server model (the stream's verifier): big_listen fine-tuned on its listening data "
                "plus the windows of keyword-free train streams that little_stream scores a keyword at >= 0.3 "
                "(what the edge asks the server about), keyword clips shifted by up to 250 ms and partial words "
                "as _unknown_; selected on val clips, val rejections and little_stream's hard windows of val "
                "streams; float32 (big_stream_int8: trainers.quantize).",
)

# big_listen fine-tuned with its noise at a room's level: each SNR is set against the train split's median clip,
# not the clip itself, so a soft word meets the noise a loud one does (as in make bench-stream's streams and
# kws-eval's fixed-level table), and soft words are trained at the harsher SNRs they meet there.
BIG_ROOM = dataclasses.replace(
    BIG_LISTEN, name="big_room", init="big_listen", lr=3e-4, epochs=12, seed=4, listen=ListenConfig(level="room"),
    description="Listening server candidate: big_listen fine-tuned on its listening data with the noise at a room's "
                "level (SNR 0-30 dB against the train split's median clip rather than each clip, so soft words meet "
                "harsher noise); selected on val at the same level; float32 (big_room_int8: trainers.quantize).",
)

# The verifier's second round: big_room fine-tuned as big_stream was, on what the listener (little_stream2)
# fires on, with the noise at a room's level.
BIG_STREAM2 = dataclasses.replace(
    BIG_STREAM, name="big_stream2", init="big_room", seed=5,
    listen=ListenConfig(level="room", stream=StreamConfig(miner="little_stream2", seed=5, hard_share=0.2)),
    description="Listening server candidate (the stream's verifier): big_room fine-tuned on its listening data at a "
                "room's noise level plus the windows of keyword-free train streams that little_stream2 scores a "
                "keyword at >= 0.3, keyword clips shifted by up to 250 ms and partial words as _unknown_; selected "
                "on val clips at the same level, val rejections and little_stream2's hard windows of val streams; "
                "float32 (big_stream2_int8: trainers.quantize).",
)

# little_stream2 fine-tuned the same way, on its own hard negatives of new train streams.
LITTLE_ROOM = dataclasses.replace(
    LITTLE_STREAM2, name="little_room", init="little_stream2", lr=5e-4, epochs=16, seed=3,
    listen=ListenConfig(level="room", stream=StreamConfig(miner="little_stream2", seed=4, keyword_copies=2)),
    description="Listening edge candidate: little_stream2 fine-tuned with the noise of its keyword and unknown clips "
                "at a room's level (SNR 0-30 dB against the train split's median clip), on its own hard negatives "
                "of new keyword-free train streams, keyword clips drawn twice an epoch; selected on val at the same "
                "level; int8 full-integer, <= 20,000 bytes after zlib.",
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        # Edge candidates are chosen on val accuracy: little_h10 (98x40, distilled from the ensemble) reached
        # 96.50 %, little_h20 (the same on 49x40) 95.13 %, little_pruned (distilled from big alone) 94.00 %;
        # little_mix10 (little_h10 with little_mix's training) 96.50-97.25 % over four runs, and little
        # (little_mix10 with a fifth block) 97.38-98.00 % over three seeds.
        # All fit 20,000 bytes after zlib only with int8.
        LITTLE,
        LITTLE_H10,
        LITTLE_H20,
        # Candidates that change one thing of little_h20's recipe (their results: docs/models.md, "Candidates").
        dataclasses.replace(
            LITTLE_H20, name="little_long", epochs=100,
            description="Edge candidate: little_h20's recipe trained twice as long (100 epochs): a patient "
                        "student sees twice as many augmented views of each clip with the teachers' targets."),
        dataclasses.replace(
            LITTLE_H20, name="little_wide", params=dscnn.Params(filters=54, blocks=4),
            description="Edge candidate: little_h20's recipe with 54 filters instead of 48 (18.2k parameters, +21 %), "
                        "which fits 20,000 bytes after zlib with per-tensor int8 scales only (per-channel scales "
                        "and zero points cost ~4.9 KB of the budget: little_pn, 19,964 against 15,078 B)."),
        dataclasses.replace(
            LITTLE_H20, name="little_mix", epochs=100, augment=AugmentConfig(mixup_prob=0.5),
            description="Edge candidate: little_long (100 epochs) with half the clips mixed with another (mixup) "
                        "and labelled by the teachers on the mixed audio (consistent, patient distillation)."),
        LITTLE_MIX10,
        LITTLE_DEEP,
        dataclasses.replace(
            LITTLE_H20, name="little_pn", feature=LEVELLED_FEATURES, epochs=35,
            description="Edge model: little's DS-CNN on 49x40 log-mel of peak-levelled clips, distilled from "
                        "the server ensemble, int8 full-integer with int8 logits out, <= 20,000 bytes after zlib."),
        dataclasses.replace(
            LITTLE_H20, name="little_bc", architecture="bcresnet", epochs=30,
            params=bcresnet.Params(stem=16, channels=(8, 12, 16, 20), blocks=(1, 1, 3, 3), head=32),
            description="Edge candidate: BC-ResNet (broadcasted residual blocks, SubSpectralNorm with 5 "
                        "sub-bands; width 1, 8 blocks) on 49x40 log-mel, distilled from the server ensemble, "
                        "int8 full-integer with int8 logits out, <= 20,000 bytes after zlib."),
        dataclasses.replace(
            LITTLE_H10, name="little_bc10", architecture="bcresnet", epochs=60, augment=AugmentConfig(mixup_prob=0.5),
            params=bcresnet.Params(stem=16, channels=(8, 12, 16, 20), blocks=(2, 2, 4, 4), head=32,
                                   dilations=(1, 2, 4, 8)),
            description="Edge candidate: BC-ResNet-1 as published (12 broadcasted-residual blocks, SubSpectralNorm "
                        "with 5 sub-bands, temporal dilations 1/2/4/8) on little's 98x40 framing, distilled from "
                        "the server ensemble with mixup for 60 epochs, int8 full-integer, <= 20,000 bytes after zlib."),
        Recipe(
            name="little_pruned", architecture="dscnn", feature=SHARED_FEATURES, epochs=40, seed=1,
            params=dscnn.Params(filters=56, blocks=4),
            quantization="int8", zlib_budget=20_000, prune_sparsity=0.4, prune_ramp=(4, 20),
            teachers=("big",), distill_weight=0.5,
            description="Edge candidate: wider DS-CNN, 40% magnitude-pruned 1x1/first-conv/dense kernels "
                        "during training, int8 (per-tensor to fit the budget).",
        ),
        BIG,
        LITTLE_LISTEN,
        BIG_LISTEN,
        LITTLE_STREAM,
        LITTLE_STREAM2,
        BIG_STREAM,
        BIG_ROOM,
        BIG_STREAM2,
        LITTLE_ROOM,
        dataclasses.replace(
            BIG, name="big_quiet", augment=AugmentConfig(quiet_prob=0.15),
            description="Server/ensemble candidate: big's residual CNN and seed, 15 % of the training clips "
                        "turned into quiet recordings (-25 to -65 dB, re-quantized to 16 bits)."),
        dataclasses.replace(
            BIG, name="big_avg", epochs=60, augment=AugmentConfig(mixup_prob=0.5), ema=0.998,
            description="Server/ensemble candidate: big's residual CNN and seed trained twice as long (60 epochs) "
                        "with half the clips mixed with another (mixup), selecting and exporting the moving "
                        "average of the weights (decay 0.998, about 5 epochs) instead of the last ones."),
        dataclasses.replace(
            BIG, name="big_kd", teachers=ENSEMBLE_TEACHERS, distill_weight=0.5, distill_temperature=2.0,
            description="Server/ensemble candidate: big's residual CNN and seed with half of each target taken "
                        "from the server ensemble's softened mean on the same augmented audio (distillation "
                        "from an ensemble that includes big itself)."),
        dataclasses.replace(
            BIG, name="big_pn", feature=LEVELLED_FEATURES,
            description="Server model: big's residual CNN and seed on 49x40 log-mel of peak-levelled clips."),
        dataclasses.replace(
            BIG, name="big_codec", epochs=6, lr=5e-4, init="big", codec_prob=0.5,
            description="Server candidate: big fine-tuned for 6 epochs with half the clips' features passed "
                        "through the mfcc-dct payload (300 B), selected on exact and decoded val features."),
        Recipe(
            name="member_cnn_pn", architecture="cnn", feature=LEVELLED_FEATURES, epochs=8, seed=3, lr=5e-4,
            params=cnn.Params(channels=(32, 48, 96)), init="member_cnn",
            description="Ensemble member 2 on peak-levelled clips: member_cnn fine-tuned for 8 epochs.",
        ),
        Recipe(
            name="member_dscnn_pn", architecture="dscnn", feature=LEVELLED_FEATURES, epochs=8, seed=4, lr=5e-4,
            params=dscnn.Params(filters=96, blocks=5, first_kernel=(5, 5), first_stride=(2, 2)), init="member_dscnn",
            augment=AugmentConfig(time_masks=3, freq_masks=3, freq_mask_max=6),
            description="Ensemble member 3 on peak-levelled clips: member_dscnn fine-tuned for 8 epochs.",
        ),
        dataclasses.replace(
            BIG, name="big_h10", feature=HOP10_FEATURES, seed=5,
            description="Server/ensemble candidate: big's residual CNN on 98x40 log-mel (30 ms window, "
                        "10 ms hop), float32: the same family on another time resolution, for diversity."),
        Recipe(
            name="member_tc", architecture="tcresnet", feature=SHARED_FEATURES, epochs=30, seed=6,
            params=tcresnet.Params(),
            description="Ensemble candidate: TC-ResNet14 (width 1.5; temporal convolutions with the 40 mel bins "
                        "as channels) on 49x40 log-mel, float32: another architecture family, for errors "
                        "that differ from the 2-D members'.",
        ),
        Recipe(
            name="member_cnn", architecture="cnn", feature=SHARED_FEATURES, epochs=30, seed=3,
            params=cnn.Params(channels=(32, 48, 96)),
            description="Ensemble member 2: VGG-style CNN with max-pooling (no residuals) on 49x40 log-mel.",
        ),
        Recipe(
            name="member_dscnn", architecture="dscnn", feature=SHARED_FEATURES, epochs=30, seed=4,
            params=dscnn.Params(filters=96, blocks=5, first_kernel=(5, 5), first_stride=(2, 2)),
            augment=AugmentConfig(time_masks=3, freq_masks=3, freq_mask_max=6),
            description="Ensemble member 3: wide DS-CNN on 49x40 log-mel, heavier masking.",
        ),
    ]
}

# What `make train` (`python -m trainers.train --all`) retrains, teachers before the model distilled from
# them (big_listen starts from big's weights, little_stream from little_listen's): every .tflite in models/.
# little_stream is there as a candidate listener (docs/listen_models.md), not as any command's default. The
# other recipes are candidates that lost (their results: docs/models.md).
SHIPPED: tuple[str, ...] = ("big", "member_cnn", "member_dscnn", "little", "big_listen", "little_listen", "little_stream",
                           "little_stream2", "big_stream")
