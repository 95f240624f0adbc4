"""Export a trained model's streaming step to ONNX or TorchScript, with the savings kept in the graph.

    from adaptrnn.export import export_step
    export_step(model, "step.onnx", "onnx")        # model: a SequenceModel (build_model / load_run)

or ``adaptrnn export --run DIR --format onnx --out step.onnx``. The file computes one step:
``x``, the state -> ``y`` (the head's output), the new state, the method's per-step
quantities; its interface (names, initial state) is stored inside (:func:`read_interface`).
docs/deploy.md shows a deployment loop in ONNX Runtime and what each format keeps.
"""

from .build import ExportError, build_step, initial_state, interface
from .command import add_arguments, export_run, run
from .formats import FORMATS, export_step, onnx_bytes, onnx_op_types, read_interface, script_step

__all__ = [
    "FORMATS",
    "ExportError",
    "add_arguments",
    "build_step",
    "export_run",
    "export_step",
    "initial_state",
    "interface",
    "onnx_bytes",
    "onnx_op_types",
    "read_interface",
    "run",
    "script_step",
]
