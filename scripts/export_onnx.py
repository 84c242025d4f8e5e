"""Thin wrapper around `pgi-detect export` (pgi_detect.inference.export.export_main), for use without the entry point.

    .venv/bin/python scripts/export_onnx.py --checkpoint best.ckpt --output model.onnx [--nms] [--dynamic-shape]
"""
from pgi_detect.inference.export import export_main

if __name__ == "__main__":
    raise SystemExit(export_main())
