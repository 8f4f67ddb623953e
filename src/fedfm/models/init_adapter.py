"""``model.init_adapter``: start a run from another finished run's final params.

The usual use is alignment after instruction tuning: an SFT run (``data.task =
"instruction"``) trains a LoRA adapter; a DPO run (``data.task = "preference"``) with
``model.init_adapter = <the SFT run folder>`` starts every client from it. The params file
(``adapter.safetensors``, :func:`~fedfm.models.params.save_params_file`) carries the hash
of the frozen backbone it was trained on, which must be this run's, and its tensors must be
this run's trainable tensors (same names, shapes and dtypes: the same model and adapter
config). A task head the file has and this model lacks (a classification run's) is
dropped: a generative task has no head.

Example:
    >>> params = init_params(Path("runs/sft"), get_params(model), backbone=backbone_hash(model))
    ... # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from fedfm.errors import BackboneMismatchError, ConfigError, FedFMError, ParamsMismatchError
from fedfm.models.params import Params, check_compatible, is_head
from fedfm.run_files import MERGED_FILE, PARAMS_FILE, check_can_score

KEY = "model.init_adapter"


def init_params(run_dir: str | Path, params: Params, *, backbone: str) -> Params:
    """The final params of the run in ``run_dir``, checked against this job's.

    Args:
        run_dir: a finished run folder (``config.toml``, ``adapter.safetensors``).
        params: this job's trainable tensors as initialised (names, shapes, dtypes).
        backbone: this job's backbone hash.

    Returns:
        The run's params, one tensor for each of ``params`` (a head this model lacks left
        out).

    Raises:
        ConfigError: not a finished run with one global model, or FLoRA's merged rounds
            (the params alone are not that run's model).
        BackboneMismatchError: the run trained on another backbone.
        ParamsMismatchError: its tensors are not this model's trainable tensors.
    """
    folder = Path(run_dir).expanduser()
    where = f"{KEY} = {str(run_dir)!r}"
    try:
        check_can_score(folder)
    except FedFMError as err:
        raise ConfigError(f"{where}: {err}") from None
    if (folder / MERGED_FILE).is_file():
        raise ConfigError(
            f"{where}: that run (strategy.name = 'flora', strategy.reproject = false) merged "
            f"its rounds into the backbone ({MERGED_FILE}), so its params alone are not its "
            "model: start from a run that keeps its adapter (strategy.reproject = true, or "
            "another strategy)"
        )
    path = folder / PARAMS_FILE
    with safe_open(str(path), framework="pt") as f:
        saved = (f.metadata() or {}).get("fedfm_backbone_hash")
    if saved != backbone:
        raise BackboneMismatchError(
            f"{where}: that run trained on backbone {saved}, but this run's backbone is "
            f"{backbone}: set model.name (and model.pretrained, model.dtype) to that run's "
            "model, or drop model.init_adapter"
        )
    loaded = load_file(str(path))
    given = {k: v for k, v in loaded.items() if k in params or not is_head(k)}
    try:
        check_compatible(params, given, what=f"the params of {path}")
    except ParamsMismatchError as err:
        raise ParamsMismatchError(
            f"{where}: {err} Set [adapter] as that run did (its config.toml), or drop "
            "model.init_adapter"
        ) from None
    return {k: given[k] for k in params}
