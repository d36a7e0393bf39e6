"""The model wing: checkpoints (registry, download, verification), building SAM, the batched image encoder,
prompts and the ONNX mask decoder. torch and ONNX Runtime are imported only here.
"""
