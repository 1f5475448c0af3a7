"""The Inception-ResNet family's name: timm's ``inception_resnet_v2`` (299x299 input, [-1, 1] input range).

Facts from ``../shared/reference/zoo-wave2.json``: both tags are ports of Google's TensorFlow
weights (tf_in1k, timm's default, and the ensemble-adversarially trained tf_ens_adv_in1k).
"""

from __future__ import annotations

from models.config import ModelConfig
from models.inception_resnet import InceptionResNetV2
from models.registry import register
from models.sources import timm_checkpoints
from servable.preprocessing import INCEPTION_MEAN, INCEPTION_STD, Preprocessing

FAMILY = "inception_resnet"

#: crop_pct 0.8975: resize the shorter side to 333, centre-crop 299.
_TF_PREPROCESSING = Preprocessing.from_crop_pct(
    299, 0.8975, "bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
)

register(
    ModelConfig(
        name="inception_resnet_v2",
        family=FAMILY,
        layout="timm",
        builder=InceptionResNetV2,
        builder_args={},
        num_classes=1000,
        label_set="imagenet1k",
        preprocessing=_TF_PREPROCESSING,
        num_params=55_843_464,
        checkpoints=timm_checkpoints(
            "inception_resnet_v2", [("tf_in1k", _TF_PREPROCESSING), ("tf_ens_adv_in1k", _TF_PREPROCESSING)]
        ),
        head_name="classif",
        default_tag="tf_in1k",
    )
)
