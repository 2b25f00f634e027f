"""The ceiling: a bare Flask endpoint that parses the same JSON body and answers 202."""

from __future__ import annotations

import uuid

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/v1/assessments")
def accept() -> tuple[object, int]:
    body = request.get_json()
    return jsonify(id=str(uuid.uuid4()), status="queued", n=len(body)), 202
