"""The operator <-> trainer contract, defined once and imported by both sides (torch-free, pydantic only).

- `sections`: the spec sections the user writes and the trainer reads (model, data, parallelism, ...)
- `config`: `TrainerConfig`, the JSON the operator renders into the job's ConfigMap and the trainer loads
- `presets`: the named model shapes and how a model section resolves to a full shape
- `rules`: cross-field rules (batch divisibility, tensor-parallel divisibility, warmup), as Python and as CEL
- `exit_codes`: exit codes and the termination-message record
- `metrics`: the trainer's metrics endpoint and metric names the operator reads
"""
