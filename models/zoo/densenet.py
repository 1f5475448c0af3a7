"""The DenseNet family's names: torchvision's DenseNet-121/161/169/201 (:class:`models.densenet.DenseNet`).

URLs, hash prefixes, acc@1 and parameter counts are torchvision's IMAGENET1K_V1 weights as recorded in
``../shared/reference/zoo-wave2.json``. Those files use the 2017 key names, renamed on load by
:func:`models.densenet.rename_legacy_keys` (this family's key adapter).
"""

from __future__ import annotations

from dataclasses import replace

from models.config import TORCHVISION_V1
from models.densenet import DenseNet, rename_legacy_keys
from models.registry import register
from models.sources import model_config, torchvision_checkpoints

FAMILY = "densenet"

#: DenseNet-BC, each with one published checkpoint (IMAGENET1K_V1, resize 256 crop 224):
#: (name, growth rate, layers per block, stem width, parameters, sha256 prefix, acc@1)
TORCHVISION = (
    ("densenet121", 32, (6, 12, 24, 16), 64, 7_978_856, "a639ec97", 74.434),
    ("densenet161", 48, (6, 12, 36, 24), 96, 28_681_000, "8d451a50", 77.138),
    ("densenet169", 32, (6, 12, 32, 32), 64, 14_149_480, "b2777c0a", 75.600),
    ("densenet201", 32, (6, 12, 48, 32), 64, 20_013_928, "c1103571", 76.896),
)


def _register() -> None:
    for name, growth_rate, blocks, stem_width, params, sha, acc1 in TORCHVISION:
        checkpoints = torchvision_checkpoints(name, [("IMAGENET1K_V1", sha, acc1, TORCHVISION_V1)])
        args = {"growth_rate": growth_rate, "block_config": blocks, "num_init_features": stem_width}
        config = model_config(name, FAMILY, "torchvision", DenseNet, args, checkpoints, num_params=params)
        register(replace(config, head_name="classifier", key_adapter=rename_legacy_keys))


_register()
