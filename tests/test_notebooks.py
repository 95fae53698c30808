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


# Each notebook's run (a conftest fixture) and the parameters that keep it short.
RUNS = {
    "evaluate": ("trained_jdit", {"EPISODES": 2}),
    "incontext_demo": ("trained_jdit", {"TASK": "edges", "SCALES": (1.0, 2.0), "STEPS": (2, 3)}),
    "class_demo": ("trained_digits", {"SAMPLES_PER_CLASS": 2, "SCALES": (1.0, 2.0), "STEPS": (2,)}),
    "video_demo": ("trained_vdt", {"CLIPS": 2, "STEPS": 2}),
    "text_demo": ("trained_gentron", {"CAPTIONS": 2, "STEPS": 2, "SCALES": (1.0, 3.0)}),
}


def test_every_notebook_is_found():
    assert {path.stem for path in NOTEBOOKS} == set(RUNS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_without_errors(path, request):
    fixture, small = RUNS[path.stem]
    run = request.getfixturevalue(fixture)
    workdir = run[1] if isinstance(run, tuple) else run
    notebook = nbformat.read(path, as_version=4)
    notebook = with_parameters(notebook, WORKDIR=str(workdir), TRAIN_STEPS_IF_MISSING=0, **small)
    # The kernel starts in notebooks/, as Jupyter would; it inherits this process's 8 CPU devices.
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    shown = [output for output in outputs if output.output_type in ("display_data", "execute_result")]
    assert shown, "the notebook showed no images or plots"
