"""A feature-model run pays only for what it uses: no transformers, peft, opacus, grpc, ray or
cryptography.

Each of these costs from a tenth of a second to seconds to import, more than a small MLP job
takes to train (issue 21, "start-up cost"; ``benchmarks/startup.py`` measures the whole process).
"""

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("transformers", "peft", "opacus", "grpc", "ray", "cryptography")
MLP_ONE_ROUND = [
    "data.dataset=digits",
    "model.name=mlp",
    "adapter.method=full",
    "data.num_clients=4",
    "strategy.clients_per_round=2",
    "rounds=1",
]


def _imported_after(code: str) -> list[str]:
    """The HEAVY modules in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    report = f"import json, sys\nprint(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_run_loads_no_heavy_library() -> None:
    assert _imported_after("import fedfm.cli, fedfm.runtime.run") == []


def test_an_mlp_run_through_the_cli_loads_no_heavy_library(tmp_path: Path) -> None:
    args = ["run"]
    for item in (*MLP_ONE_ROUND, f"output_dir={tmp_path}", "name=mlp"):
        args += ["--set", item]
    code = f"from fedfm.cli import main\nassert main({args!r}) == 0, 'the run failed'"
    assert _imported_after(code) == []
    assert (tmp_path / "mlp" / "summary.json").is_file()  # the run did happen, to the end


def test_the_startup_benchmark_accepts_its_own_job() -> None:
    """``benchmarks/startup.py`` takes overhead.py's MLP job; its plain script must be able to
    run that job (it once inherited a loss the plain script refuses, and stopped at once)."""
    bench = Path(__file__).parents[1] / "benchmarks"
    code = (
        f"import sys; sys.path.insert(0, {str(bench)!r})\n"
        "import startup\n"
        "from fedfm.config import load_config\n"
        "args = startup.plain_args(load_config(None, startup.MLP))\n"
        "assert '--rounds' in args, args"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
