"""Write a step to a TorchScript or an ONNX file, with its interface description inside.

Both formats come from one scripted module (``torch.jit.script`` of the step):

- TorchScript keeps every ``if``, ``while`` and runtime slice as written.
- ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which
  turns the scripted ``if`` into ONNX ``If``, the ``while`` into ``Loop`` and the runtime
  slices into ``Slice``/``Gather`` with tensor bounds. The torch.export-based exporter (the
  default since torch 2.9) refuses a Python ``if`` on a tensor value (data-dependent control
  flow) unless the step is rewritten with ``torch.cond``, and would unroll or reject the
  ponder loop, so it is not used; docs/deploy.md has the details.

The description (:func:`adaptrnn.export.build.interface`) is stored as JSON: in ONNX as the
model metadata entry ``adaptrnn``, in TorchScript as the extra file ``adaptrnn.json``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from ..model import SequenceModel
from .build import ExportError, build_step, example_input, initial_state, interface

FORMATS = ("onnx", "torchscript")
METADATA_KEY = "adaptrnn"
EXTRA_FILE = "adaptrnn.json"
OPSET = 17


def script_step(model: SequenceModel) -> torch.jit.ScriptModule:
    """The step of ``model`` compiled with ``torch.jit.script`` (float32, eval)."""
    return torch.jit.script(build_step(model.cpu().eval()))


def save_torchscript(model: SequenceModel, path: str | Path) -> Path:
    """Write the scripted step; load it with ``torch.jit.load`` (libtorch: ``torch::jit::load``)."""
    path = Path(path)
    scripted = script_step(model)
    torch.jit.save(scripted, str(path), _extra_files={EXTRA_FILE: json.dumps(interface(model))})
    return path


def onnx_bytes(model: SequenceModel) -> bytes:
    """The step as an ONNX model (bytes), dynamic batch, with the interface as metadata."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'adaptrnn[export]'") from None
    scripted = script_step(model)
    info = interface(model)
    state = initial_state(model, batch=1)
    args = (example_input(model), *state.values())
    dynamic = {"x": {0: "batch"}, "y": {0: "batch"}, "updates": {0: "batch"}}
    for name in info["inputs"][1:] + [n for n in info["outputs"] if n.endswith("_next")]:
        dynamic[name] = {1: "batch"} if name.startswith("cell") else {0: "batch"}
    dynamic.update(
        {n: {0: "batch"} for n in ("update_prob_t", "skips_ahead", "update_prob_ahead", "remainder", "neuron_mask")}
    )
    dynamic["active_dims"] = {1: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice for the TorchScript-based path
        torch.onnx.export(
            scripted,
            args,
            buffer,
            dynamo=False,
            input_names=info["inputs"],
            output_names=info["outputs"],
            dynamic_axes={k: v for k, v in dynamic.items() if k in info["inputs"] + info["outputs"]},
            opset_version=OPSET,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _distinct_branch_outputs(proto.graph, onnx)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _distinct_branch_outputs(graph: Any, onnx: Any) -> None:
    """Give every output of an If/Loop body its own value name.

    The exporter lets two outputs of a branch name the same value (Skip RNN's skip branch
    returns ũ as both ``update_prob_next`` and ``update_prob_ahead``); ONNX Runtime then returns
    None for the second. An Identity node per repeated name fixes it.
    """
    for node in graph.node:
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            body, seen = attr.g, set()
            for index, output in enumerate(body.output):
                if output.name in seen:
                    copy = f"{output.name}_copy{index}"
                    body.node.append(onnx.helper.make_node("Identity", [output.name], [copy]))
                    output.name = copy
                seen.add(output.name)
            _distinct_branch_outputs(body, onnx)


def save_onnx(model: SequenceModel, path: str | Path) -> Path:
    """Write the step as ONNX; run it with ``onnxruntime.InferenceSession(path)``."""
    path = Path(path)
    path.write_bytes(onnx_bytes(model))
    return path


def export_step(model: SequenceModel, path: str | Path, fmt: str = "onnx") -> Path:
    """Export the streaming step of ``model`` to ``path`` in ``fmt`` ("onnx" or "torchscript").

    The model is left on the CPU in eval mode. Raises ExportError for an unknown format or a
    model that cannot be exported (random-skip, VCRNN with a soft mask at inference).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_onnx(model, path) if fmt == "onnx" else save_torchscript(model, path)


def read_interface(path: str | Path) -> dict[str, Any]:
    """The interface description stored in an exported file (either format)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    files = {EXTRA_FILE: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[EXTRA_FILE])


def onnx_op_types(path_or_bytes: str | Path | bytes) -> dict[str, int]:
    """How often each operator occurs in an ONNX model, subgraphs (If/Loop bodies) included."""
    import onnx

    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    counts: dict[str, int] = {}

    def visit(graph: Any) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(onnx.load_from_string(data).graph)
    return counts
