"""Pipelines whose final step is a fastml PyTorch MLP -> one ONNX graph.

The preprocessing steps go through skl2onnx, the network through ``torch.onnx.export``, and the two
graphs are joined with ``onnx.compose.merge_models`` so serving sees a single model. The TorchScript
exporter (``dynamo=False``) is used because the dynamo exporter needs onnxscript, which is not part of
the stack.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from fastml.convert.spec import InputSpec
from fastml.errors import InvalidInput


def _head(net, classes):
    import torch

    class ClassifierHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("classes", torch.as_tensor(np.asarray(classes, dtype=np.int64)))

        def forward(self, x):
            logits = self.net(x)
            return self.classes[torch.argmax(logits, dim=1)], torch.softmax(logits, dim=1)

    return ClassifierHead()


def torch_module_to_onnx(model, n_features: int, *, opset: int = 17, input_name: str = "features"):
    """Export a fitted fastml torch MLP estimator alone (input ``input_name`` FP32 [N, n_features])."""
    import onnx
    import torch

    net = model.module_.eval()
    if model.task == "classification":
        if np.asarray(model.classes_).dtype.kind not in "iub":
            raise InvalidInput("torch_mlp export needs integer class labels")
        wrapped, outputs = _head(net, model.classes_), ["label", "probabilities"]
    else:
        wrapped, outputs = net, ["variable"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (torch.zeros(2, n_features, dtype=torch.float32),),
            buf,
            dynamo=False,
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={input_name: {0: "N"}, **{o: {0: "N"} for o in outputs}},
            opset_version=opset,
        )
    return onnx.load_from_string(buf.getvalue())


def torch_pipeline_to_onnx(pipeline, spec: InputSpec, *, opset: int = 17):
    """Convert ``Pipeline([("pre", ...), ("model", TorchMLP...)])`` to one ``onnx.ModelProto``."""
    import onnx
    from onnx import compose
    from skl2onnx import convert_sklearn
    from sklearn.pipeline import Pipeline

    from fastml.convert.sklearn_export import initial_types, register_converters, scaler_options

    register_converters()
    model = pipeline.steps[-1][1]
    n_features = int(model.n_features_in_)
    net_graph = torch_module_to_onnx(model, n_features, opset=opset, input_name="features")
    if len(pipeline.steps) == 1:
        return net_graph
    pre = Pipeline(pipeline.steps[:-1]) if len(pipeline.steps) > 2 else pipeline.steps[0][1]
    pre_graph = convert_sklearn(
        pre,
        initial_types=initial_types(spec),
        target_opset={"": opset, "ai.onnx.ml": 3},
        options=scaler_options(pre) or None,
    )
    pre_out = pre_graph.graph.output[0].name
    pre_graph = compose.add_prefix(pre_graph, prefix="pre_", rename_inputs=False, rename_outputs=True)
    net_graph = compose.add_prefix(net_graph, prefix="net_", rename_inputs=True, rename_outputs=False)
    # merge_models wants equal IR versions; both exporters write opset `opset`, so take the lower IR.
    ir = min(pre_graph.ir_version, net_graph.ir_version)
    pre_graph.ir_version = net_graph.ir_version = ir
    opsets = {o.domain: o.version for o in list(pre_graph.opset_import) + list(net_graph.opset_import)}
    for m in (pre_graph, net_graph):
        del m.opset_import[:]
        m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    merged = compose.merge_models(pre_graph, net_graph, io_map=[("pre_" + pre_out, "net_features")])
    onnx.checker.check_model(merged)
    return merged
