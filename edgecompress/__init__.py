"""edgecompress: make PyTorch models small and fast enough for phones.

Heavy dependencies (onnxruntime, LiteRT, litert-torch, torchvision) are imported
lazily by the modules that need them, so `import edgecompress` stays cheap.
"""

__version__ = "0.1.0"
