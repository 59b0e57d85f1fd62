"""The API of `riad-edge serve` as OpenAPI 3.1, written by hand and served at `GET /openapi.json`.

The prose with examples is docs/serve.md; `tests/test_serve.py` checks that the
routes described here are exactly the routes the service registers.

Example:

>>> sorted(OPENAPI["paths"])
['/health', '/metrics', '/openapi.json', '/predict', '/ready', '/reload']
"""

from __future__ import annotations


def _json(description: str, schema: str) -> dict:
    """A response with a JSON body of the component schema named `schema`."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _nullable(kind: str, description: str) -> dict:
    """A property of type `kind` that may be null."""
    return {"type": [kind, "null"], "description": description}


_UNAUTHORIZED = _json("A token is set and the request lacks `Authorization: Bearer TOKEN`.", "Error")
_IMAGE = {"type": "string", "format": "binary"}

_SCHEMAS = {
    "Model": {
        "type": "object",
        "description": "The model in force (or, in a /predict answer, the model that scored the image).",
        "required": ["file", "sha256", "threshold_source", "image_threshold"],
        "properties": {
            "file": {"type": "string", "description": "The model file's name."},
            "sha256": _nullable("string", "The model file's sha256."),
            "threshold_source": {"enum": ["calibrated", "override", "none"]},
            "image_threshold": _nullable("number", "The image threshold in force; null: scores only."),
        },
    },
    "Record": {
        "type": "object",
        "description": "The record `riad-edge infer` prints for the image (docs/records.md), plus `model`.",
        "required": ["type", "path"],
        "properties": {
            "type": {"const": "image"},
            "path": {
                "type": "string",
                "description": "The image's name: `?name=`, the upload's file name, or 'request'.",
            },
            "score": {"type": "number", "description": "The anomaly score (absent with `error`)."},
            "anomalous": {"type": "boolean", "description": "The verdict, when a threshold is known."},
            "threshold": {"type": "number"},
            "threshold_source": {"enum": ["calibrated", "override", "none"]},
            "region_score": {"type": "number", "description": "With a minimum region area above 1."},
            "regions": {
                "type": "array",
                "description": "Regions above the region threshold: `rows`, `columns` (inclusive, image pixels), `peak`.",
                "items": {"type": "object", "required": ["rows", "columns", "peak"]},
            },
            "tiles": {
                "type": "array",
                "description": "A tiled image: each tile's `origin` [row, column] in image pixels and `score`.",
                "items": {"type": "object", "required": ["origin", "score"]},
            },
            "error": {"type": "string", "description": "Why the image could not be scored (HTTP 400 or 413)."},
            "map_png": {"type": "string", "description": "With `?map=png`: the map, base64 8-bit PNG."},
            "map_values": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "timing_ms": {"type": "number", "description": "From the request's arrival to its answer (HTTP 200)."},
            "model": {"$ref": "#/components/schemas/Model"},
        },
    },
    "Reloaded": {
        "type": "object",
        "required": ["status", "model"],
        "properties": {"status": {"const": "reloaded"}, "model": {"$ref": "#/components/schemas/Model"}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "model": {"$ref": "#/components/schemas/Model"}},
    },
}

_PREDICT = {
    "summary": "Score one image",
    "parameters": [
        {"name": "name", "in": "query", "schema": {"type": "string"}, "description": "The image's name in the answer."},
        {"name": "map", "in": "query", "schema": {"enum": ["png", "array"]}, "description": "Add the anomaly map."},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": _IMAGE},
            "image/*": {"schema": _IMAGE},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _IMAGE}}},
        },
    },
    "responses": {
        "200": _json("The image's record.", "Record"),
        "400": _json("No image, an image that cannot be scored (its error record), or a malformed body.", "Record"),
        "401": _UNAUTHORIZED,
        "413": _json("A body over --max-body-mb, or an image over --max-pixels or --max-tiles.", "Record"),
        "500": _json("An internal error.", "Error"),
        "503": _json("The service is overloaded (--queue, --max-held-mb) or shutting down.", "Error"),
    },
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {
        "title": "riad-edge serve",
        "version": "1",
        "description": "RIAD anomaly scores over HTTP (docs/serve.md).",
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}, {}],  # a token only when the service was given one
    "paths": {
        "/predict": {"post": _PREDICT},
        "/health": {
            "get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "The process runs."}}}
        },
        "/ready": {
            "get": {
                "summary": "Ready for requests",
                "security": [],
                "responses": {
                    "200": {"description": "A model is loaded and requests are taken."},
                    "503": {"description": "Starting or shutting down."},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/reload": {
            "post": {
                "summary": "Re-read the model file and swap it in",
                "responses": {
                    "200": _json("Reloaded: `model` names the new model.", "Reloaded"),
                    "401": _UNAUTHORIZED,
                    "500": _json("The new model could not be opened; the previous one keeps serving.", "Error"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description",
                "responses": {"200": {"description": "OpenAPI 3.1 JSON."}, "401": _UNAUTHORIZED},
            }
        },
    },
}
