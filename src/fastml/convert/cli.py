"""``fastml convert MODEL --output model.onnx``: any supported model file to ONNX, parity-checked."""

from __future__ import annotations

import argparse
import json


def _opset(text: str) -> int:
    """An argparse type: an ONNX opset a converter can target (--opset 0 or -3 wrote a model claiming it)."""
    value = int(text)
    if value < 7:
        raise argparse.ArgumentTypeError(f"must be an ONNX opset >= 7, got {value}")
    return value


def add_parser(subparsers) -> None:
    """Register ``fastml convert``."""
    p = subparsers.add_parser(
        "convert",
        help="convert a scikit-learn, XGBoost, LightGBM, PyTorch or TensorFlow/Keras model to ONNX (parity-checked)",
        description="Convert a model file to ONNX and check the result against the source model on sample rows; "
        "nothing is written when the conversion or the parity check fails.",
    )
    p.add_argument(
        "model",
        help="model file: pickle/joblib, XGBoost JSON, LightGBM text, TorchScript or torch.save, Keras .keras/.h5; "
        "or a TensorFlow SavedModel directory",
    )
    p.add_argument("--output", "-o", required=True, help="ONNX file to write")
    p.add_argument("--sample", default=None, help=".npy file of input rows for the parity check / PyTorch export")
    p.add_argument("--atol", type=float, default=1e-4, help="parity absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="parity relative tolerance (default 1e-3)")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset (default 17; at least 7)")
    p.add_argument("--json", action="store_true", help="print the conversion report as JSON")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from fastml.convert.frameworks import convert_file

    report = convert_file(args.model, args.output, sample=args.sample, atol=args.atol, rtol=args.rtol, opset=args.opset)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"converted {report.format} {report.model_class} -> {report.output} "
            f"(parity on {report.parity_rows} rows, max abs difference {report.max_abs_diff:.3g})"
        )
    return 0
