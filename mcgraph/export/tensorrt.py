"""TensorRT: build an engine from the ONNX file `mcgraph.export.onnx` writes (the route is ONNX -> TensorRT).

    info = mcgraph.export.onnx(optimized, "model.onnx", example_kwargs=...)
    mcgraph.export.tensorrt.build_engine("model.onnx", "model.plan")      # or: trtexec --onnx=model.onnx
                                                                           #          --saveEngine=model.plan

The engine keeps the ONNX file's interface: the model inputs, `state_<name>` inputs, the outputs, the
decision outputs and `new_state_<name>` outputs (see `mcgraph/export/onnx_export.py`); the cache state is
fed back exactly as `OrtSession` does. The skip / bucket / full choice is a tree of ONNX `If` nodes, which
TensorRT builds as conditional layers; token selection is TopK with a constant K per bucket, gathers and
ScatterND (K/V and residual rows). Needs a CUDA GPU and the `tensorrt` Python package (not a dependency).
"""

from __future__ import annotations

from pathlib import Path

from mcgraph.errors import McGraphError


def available() -> tuple[bool, str]:
    """(True, "") when an engine can be built here, else (False, why not)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU"
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return False, f"tensorrt is not installed ({exc})"
    return True, ""


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, fp16: bool = False,
                 workspace_gib: float = 4.0) -> Path:
    """Parse `onnx_path` with TensorRT's ONNX parser, build a serialized engine, write it to `engine_path`."""
    ok, why = available()
    if not ok:
        raise McGraphError(f"cannot build a TensorRT engine: {why}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise McGraphError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise McGraphError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(engine))
    return engine_path


def run_engine(engine_path: str | Path, feeds: dict) -> dict:
    """Run one call of a built engine. `feeds`: name -> CUDA torch tensor for every input; returns name -> tensor
    for every output (allocated here). The caller feeds `new_state_*` back as `state_*` on the next call."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    context = engine.create_execution_context()
    outputs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = feeds[name].contiguous()
            feeds[name] = tensor
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                     trt.int64: torch.int64, trt.bool: torch.bool}[engine.get_tensor_dtype(name)]
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise McGraphError(f"TensorRT engine {engine_path} failed to run")
    stream.synchronize()
    return outputs
