"""`mixlora merge` starts fast: its whole run imports no torch, transformers or mlx_lm.

What a user waits for is the whole command (benchmarks/merge_speed.py times it in
fresh processes); importing any of these would add seconds of start-up to a merge
that does not use them. The command runs for real in a fresh interpreter and the
modules it loaded are checked afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers_merge import make_adapter

from mlx_mixlora.adapter_format import save_adapter

HEAVY = ("torch", "transformers", "mlx_lm", "peft", "mlx.nn", "mlx_mixlora.fuse")

RUN = """
import json, sys
from mlx_mixlora.cli import main
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    with open(sys.argv[1], "w") as f:
        json.dump(sorted(sys.modules), f)
"""


@pytest.mark.parametrize(
    "args, also_absent",
    [
        (["--method", "ties", "--density", "0.2", "--rank", "4"], ()),
        (["--method", "dare_ties", "--drop", "0.5", "--rank", "4"], ()),
        # exact merges need no trim or DARE draws, so not NumPy either (~0.1 s of start-up)
        (["--method", "linear"], ("numpy",)),
        (["--method", "svd", "--rank", "4"], ("numpy",)),
    ],
)
def test_merge_command_imports_no_heavy_modules(tmp_path, args, also_absent):
    dirs = []
    for i in range(3):
        ad = make_adapter(i, name=f"a{i}")
        dirs.append(str(save_adapter(tmp_path / f"a{i}", ad.config, ad.weights)))
    out, mods = tmp_path / "merged", tmp_path / "modules.json"
    cmd = [sys.executable, "-c", RUN, str(mods), "merge", *dirs, *args, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "adapters.safetensors").is_file()  # the merge really ran and wrote
    loaded = set(json.loads(mods.read_text()))
    assert "mlx.core" in loaded and "mlx_mixlora.merge.engine" in loaded
    heavy = sorted({m for m in (*HEAVY, *also_absent) if m in loaded})
    assert heavy == [], f"mixlora merge imported {heavy}"
