#!/usr/bin/env python3
"""A dvm-host --exec handler: reads the job as JSON on stdin, prints the result on stdout.

    dvm-host serve --kind 5050 --exec 'python3 Examples/dvm-exec/reverse-words.py'

The job object has: id, kind, requester, inputs (each with type, data, relay, marker, and content: the
resolved text), params (name -> first value), param_list, output and encrypted. Exit nonzero to fail the
job; the last line of stderr becomes the reason in the `error` feedback.
"""
import json
import sys

job = json.load(sys.stdin)
texts = [i["content"] for i in job["inputs"] if i.get("content") is not None]
if not texts:
    print("send at least one input with text", file=sys.stderr)
    sys.exit(2)
separator = job["params"].get("separator", " ")
print(separator.join(reversed(" ".join(texts).split())))
