"""sam_core: the Segment Anything model library behind sam-serve (no Ray here).

Checkpoints and models (`checkpoints`, `models`), images in (`images`), the batched encoder (`encoder`),
prompts and the ONNX decoder (`prompts`, `decoder`), mask encodings (`masks`), the embedding cache (`cache`).
"""
