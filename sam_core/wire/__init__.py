"""The wire wing: what crosses the API (request and response schemas, client images, URL fetches, `.npy`
and `.npz` payloads, mask encodings) and turning a request into a decoder job. No torch, no Redis.

Empty on purpose: the light client imports the modules it needs and nothing else.
"""
