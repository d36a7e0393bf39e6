"""sam_core: the Segment Anything model library behind sam-serve (no Ray here).

A floor that imports nothing of ours (`errors`, `settings`, `frames`, `embedding`); three wings on it that never
import each other: `model` (checkpoints, building SAM, the encoder, prompts, the ONNX decoder: torch and ONNX
Runtime live only here), `wire` (schemas, images, payloads, mask encodings) and `cache` (Redis or memory);
`service` puts them together, and `client` is the light HTTP client.
"""
