"""Export for production runtimes: `mcgraph.export.onnx(model, path)` writes one ONNX model with explicit cache
state; `mcgraph.export.OrtSession(path)` runs it with ONNX Runtime; `mcgraph.export.tensorrt` builds a
TensorRT engine from that file where TensorRT is installed (see its docstring)."""

from __future__ import annotations

from mcgraph.export.onnx_export import ExportError, ExportInfo, export_onnx

onnx = export_onnx  # mcgraph.export.onnx(optimized_model, "model.onnx", ...)


def __getattr__(name):
    if name == "OrtSession":  # imports onnxruntime: only when asked for
        from mcgraph.export.ort_session import OrtSession

        return OrtSession
    raise AttributeError(name)


__all__ = ["ExportError", "ExportInfo", "OrtSession", "export_onnx", "onnx"]
