"""``fedfm`` with a wider MLP, for the 5M-parameter workload.

fedfm's ``mlp`` model has a fixed hidden width of 64, and a feature dataset (digits) takes no
other model name. This launcher points the ``mlp`` entry of fedfm's model registry at fedfm's
own ``MLPClassifier`` with ``--hidden`` units (the registry refuses a second registration of a
name, so the entry is replaced in place) and then runs fedfm's command line, as the ``fedfm``
console script does.

Usage:
    .venv/bin/python benchmarks/peers/fedfm_arm.py --hidden 66666 run --set data.dataset=digits ...
"""

from __future__ import annotations

import sys


def use_wide_mlp(hidden: int) -> None:
    """Make fedfm's ``mlp`` model ``input_dim -> hidden -> num_labels``."""
    import torch

    from fedfm.resources.models import MODELS, LoadedModel, MLPClassifier, ModelRequest

    narrow = MODELS.get("mlp")

    def wide(request: ModelRequest) -> LoadedModel:
        rng = torch.get_rng_state()
        loaded = narrow(request)  # fedfm's own checks (its 64-unit model is thrown away)
        torch.set_rng_state(rng)  # the wide model draws what the narrow one would have
        model = MLPClassifier(request.input_dim, request.num_labels, hidden=hidden)
        return LoadedModel(model, None, loaded.architecture)

    MODELS._items["mlp"] = wide  # private: the registry has no public way to replace a name


def main(argv: list[str]) -> int:
    if argv[:1] != ["--hidden"]:
        raise SystemExit("usage: fedfm_arm.py --hidden N FEDFM_ARGS...")
    use_wide_mlp(int(argv[1]))
    from fedfm.cli import main as fedfm_main

    return fedfm_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
