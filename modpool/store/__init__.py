"""store: the pool's on-disk format and its guarantees.

Atomic writes and the pool lock (`atomic`), multi-file changes (`journal`), the streamed
safetensors reader and writer (`tensorfile`), compact encodings (`encoding`), module and
composition files (`artifact`), the directory layout and names (`layout`), heads and
modules as files (`heads`, `modules`), the hash cache (`hashes`) and `check`.

May import: `errors` only. Never imports the rooms above it (bases, model, train, edit,
analysis, interop) nor `pool`; functions that act on a pool receive it as an argument.
"""
