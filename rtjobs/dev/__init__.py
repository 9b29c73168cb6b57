"""The development stack of `worker.py --dev`: the embedded Temporal dev server (`server`) and Redis, Docker
and a demo engine image where none answers (`stack`). Imported only under `--dev`; the production image
leaves this package out.
"""
