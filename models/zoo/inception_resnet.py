"""The Inception-ResNet family's name: timm's ``inception_resnet_v2`` (299x299 input, [-1, 1] input range).

Facts from ``../shared/reference/zoo-wave2.json``: both tags are ports of Google's TensorFlow
weights (tf_in1k, timm's default, and the ensemble-adversarially trained tf_ens_adv_in1k).
"""

from __future__ import annotations

from models.inception_resnet import InceptionResNetV2
from models.registry import register
from models.sources import model_config, timm_checkpoints, timm_preprocessing

FAMILY = "inception_resnet"

#: crop_pct 0.8975: resize the shorter side to 333, centre-crop 299.
_TF_PREPROCESSING = timm_preprocessing(299, 0.8975, "inception")

register(
    model_config(
        "inception_resnet_v2",
        FAMILY,
        "timm",
        InceptionResNetV2,
        {},
        timm_checkpoints(
            "inception_resnet_v2", [("tf_in1k", _TF_PREPROCESSING), ("tf_ens_adv_in1k", _TF_PREPROCESSING)]
        ),
        num_params=55_843_464,
        head_name="classif",
    )
)
