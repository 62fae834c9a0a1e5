"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient) and shows what it says."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(parts)


def test_quickstart_notebook_runs_and_shows_its_results(tmp_path):
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    # the kernel must import this checkout's classifier (the test may run from a worktree)
    nb.cells.insert(0, nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(NOTEBOOK.parents[1])!r})"))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"][1:]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    outputs = [text_of(c) for c in code]
    assert "lenet5" in outputs[0]
    assert "TrainResult(dir='quickstart-runs/bars'" in outputs[1] and "epochs=4" in outputs[1]
    accuracy = float(outputs[2].split("test accuracy:")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0
    assert outputs[3].count("quickstart-data/left/0.png") == 1 and outputs[3].count("None") == 2
    assert "EvalReport(accuracy=" in outputs[4] and "<table>" in outputs[4] and "data:image/png;base64" in outputs[4]
    assert "same labels as the checkpoint: True" in outputs[5]
    assert (tmp_path / "quickstart-runs" / "bars" / "model.onnx").is_file()
