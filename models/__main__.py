"""``python -m models``: every registered architecture by family, with layout, size and default weights."""

from __future__ import annotations

import models


def main() -> None:
    for family in models.list_families():
        names = models.list_models(family=family)
        print(f"{family} ({len(names)})")
        for name in names:
            config = models.get_model_config(name)
            default = config.default_checkpoint
            weights = default.spec if default is not None else "no published weights"
            print(
                f"  {name:22} {config.layout:12} {config.num_params / 1e6:7.2f} M"
                f"  {config.preprocessing.crop_size:3d}px  {weights}"
            )


if __name__ == "__main__":
    main()
