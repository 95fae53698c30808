"""Every notebook runs headlessly, start to end, against a checkpoint made here."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def with_parameters(notebook, **values):
    """The notebook with a cell setting `values` after its `parameters` cell (papermill's way)."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", ()))
    lines = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(lines))
    return notebook


def test_both_notebooks_are_found():
    assert {path.name for path in NOTEBOOKS} == {"evaluate.ipynb", "incontext_demo.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_errors(path, trained_jdit):
    config, workdir = trained_jdit
    notebook = nbformat.read(path, as_version=4)
    small = {"evaluate": {"EPISODES": 2}, "incontext_demo": {"TASK": "edges", "SCALES": (1.0, 2.0), "STEPS": (2, 3)}}[path.stem]
    notebook = with_parameters(notebook, WORKDIR=str(workdir), TRAIN_STEPS_IF_MISSING=0, **small)
    # The kernel starts in notebooks/, as Jupyter would; it inherits this process's 8 CPU devices.
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    shown = [output for output in outputs if output.output_type in ("display_data", "execute_result")]
    assert shown, "the notebook showed no images or plots"
