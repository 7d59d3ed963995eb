#!/bin/sh
# The image's entry point. No arguments, or a first argument that is a flag: `naiad serve` with them
# (the image's CMD is --model-repository=/models). Anything else is a command to run, as in Triton's image:
# `tritonserver --model-repository=/models`, `naiad check /models`, `sh`.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- naiad serve "$@"
fi
exec "$@"
